"""Reward-model and ranking losses on scalar scores.

Bradley-Terry pairwise loss (with TRL's margin and reward centering), the Plackett-Luce
listwise loss over ranked lists with ragged-list masks, the Diffusion-DRO ranking hinge, and the
RPO λ-Harmonic reward. Losses return unreduced float32 values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = [
    "bradley_terry_loss",
    "harmonic_reward",
    "plackett_luce_loss",
    "ranking_hinge_loss",
]

# Stand-in score of absent list items: exp(_ABSENT - s) underflows to 0 for any realistic score,
# while staying finite keeps gradients of fully masked rows finite.
_ABSENT = -1e30


def bradley_terry_loss(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    *,
    margin: jax.Array | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> jax.Array:
    r"""Bradley-Terry reward-model loss per pair, with optional margin and reward centering.

    .. math:: \mathcal L = -\log\sigma(R_w - R_l - m) + c\,(R_w + R_l)^2

    The mean over pairs equals TRL `RewardTrainer.compute_loss` (`margin` column,
    `center_rewards_coefficient`); TRL adds `c * mean((R_w + R_l)^2)`, whose per-pair form is the
    second term here.

    Args:
      chosen_rewards: `[B]` scalar rewards of the chosen completions.
      rejected_rewards: `[B]` scalar rewards of the rejected completions.
      margin: optional scalar or `[B]` required reward gap `m` (None means 0).
      center_rewards_coefficient: optional coefficient `c` of the centering penalty that pushes
        rewards to mean zero (None means no penalty).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Bradley & Terry (1952); Ouyang et al., "Training language models to follow instructions
      with human feedback", arXiv 2203.02155; centering: Eisenstein et al., "Helping or
      Herding?", arXiv 2312.09244; margin: Touvron et al., "Llama 2", arXiv 2307.09288.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = bradley_terry_loss(jnp.array([1.0]), jnp.array([-0.5]), margin=0.5,
      ...                           center_rewards_coefficient=0.01)
      >>> print(round(float(loss[0]), 4))
      0.3158
    """
    fn = "bradley_terry_loss"
    check_rank(chosen_rewards, "chosen_rewards", 1, fn=fn)
    rewards = {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
    check_same_shape(rewards, "chosen_rewards", fn=fn)
    check_floating(rewards, fn=fn)
    r_w = f32(chosen_rewards)
    r_l = f32(rejected_rewards)
    diff = r_w - r_l
    if margin is not None:
        margin = f32(jnp.asarray(margin))
        if margin.ndim != 0:
            check_same_shape({"chosen_rewards": r_w, "margin": margin}, "chosen_rewards", fn=fn)
        diff = diff - margin
    losses = -jax.nn.log_sigmoid(diff)
    if center_rewards_coefficient is not None:
        losses = losses + center_rewards_coefficient * jnp.square(r_w + r_l)
    return losses


def plackett_luce_loss(
    scores: jax.Array,
    order: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Plackett-Luce negative log-likelihood of a ranking of each list (listwise reward loss).

    .. math:: \mathcal L = -\sum_{j=1}^{K} \Big[s_{o_j} - \log\sum_{k \ge j} e^{s_{o_k}}\Big]

    where `o_1` is the best item. Items with `mask = False` are absent: they are skipped in the
    ranking and in every normaliser, wherever they appear in `order`, so ragged lists can be
    padded to `K`. With `K = 2` and `order = [0, 1]` this is `-log sigma(s_0 - s_1)`, the
    Bradley-Terry loss. A row with fewer than two present items gives 0.

    Args:
      scores: `[B, K]` scalar scores (rewards) of the `K` items of each list.
      order: `[B, K]` integer item indices into `scores`, best first (a permutation of
        `0..K-1` per row).
      mask: optional `[B, K]` bool/float, aligned with `scores`: True where the item exists.

    Returns:
      `[B]` float32 per-list losses.

    References:
      Plackett (1975), Luce (1959); listwise reward models: Zhu, Jordan, Jiao, "Principled
      Reinforcement Learning with Human Feedback from Pairwise or K-wise Comparisons",
      arXiv 2301.11270.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = plackett_luce_loss(jnp.array([[2.0, 0.0, 1.0]]), jnp.array([[0, 2, 1]]))
      >>> print(round(float(loss[0]), 4))
      0.7209
    """
    fn = "plackett_luce_loss"
    check_rank(scores, "scores", 2, fn=fn)
    check_same_shape({"scores": scores, "order": order, "mask": mask}, "scores", fn=fn)
    check_floating({"scores": scores}, fn=fn)
    if not jnp.issubdtype(jnp.result_type(order), jnp.integer):
        raise TypeError(
            f"{fn}: `order` must be an integer array, got dtype {jnp.result_type(order)}."
        )
    scores = f32(scores)
    present = jnp.ones(scores.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    ranked = jnp.take_along_axis(scores, order, axis=-1)
    ranked_present = jnp.take_along_axis(present, order, axis=-1)
    ranked = jnp.where(ranked_present, ranked, _ABSENT)
    # tail_lse[..., j] = logsumexp_{k >= j} ranked[..., k], via a [K, K] upper-triangular mask
    # (K is a list length, small; this differentiates and compiles faster than a scan).
    k = ranked.shape[-1]
    upper = jnp.arange(k)[None, :] >= jnp.arange(k)[:, None]
    tails = jnp.where(upper, ranked[..., None, :], _ABSENT)
    tail_lse = jax.nn.logsumexp(tails, axis=-1)
    terms = jnp.where(ranked_present, ranked - tail_lse, 0.0)
    return -jnp.sum(terms, axis=-1)


def ranking_hinge_loss(
    expert_delta: jax.Array,
    policy_delta: jax.Array,
    *,
    margin: float = 1e-3,
) -> jax.Array:
    r"""Diffusion-DRO ranking hinge: expert samples must beat the policy's own samples.

    .. math:: \mathcal L = \max\big(0,\ \Delta^E - \Delta^P + m\big), \qquad
       \Delta = \ell_\phi - \ell_{ref}

    where `ℓ` is the denoising loss of the trained (`φ`) or frozen reference model on an expert
    (offline demonstration) sample, `Δ^E`, or on an online policy sample, `Δ^P`. The implicit
    reward is `-(ℓ_φ - ℓ_ref)`; no sigmoid is applied.

    Args:
      expert_delta: `[B]` denoising-loss differences `ℓ_φ - ℓ_ref` on expert samples.
      policy_delta: `[B]` denoising-loss differences `ℓ_φ - ℓ_ref` on policy samples.
      margin: ranking margin `m`.

    Returns:
      `[B]` float32 per-example hinge losses.

    References:
      Wu, Ruan, Tseng, Shuai, "Diffusion-DRO: Direct Ranking Optimization for diffusion models",
      NeurIPS 2025, arXiv 2510.18353.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = ranking_hinge_loss(jnp.array([0.02, -0.03]), jnp.array([0.01, 0.0]))
      >>> print([round(float(v), 4) for v in loss])
      [0.011, 0.0]
    """
    fn = "ranking_hinge_loss"
    check_rank(expert_delta, "expert_delta", 1, fn=fn)
    check_same_shape(
        {"expert_delta": expert_delta, "policy_delta": policy_delta}, "expert_delta", fn=fn
    )
    check_floating({"expert_delta": expert_delta, "policy_delta": policy_delta}, fn=fn)
    return jax.nn.relu(f32(expert_delta) - f32(policy_delta) + margin)


def harmonic_reward(
    image_fidelity: jax.Array,
    text_alignment: jax.Array,
    *,
    lam: float,
) -> jax.Array:
    r"""RPO λ-Harmonic reward: weighted harmonic mean of image fidelity and text alignment.

    .. math:: r_\lambda = \Big(\frac{\lambda}{I} + \frac{1-\lambda}{T}\Big)^{-1}
       = \frac{I\,T}{\lambda T + (1-\lambda) I}

    `λ = 1` gives pure fidelity `I`, `λ = 0` pure text alignment `T`; the reward is low when
    either term is low. Scores are rescaled similarities in `[0, 1]` (`(1 + cos) / 2`).
    Where the denominator vanishes (both scores 0) the reward is 0.

    Args:
      image_fidelity: `[...]` fidelity scores `I` to the subject's reference images.
      text_alignment: `[...]` alignment scores `T` to the prompt (same shape).
      lam: weight λ in `[0, 1]` of the fidelity term.

    Returns:
      `[...]` float32 rewards.

    References:
      Miao et al., "Subject-driven Text-to-Image Generation via Preference-based Reinforcement
      Learning", NeurIPS 2024, arXiv 2407.12164.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(harmonic_reward(jnp.array(0.8), jnp.array(0.6), lam=0.3)), 4))
      0.6486
    """
    fn = "harmonic_reward"
    scores = {"image_fidelity": image_fidelity, "text_alignment": text_alignment}
    check_same_shape(scores, "image_fidelity", fn=fn)
    check_floating(scores, fn=fn)
    i = f32(image_fidelity)
    t = f32(text_alignment)
    denom = lam * t + (1.0 - lam) * i
    ok = denom != 0
    safe = jnp.where(ok, denom, 1.0)
    return jnp.where(ok, i * t / safe, 0.0)
