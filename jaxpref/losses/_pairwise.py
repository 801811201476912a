"""Reference-based pair losses of the DPO family (the `loss_type`s of TRL's `DPOTrainer`).

Every loss takes `[B]` sequence sums of completion-token log-probs under the policy and the
reference model and returns `[B]` unreduced per-pair losses in float32. Notation used throughout:
log-ratios `r_w = chosen_logps - ref_chosen_logps`, `r_l = rejected_logps - ref_rejected_logps`,
margin `h = r_w - r_l`, logistic sigmoid `σ`.

Hyperparameters keep TRL's names (`beta`, `label_smoothing`, `discopop_tau`). Their ranges are
checked when they are Python numbers; traced values (for example a `beta` being differentiated)
pass through unchecked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpref._checks import (
    check_floating,
    check_interval,
    check_positive,
    check_rank,
    check_same_shape,
    f32,
)

__all__ = [
    "aot_loss",
    "aot_unpaired_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "cdpo_loss",
    "discopop_loss",
    "dpo_loss",
    "exo_pair_loss",
    "hinge_loss",
    "ipo_loss",
    "nca_pair_loss",
    "robust_dpo_loss",
    "sft_loss",
    "sigmoid_norm_loss",
    "sppo_hard_loss",
]


# --------------------------------------------------------------------------------------------
# Argument handling.


def _inputs(fn: str, logps: dict, lengths: dict | None = None) -> list:
    """Checks `[B]` ranks and shapes, then upcasts everything to float32 (lengths included)."""
    lengths = lengths or {}
    first = next(iter(logps))
    check_rank(logps[first], first, 1, fn=fn)
    check_same_shape({**logps, **lengths}, first, fn=fn)
    check_floating(logps, fn=fn)
    return [f32(v) for v in logps.values()] + [f32(v) for v in lengths.values()]


def _pair_inputs(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """The four `[B]` log-prob arrays of a reference-based pair loss, checked, in float32."""
    return _inputs(
        fn,
        {
            "chosen_logps": chosen_logps,
            "rejected_logps": rejected_logps,
            "ref_chosen_logps": ref_chosen_logps,
            "ref_rejected_logps": ref_rejected_logps,
        },
    )


def _require_lengths(fn: str, chosen_lengths, rejected_lengths, *, rejected: bool = True) -> None:
    missing = [
        name
        for name, value in (
            ("chosen_lengths", chosen_lengths),
            ("rejected_lengths", rejected_lengths),
        )
        if value is None and (rejected or name == "chosen_lengths")
    ]
    if missing:
        raise ValueError(
            f"{fn}: this loss normalises by completion length and needs "
            f"{' and '.join(f'`{m}`' for m in missing)} ([B] completion-token counts)."
        )


def _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """`(r_w, r_l)`: the chosen and rejected log-ratios `log π - log π_ref`, `[B]` float32."""
    c, r, rc, rr = _pair_inputs(
        fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return c - rc, r - rr


def _length_normalised_log_ratios(fn, logps: tuple, lengths: tuple):
    """`(r_w / max(|y_w|, 1), r_l / max(|y_l|, 1))`: per-token-averaged log-ratios.

    `logps` holds the chosen, rejected, reference-chosen and reference-rejected `[B]` log-probs,
    `lengths` the chosen and rejected `[B]` completion-token counts.
    """
    n_w, n_l = lengths
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps = logps
    _require_lengths(fn, n_w, n_l)
    c, r, rc, rr, n_w, n_l = _inputs(
        fn,
        {
            "chosen_logps": chosen_logps,
            "rejected_logps": rejected_logps,
            "ref_chosen_logps": ref_chosen_logps,
            "ref_rejected_logps": ref_rejected_logps,
        },
        {"chosen_lengths": n_w, "rejected_lengths": n_l},
    )
    return (c - rc) / jnp.maximum(n_w, 1.0), (r - rr) / jnp.maximum(n_l, 1.0)


def _smoothed_logistic(z, label_smoothing):
    """Cross-entropy of `σ(z)` against the soft label `1 - ε`: `-(1-ε) log σ(z) - ε log σ(-z)`."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(
        -z
    )


# --------------------------------------------------------------------------------------------
# Margin-based losses: functions of the margin h = r_w - r_l.


