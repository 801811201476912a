"""Tabular contextual preference bandit with a known gold reward and a closed-form optimum.

`PreferenceBandit` is the contextual-bandit form of preference learning: prompts `x`, a finite set
of responses `a`, a gold reward `r*(x, a)` and a reference policy `pi_ref(a | x)`. Because the task
is tabular, every quantity a DPO run should be judged by is exact: the KL-regularised optimum
`pi*(a|x) ∝ pi_ref(a|x) exp(r*(x,a) / beta)`, expected gold reward, win rate against the
reference, and KL divergences. Preference pairs are sampled from it by
`jaxpref.data.synthetic.sample_preference_pairs`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "PreferenceBandit",
    "expected_reward",
    "kl_to_reference",
    "make_preference_bandit",
    "optimal_policy_logits",
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

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", arXiv 2305.18290.

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


def optimal_policy_logits(bandit: PreferenceBandit, *, beta: float):
    """Logits of the KL-regularised optimum `pi* ∝ pi_ref exp(r* / beta)`, the target of DPO.

    Args:
      bandit: the task.
      beta: KL coefficient.

    Returns:
      `[X, A]` logits (log-normalised).

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", arXiv 2305.18290.

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

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", arXiv 2305.18290.

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

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", arXiv 2305.18290.

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

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", arXiv 2305.18290.

    Example:
      >>> import jax.numpy as jnp
      >>> print(float(kl_to_reference(jnp.zeros((2, 3)), jnp.zeros((2, 3)))))
      0.0
    """
    lp = jax.nn.log_softmax(policy_logits, axis=-1)
    lq = jax.nn.log_softmax(reference_logits, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1))
