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
previous token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref.data.synthetic._sampling import categorical_from_uniform

__all__ = [
    "MarkovSampler",
    "TokenPairs",
    "TokenTask",
    "label_token_pairs",
    "make_token_task",
    "markov_sampler",
    "sample_prompts",
    "sample_token_pairs",
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


class TokenPairs(NamedTuple):
    """Preference pairs of completions with gold rewards and per-token gold credit.

    Attributes:
      prompt: `[N, Lp]` int32 prompt tokens.
      chosen: `[N, L]` int32 preferred completion.
      rejected: `[N, L]` int32 dispreferred completion.
      chosen_reward: `[N]` gold reward of `chosen`.
      rejected_reward: `[N]` gold reward of `rejected`.
      chosen_credit: `[N, L]` gold per-token reward of `chosen`.
      rejected_credit: `[N, L]` gold per-token reward of `rejected`.
      prob_chosen: `[N]` probability the labeller gave to this ordering.
    """

    prompt: jax.Array
    chosen: jax.Array
    rejected: jax.Array
    chosen_reward: jax.Array
    rejected_reward: jax.Array
    chosen_credit: jax.Array
    rejected_credit: jax.Array
    prob_chosen: jax.Array


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


def _sample_chain(u, logits, prev):
    """Markov chain from `prev` with one uniform per step: `u [N, L]` -> tokens `[N, L]`."""
    probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)

    def step(prev, xs):
        u_t, t = xs
        tok = categorical_from_uniform(_step_logits(probs, t)[prev], u_t)
        return tok, tok

    _, toks = jax.lax.scan(step, prev.astype(jnp.int32), (u.T, jnp.arange(u.shape[1])))
    return toks.T


@functools.partial(jax.jit, static_argnames=("length",))
def _sample_markov(key, logits, prev, length: int):
    u = jax.random.uniform(key, (prev.shape[0], length))
    return _sample_chain(u, logits, prev)


class MarkovSampler(NamedTuple):
    """A completion sampler `(key, prev [N], length) -> [N, L]` for a Markov policy.

    Attributes:
      policy_logits: `[V, V]` stationary or `[L, V, V]` time-dependent logits, rows = prev token.
    """

    policy_logits: jax.Array

    def __call__(self, key, prev, length: int):
        """Samples `[N, length]` completions continuing the tokens `prev [N]`."""
        logits = jnp.asarray(self.policy_logits)
        if logits.ndim == 3 and logits.shape[0] < length:
            raise ValueError(
                f"MarkovSampler: policy covers {logits.shape[0]} steps, asked for {length}."
            )
        return _sample_markov(key, logits, jnp.asarray(prev, jnp.int32), length)


def markov_sampler(policy_logits) -> MarkovSampler:
    """A completion sampler `(key, prev [N], length) -> [N, L]` for a Markov policy.

    Args:
      policy_logits: `[V, V]` stationary or `[L, V, V]` time-dependent logits, rows = prev token.

    Returns:
      A `MarkovSampler` (samplers of the same shapes share one compiled program).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> s = markov_sampler(jnp.array([[0.0, -1e9], [-1e9, 0.0]]))  # repeat the previous token
      >>> print(s(jax.random.key(0), jnp.array([0, 1]), 3))
      [[0 0 0]
       [1 1 1]]
    """
    return MarkovSampler(jnp.asarray(policy_logits))


@functools.partial(jax.jit, static_argnames=("num", "length"))
def sample_prompts(key, task: TokenTask, num: int, length: int):
    """Samples `[num, length]` sequences of the reference language (prompts, or an SFT corpus).

    Example:
      >>> import jax
      >>> t = make_token_task(jax.random.key(0), vocab_size=5)
      >>> print(sample_prompts(jax.random.key(1), t, 3, 4).shape)
      (3, 4)
    """
    return _prompts_from_uniform(jax.random.uniform(key, (num, length)), task)


def _prompts_from_uniform(u, task: TokenTask):
    first = categorical_from_uniform(jax.nn.softmax(task.init_logits)[None, :], u[:, 0])
    rest = _sample_chain(u[:, 1:], task.ref_logits, first)
    return jnp.concatenate([first[:, None], rest], axis=1)


