"""Contrastive Preference Learning (CPL) objectives.

CPL models a preference between two behaviour segments by their (negated) regret, the discounted
sum of optimal advantages, and substitutes the maximum-entropy identity
`A*(s, a) = alpha * log pi*(a | s)`, so a policy is learned directly from preferences with a
contrastive, supervised objective: no reward model, no value function, no RL inner loop.

Segments are batch-major `[B, T]` arrays of per-step log-probabilities `log pi(a_t | s_t)` with a
mask of valid steps. For language models a step is a token and a segment is a completion, so CPL
on whole completions with `gamma=1` and `contrastive_bias=1` is reference-free DPO, and CPL-KL is
DPO with `beta = alpha`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = [
    "CplAux",
    "cpl_bc_regularizer",
    "cpl_kl_loss",
    "cpl_loss",
    "cpl_loss_from_scores",
    "cpl_objective",
    "cpl_rank_loss",
    "cpl_segment_scores",
]


def _weights(mask) -> tuple[jax.Array, jax.Array]:
    """Returns `(keep, weight)`: a bool array of valid entries and float32 weights (0 where not)."""
    weight = f32(mask)
    keep = weight != 0
    return keep, jnp.where(keep, weight, 0.0)


def _check_segments(fn: str, logps, mask, logps_name: str, mask_name: str) -> None:
    check_rank(logps, logps_name, 2, fn=fn)
    check_floating({logps_name: logps}, fn=fn)
    check_same_shape({logps_name: logps, mask_name: mask}, logps_name, fn=fn)


def _check_reference(fn: str, logps, ref_logps, logps_name: str, ref_name: str) -> None:
    check_floating({ref_name: ref_logps}, fn=fn)
    check_same_shape({logps_name: logps, ref_name: ref_logps}, logps_name, fn=fn)


def _check_batch(fn: str, arrays: dict) -> None:
    sizes = {name: jnp.shape(x)[0] for name, x in arrays.items()}
    first_name, first = next(iter(sizes.items()))
    for name, size in sizes.items():
        if size != first:
            raise ValueError(
                f"{fn}: `{name}` must have the batch size of `{first_name}` ({first}), got {size}."
            )


def cpl_segment_scores(
    logps: ArrayLike,
    mask: ArrayLike,
    *,
    alpha: float = 0.1,
    gamma: float = 1.0,
) -> jax.Array:
    r"""Discounted segment score `S = sum_t gamma^t * alpha * log pi(a_t | s_t)` over valid steps.

    The score is the discounted sum of the max-entropy optimal advantages
    `A*(s_t, a_t) = alpha * log pi(a_t | s_t)`, i.e. the negated regret of the segment:

        S = sum_{t=0}^{T-1} m_t * gamma^t * alpha * logps[t]

    The exponent `t` is the **position** in the array, counted from the start of the segment
    (column 0), not the index among valid steps: a masked step still advances the clock. With
    left-aligned segments (padding only at the end) the two conventions coincide. With `gamma=1`
    (the reference implementation's setting) the score is `alpha` times the masked sum of
    log-probs. Masked entries contribute exactly 0 whatever they hold (NaN or inf included, also
    in the gradient); a non-binary mask acts as per-step weights.

    Args:
      logps: `[B, T]` per-step log-probabilities `log pi(a_t | s_t)` of the segment's actions.
      mask: `[B, T]` 1 (or True) for valid steps, 0 for padding.
      alpha: max-entropy temperature, the scale of the advantages.
      gamma: discount factor applied per position.

    Returns:
      `[B]` float32 segment scores; 0 for fully masked rows.

    References:
      Hejna et al., "Contrastive Preference Learning: Learning from Human Feedback without RL",
      ICLR 2024, arXiv:2310.13639.

    Example:
      >>> import jax.numpy as jnp
      >>> s = cpl_segment_scores(jnp.array([[-1.0, -2.0, 7.0]]), jnp.array([[1, 1, 0]]),
      ...                        alpha=0.1, gamma=0.5)
      >>> print(round(float(s[0]), 4))  # 0.1 * (-1 + 0.5 * -2)
      -0.2
    """
    fn = "cpl_segment_scores"
    _check_segments(fn, logps, mask, "logps", "mask")
    logps = f32(logps)
    keep, weight = _weights(mask)
    steps = jnp.where(keep, logps, 0.0) * weight
    discount = jnp.power(jnp.asarray(gamma, jnp.float32), jnp.arange(steps.shape[-1]))
    return alpha * jnp.sum(steps * discount[None, :], axis=-1)


def cpl_loss_from_scores(
    score_pos: ArrayLike,
    score_neg: ArrayLike,
    *,
    contrastive_bias: float = 0.5,
) -> jax.Array:
    r"""Biased logistic loss `-log sigmoid(S+ - lambda * S-)` on precomputed segment scores.

    This is the contrastive CPL loss once segment scores are known (see `cpl_segment_scores`).
    `lambda = contrastive_bias` in (0, 1] scales the dis-preferred score; `lambda < 1` is the
    conservative CPL_lambda variant, which favours raising the likelihood of in-distribution
    preferred behaviour.

    Args:
      score_pos: `[B]` scores `S+` of the preferred segments.
      score_neg: `[B]` scores `S-` of the dis-preferred segments.
      contrastive_bias: `lambda`, the weight on the dis-preferred score.

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Hejna et al., ICLR 2024, arXiv:2310.13639 (Sec. 4, conservative CPL_lambda).

    Example:
      >>> import jax.numpy as jnp
      >>> l = cpl_loss_from_scores(jnp.array([0.0]), jnp.array([0.0]), contrastive_bias=1.0)
      >>> print(round(float(l[0]), 4))  # log 2
      0.6931
    """
    fn = "cpl_loss_from_scores"
    check_rank(score_pos, "score_pos", 1, fn=fn)
    check_floating({"score_pos": score_pos, "score_neg": score_neg}, fn=fn)
    check_same_shape({"score_pos": score_pos, "score_neg": score_neg}, "score_pos", fn=fn)
    logits = f32(score_pos) - contrastive_bias * f32(score_neg)
    return -jax.nn.log_sigmoid(logits)


def cpl_loss(
    pos_logps: ArrayLike,
    neg_logps: ArrayLike,
    pos_mask: ArrayLike,
    neg_mask: ArrayLike,
    *,
    alpha: float = 0.1,
    gamma: float = 1.0,
    contrastive_bias: float = 0.5,
) -> jax.Array:
    r"""Contrastive Preference Learning loss per pair of segments.

        S+/- = sum_t gamma^t * alpha * log pi(a_t | s_t)      (over valid steps)
        L    = -log sigmoid(S+ - lambda * S-)

    With `contrastive_bias = lambda = 1` this is the negative log-likelihood of the regret
    preference model under the max-entropy advantage `alpha * log pi`; on length-1 segments it is
    reference-free DPO with `beta = alpha`. The preferred and dis-preferred segments may have
    different lengths `T+` and `T-`. See `cpl_segment_scores` for the discount convention.

    Args:
      pos_logps: `[B, T+]` per-step log-probs of the preferred segments.
      neg_logps: `[B, T-]` per-step log-probs of the dis-preferred segments.
      pos_mask: `[B, T+]` valid-step mask of the preferred segments.
      neg_mask: `[B, T-]` valid-step mask of the dis-preferred segments.
      alpha: max-entropy temperature.
      gamma: discount per position within a segment.
      contrastive_bias: `lambda` in (0, 1], weight of the dis-preferred score.

    Returns:
      `[B]` float32 per-pair losses (`log 2` for a pair of fully masked segments).

    References:
      Hejna et al., "Contrastive Preference Learning: Learning from Human Feedback without RL",
      ICLR 2024, arXiv:2310.13639.

    Example:
      >>> import jax.numpy as jnp
      >>> pos = jnp.array([[-0.5, -0.5]]); neg = jnp.array([[-2.0, -1.0]])
      >>> m = jnp.ones((1, 2))
      >>> l = cpl_loss(pos, neg, m, m, alpha=1.0, contrastive_bias=1.0)
      >>> print(round(float(l[0]), 4))  # -log sigmoid(-1 - (-3))
      0.1269
    """
    fn = "cpl_loss"
    _check_segments(fn, pos_logps, pos_mask, "pos_logps", "pos_mask")
    _check_segments(fn, neg_logps, neg_mask, "neg_logps", "neg_mask")
    _check_batch(fn, {"pos_logps": pos_logps, "neg_logps": neg_logps})
    score_pos = cpl_segment_scores(pos_logps, pos_mask, alpha=alpha, gamma=gamma)
    score_neg = cpl_segment_scores(neg_logps, neg_mask, alpha=alpha, gamma=gamma)
    return cpl_loss_from_scores(score_pos, score_neg, contrastive_bias=contrastive_bias)


def cpl_kl_loss(
    pos_logps: ArrayLike,
    neg_logps: ArrayLike,
    ref_pos_logps: ArrayLike,
    ref_neg_logps: ArrayLike,
    pos_mask: ArrayLike,
    neg_mask: ArrayLike,
    *,
    alpha: float = 0.1,
    gamma: float = 1.0,
    contrastive_bias: float = 0.5,
) -> jax.Array:
    r"""CPL-KL loss: CPL with advantages measured against a reference policy.

        A_t  = alpha * (log pi(a_t | s_t) - log pi_ref(a_t | s_t))
        S+/- = sum_t gamma^t * A_t                         (over valid steps)
        L    = -log sigmoid(S+ - lambda * S-)

    The reference (a frozen behaviour-cloned policy in the original work) enters as given arrays;
    compute them from frozen parameters (or wrap them in `jax.lax.stop_gradient`) so that no
    gradient reaches the reference. With `gamma=1` and `contrastive_bias=1` this is exactly the
    DPO loss with `beta = alpha` on token-summed log-ratios.

    Args:
      pos_logps: `[B, T+]` policy per-step log-probs of the preferred segments.
      neg_logps: `[B, T-]` policy per-step log-probs of the dis-preferred segments.
      ref_pos_logps: `[B, T+]` reference per-step log-probs of the preferred segments.
      ref_neg_logps: `[B, T-]` reference per-step log-probs of the dis-preferred segments.
      pos_mask: `[B, T+]` valid-step mask of the preferred segments.
      neg_mask: `[B, T-]` valid-step mask of the dis-preferred segments.
      alpha: scale of the log-ratio advantages (DPO's `beta`).
      gamma: discount per position within a segment.
      contrastive_bias: `lambda` in (0, 1], weight of the dis-preferred score.

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Hejna et al., ICLR 2024, arXiv:2310.13639 (CPL-KL variant).

    Example:
      >>> import jax.numpy as jnp
      >>> m = jnp.ones((1, 1))
      >>> l = cpl_kl_loss(jnp.array([[-1.0]]), jnp.array([[-3.0]]), jnp.array([[-2.0]]),
      ...                 jnp.array([[-2.0]]), m, m, alpha=0.5, contrastive_bias=1.0)
      >>> print(round(float(l[0]), 4))  # -log sigmoid(0.5 * (1 - (-1)))
      0.3133
    """
    fn = "cpl_kl_loss"
    _check_segments(fn, pos_logps, pos_mask, "pos_logps", "pos_mask")
    _check_segments(fn, neg_logps, neg_mask, "neg_logps", "neg_mask")
    _check_reference(fn, pos_logps, ref_pos_logps, "pos_logps", "ref_pos_logps")
    _check_reference(fn, neg_logps, ref_neg_logps, "neg_logps", "ref_neg_logps")
    _check_batch(fn, {"pos_logps": pos_logps, "neg_logps": neg_logps})
    pos_ratio = f32(pos_logps) - f32(ref_pos_logps)
    neg_ratio = f32(neg_logps) - f32(ref_neg_logps)
    score_pos = cpl_segment_scores(pos_ratio, pos_mask, alpha=alpha, gamma=gamma)
    score_neg = cpl_segment_scores(neg_ratio, neg_mask, alpha=alpha, gamma=gamma)
    return cpl_loss_from_scores(score_pos, score_neg, contrastive_bias=contrastive_bias)


def cpl_rank_loss(
    scores: ArrayLike,
    preference_scores: ArrayLike,
    *,
    contrastive_bias: float = 0.5,
    mask: ArrayLike | None = None,
) -> jax.Array:
    r"""Dense (rank-mode) CPL: biased logistic loss over every ordered pair in the batch.

    Each of the `N` segments carries a CPL score `S_i` (from `cpl_segment_scores` or
    `cpl_kl_loss`-style log-ratio scores) and a ground-truth preference score `p_i` (higher is
    better: an oracle return, a rating, or `-rank` when rank 0 is best). Every pair with
    `p_j > p_i` is one comparison with `j` preferred:

        L = mean_{(i, j): p_j > p_i} -log sigmoid(S_j - lambda * S_i)

    This equals sorting the batch by `p` and averaging the loss over the strict upper triangle of
    the pair matrix. Pairs with tied preference scores carry no preference and are excluded (the
    reference implementation orders ties arbitrarily and keeps them). Masked segments take part in
    no pair. With no valid pair the loss is 0 with zero gradients.

    Args:
      scores: `[N]` CPL segment scores `S_i` (differentiable).
      preference_scores: `[N]` ground-truth preference scores or ranks, higher is preferred.
      contrastive_bias: `lambda` in (0, 1], weight of the less preferred score in each pair.
      mask: optional `[N]` 1 for real segments, 0 for padding.

    Returns:
      Scalar float32: the mean loss over valid ordered pairs.

    References:
      Hejna et al., ICLR 2024, arXiv:2310.13639 (dense comparisons, MetaWorld "dense" data).

    Example:
      >>> import jax.numpy as jnp
      >>> l = cpl_rank_loss(jnp.array([0.0, 0.0, 0.0]), jnp.array([1.0, 2.0, 3.0]),
      ...                   contrastive_bias=1.0)
      >>> print(round(float(l), 4))  # every pair has logit 0
      0.6931
    """
    fn = "cpl_rank_loss"
    check_rank(scores, "scores", 1, fn=fn)
    check_floating({"scores": scores}, fn=fn)
    check_same_shape(
        {"scores": scores, "preference_scores": preference_scores, "mask": mask}, "scores", fn=fn
    )
    n = jnp.shape(scores)[0]
    if mask is None:
        keep = jnp.ones((n,), bool)
    else:
        keep, _ = _weights(mask)
    s = jnp.where(keep, f32(scores), 0.0)
    p = jnp.where(keep, f32(preference_scores), 0.0)
    # Entry [i, j] compares segment j (preferred) against segment i.
    pairs = (p[None, :] > p[:, None]) & keep[:, None] & keep[None, :]
    logits = s[None, :] - contrastive_bias * s[:, None]
    losses = jnp.where(pairs, -jax.nn.log_sigmoid(jnp.where(pairs, logits, 0.0)), 0.0)
    count = jnp.sum(pairs)
    return jnp.sum(losses) / jnp.maximum(count, 1).astype(jnp.float32)


def cpl_bc_regularizer(logps: ArrayLike, mask: ArrayLike) -> jax.Array:
    r"""Behaviour-cloning regulariser: mean negative log-likelihood over valid steps.

        BC = sum_{b,t} m_{bt} * (-log pi(a_t | s_t)) / sum_{b,t} m_{bt}

    This is the per-step average over the whole batch (not a mean of per-row means), matching
    the reference implementation's `(-logp).mean()` on full segments. Added as
    `bc_coeff * BC` to the CPL loss it gives CPL-BC (the paper uses `lambda=1`, `bc_coeff=1`).

    Args:
      logps: `[B, T]` per-step log-probs of the dataset actions.
      mask: `[B, T]` valid-step mask.

    Returns:
      Scalar float32 mean NLL; 0 (with zero gradients) when every step is masked.

    References:
      Hejna et al., ICLR 2024, arXiv:2310.13639 (CPL-BC).

    Example:
      >>> import jax.numpy as jnp
      >>> bc = cpl_bc_regularizer(jnp.array([[-1.0, -3.0, 9.0]]), jnp.array([[1, 1, 0]]))
      >>> print(round(float(bc), 4))
      2.0
    """
    fn = "cpl_bc_regularizer"
    _check_segments(fn, logps, mask, "logps", "mask")
    total, count = _nll_sum_count(logps, mask)
    return total / jnp.maximum(count, 1.0)


def _nll_sum_count(logps, mask) -> tuple[jax.Array, jax.Array]:
    keep, weight = _weights(mask)
    nll = -jnp.where(keep, f32(logps), 0.0) * weight
    return jnp.sum(nll), jnp.sum(weight)


class CplAux(NamedTuple):
    """Named metrics returned by `cpl_objective` (all float32 scalars).

    Attributes:
      loss: total objective `cpl + bc_coeff * bc`.
      cpl: batch mean of the per-pair CPL (or CPL-KL) loss.
      bc: behaviour-cloning NLL per valid step (computed even when `bc_coeff=0`).
      accuracy: fraction of pairs with `S+ > S-` (unbiased scores, no `lambda`).
      score_pos: batch mean of the preferred segments' scores `S+`.
      score_neg: batch mean of the dis-preferred segments' scores `S-`.

    Example:
      >>> import jax.numpy as jnp
      >>> m = jnp.ones((2, 1))
      >>> _, aux = cpl_objective(jnp.array([[-1.0], [-3.0]]), jnp.array([[-2.0], [-2.0]]), m, m)
      >>> print(round(float(aux.accuracy), 4))
      0.5
    """

    loss: jax.Array
    cpl: jax.Array
    bc: jax.Array
    accuracy: jax.Array
    score_pos: jax.Array
    score_neg: jax.Array


def cpl_objective(
    pos_logps: ArrayLike,
    neg_logps: ArrayLike,
    pos_mask: ArrayLike,
    neg_mask: ArrayLike,
    *,
    ref_pos_logps: ArrayLike | None = None,
    ref_neg_logps: ArrayLike | None = None,
    alpha: float = 0.1,
    gamma: float = 1.0,
    contrastive_bias: float = 0.5,
    bc_coeff: float = 0.0,
    bc_positive_only: bool = False,
) -> tuple[jax.Array, CplAux]:
    r"""Composite CPL objective with optional reference (CPL-KL) and BC regularisation.

        loss = mean_B L_CPL(S+, S-; lambda) + bc_coeff * BC

    `L_CPL` is `cpl_loss`, or `cpl_kl_loss` when both reference arrays are given. `BC` is
    `cpl_bc_regularizer` over the valid steps of both segments (or of the preferred segments only
    with `bc_positive_only=True`).

    Args:
      pos_logps: `[B, T+]` policy per-step log-probs of the preferred segments.
      neg_logps: `[B, T-]` policy per-step log-probs of the dis-preferred segments.
      pos_mask: `[B, T+]` valid-step mask of the preferred segments.
      neg_mask: `[B, T-]` valid-step mask of the dis-preferred segments.
      ref_pos_logps: optional `[B, T+]` reference log-probs of the preferred segments.
      ref_neg_logps: optional `[B, T-]` reference log-probs of the dis-preferred segments.
      alpha: max-entropy temperature (advantage scale).
      gamma: discount per position within a segment.
      contrastive_bias: `lambda` in (0, 1].
      bc_coeff: weight of the behaviour-cloning term.
      bc_positive_only: clone only the preferred segments.

    Returns:
      `(loss, CplAux)`: the scalar objective and its named metrics.

    References:
      Hejna et al., ICLR 2024, arXiv:2310.13639.

    Example:
      >>> import jax.numpy as jnp
      >>> m = jnp.ones((1, 2))
      >>> loss, aux = cpl_objective(jnp.array([[-0.5, -0.5]]), jnp.array([[-2.0, -1.0]]), m, m,
      ...                           alpha=1.0, contrastive_bias=1.0, bc_coeff=1.0)
      >>> print(round(float(aux.cpl), 4), round(float(aux.bc), 4), round(float(loss), 4))
      0.1269 1.0 1.1269
    """
    fn = "cpl_objective"
    if (ref_pos_logps is None) != (ref_neg_logps is None):
        raise ValueError(f"{fn}: pass both `ref_pos_logps` and `ref_neg_logps`, or neither.")
    _check_segments(fn, pos_logps, pos_mask, "pos_logps", "pos_mask")
    _check_segments(fn, neg_logps, neg_mask, "neg_logps", "neg_mask")
    _check_batch(fn, {"pos_logps": pos_logps, "neg_logps": neg_logps})
    if ref_pos_logps is None:
        pos_adv, neg_adv = f32(pos_logps), f32(neg_logps)
    else:
        _check_reference(fn, pos_logps, ref_pos_logps, "pos_logps", "ref_pos_logps")
        _check_reference(fn, neg_logps, ref_neg_logps, "neg_logps", "ref_neg_logps")
        pos_adv = f32(pos_logps) - f32(ref_pos_logps)
        neg_adv = f32(neg_logps) - f32(ref_neg_logps)
    score_pos = cpl_segment_scores(pos_adv, pos_mask, alpha=alpha, gamma=gamma)
    score_neg = cpl_segment_scores(neg_adv, neg_mask, alpha=alpha, gamma=gamma)
    cpl = jnp.mean(cpl_loss_from_scores(score_pos, score_neg, contrastive_bias=contrastive_bias))

    total, count = _nll_sum_count(pos_logps, pos_mask)
    if not bc_positive_only:
        neg_total, neg_count = _nll_sum_count(neg_logps, neg_mask)
        total, count = total + neg_total, count + neg_count
    bc = total / jnp.maximum(count, 1.0)

    loss = cpl + bc_coeff * bc
    accuracy = jnp.mean((score_pos > score_neg).astype(jnp.float32))
    aux = CplAux(
        loss=loss,
        cpl=cpl,
        bc=bc,
        accuracy=accuracy,
        score_pos=jnp.mean(score_pos),
        score_neg=jnp.mean(score_neg),
    )
    return loss, aux
