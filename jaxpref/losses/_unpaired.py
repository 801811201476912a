"""Unpaired preference losses: KTO and unpaired APO-zero.

Each example is a single (prompt, completion) with a binary label `desirable`, not a pair.
Inputs are per-example summed completion log-probs `[N]` under the policy and the reference;
losses are returned unreduced, `[N]` float32, with masked-out examples at 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = ["apo_zero_unpaired_loss", "kto_kl_estimate", "kto_loss"]


def _check_unpaired(fn: str, policy_logps, ref_logps, desirable, mask) -> None:
    check_rank(policy_logps, "policy_logps", 1, fn=fn)
    check_same_shape(
        {
            "policy_logps": policy_logps,
            "ref_logps": ref_logps,
            "desirable": desirable,
            "mask": mask,
        },
        "policy_logps",
        fn=fn,
    )
    check_floating({"policy_logps": policy_logps, "ref_logps": ref_logps}, fn=fn)


def _weighted(losses_desirable, losses_undesirable, desirable, mask, dw, uw):
    is_desirable = jnp.asarray(desirable).astype(bool)
    losses = jnp.where(is_desirable, dw * losses_desirable, uw * losses_undesirable)
    if mask is not None:
        losses = jnp.where(jnp.asarray(mask).astype(bool), losses, 0.0)
    return losses


def kto_kl_estimate(
    mismatched_policy_logps: jax.Array,
    mismatched_ref_logps: jax.Array,
    mask: jax.Array | None = None,
    *,
    axis_name: str | None = None,
) -> jax.Array:
    r"""KTO reference point `z_0`: batch-mean log-ratio on mismatched pairs, clamped at 0, no grad.

    .. math:: z_0 = \max\Big(0,\ \mathrm{sg}\Big[\frac{1}{N}\sum_i
       \log\pi_\theta(y'_i|x_i) - \log\pi_{ref}(y'_i|x_i)\Big]\Big)

    where `(x_i, y'_i)` pairs a prompt with a completion of another example (TRL shifts the
    completions of a batch by one: example `i` gets the completion of example `i - 1`). Under
    `jax.jit` on a global (sharded) batch the mean is already the global mean. Inside a mapped
    computation (`shard_map`, `vmap` with `axis_name`), pass `axis_name` to average the local
    means across that axis before clamping, exactly as TRL gathers the per-process means.

    Args:
      mismatched_policy_logps: `[N]` summed log-probs of the mismatched completions under the
        policy.
      mismatched_ref_logps: `[N]` summed log-probs of the same under the reference.
      mask: optional `[N]` bool/float mask of examples that count (all count when None); a
        fully masked batch gives 0.
      axis_name: optional mapped axis over which the local means are averaged.

    Returns:
      Scalar float32 `z_0 >= 0`, with its gradient stopped.

    References:
      Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization",
      arXiv 2402.01306.

    Example:
      >>> import jax.numpy as jnp
      >>> z0 = kto_kl_estimate(jnp.array([-3.0, -5.0]), jnp.array([-4.0, -5.5]))
      >>> print(round(float(z0), 4))
      0.75
    """
    fn = "kto_kl_estimate"
    check_rank(mismatched_policy_logps, "mismatched_policy_logps", 1, fn=fn)
    check_same_shape(
        {
            "mismatched_policy_logps": mismatched_policy_logps,
            "mismatched_ref_logps": mismatched_ref_logps,
            "mask": mask,
        },
        "mismatched_policy_logps",
        fn=fn,
    )
    check_floating(
        {
            "mismatched_policy_logps": mismatched_policy_logps,
            "mismatched_ref_logps": mismatched_ref_logps,
        },
        fn=fn,
    )
    logratios = f32(mismatched_policy_logps) - f32(mismatched_ref_logps)
    if mask is None:
        kl = jnp.mean(logratios)
    else:
        m = jnp.asarray(mask).astype(bool)
        total = jnp.sum(jnp.where(m, logratios, 0.0))
        kl = total / jnp.maximum(jnp.sum(m.astype(jnp.float32)), 1.0)
    kl = jax.lax.stop_gradient(kl)
    if axis_name is not None:
        kl = jax.lax.pmean(kl, axis_name)
    return jnp.maximum(kl, 0.0)


def kto_loss(
    policy_logps: jax.Array,
    ref_logps: jax.Array,
    desirable: jax.Array,
    *,
    kl: jax.Array | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""KTO loss per unpaired example, relative to the reference point `z_0`.

    .. math:: \mathcal L = \begin{cases}
       \lambda_D\,[1 - \sigma(\beta(r - z_0))] & \text{desirable} \\
       \lambda_U\,[1 - \sigma(\beta(z_0 - r))] & \text{undesirable}
       \end{cases}, \qquad r = \log\pi_\theta(y|x) - \log\pi_{ref}(y|x)

    `z_0` (`kl`, usually from `kto_kl_estimate`) is a constant baseline: its gradient is stopped
    here too. The mean of the result over examples equals TRL `KTOTrainer`'s `loss_type="kto"`
    loss (TRL concatenates the desirable then the undesirable losses before the mean).

    Args:
      policy_logps: `[N]` summed completion log-probs under the policy.
      ref_logps: `[N]` summed completion log-probs under the reference.
      desirable: `[N]` bool (or 0/1) labels, True for desirable examples.
      kl: scalar reference point `z_0` (or `[N]` per-example values).
      beta: inverse temperature β.
      desirable_weight: weight λ_D of desirable examples.
      undesirable_weight: weight λ_U of undesirable examples.
      mask: optional `[N]` mask; masked-out examples give 0.

    Returns:
      `[N]` float32 per-example losses.

    References:
      Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization",
      arXiv 2402.01306.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = kto_loss(jnp.array([-3.0, -5.0]), jnp.array([-4.0, -4.0]),
      ...                 jnp.array([True, False]), kl=0.5, beta=1.0)
      >>> print([round(float(v), 4) for v in loss])
      [0.3775, 0.1824]
    """
    fn = "kto_loss"
    _check_unpaired(fn, policy_logps, ref_logps, desirable, mask)
    kl = jnp.asarray(kl)
    if kl.ndim != 0:
        check_same_shape({"policy_logps": policy_logps, "kl": kl}, "policy_logps", fn=fn)
    kl = jax.lax.stop_gradient(f32(kl))
    logratios = f32(policy_logps) - f32(ref_logps)
    losses_desirable = jax.nn.sigmoid(-beta * (logratios - kl))
    losses_undesirable = jax.nn.sigmoid(-beta * (kl - logratios))
    return _weighted(
        losses_desirable,
        losses_undesirable,
        desirable,
        mask,
        desirable_weight,
        undesirable_weight,
    )


