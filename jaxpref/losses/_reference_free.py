"""Reference-free preference losses: SimPO, CPO, AlphaPO and ORPO.

These objectives need no frozen reference model: the implicit reward is built from the policy's
own (usually length-normalised) log-probabilities. Inputs are per-pair sequence sums of
completion log-probs, `[B]`, and where the loss normalises by length, the number of completion
tokens, `[B]`. Every function returns the unreduced per-pair loss `[B]` in float32; a pair whose
chosen or rejected completion is empty (length 0) gives 0 with zero gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = [
    "alphapo_loss",
    "alphapo_reward",
    "cpo_loss",
    "orpo_log_odds_ratio",
    "orpo_loss",
    "orpo_sft_loss",
    "simpo_loss",
]


def _check_pair(fn: str, arrays: dict, floating: tuple[str, ...]) -> None:
    first = next(iter(arrays))
    check_rank(arrays[first], first, 1, fn=fn)
    check_same_shape(arrays, first, fn=fn)
    check_floating({k: arrays[k] for k in floating}, fn=fn)


def _smoothed_logistic(z: jax.Array, label_smoothing: float) -> jax.Array:
    """`-(1-eps) log sigma(z) - eps log sigma(-z)`."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(
        -z
    )


def _safe_mean_logps(logps, lengths):
    """Mean per-token log-prob; empty completions get a placeholder of -1 and `valid=False`."""
    lengths = f32(lengths)
    valid = lengths > 0
    safe_len = jnp.where(valid, lengths, 1.0)
    mean = jnp.where(valid, logps / safe_len, -1.0)
    return mean, valid


def _pair_mean_logps(fn, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths):
    """Checked per-token mean log-probs of both completions and whether both are non-empty."""
    _check_pair(
        fn,
        {
            "chosen_logps": chosen_logps,
            "rejected_logps": rejected_logps,
            "chosen_lengths": chosen_lengths,
            "rejected_lengths": rejected_lengths,
        },
        floating=("chosen_logps", "rejected_logps"),
    )
    mean_w, valid_w = _safe_mean_logps(f32(chosen_logps), chosen_lengths)
    mean_l, valid_l = _safe_mean_logps(f32(rejected_logps), rejected_lengths)
    return mean_w, mean_l, valid_w & valid_l


def alphapo_reward(logps: jax.Array, *, alpha: float) -> jax.Array:
    r"""AlphaPO reward shape `(1 - p^{-alpha}) / alpha` of a log-probability.

    .. math:: r_\alpha(\ell) = \frac{1 - e^{-\alpha \ell}}{\alpha}, \qquad
       r_0(\ell) = \ell .

    Computed as `-expm1(-alpha * logps) / alpha`; `alpha = 0` returns `logps` exactly, and the
    map is continuous in `alpha` there. `alpha > 0` flattens the reward of unlikely
    sequences, `alpha < 0` sharpens it.

    Args:
      logps: `[...]` log-probabilities (summed or length-normalised).
      alpha: reward-shape exponent (TRL `alpha`); a Python float or a scalar array.

    Returns:
      `[...]` float32 shaped rewards.

    References:
      Gupta et al., "AlphaPO: Reward Shape Matters for LLM Alignment", arXiv 2501.03884.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(alphapo_reward(jnp.array(-2.0), alpha=0.5)), 4))
      -3.4366
    """
    check_floating({"logps": logps}, fn="alphapo_reward")
    logps = f32(logps)
    alpha = jnp.asarray(alpha, jnp.float32)
    is_zero = alpha == 0.0
    safe_alpha = jnp.where(is_zero, 1.0, alpha)
    shaped = -jnp.expm1(-safe_alpha * logps) / safe_alpha
    return jnp.where(is_zero, logps, shaped)


def _shaped_simpo(
    fn,
    chosen_logps,
    rejected_logps,
    chosen_lengths,
    rejected_lengths,
    *,
    alpha,
    beta,
    simpo_gamma,
    label_smoothing,
):
    mean_w, mean_l, valid = _pair_mean_logps(
        fn, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths
    )
    logits = alphapo_reward(mean_w, alpha=alpha) - alphapo_reward(mean_l, alpha=alpha)
    logits = logits - simpo_gamma / beta
    losses = _smoothed_logistic(beta * logits, label_smoothing)
    return jnp.where(valid, losses, 0.0)


def simpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    beta: float = 2.0,
    simpo_gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""SimPO: reference-free logistic loss on length-normalised log-probs with a target margin.

    .. math:: \mathcal L = -\log\sigma\Big(\frac{\beta}{|y_w|}\log\pi(y_w|x)
       - \frac{\beta}{|y_l|}\log\pi(y_l|x) - \gamma\Big)

    With `label_smoothing = eps` the conservative form
    `-(1-eps) log sigma(z) - eps log sigma(-z)` is used. This is TRL `CPOTrainer` with
    `loss_type="simpo"` (which averages log-probs over completion tokens before the loss); the
    NLL term is not part of SimPO (use `cpo_loss` for that).

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions.
      chosen_lengths: `[B]` number of completion tokens of each chosen completion.
      rejected_lengths: `[B]` number of completion tokens of each rejected completion.
      beta: reward scale β (the SimPO paper uses 2.0-2.5; TRL's CPO default is 0.1).
      simpo_gamma: target reward margin γ, in reward units (TRL `simpo_gamma`).
      label_smoothing: probability ε that a label is flipped.

    Returns:
      `[B]` float32 per-pair losses (0 for pairs with an empty completion).

    References:
      Meng, Xia, Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
      arXiv 2405.14734.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = simpo_loss(jnp.array([-4.0]), jnp.array([-9.0]), chosen_lengths=jnp.array([2]),
      ...                   rejected_lengths=jnp.array([3]), beta=2.0, simpo_gamma=0.5)
      >>> print(round(float(loss[0]), 4))
      0.2014
    """
    return _shaped_simpo(
        "simpo_loss",
        chosen_logps,
        rejected_logps,
        chosen_lengths,
        rejected_lengths,
        alpha=0.0,
        beta=beta,
        simpo_gamma=simpo_gamma,
        label_smoothing=label_smoothing,
    )


def alphapo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    alpha: float,
    beta: float = 2.0,
    simpo_gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""AlphaPO: SimPO with the AlphaPO reward shape applied to the length-normalised log-probs.

    .. math:: \mathcal L = -\log\sigma\big(\beta[r_\alpha(\bar\ell_w) - r_\alpha(\bar\ell_l)]
       - \gamma\big), \quad \bar\ell = \log\pi(y|x)/|y|,\;
       r_\alpha(\ell) = \frac{1 - e^{-\alpha\ell}}{\alpha}

    `alpha = 0` is exactly `simpo_loss`. Matches TRL `CPOConfig(loss_type="alphapo")`, which is
    `loss_type="simpo"`, `cpo_alpha=0` with the reward shape `alpha`.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions.
      chosen_lengths: `[B]` number of completion tokens of each chosen completion.
      rejected_lengths: `[B]` number of completion tokens of each rejected completion.
      alpha: reward-shape exponent α (TRL `alpha`).
      beta: reward scale β.
      simpo_gamma: target reward margin γ, in reward units.
      label_smoothing: probability ε that a label is flipped.

    Returns:
      `[B]` float32 per-pair losses (0 for pairs with an empty completion).

    References:
      Gupta et al., "AlphaPO: Reward Shape Matters for LLM Alignment", arXiv 2501.03884.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = alphapo_loss(jnp.array([-4.0]), jnp.array([-9.0]), chosen_lengths=jnp.array([2]),
      ...                     rejected_lengths=jnp.array([3]), alpha=0.25, beta=2.0)
      >>> print(round(float(loss[0]), 4))
      0.0382
    """
    return _shaped_simpo(
        "alphapo_loss",
        chosen_logps,
        rejected_logps,
        chosen_lengths,
        rejected_lengths,
        alpha=alpha,
        beta=beta,
        simpo_gamma=simpo_gamma,
        label_smoothing=label_smoothing,
    )


def cpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_nll: jax.Array | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    cpo_alpha: float = 1.0,
    alpha: float = 0.0,
    chosen_lengths: jax.Array | None = None,
) -> jax.Array:
    r"""CPO: reference-free DPO on summed log-probs plus a behaviour-cloning (NLL) term.

    .. math:: \mathcal L = -\log\sigma\big(\beta[\log\pi(y_w|x) - \log\pi(y_l|x)]\big)
       + \alpha_{CPO}\,\mathrm{NLL}(y_w)

    With `label_smoothing = eps` the first term is `-(1-eps) log sigma(z) - eps log sigma(-z)`;
    with `alpha != 0` the log-probs are first mapped by `alphapo_reward`. This is TRL
    `CPOTrainer` with `loss_type="sigmoid"`. TRL's NLL is the token-mean cross-entropy over all
    chosen completion tokens of the batch; the mean over pairs of this loss equals TRL's
    objective when `chosen_nll = -chosen_logps * B / total_chosen_tokens`, or, for equal
    lengths, the per-sequence mean NLL `-chosen_logps / chosen_lengths`. When `chosen_nll` is
    not given but `chosen_lengths` is, that per-sequence mean NLL is used (0 for an empty
    completion).

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions.
      chosen_nll: `[B]` per-pair NLL of the chosen completion (required when `cpo_alpha != 0`).
      beta: inverse temperature β.
      label_smoothing: probability ε that a label is flipped.
      cpo_alpha: weight of the NLL (behaviour-cloning) term (TRL `cpo_alpha`).
      alpha: AlphaPO reward-shape exponent applied to the log-probs (TRL `alpha`); 0 = none.
      chosen_lengths: optional `[B]` completion-token counts, used for the default NLL
        `-chosen_logps / chosen_lengths` when `chosen_nll` is None.

    Returns:
      `[B]` float32 per-pair losses.

    References:
      Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM
      Performance in Machine Translation", arXiv 2401.08417.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = cpo_loss(jnp.array([-4.0]), jnp.array([-9.0]), chosen_nll=jnp.array([2.0]),
      ...                 beta=0.1, cpo_alpha=1.0)
      >>> print(round(float(loss[0]), 4))
      2.4741
    """
    fn = "cpo_loss"
    _check_pair(
        fn,
        {"chosen_logps": chosen_logps, "rejected_logps": rejected_logps, "chosen_nll": chosen_nll},
        floating=("chosen_logps", "rejected_logps", "chosen_nll"),
    )
    if chosen_nll is None and chosen_lengths is not None:
        check_same_shape(
            {"chosen_logps": chosen_logps, "chosen_lengths": chosen_lengths}, "chosen_logps", fn=fn
        )
        mean_w, valid_w = _safe_mean_logps(f32(chosen_logps), chosen_lengths)
        chosen_nll = jnp.where(valid_w, -mean_w, 0.0)
    if chosen_nll is None and cpo_alpha != 0:
        raise ValueError(
            f"{fn}: `chosen_nll` (or `chosen_lengths`) is required when `cpo_alpha` is non-zero "
            f"(got cpo_alpha={cpo_alpha}); pass one of them or set `cpo_alpha=0`."
        )
    logits = alphapo_reward(chosen_logps, alpha=alpha) - alphapo_reward(rejected_logps, alpha=alpha)
    losses = _smoothed_logistic(beta * logits, label_smoothing)
    if chosen_nll is not None:
        losses = losses + cpo_alpha * f32(chosen_nll)
    return losses