def dpo_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """Direct Preference Optimization loss (TRL `loss_type="sigmoid"`).

    `L = -log σ(β h)`, with `h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))`.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward `β log π/π_ref` (> 0).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", arXiv:2305.18290.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import dpo_loss
      >>> loss = dpo_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                 jnp.array([-6.0]), beta=0.5)
      >>> print(round(float(loss[0]), 4))
      0.3133
    """
    fn = "dpo_loss"
    check_positive(beta, "beta", fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -jax.nn.log_sigmoid(beta * (r_w - r_l))


def cdpo_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Conservative DPO: DPO with label smoothing (cDPO).

    `L = -(1 - ε) log σ(β h) - ε log σ(-β h)`, the cross-entropy of the Bradley-Terry model
    against a label that is flipped with probability `ε = label_smoothing`. `ε = 0` is DPO.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward (> 0).
      label_smoothing: label-flip probability `ε` in [0, 1].

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Mitchell, "A note on DPO with noisy preferences and relationship to IPO" (2023),
      https://ericmitchell.ai/cdpo.pdf; Rafailov et al., arXiv:2305.18290.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import cdpo_loss
      >>> loss = cdpo_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                  jnp.array([-6.0]), beta=0.5, label_smoothing=0.1)
      >>> print(round(float(loss[0]), 4))
      0.4133
    """
    fn = "cdpo_loss"
    check_positive(beta, "beta", fn=fn)
    check_interval(label_smoothing, "label_smoothing", 0.0, 1.0, fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _smoothed_logistic(beta * (r_w - r_l), label_smoothing)


def robust_dpo_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Robust DPO loss (rDPO, TRL `loss_type="robust"`).

    `L = [-(1 - ε) log σ(β h) + ε log σ(-β h)] / (1 - 2ε)`: an unbiased estimate of the DPO
    loss on clean labels when each label is flipped with probability `ε = label_smoothing`.
    `ε = 0` is DPO.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward (> 0).
      label_smoothing: label-flip probability `ε` in [0, 0.5).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Chowdhury et al., "Provably Robust DPO: Aligning Language Models with Noisy Feedback",
      arXiv:2403.00409.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import robust_dpo_loss
      >>> loss = robust_dpo_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                        jnp.array([-6.0]), beta=0.5, label_smoothing=0.1)
      >>> print(round(float(loss[0]), 4))
      0.1883
    """
    fn = "robust_dpo_loss"
    check_positive(beta, "beta", fn=fn)
    check_interval(label_smoothing, "label_smoothing", 0.0, 0.5, closed_high=False, fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (r_w - r_l)
    clean = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z)
    flipped = -label_smoothing * jax.nn.log_sigmoid(-z)
    return (clean - flipped) / (1.0 - 2.0 * label_smoothing)


def hinge_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """Hinge loss on the DPO margin (SLiC / RSO, TRL `loss_type="hinge"`).

    `L = max(0, 1 - β h)`: the margin `h` is pushed above `1/β`.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse of the target margin (> 0).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
      arXiv:2305.10425; Liu et al., "Statistical Rejection Sampling Improves Preference
      Optimization", arXiv:2309.06657.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import hinge_loss
      >>> loss = hinge_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                   jnp.array([-6.0]), beta=0.2)
      >>> print(round(float(loss[0]), 4))
      0.6
    """
    fn = "hinge_loss"
    check_positive(beta, "beta", fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return jax.nn.relu(1.0 - beta * (r_w - r_l))


def ipo_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
    chosen_lengths=None,
    rejected_lengths=None,
) -> jax.Array:
    """Identity Preference Optimization loss on per-token-averaged log-ratios (TRL `"ipo"`).

    `L = (r_w / max(|y_w|, 1) - r_l / max(|y_l|, 1) - 1 / (2β))²`, with `β` the IPO
    regulariser `τ`. As in TRL, the log-ratios are averaged over completion tokens so that the
    fixed target `1/(2β)` does not depend on the completion length.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: regularisation strength `τ` (> 0); the target margin is `1/(2β)`.
      chosen_lengths: `[B]` number of completion tokens of each chosen completion (required).
      rejected_lengths: `[B]` number of completion tokens of each rejected completion (required).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
      Preferences", arXiv:2310.12036 (Eq. 17).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import ipo_loss
      >>> loss = ipo_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                 jnp.array([-6.0]), beta=0.5, chosen_lengths=jnp.array([2]),
      ...                 rejected_lengths=jnp.array([4]))
      >>> print(round(float(loss[0]), 4))
      0.0625
    """
    fn = "ipo_loss"
    check_positive(beta, "beta", fn=fn)
    logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    lengths = (chosen_lengths, rejected_lengths)
    r_w, r_l = _length_normalised_log_ratios(fn, logps, lengths)
    h = r_w - r_l
    return (h - 1.0 / (2.0 * beta)) ** 2