@jax.jit
def token_gold_credit(task: TokenTask, prev, completion):
    """Gold per-token rewards `r(y_{t-1}, y_t)` of completions.

    Args:
      task: the task.
      prev: `[N]` last prompt token (the state before the first completion token).
      completion: `[N, L]` completion tokens.

    Returns:
      `[N, L]` float32 credits; `sum(-1)` is the gold reward.

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


@functools.partial(jax.jit, static_argnames=("num_pairs", "prompt_length"))
def _prompt_block(key, task: TokenTask, num_pairs: int, prompt_length: int):
    k_u, k_s = jax.random.split(key)
    u = jax.random.uniform(k_u, (num_pairs, prompt_length + 1))
    return _prompts_from_uniform(u[:, :prompt_length], task), u[:, prompt_length], k_s


@jax.jit
def _label_pairs(task: TokenTask, prompt, a, b, u, temperature, label_noise) -> TokenPairs:
    prev = prompt[:, -1]
    credit_a = token_gold_credit(task, prev, a)
    credit_b = token_gold_credit(task, prev, b)
    margin = (credit_a.sum(-1) - credit_b.sum(-1)) / temperature
    p_a = (1.0 - label_noise) * jax.nn.sigmoid(margin) + label_noise * jax.nn.sigmoid(-margin)
    a_wins = u < p_a
    pick = lambda x, y: jnp.where(a_wins.reshape((-1,) + (1,) * (x.ndim - 1)), x, y)
    return TokenPairs(
        prompt=prompt,
        chosen=pick(a, b),
        rejected=pick(b, a),
        chosen_reward=pick(credit_a, credit_b).sum(-1),
        rejected_reward=pick(credit_b, credit_a).sum(-1),
        chosen_credit=pick(credit_a, credit_b),
        rejected_credit=pick(credit_b, credit_a),
        prob_chosen=jnp.where(a_wins, p_a, 1.0 - p_a),
    )


def _check_label_args(fn: str, temperature: float, label_noise: float) -> None:
    if not 0.0 <= label_noise <= 0.5:
        raise ValueError(f"{fn}: label_noise must be in [0, 0.5], got {label_noise}.")
    if not temperature > 0:
        raise ValueError(f"{fn}: temperature must be positive, got {temperature}.")


def label_token_pairs(
    key,
    task: TokenTask,
    prompt,
    first,
    second,
    *,
    temperature: float = 1.0,
    label_noise: float = 0.0,
) -> TokenPairs:
    """Labels two given completions per prompt by Bradley-Terry on the gold reward.

    The first completion is preferred with probability
    `q = (1 - eps) * sigmoid((R_1 - R_2) / temperature) + eps * sigmoid(-(R_1 - R_2) / temperature)`
    where `R_i` are gold rewards from the last prompt token. Use it for completions drawn by any
    generator (e.g. a transformer policy through `jaxpref.decode.sample`).

    Args:
      key: PRNG key of the labeller's coin flips.
      task: the task.
      prompt: `[N, Lp]` int prompt tokens (only the last one enters the reward).
      first: `[N, L]` int first completion.
      second: `[N, L]` int second completion.
      temperature: Bradley-Terry temperature (> 0).
      label_noise: flip probability `eps` in `[0, 0.5]`.

    Returns:
      `TokenPairs`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> t = TokenTask(jnp.zeros(2), jnp.zeros((2, 2)), jnp.array([[0.0, 5.0], [0.0, 5.0]]))
      >>> p = label_token_pairs(jax.random.key(0), t, jnp.array([[0]]), jnp.array([[0, 0]]),
      ...                       jnp.array([[1, 1]]), temperature=0.01)
      >>> print(p.chosen, p.rejected_reward)
      [[1 1]] [0.]
    """
    _check_label_args("label_token_pairs", temperature, label_noise)
    prompt, first, second = (jnp.asarray(x, jnp.int32) for x in (prompt, first, second))
    if prompt.ndim != 2 or first.ndim != 2 or first.shape != second.shape:
        raise ValueError(
            "label_token_pairs: expected prompt [N, Lp] and completions [N, L] of equal shape, "
            f"got {prompt.shape}, {first.shape}, {second.shape}."
        )
    if prompt.shape[0] != first.shape[0]:
        raise ValueError(
            f"label_token_pairs: {prompt.shape[0]} prompts but {first.shape[0]} completions."
        )
    u = jax.random.uniform(key, (prompt.shape[0],))
    return _label_pairs(task, prompt, first, second, u, temperature, label_noise)


def sample_token_pairs(
    key,
    task: TokenTask,
    sampler: Callable,
    num_pairs: int,
    *,
    prompt_length: int,
    completion_length: int,
    temperature: float = 1.0,
    label_noise: float = 0.0,
) -> TokenPairs:
    """Samples prompts, two completions per prompt from `sampler`, and Bradley-Terry labels.

    With gold rewards `R_1, R_2` the first completion is preferred with probability
    `q = (1 - eps) * sigmoid((R_1 - R_2) / temperature) + eps * sigmoid(-(R_1 - R_2) / temperature)`
    (labels flipped with probability `eps = label_noise`).

    Args:
      key: PRNG key.
      task: the task.
      sampler: `(key, prev [N], length) -> [N, L]` policy sampler (e.g. `markov_sampler`).
      num_pairs: `N`.
      prompt_length: `Lp` (prompts are drawn from the reference language).
      completion_length: `L`.
      temperature: Bradley-Terry temperature (0 < temperature).
      label_noise: flip probability in `[0, 0.5]`.

    Returns:
      `TokenPairs`.

    Example:
      >>> import jax
      >>> t = make_token_task(jax.random.key(0), vocab_size=6)
      >>> p = sample_token_pairs(jax.random.key(1), t, markov_sampler(t.ref_logits), 4,
      ...                        prompt_length=3, completion_length=5)
      >>> print(p.chosen.shape, p.chosen_credit.shape)
      (4, 5) (4, 5)
    """
    _check_label_args("sample_token_pairs", temperature, label_noise)
    prompt, u, k_s = _prompt_block(key, task, num_pairs, prompt_length)
    prev = prompt[:, -1]
    both = sampler(k_s, jnp.concatenate([prev, prev]), completion_length)
    a, b = both[:num_pairs], both[num_pairs:]
    return _label_pairs(task, prompt, a, b, u, temperature, label_noise)


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
