"""Tabular contextual preference bandit with a known gold reward and a closed-form optimum.

`PreferenceBandit` is the contextual-bandit form of preference learning: prompts `x`, a finite set
of responses `a`, a gold reward `r*(x, a)` and a reference policy `pi_ref(a | x)`. Preference pairs
are drawn from the reference policy and labelled by a Bradley-Terry model on the gold reward, the
data-generating process DPO assumes. Because the task is tabular, every quantity a DPO run should
be judged by is exact: the KL-regularised optimum `pi*(a|x) ∝ pi_ref(a|x) exp(r*(x,a) / beta)`,
expected gold reward, win rate against the reference, and KL divergences.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "PreferenceBandit",
    "PreferencePairs",
    "expected_reward",
    "kl_to_reference",
    "make_preference_bandit",
    "optimal_policy_logits",
    "sample_preference_pairs",
    "win_rate",
]


class PreferenceBandit(NamedTuple):
    """A tabular contextual preference bandit.

    Attributes:
      gold_reward: `[X, A]` gold reward `r*(x, a)` of response `a` to prompt `x`.
      ref_logits: `[X, A]` logits of the reference policy `pi_ref(a | x)`.
    """

    gold_reward: jax.Array
    ref_logits: jax.Array


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


def make_preference_bandit(
    key,
    *,
    num_prompts: int = 64,
    num_responses: int = 16,
    reward_scale: float = 1.0,
    ref_temperature: float = 1.0,
) -> PreferenceBandit:
    """Draws gold rewards `~ N(0, reward_scale^2)` and reference logits `~ N(0, 1) / temperature`.

    Args:
      key: PRNG key.
      num_prompts: number of prompts `X`.
      num_responses: number of candidate responses `A` per prompt.
      reward_scale: standard deviation of the gold reward.
      ref_temperature: temperature of the reference policy (larger = flatter).

    Returns:
      A `PreferenceBandit`.

    Example:
      >>> import jax
      >>> b = make_preference_bandit(jax.random.key(0), num_prompts=3, num_responses=5)
      >>> print(b.gold_reward.shape, b.ref_logits.shape)
      (3, 5) (3, 5)
    """
    if num_responses < 2:
        raise ValueError(f"make_preference_bandit: need num_responses >= 2, got {num_responses}.")
    k_r, k_ref = jax.random.split(key)
    shape = (num_prompts, num_responses)
    return PreferenceBandit(
        gold_reward=reward_scale * jax.random.normal(k_r, shape),
        ref_logits=jax.random.normal(k_ref, shape) / ref_temperature,
    )


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


def optimal_policy_logits(bandit: PreferenceBandit, *, beta: float):
    """Logits of the KL-regularised optimum `pi* ∝ pi_ref exp(r* / beta)`, the target of DPO.

    Args:
      bandit: the task.
      beta: KL coefficient.

    Returns:
      `[X, A]` logits (log-normalised).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> b = PreferenceBandit(jnp.array([[0.0, 1.0]]), jnp.zeros((1, 2)))
      >>> print([round(float(p), 4) for p in jnp.exp(optimal_policy_logits(b, beta=1.0))[0]])
      [0.2689, 0.7311]
    """
    return jax.nn.log_softmax(
        jax.nn.log_softmax(bandit.ref_logits, axis=-1) + bandit.gold_reward / beta, axis=-1
    )


def expected_reward(policy_logits, bandit: PreferenceBandit):
    """Expected gold reward `E_x E_{a ~ pi(.|x)} r*(x, a)`, prompts weighted uniformly.

    Args:
      policy_logits: `[X, A]` policy logits.
      bandit: the task.

    Returns:
      Scalar float32.

    Example:
      >>> import jax.numpy as jnp
      >>> b = PreferenceBandit(jnp.array([[0.0, 1.0]]), jnp.zeros((1, 2)))
      >>> print(float(expected_reward(jnp.zeros((1, 2)), b)))
      0.5
    """
    probs = jax.nn.softmax(policy_logits, axis=-1)
    return jnp.mean(jnp.sum(probs * bandit.gold_reward, axis=-1))


def win_rate(policy_logits, bandit: PreferenceBandit, baseline_logits=None):
    """Exact gold-reward win rate of `pi` against a baseline (default `pi_ref`); ties count half.

    .. math:: \\mathbb E_x \\sum_{a, a'} \\pi(a|x)\\,\\pi_b(a'|x)\\,
              [\\mathbb 1(r^*_a > r^*_{a'}) + \\tfrac12 \\mathbb 1(r^*_a = r^*_{a'})]

    Args:
      policy_logits: `[X, A]` policy logits.
      bandit: the task.
      baseline_logits: `[X, A]` baseline logits; None uses the reference policy.

    Returns:
      Scalar in `[0, 1]`.

    Example:
      >>> import jax.numpy as jnp
      >>> b = PreferenceBandit(jnp.array([[0.0, 1.0]]), jnp.zeros((1, 2)))
      >>> print(float(win_rate(jnp.array([[-30.0, 30.0]]), b)))
      0.75
    """
    base = bandit.ref_logits if baseline_logits is None else baseline_logits
    p = jax.nn.softmax(policy_logits, axis=-1)
    q = jax.nn.softmax(base, axis=-1)
    r = bandit.gold_reward
    diff = r[:, :, None] - r[:, None, :]
    score = (diff > 0).astype(jnp.float32) + 0.5 * (diff == 0).astype(jnp.float32)
    return jnp.mean(jnp.einsum("xa,xb,xab->x", p, q, score))


def kl_to_reference(policy_logits, reference_logits):
    """Mean over prompts of `KL(pi || pi_ref)`.

    Args:
      policy_logits: `[X, A]` logits of `pi`.
      reference_logits: `[X, A]` logits of the reference.

    Returns:
      Scalar float32 (nats).

    Example:
      >>> import jax.numpy as jnp
      >>> print(float(kl_to_reference(jnp.zeros((2, 3)), jnp.zeros((2, 3)))))
      0.0
    """
    lp = jax.nn.log_softmax(policy_logits, axis=-1)
    lq = jax.nn.log_softmax(reference_logits, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1))