def exo_pair_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
) -> jax.Array:
    """Efficient Exact Optimization loss for pairs (EXO, TRL `loss_type="exo_pair"`).

    `L = KL(q ‖ p_ε) = q_w (log q_w - log(1 - ε)) + q_l (log q_l - log ε)` with
    `q_w = σ(β h)`, `q_l = σ(-β h)`: the reverse KL from the model's distribution over the pair
    to the label distribution smoothed by `ε = label_smoothing`. TRL's config default of 0
    is rejected for this loss; the default here is the paper's recommended `1e-3`.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward (> 0).
      label_smoothing: label smoothing `ε` in (0, 1).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Ji et al., "Towards Efficient Exact Optimization of Language Model Alignment",
      arXiv:2402.00856 (Eq. 16).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import exo_pair_loss
      >>> loss = exo_pair_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                      jnp.array([-6.0]), beta=0.5, label_smoothing=0.1)
      >>> print(round(float(loss[0]), 4))
      0.1141
    """
    fn = "exo_pair_loss"
    check_positive(beta, "beta", fn=fn)
    check_interval(
        label_smoothing, "label_smoothing", 0.0, 1.0, closed_low=False, closed_high=False, fn=fn
    )
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (r_w - r_l)
    log_q_w = jax.nn.log_sigmoid(z)
    log_q_l = jax.nn.log_sigmoid(-z)
    eps = jnp.asarray(label_smoothing, jnp.float32)
    return jnp.exp(log_q_w) * (log_q_w - jnp.log1p(-eps)) + jnp.exp(log_q_l) * (
        log_q_l - jnp.log(eps)
    )


def discopop_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
    discopop_tau: float = 0.05,
) -> jax.Array:
    """DiscoPOP log-ratio modulated loss (TRL `loss_type="discopop"`).

    With `z = β h` and `m = σ(z / τ)`: `L = (1 - m) (-log σ(z)) + m exp(-z)`, a blend of the
    logistic and the exponential loss switched by the sign of the margin. The exponential term is
    evaluated as `exp(log σ(z/τ) - z)`, which stays finite for very negative margins.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward (> 0).
      discopop_tau: temperature `τ` of the modulation (> 0); the paper uses 0.05.

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Chris Lu et al., "Discovering Preference Optimization Algorithms with and for Large
      Language Models", arXiv:2406.08414 (Eq. 5).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import discopop_loss
      >>> loss = discopop_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                      jnp.array([-6.0]), beta=0.05, discopop_tau=0.1)
      >>> print(round(float(loss[0]), 4))
      0.8348
    """
    fn = "discopop_loss"
    check_positive(beta, "beta", fn=fn)
    check_positive(discopop_tau, "discopop_tau", fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (r_w - r_l)
    logistic = -jax.nn.log_sigmoid(z)
    one_minus_m = jax.nn.sigmoid(-z / discopop_tau)
    exponential = jnp.exp(jax.nn.log_sigmoid(z / discopop_tau) - z)
    return one_minus_m * logistic + exponential


def sigmoid_norm_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
    chosen_lengths=None,
    rejected_lengths=None,
) -> jax.Array:
    """Length-normalised DPO loss (TRL `loss_type="sigmoid_norm"`).

    `L = -log σ(β (r_w / max(|y_w|, 1) - r_l / max(|y_l|, 1)))`: DPO on per-token-averaged
    log-ratios (SimPO-style normalisation that keeps the reference model).

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the per-token implicit reward (> 0).
      chosen_lengths: `[B]` number of completion tokens of each chosen completion (required).
      rejected_lengths: `[B]` number of completion tokens of each rejected completion (required).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free Reward",
      arXiv:2405.14734 (length normalisation); Rafailov et al., arXiv:2305.18290.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import sigmoid_norm_loss
      >>> loss = sigmoid_norm_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                          jnp.array([-6.0]), beta=1.0, chosen_lengths=jnp.array([2]),
      ...                          rejected_lengths=jnp.array([4]))
      >>> print(round(float(loss[0]), 4))
      0.3869
    """
    fn = "sigmoid_norm_loss"
    check_positive(beta, "beta", fn=fn)
    logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    lengths = (chosen_lengths, rejected_lengths)
    r_w, r_l = _length_normalised_log_ratios(fn, logps, lengths)
    h = r_w - r_l
    return -jax.nn.log_sigmoid(beta * h)


# --------------------------------------------------------------------------------------------
# Losses on the individual log-ratios r_w, r_l.


