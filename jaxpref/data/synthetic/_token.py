"""Prompts, completions and labelled pairs of the token task (`jaxpref.envs.TokenTask`).

Prompts are sequences of the task's Markov reference language; completions come from any sampler
`(key, prev [N], length) -> [N, L]` (a Markov policy through `markov_sampler`, or a transformer);
pairs are labelled by a Bradley-Terry model on the gold reward and carry the per-token gold credit
of both completions. The task, its rewards and its exact optimum live in `jaxpref.envs`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref.data.synthetic._sampling import categorical_from_uniform
from jaxpref.envs import TokenTask, token_gold_credit
from jaxpref.envs._token import _step_logits

__all__ = [
    "MarkovSampler",
    "TokenPairs",
    "label_token_pairs",
    "markov_sampler",
    "sample_prompts",
    "sample_token_pairs",
]


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
        """Samples `[N, length]` completions continuing the tokens `prev [N]`.

        Args:
          key: PRNG key.
          prev: `[N]` int previous tokens (the last prompt token of each row).
          length: completion length `L` (static); a time-dependent policy must cover it.

        Returns:
          `[N, L]` int32 completion tokens.
        """
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

    The first token is drawn from `softmax(task.init_logits)`, every next one from the reference
    chain `softmax(task.ref_logits[prev])`.

    Args:
      key: PRNG key.
      task: the token task.
      num: number of sequences `N` (static).
      length: tokens per sequence `L` (static).

    Returns:
      `[N, L]` int32 tokens.

    Example:
      >>> import jax
      >>> from jaxpref.envs import make_token_task
      >>> t = make_token_task(jax.random.key(0), vocab_size=5)
      >>> print(sample_prompts(jax.random.key(1), t, 3, 4).shape)
      (3, 4)
    """
    return _prompts_from_uniform(jax.random.uniform(key, (num, length)), task)


def _prompts_from_uniform(u, task: TokenTask):
    first = categorical_from_uniform(jax.nn.softmax(task.init_logits)[None, :], u[:, 0])
    rest = _sample_chain(u[:, 1:], task.ref_logits, first)
    return jnp.concatenate([first[:, None], rest], axis=1)


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
      >>> from jaxpref.envs import make_token_task
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