def apo_zero_unpaired_loss(
    policy_logps: jax.Array,
    ref_logps: jax.Array,
    desirable: jax.Array,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Unpaired APO-zero: raise desirable completions, lower undesirable ones, no KL baseline.

    .. math:: \mathcal L = \begin{cases}
       \lambda_D\,[1 - \sigma(\beta r)] & \text{desirable} \\
       \lambda_U\,\sigma(\beta r) & \text{undesirable}
       \end{cases}, \qquad r = \log\pi_\theta(y|x) - \log\pi_{ref}(y|x)

    The mean over examples equals TRL `KTOTrainer` with `loss_type="apo_zero_unpaired"`.

    Args:
      policy_logps: `[N]` summed completion log-probs under the policy.
      ref_logps: `[N]` summed completion log-probs under the reference.
      desirable: `[N]` bool (or 0/1) labels, True for desirable examples.
      beta: inverse temperature β.
      desirable_weight: weight λ_D of desirable examples.
      undesirable_weight: weight λ_U of undesirable examples.
      mask: optional `[N]` mask; masked-out examples give 0.

    Returns:
      `[N]` float32 per-example losses.

    References:
      D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions",
      arXiv 2408.06266.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = apo_zero_unpaired_loss(jnp.array([-3.0, -5.0]), jnp.array([-4.0, -4.0]),
      ...                               jnp.array([True, False]), beta=1.0)
      >>> print([round(float(v), 4) for v in loss])
      [0.2689, 0.2689]
    """
    fn = "apo_zero_unpaired_loss"
    _check_unpaired(fn, policy_logps, ref_logps, desirable, mask)
    logratios = f32(policy_logps) - f32(ref_logps)
    losses_desirable = jax.nn.sigmoid(-beta * logratios)
    losses_undesirable = jax.nn.sigmoid(beta * logratios)
    return _weighted(
        losses_desirable,
        losses_undesirable,
        desirable,
        mask,
        desirable_weight,
        undesirable_weight,
    )
