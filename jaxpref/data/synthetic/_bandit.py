"""Preference pairs sampled from a tabular contextual bandit (`jaxpref.envs.PreferenceBandit`).

Pairs are drawn from the reference policy and labelled by a Bradley-Terry model on the gold
reward, the data-generating process DPO assumes. The bandit itself, its closed-form optimum, win
rates and KLs live in `jaxpref.envs`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref.envs import PreferenceBandit

__all__ = [
    "PreferencePairs",
    "sample_preference_pairs",
]


class PreferencePairs(NamedTuple):
    """Labelled preference pairs drawn from a bandit.

    Attributes:
      prompt: `[N]` int32 prompt index.
      chosen: `[N]` int32 preferred response.
      rejected: `[N]` int32 dispreferred response.
    """

    prompt: jax.Array
    chosen: jax.Array
    rejected: jax.Array


def sample_preference_pairs(key, bandit: PreferenceBandit, num_pairs: int) -> PreferencePairs:
    """Samples pairs from `pi_ref` and labels them with a Bradley-Terry model on the gold reward.

    Each pair: a uniform prompt `x`, two distinct responses `a != a'` drawn from `pi_ref(. | x)`
    (the second conditioned on differing from the first), and label `a ≻ a'` with probability
    `sigmoid(r*(x, a) - r*(x, a'))`.

    Args:
      key: PRNG key.
      bandit: the task.
      num_pairs: number of pairs `N`.

    Returns:
      `PreferencePairs` with `[N]` arrays.

    Example:
      >>> import jax
      >>> from jaxpref.envs import make_preference_bandit
      >>> b = make_preference_bandit(jax.random.key(0), num_prompts=3, num_responses=5)
      >>> p = sample_preference_pairs(jax.random.key(1), b, 4)
      >>> print(p.chosen.shape, bool((p.chosen != p.rejected).all()))
      (4,) True
    """
    k_x, k_a, k_b, k_l = jax.random.split(key, 4)
    num_prompts, num_responses = bandit.ref_logits.shape
    x = jax.random.randint(k_x, (num_pairs,), 0, num_prompts)
    logits = bandit.ref_logits[x]
    a = jax.random.categorical(k_a, logits)
    excluded = jnp.where(jnp.arange(num_responses)[None, :] == a[:, None], -jnp.inf, logits)
    b = jax.random.categorical(k_b, excluded)
    r = bandit.gold_reward
    p_a = jax.nn.sigmoid(r[x, a] - r[x, b])
    a_wins = jax.random.uniform(k_l, (num_pairs,)) < p_a
    chosen = jnp.where(a_wins, a, b).astype(jnp.int32)
    rejected = jnp.where(a_wins, b, a).astype(jnp.int32)
    return PreferencePairs(x.astype(jnp.int32), chosen, rejected)