def _log1mexp(x: jax.Array) -> jax.Array:
    """`log(1 - exp(x))` for `x < 0`, branching at `-log 2` to avoid cancellation."""
    t = -0.6931471805599453
    small = x < t
    x_small = jnp.where(small, x, t - 1.0)
    x_large = jnp.where(small, t, x)
    return jnp.where(small, jnp.log1p(-jnp.exp(x_small)), jnp.log(-jnp.expm1(x_large)))


def _orpo_log_odds(fn, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths):
    mean_w, mean_l, valid = _pair_mean_logps(
        fn, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths
    )
    log_odds = (mean_w - mean_l) - (_log1mexp(mean_w) - _log1mexp(mean_l))
    return jnp.where(valid, log_odds, 0.0), valid


def _orpo_term(fn, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta):
    log_odds, valid = _orpo_log_odds(
        fn, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths
    )
    return jnp.where(valid, -beta * jax.nn.log_sigmoid(log_odds), 0.0)


def orpo_log_odds_ratio(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
) -> jax.Array:
    r"""ORPO log odds ratio of the chosen over the rejected completion.

    .. math:: \log\frac{\mathrm{odds}(y_w)}{\mathrm{odds}(y_l)}
       = (\bar\ell_w - \bar\ell_l) - \big(\log(1-e^{\bar\ell_w}) - \log(1-e^{\bar\ell_l})\big),
       \quad \bar\ell = \log\pi(y|x)/|y|

    `log(1 - e^x)` is evaluated with the two-branch `log1mexp` (as in TRL `ORPOTrainer`).

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions.
      chosen_lengths: `[B]` number of completion tokens of each chosen completion.
      rejected_lengths: `[B]` number of completion tokens of each rejected completion.

    Returns:
      `[B]` float32 log odds ratios (0 for pairs with an empty completion).

    References:
      Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
      arXiv 2403.07691.

    Example:
      >>> import jax.numpy as jnp
      >>> r = orpo_log_odds_ratio(jnp.array([-1.0]), jnp.array([-6.0]),
      ...                         chosen_lengths=jnp.array([2]), rejected_lengths=jnp.array([3]))
      >>> print(round(float(r[0]), 4))
      2.2873
    """
    return _orpo_log_odds(
        "orpo_log_odds_ratio", chosen_logps, rejected_logps, chosen_lengths, rejected_lengths
    )[0]


def orpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    beta: float = 0.1,
) -> jax.Array:
    r"""ORPO odds-ratio term: `-lambda * log sigma(log odds ratio)` per pair.

    .. math:: \mathcal L_{OR} = -\lambda\log\sigma\Big(\log\frac{\mathrm{odds}(y_w)}
       {\mathrm{odds}(y_l)}\Big), \quad \mathrm{odds}(y) = \frac{e^{\bar\ell}}{1 - e^{\bar\ell}}

    This is the negative of the `losses` returned by TRL `ORPOTrainer.odds_ratio_loss` (λ is
    TRL's `beta`). The full ORPO objective adds the chosen NLL: see `orpo_sft_loss`.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions.
      chosen_lengths: `[B]` number of completion tokens of each chosen completion.
      rejected_lengths: `[B]` number of completion tokens of each rejected completion.
      beta: weight λ of the odds-ratio term.

    Returns:
      `[B]` float32 per-pair losses (0 for pairs with an empty completion).

    References:
      Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
      arXiv 2403.07691.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = orpo_loss(jnp.array([-1.0]), jnp.array([-6.0]), chosen_lengths=jnp.array([2]),
      ...                  rejected_lengths=jnp.array([3]), beta=0.1)
      >>> print(round(float(loss[0]), 4))
      0.0097
    """
    return _orpo_term(
        "orpo_loss", chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta
    )


def orpo_sft_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    chosen_nll: jax.Array | None = None,
    beta: float = 0.1,
) -> jax.Array:
    r"""Full ORPO objective per pair: chosen NLL plus the odds-ratio term.

    .. math:: \mathcal L_{ORPO} = \mathrm{NLL}(y_w) - \lambda\log\sigma\Big(
       \log\frac{\mathrm{odds}(y_w)}{\mathrm{odds}(y_l)}\Big)

    By default the NLL is the per-token mean NLL of the chosen completion,
    `-chosen_logps / chosen_lengths`. TRL's `ORPOTrainer` instead uses the token-mean
    cross-entropy over prompt and completion tokens of the whole batch; pass that per pair via
    `chosen_nll` to reproduce it.

    Args:
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions.
      chosen_lengths: `[B]` number of completion tokens of each chosen completion.
      rejected_lengths: `[B]` number of completion tokens of each rejected completion.
      chosen_nll: optional `[B]` per-pair NLL of the chosen sequence.
      beta: weight λ of the odds-ratio term.

    Returns:
      `[B]` float32 per-pair losses (the odds-ratio term is 0 for pairs with an empty
      completion; so is the default NLL for an empty chosen completion).

    References:
      Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
      arXiv 2403.07691.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = orpo_sft_loss(jnp.array([-1.0]), jnp.array([-6.0]),
      ...                      chosen_lengths=jnp.array([2]), rejected_lengths=jnp.array([3]))
      >>> print(round(float(loss[0]), 4))
      0.5097
    """
    fn = "orpo_sft_loss"
    odds_term = _orpo_term(fn, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta)
    if chosen_nll is None:
        mean_w, valid_w = _safe_mean_logps(f32(chosen_logps), chosen_lengths)
        nll = jnp.where(valid_w, -mean_w, 0.0)
    else:
        check_same_shape(
            {"chosen_logps": chosen_logps, "chosen_nll": chosen_nll}, "chosen_logps", fn=fn
        )
        check_floating({"chosen_nll": chosen_nll}, fn=fn)
        nll = f32(chosen_nll)
    return nll + odds_term
