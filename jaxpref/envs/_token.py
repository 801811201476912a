"""A token-level language task with a hidden per-token reward and an exact KL-regularised optimum.

The reference "language" is a first-order Markov chain over a small vocabulary: the first token
of a prompt is drawn from `init_logits` and every next token from `ref_logits[prev]`. The hidden
reward is per token and depends on the previous token, `r(y_{t-1}, y_t) = token_reward[prev, tok]`,
so every completion has a gold reward `R(y) = sum_t r(y_{t-1}, y_t)` (with `y_0` the last prompt
token) and every token a gold credit `r(y_{t-1}, y_t)`.

Because the state of this token MDP is the previous token, the KL-regularised optimum over
completions of length `L` is a time-dependent Markov policy computed exactly by a backward soft
Bellman recursion (the token-level view of DPO):

    V_L(s) = 0,    Q_t(s, a) = r(s, a) + beta log pi_ref(a|s) + V_{t+1}(a),
    V_t(s) = beta log sum_a exp(Q_t(s, a) / beta),    pi*_t(a|s) = exp((Q_t(s, a) - V_t(s)) / beta).

`V_0(s)` is the optimal value `max_pi E_pi[R] - beta KL(pi || pi_ref)` from previous token `s`.
Policies are `[V, V]` (stationary) or `[L, V, V]` (time-dependent) logits, rows indexed by the
previous token. Prompts, completions and labelled pairs are sampled by `jaxpref.data.synthetic`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "TokenTask",
    "make_token_task",
    "sequence_logprobs_markov",
    "token_expected_reward",
    "token_gold_credit",
    "token_kl_to_reference",
    "token_optimal_policy_logits",
    "token_optimal_values",
]


class TokenTask(NamedTuple):
    """A Markov reference language with a hidden bigram reward.

    Attributes:
      init_logits: `[V]` logits of the first prompt token.
      ref_logits: `[V, V]` reference transition logits `pi_ref(tok | prev)`, rows = prev.
      token_reward: `[V, V]` gold reward `r(prev, tok)` of emitting `tok` after `prev`.
    """

    init_logits: jax.Array
    ref_logits: jax.Array
    token_reward: jax.Array


@functools.partial(jax.jit, static_argnames=("vocab_size",))
def make_token_task(
    key,
    *,
    vocab_size: int = 16,
    reward_scale: float = 1.0,
    ref_temperature: float = 1.0,
) -> TokenTask:
    """Draws a random Markov reference language and a Gaussian bigram reward.

    `ref_logits ~ N(0, 1) / ref_temperature`, `token_reward ~ N(0, reward_scale^2)`, uniform
    first-token distribution.

    Args:
      key: PRNG key.
      vocab_size: `V`.
      reward_scale: standard deviation of the per-token reward.
      ref_temperature: temperature of the reference chain (larger = flatter).

    Returns:
      `TokenTask`.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv 2404.12358.

    Example:
      >>> import jax
      >>> t = make_token_task(jax.random.key(0), vocab_size=5)
      >>> print(t.ref_logits.shape, t.token_reward.shape)
      (5, 5) (5, 5)
    """
    if vocab_size < 2:
        raise ValueError(f"make_token_task: need vocab_size >= 2, got {vocab_size}.")
    z = jax.random.normal(key, (2, vocab_size, vocab_size))
    return TokenTask(
        init_logits=jnp.zeros((vocab_size,)),
        ref_logits=z[0] / ref_temperature,
        token_reward=reward_scale * z[1],
    )


def _step_logits(logits, t):
    return logits[t] if logits.ndim == 3 else logits


@jax.jit
def token_gold_credit(task: TokenTask, prev, completion):
    """Gold per-token rewards `r(y_{t-1}, y_t)` of completions.

    Args:
      task: the task.
      prev: `[N]` last prompt token (the state before the first completion token).
      completion: `[N, L]` completion tokens.

    Returns:
      `[N, L]` float32 credits; `sum(-1)` is the gold reward.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv 2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> t = TokenTask(jnp.zeros(2), jnp.zeros((2, 2)), jnp.array([[0.0, 1.0], [2.0, 3.0]]))
      >>> print(token_gold_credit(t, jnp.array([0]), jnp.array([[1, 1, 0]])))
      [[1. 3. 2.]]
    """
    completion = jnp.asarray(completion)
    prevs = jnp.concatenate([jnp.asarray(prev)[:, None], completion[:, :-1]], axis=1)
    return task.token_reward[prevs, completion].astype(jnp.float32)


@jax.jit
def sequence_logprobs_markov(policy_logits, prev, completion):
    """Per-token log-probs `[N, L]` of completions under a Markov policy.

    Args:
      policy_logits: `[V, V]` stationary or `[T, V, V]` time-dependent (`T >= L`) logits, rows
        indexed by the previous token.
      prev: `[N]` int last prompt token (the state before the first completion token).
      completion: `[N, L]` int completion tokens.

    Returns:
      `[N, L]` float32 log-probs `log pi_t(y_t | y_{t-1})`; `sum(-1)` is the sequence log-prob.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv 2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> lp = sequence_logprobs_markov(jnp.zeros((2, 2)), jnp.array([0]), jnp.array([[1, 0]]))
      >>> print(lp.round(4))
      [[-0.6931 -0.6931]]
    """
    logits = jnp.asarray(policy_logits)
    completion = jnp.asarray(completion)
    length = completion.shape[1]
    prevs = jnp.concatenate([jnp.asarray(prev)[:, None], completion[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if logp.ndim == 3:
        return logp[jnp.arange(length)[None, :], prevs, completion]
    return logp[prevs, completion]


def _backward(task: TokenTask, beta: float, length: int):
    log_ref = jax.nn.log_softmax(task.ref_logits, axis=-1)

    def step(v_next, _):
        q = task.token_reward + beta * log_ref + v_next[None, :]
        v = beta * jax.nn.logsumexp(q / beta, axis=-1)
        return v, (q, v)

    v_l = jnp.zeros(task.ref_logits.shape[0], jnp.float32)
    _, (qs, vs) = jax.lax.scan(step, v_l, None, length=length)
    return qs[::-1], vs[::-1]


@functools.partial(jax.jit, static_argnames=("length",))
def token_optimal_policy_logits(task: TokenTask, *, beta: float, length: int):
    """Logits `[L, V, V]` of the KL-regularised optimal policy `pi*_t(tok | prev)`.

    Args:
      task: the task.
      beta: KL coefficient (> 0).
      length: completion length `L` (static).

    Returns:
      `[L, V, V]` log-normalised logits; `[t, prev]` is `log pi*_t(. | prev)`.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv 2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> t = TokenTask(jnp.zeros(2), jnp.zeros((2, 2)), jnp.array([[0.0, 1.0], [0.0, 1.0]]))
      >>> pi = jnp.exp(token_optimal_policy_logits(t, beta=1.0, length=1))
      >>> print([round(float(p), 4) for p in pi[0, 0]])
      [0.2689, 0.7311]
    """
    qs, _ = _backward(task, beta, length)
    return jax.nn.log_softmax(qs / beta, axis=-1)


@functools.partial(jax.jit, static_argnames=("length",))
def token_optimal_values(task: TokenTask, *, beta: float, length: int):
    """Soft optimal values `[L, V]`: `V_t(prev)`; `V_0(s) = max_pi E[R] - beta KL(pi||pi_ref)`.

    Args:
      task: the task.
      beta: KL coefficient (> 0).
      length: completion length `L` (static).

    Returns:
      `[L, V]` float32 values; `[t, s]` is the optimal value of the remaining `L - t` tokens
      after previous token `s`.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv 2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> t = TokenTask(jnp.zeros(2), jnp.zeros((2, 2)), jnp.zeros((2, 2)))
      >>> print(token_optimal_values(t, beta=1.0, length=3)[0])
      [0. 0.]
    """
    return _backward(task, beta, length)[1]


def _visitation(policy_logits, prev, length: int):
    probs = jax.nn.softmax(jnp.asarray(policy_logits), axis=-1)
    v = probs.shape[-1]
    d0 = jax.nn.one_hot(jnp.asarray(prev), v)

    def step(d, t):
        p = _step_logits(probs, t)
        return d @ p, (d, p)

    _, (ds, ps) = jax.lax.scan(step, d0, jnp.arange(length))
    return ds, ps  # ds: [L, N, V] state distributions, ps: [L, V, V] policies


@functools.partial(jax.jit, static_argnames=("length",))
def token_expected_reward(policy_logits, task: TokenTask, prev, length: int):
    """Exact expected gold reward `[N]` of length-`L` completions from each previous token.

    .. math:: \\mathbb E_\\pi[R] = \\sum_t \\sum_s d_t(s) \\sum_a \\pi_t(a|s)\\, r(s, a)

    Args:
      policy_logits: `[V, V]` stationary or `[L, V, V]` time-dependent logits, rows indexed by
        the previous token.
      task: the task.
      prev: `[N]` int previous (last prompt) tokens.
      length: completion length `L` (static).

    Returns:
      `[N]` float32 expected gold rewards.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv 2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> t = TokenTask(jnp.zeros(2), jnp.zeros((2, 2)), jnp.array([[0.0, 1.0], [0.0, 1.0]]))
      >>> print(token_expected_reward(jnp.zeros((2, 2)), t, jnp.array([0]), 4))
      [2.]
    """
    ds, ps = _visitation(policy_logits, prev, length)
    per_state = jnp.sum(ps * task.token_reward[None], axis=-1)
    return jnp.einsum("tns,ts->n", ds, per_state)


@functools.partial(jax.jit, static_argnames=("length",))
def token_kl_to_reference(policy_logits, task: TokenTask, prev, length: int):
    """Exact `KL(pi || pi_ref)` `[N]` over length-`L` completions from each previous token.

    Args:
      policy_logits: `[V, V]` stationary or `[L, V, V]` time-dependent logits, rows indexed by
        the previous token.
      task: the task (its `ref_logits` are `pi_ref`).
      prev: `[N]` int previous (last prompt) tokens.
      length: completion length `L` (static).

    Returns:
      `[N]` float32 sequence-level KL divergences (nats).

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv 2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> t = TokenTask(jnp.zeros(2), jnp.zeros((2, 2)), jnp.zeros((2, 2)))
      >>> print(token_kl_to_reference(jnp.zeros((2, 2)), t, jnp.array([0, 1]), 3))
      [0. 0.]
    """
    logits = jnp.asarray(policy_logits)
    lp = jax.nn.log_softmax(logits, axis=-1)
    lq = jax.nn.log_softmax(task.ref_logits, axis=-1)
    ds, ps = _visitation(logits, prev, length)
    lp = lp if lp.ndim == 3 else jnp.broadcast_to(lp, (length, *lp.shape))
    per_state = jnp.sum(ps * (lp - lq[None]), axis=-1)
    return jnp.einsum("tns,ts->n", ds, per_state)