def nca_pair_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """Noise Contrastive Alignment loss for pairs (NCA, TRL `loss_type="nca_pair"`).

    `L = -log σ(β r_w) - ½ log σ(-β r_w) - ½ log σ(-β r_l)`: calibrates the absolute
    implicit rewards instead of only their difference, so the chosen likelihood is not driven
    down.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward (> 0).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards",
      arXiv:2402.05369.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import nca_pair_loss
      >>> loss = nca_pair_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                      jnp.array([-6.0]), beta=1.0)
      >>> print(round(float(loss[0]), 4))
      1.1265
    """
    fn = "nca_pair_loss"
    check_positive(beta, "beta", fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (
        -jax.nn.log_sigmoid(beta * r_w)
        - 0.5 * jax.nn.log_sigmoid(-beta * r_w)
        - 0.5 * jax.nn.log_sigmoid(-beta * r_l)
    )


def bco_pair_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """Binary Classifier Optimization loss for pairs (BCO, TRL `loss_type="bco_pair"`).

    `L = -log σ(β r_w) - log σ(-β r_l)`: a logistic classifier on the implicit reward with the
    chosen completion as positive and the rejected as negative (reward shift `δ = 0`, as in
    TRL 1.x).

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward (> 0).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Jung et al., "Binary Classifier Optimization for Large Language Model Alignment",
      arXiv:2404.04656.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import bco_pair_loss
      >>> loss = bco_pair_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                      jnp.array([-6.0]), beta=1.0)
      >>> print(round(float(loss[0]), 4))
      0.6265
    """
    fn = "bco_pair_loss"
    check_positive(beta, "beta", fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -jax.nn.log_sigmoid(beta * r_w) - jax.nn.log_sigmoid(-beta * r_l)


def sppo_hard_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """Self-Play Preference Optimization loss with hard win probabilities (TRL `"sppo_hard"`).

    `L = (r_w - 1/(2β))² + (r_l + 1/(2β))²`: SPPO's squared loss with the win probability set
    to 1 for the chosen and 0 for the rejected completion, so each log-ratio regresses to
    `±1/(2β)`.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature (> 0); targets are `±1/(2β)`.

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Wu et al., "Self-Play Preference Optimization for Language Model Alignment",
      arXiv:2405.00675.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import sppo_hard_loss
      >>> loss = sppo_hard_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                       jnp.array([-6.0]), beta=0.25)
      >>> print(round(float(loss[0]), 4))
      2.0
    """
    fn = "sppo_hard_loss"
    check_positive(beta, "beta", fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2


def apo_zero_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """Anchored Preference Optimization, zero anchor (APO-zero, TRL `loss_type="apo_zero"`).

    `L = (1 - σ(β r_w)) + σ(β r_l)`: raises the chosen and lowers the rejected likelihood;
    suited to chosen completions better than the model's own outputs.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward (> 0).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions",
      arXiv:2408.06266 (Eq. 7).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import apo_zero_loss
      >>> loss = apo_zero_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                      jnp.array([-6.0]), beta=1.0)
      >>> print(round(float(loss[0]), 4))
      0.5379
    """
    fn = "apo_zero_loss"
    check_positive(beta, "beta", fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (1.0 - jax.nn.sigmoid(beta * r_w)) + jax.nn.sigmoid(beta * r_l)


def apo_down_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """Anchored Preference Optimization, down anchor (APO-down, TRL `loss_type="apo_down"`).

    `L = σ(β r_w) + (1 - σ(β h))`: lowers both likelihoods, the rejected one more; suited to
    chosen completions worse than the model's own outputs.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature of the implicit reward (> 0).

    Returns:
      `[B]` float32 per-pair losses.

    References:
      D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions",
      arXiv:2408.06266 (Eq. 8).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import apo_down_loss
      >>> loss = apo_down_loss(jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...                      jnp.array([-6.0]), beta=1.0)
      >>> print(round(float(loss[0]), 4))
      0.8503
    """
    fn = "apo_down_loss"
    check_positive(beta, "beta", fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return jax.nn.sigmoid(beta * r_w) + (1.0 - jax.nn.sigmoid(beta * (r_w - r_l)))


# --------------------------------------------------------------------------------------------
# Batch-coupled losses: sorting across the batch (AOT) and the batch token-mean NLL (SFT).


def aot_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Alignment via Optimal Transport, paired form (AOT, TRL `loss_type="aot"`).

    With `d = sort_B(log π(y_w) - log π(y_l)) - sort_B(log π_ref(y_w) - log π_ref(y_l))`
    (each sorted ascending across the batch), `L_i = -(1 - ε) log σ(β d_i) - ε log σ(-β d_i)`.
    Matching quantiles makes the policy's log-ratio distribution first-order stochastically
    dominate the reference's. Losses are indexed by quantile, not by input pair; with `B = 1`
    this is cDPO.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature (> 0).
      label_smoothing: soft-label smoothing `ε` in [0, 1].

    Returns:
      `[B]` float32 losses, one per batch quantile (ascending order).

    References:
      Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport",
      arXiv:2406.05882.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import aot_loss
      >>> loss = aot_loss(jnp.array([-5.0, -1.0]), jnp.array([-7.0, -2.0]),
      ...                 jnp.array([-6.0, -3.0]), jnp.array([-6.0, -3.0]), beta=1.0)
      >>> print(round(float(loss.mean()), 4))
      0.2201
    """
    fn = "aot_loss"
    check_positive(beta, "beta", fn=fn)
    check_interval(label_smoothing, "label_smoothing", 0.0, 1.0, fn=fn)
    c, r, rc, rr = _pair_inputs(
        fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    d = jnp.sort(c - r) - jnp.sort(rc - rr)
    return _smoothed_logistic(beta * d, label_smoothing)


def aot_unpaired_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Alignment via Optimal Transport, unpaired form (TRL `loss_type="aot_unpaired"`).

    With `d = sort_B(r_w) - sort_B(r_l)` (chosen and rejected log-ratios sorted ascending
    separately), `L_i = -(1 - ε) log σ(β d_i) - ε log σ(-β d_i)`: the chosen log-ratio
    distribution is pushed to dominate the rejected one quantile by quantile. With `B = 1` this
    is cDPO.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed log-probs of the chosen completions under the reference.
      ref_rejected_logps: `[B]` summed log-probs of the rejected completions under the reference.
      beta: inverse temperature (> 0).
      label_smoothing: soft-label smoothing `ε` in [0, 1].

    Returns:
      `[B]` float32 losses, one per batch quantile (ascending order).

    References:
      Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport",
      arXiv:2406.05882.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import aot_unpaired_loss
      >>> loss = aot_unpaired_loss(jnp.array([-5.0, -1.0]), jnp.array([-7.0, -1.5]),
      ...                          jnp.array([-6.0, -3.0]), jnp.array([-6.0, -3.0]), beta=1.0)
      >>> print(round(float(loss.mean()), 4))
      0.3005
    """
    fn = "aot_unpaired_loss"
    check_positive(beta, "beta", fn=fn)
    check_interval(label_smoothing, "label_smoothing", 0.0, 1.0, fn=fn)
    r_w, r_l = _log_ratios(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    d = jnp.sort(r_w) - jnp.sort(r_l)
    return _smoothed_logistic(beta * d, label_smoothing)


def sft_loss(
    chosen_logps,
    rejected_logps,
    *,
    chosen_lengths=None,
) -> jax.Array:
    """Negative log-likelihood of the chosen completions, batch token mean (TRL `"sft"`).

    `L_i = -Σ_j log π(y_w^j) / Σ_j |y_w^j|` for every `i`: TRL's SFT term averages the NLL
    over all chosen completion tokens of the batch (not per sequence) and broadcasts that
    scalar to `[B]`, so `mean(L)` is the token-mean NLL. Rejected completions and the reference
    model are not used (`rejected_logps` only fixes the batch shape). A batch without chosen
    tokens gives 0.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions (shape only).
      chosen_lengths: `[B]` number of completion tokens of each chosen completion (required).

    Returns:
      `[B]` float32 values, all equal to the batch token-mean NLL of the chosen completions.

    References:
      Pang et al., "Iterative Reasoning Preference Optimization", arXiv:2404.19733 (DPO + NLL);
      Wang et al., "Enhancing the Reasoning Ability of Multimodal Large Language Models via
      Mixed Preference Optimization", arXiv:2411.10442 (MPO).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import sft_loss
      >>> loss = sft_loss(jnp.array([-6.0, -2.0]), jnp.array([-7.0, -3.0]),
      ...                 chosen_lengths=jnp.array([3, 1]))
      >>> print([round(float(v), 4) for v in loss])
      [2.0, 2.0]
    """
    fn = "sft_loss"
    _require_lengths(fn, chosen_lengths, None, rejected=False)
    c, _, n_w = _inputs(
        fn,
        {"chosen_logps": chosen_logps, "rejected_logps": rejected_logps},
        {"chosen_lengths": chosen_lengths},
    )
    total = jnp.sum(n_w)
    has_tokens = total > 0
    nll = jnp.where(has_tokens, -jnp.sum(c) / jnp.where(has_tokens, total, 1.0), 0.0)
    return jnp.broadcast_to(nll, c.shape)
