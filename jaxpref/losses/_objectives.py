"""Training objectives: reduce per-pair losses to a scalar and report DPO-style metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32
from jaxpref.logprobs import masked_mean
from jaxpref.losses import _registry

__all__ = ["PreferenceAux", "multi_objective", "preference_objective"]


class PreferenceAux(NamedTuple):
    """Batch-mean metrics of a preference objective (all `[]` float32, no gradient).

    Attributes:
      rewards_chosen: mean implicit reward of the chosen completions, `β (log π - log π_ref)`
        (`β log π` when no reference log-probs are given).
      rewards_rejected: mean implicit reward of the rejected completions.
      margins: mean of `reward_chosen - reward_rejected`.
      accuracies: fraction of pairs with `reward_chosen > reward_rejected`.
      logps_chosen: mean summed log-prob of the chosen completions under the policy.
      logps_rejected: mean summed log-prob of the rejected completions under the policy.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import PreferenceAux
      >>> aux = PreferenceAux(*[jnp.float32(v) for v in (0.1, -0.1, 0.2, 1.0, -5.0, -7.0)])
      >>> sorted(aux.as_dict())[:2]
      ['logps/chosen', 'logps/rejected']
    """

    rewards_chosen: jax.Array
    rewards_rejected: jax.Array
    margins: jax.Array
    accuracies: jax.Array
    logps_chosen: jax.Array
    logps_rejected: jax.Array

    def as_dict(self) -> dict[str, jax.Array]:
        """Returns the metrics under TRL's logging keys (`"rewards/chosen"`, ...).

        Returns:
          Dict with keys `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
          `rewards/accuracies`, `logps/chosen`, `logps/rejected`.

        Example:
          >>> import jax.numpy as jnp
          >>> from jaxpref.losses import PreferenceAux
          >>> aux = PreferenceAux(*[jnp.float32(v) for v in (0.1, -0.1, 0.2, 1.0, -5.0, -7.0)])
          >>> print(round(float(aux.as_dict()["rewards/margins"]), 4))
          0.2
        """
        return {
            "rewards/chosen": self.rewards_chosen,
            "rewards/rejected": self.rewards_rejected,
            "rewards/margins": self.margins,
            "rewards/accuracies": self.accuracies,
            "logps/chosen": self.logps_chosen,
            "logps/rejected": self.logps_rejected,
        }


def _check_batch(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, weights):
    if (ref_chosen_logps is None) != (ref_rejected_logps is None):
        raise ValueError(f"{fn}: give both `ref_chosen_logps` and `ref_rejected_logps` or neither.")
    check_rank(chosen_logps, "chosen_logps", 1, fn=fn)
    arrays = {
        "chosen_logps": chosen_logps,
        "rejected_logps": rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
        "weights": weights,
    }
    check_same_shape(arrays, "chosen_logps", fn=fn)
    check_floating({k: v for k, v in arrays.items() if k != "weights"}, fn=fn)


def _aux(beta, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, use_ref, mask):
    c = jax.lax.stop_gradient(f32(chosen_logps))
    r = jax.lax.stop_gradient(f32(rejected_logps))
    if use_ref:
        ratio_c = c - jax.lax.stop_gradient(f32(ref_chosen_logps))
        ratio_r = r - jax.lax.stop_gradient(f32(ref_rejected_logps))
    else:
        ratio_c, ratio_r = c, r
    beta = jax.lax.stop_gradient(jnp.asarray(beta, jnp.float32))
    rewards_c = beta * ratio_c
    rewards_r = beta * ratio_r
    mask = None if mask is None else jax.lax.stop_gradient(mask)
    return PreferenceAux(
        rewards_chosen=masked_mean(rewards_c, mask),
        rewards_rejected=masked_mean(rewards_r, mask),
        margins=masked_mean(rewards_c - rewards_r, mask),
        accuracies=masked_mean((rewards_c > rewards_r).astype(jnp.float32), mask),
        logps_chosen=masked_mean(c, mask),
        logps_rejected=masked_mean(r, mask),
    )


def _weighted_mean(per_pair, weights, mask):
    per_pair = f32(per_pair)
    if weights is not None:
        per_pair = per_pair * f32(weights)
    return masked_mean(per_pair, mask)


def _pair_mask(fn, mask, chosen_logps):
    """`mask` as a `[B]` float32 0/1 array (None stays None)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != chosen_logps.shape:
        raise ValueError(
            f"{fn}: `mask` must have the shape of `chosen_logps` {tuple(chosen_logps.shape)}, "
            f"got {tuple(mask.shape)}."
        )
    return mask.astype(jnp.float32)


def preference_objective(
    loss: str | Callable,
    chosen_logps,
    rejected_logps,
    ref_chosen_logps=None,
    ref_rejected_logps=None,
    *,
    beta: float = 0.1,
    chosen_lengths=None,
    rejected_lengths=None,
    weights=None,
    mask=None,
    **hparams,
) -> tuple[jax.Array, PreferenceAux]:
    """Mean pair loss and DPO metrics for one loss given by registry name or function.

    `L = Σ_i m_i w_i ℓ_i / Σ_i m_i` with `ℓ` the per-pair loss, `w` optional per-pair weights
    (1 when not given) and `m` an optional 0/1 pair mask (fillers and padding pairs 0; all 1
    when not given). Metrics are means over the masked-in pairs and use the implicit rewards
    `β (log π - log π_ref)` when reference log-probs are given (as TRL logs them, whatever the
    loss), and `β log π` otherwise.

    Args:
      loss: a registry name (`"sigmoid"`, `"ipo"`, ...) or a loss function with the registry's
        calling convention.
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed reference log-probs of the chosen completions, or None for a
        reference-free loss.
      ref_rejected_logps: `[B]` summed reference log-probs of the rejected completions, or None.
      beta: inverse temperature, passed to the loss if it takes `beta` and used for the rewards.
      chosen_lengths: `[B]` completion-token counts of the chosen completions, or None.
      rejected_lengths: `[B]` completion-token counts of the rejected completions, or None.
      weights: `[B]` per-pair weights (for example WPO weights, computed without gradient), or
        None.
      mask: `[B]` 1 for real pairs, 0 for fillers (excluded from the loss and the metrics), or
        None; a batch with no real pair gives 0.
      **hparams: further hyperparameters of the loss (`label_smoothing`, `discopop_tau`, ...).

    Returns:
      `(loss, aux)`: a `[]` float32 scalar and a `PreferenceAux` of batch means.

    References:
      Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290 (implicit rewards).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import preference_objective
      >>> loss, aux = preference_objective(
      ...     "sigmoid", jnp.array([-5.0, -4.0]), jnp.array([-7.0, -3.0]),
      ...     jnp.array([-6.0, -4.0]), jnp.array([-6.0, -4.0]), beta=0.5)
      >>> print(round(float(loss), 4), round(float(aux.accuracies), 4))
      0.6437 0.5
    """
    fn = "preference_objective"
    record = _registry.resolve(loss)
    _check_batch(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, weights)
    per_pair = _registry.call(
        record,
        chosen_logps,
        rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        **{**hparams, **record.select(beta, {})},
    )
    mask = _pair_mask(fn, mask, chosen_logps)
    value = _weighted_mean(per_pair, weights, mask)
    aux = _aux(
        beta,
        chosen_logps,
        rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        use_ref=ref_chosen_logps is not None and ref_rejected_logps is not None,
        mask=mask,
    )
    return value, aux


def multi_objective(
    spec: Sequence[tuple[str | Callable, float]],
    chosen_logps,
    rejected_logps,
    ref_chosen_logps=None,
    ref_rejected_logps=None,
    *,
    beta: float = 0.1,
    chosen_lengths=None,
    rejected_lengths=None,
    weights=None,
    mask=None,
    **hparams,
) -> tuple[jax.Array, PreferenceAux]:
    """Weighted sum of mean pair losses (TRL's `loss_type` list with `loss_weights`).

    `L = Σ_k c_k Σ_i m_i w_i ℓ_k,i / Σ_i m_i` for `spec = [(loss_k, c_k), ...]`; e.g. MPO is
    `[("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0)]`. Hyperparameters are shared: each
    loss receives those it accepts, and every hyperparameter must be accepted by some loss.

    Args:
      spec: non-empty sequence of `(loss, weight)` with `loss` a registry name or function.
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed reference log-probs of the chosen completions, or None.
      ref_rejected_logps: `[B]` summed reference log-probs of the rejected completions, or None.
      beta: inverse temperature shared by the losses that take it; also scales the rewards.
      chosen_lengths: `[B]` completion-token counts of the chosen completions, or None.
      rejected_lengths: `[B]` completion-token counts of the rejected completions, or None.
      weights: `[B]` per-pair weights applied to every loss, or None.
      mask: `[B]` 1 for real pairs, 0 for fillers (excluded from the losses and the metrics),
        or None.
      **hparams: hyperparameters shared by the losses.

    Returns:
      `(loss, aux)`: a `[]` float32 scalar and a `PreferenceAux` (rewards use the reference
      log-probs when they are given).

    References:
      Wang et al., "Enhancing the Reasoning Ability of Multimodal Large Language Models via
      Mixed Preference Optimization", arXiv:2411.10442.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import multi_objective
      >>> loss, aux = multi_objective(
      ...     [("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0)],
      ...     jnp.array([-5.0, -4.0]), jnp.array([-7.0, -3.0]), jnp.array([-6.0, -4.0]),
      ...     jnp.array([-6.0, -4.0]), beta=0.5, chosen_lengths=jnp.array([3, 2]),
      ...     rejected_lengths=jnp.array([4, 2]))
      >>> print(round(float(loss), 4))
      2.5765
    """
    fn = "multi_objective"
    spec = list(spec)
    if not spec:
        raise ValueError(f"{fn}: `spec` must name at least one loss.")
    records = []
    for item in spec:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(
                f"{fn}: each `spec` entry must be a (loss, weight) pair, got {item!r}."
            )
        records.append((_registry.resolve(item[0]), item[1]))
    accepted = set().union(*(set(r.hyperparameters) for r, _ in records))
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise TypeError(
            f"{fn}: no loss in `spec` takes hyperparameter(s) {', '.join(unknown)}; "
            f"valid hyperparameters: {', '.join(sorted(accepted)) or 'none'}."
        )
    _check_batch(fn, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, weights)
    mask = _pair_mask(fn, mask, chosen_logps)
    total = jnp.zeros((), jnp.float32)
    for record, weight in records:
        per_pair = _registry.call(
            record,
            chosen_logps,
            rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            **record.select(beta, hparams),
        )
        total = total + weight * _weighted_mean(per_pair, weights, mask)
    aux = _aux(
        beta,
        chosen_logps,
        rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        use_ref=ref_chosen_logps is not None and ref_rejected_logps is not None,
        mask=mask,
    )
    return total, aux
