"""RLHF per-token rewards and PPO's clipped objectives over masked `[B, T]` token grids.

The PPO reward of a sampled completion is dense: a KL penalty against the reference model at
every generated token, the sequence-level reward-model score at the last generated token, and
optionally extra dense token rewards (in Reinforced Token Optimization these are the clipped DPO
token rewards, `jaxpref.losses.rto_token_rewards`). Advantages come from masked GAE over the
tokens, with the episode ending after the last valid token. Reductions are masked means over
all valid tokens of the batch; masked positions contribute nothing (also in gradient) and a
fully masked batch gives 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32
from jaxpref.bellman._layouts import batch_major
from jaxpref.bellman._multistep import truncated_generalized_advantage_estimation

__all__ = [
    "PPOAux",
    "TokenAdvantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_whiten",
    "ppo_clipped_surrogate_loss",
    "ppo_clipped_value_loss",
    "ppo_objective",
    "rlhf_token_rewards",
    "token_advantages",
]


def _check_grid(fn: str, arrays: dict, mask) -> tuple[int, int]:
    first = next(iter(arrays))
    check_rank(arrays[first], first, 2, fn=fn)
    check_floating(arrays, fn=fn)
    return check_same_shape({**arrays, "mask": mask}, first, fn=fn)


def _zero_masked(valid, *arrays):
    return [jnp.where(valid, f32(x), 0.0) for x in arrays]


def _masked_mean(x, valid):
    count = jnp.sum(valid)
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(count, 1)


def kl_k1(logp: ArrayLike, ref_logp: ArrayLike) -> jax.Array:
    r"""Per-token KL estimator k1 (unbiased, can be negative) of `KL(pi || pi_ref)`.

        k1 = log pi(a) - log pi_ref(a),   a ~ pi

    Args:
      logp: `[...]` log-probs of the sampled tokens under the policy.
      ref_logp: `[...]` log-probs of the same tokens under the reference.

    Returns:
      `[...]` float32 estimates.

    References:
      Schulman, "Approximating KL Divergence", joschu.net/blog/kl-approx.html (2020).

    Example:
      >>> print(round(float(kl_k1(-1.0, -1.5)), 4))
      0.5
    """
    return f32(logp) - f32(ref_logp)


def kl_k2(logp: ArrayLike, ref_logp: ArrayLike) -> jax.Array:
    r"""Per-token KL estimator k2 (biased, low variance, >= 0).

        k2 = 0.5 * (log pi(a) - log pi_ref(a))^2,   a ~ pi

    Args:
      logp: `[...]` log-probs of the sampled tokens under the policy.
      ref_logp: `[...]` log-probs under the reference.

    Returns:
      `[...]` float32 estimates.

    References:
      Schulman, "Approximating KL Divergence", joschu.net/blog/kl-approx.html (2020).

    Example:
      >>> print(round(float(kl_k2(-1.0, -1.5)), 4))
      0.125
    """
    diff = f32(logp) - f32(ref_logp)
    return 0.5 * diff * diff


def kl_k3(logp: ArrayLike, ref_logp: ArrayLike) -> jax.Array:
    r"""Per-token KL estimator k3 (unbiased, low variance, >= 0).

        k3 = (rho - 1) - log rho,   rho = pi_ref(a) / pi(a),   a ~ pi

    Args:
      logp: `[...]` log-probs of the sampled tokens under the policy.
      ref_logp: `[...]` log-probs under the reference.

    Returns:
      `[...]` float32 estimates.

    References:
      Schulman, "Approximating KL Divergence", joschu.net/blog/kl-approx.html (2020).

    Example:
      >>> import math
      >>> print(round(float(kl_k3(-1.0, -1.5)), 4), round(math.exp(-0.5) - 1 + 0.5, 4))
      0.1065 0.1065
    """
    log_rho = f32(ref_logp) - f32(logp)
    return jnp.expm1(log_rho) - log_rho


def rlhf_token_rewards(
    logp: ArrayLike,
    ref_logp: ArrayLike,
    scores: ArrayLike,
    mask: ArrayLike,
    *,
    kl_coef: float = 0.05,
    kl_estimator: Callable[[jax.Array, jax.Array], jax.Array] = kl_k1,
    dense_rewards: ArrayLike | None = None,
) -> jax.Array:
    r"""Per-token PPO rewards for RLHF: KL penalty + terminal score (+ dense token rewards).

        r_t = m_t * (-kl_coef * k(logp_t, ref_logp_t) + dense_t) + score * [t = last valid t]

    with `k` one of `kl_k1`, `kl_k2`, `kl_k3`. Passing RTO's clipped DPO token rewards as
    `dense_rewards` (and the reward-model score as `scores`) gives the Reinforced Token
    Optimization reward. A fully masked row gets no score.

    Args:
      logp: `[B, T]` log-probs of the sampled tokens under the policy that generated them.
      ref_logp: `[B, T]` log-probs of the same tokens under the reference model.
      scores: `[B]` sequence-level rewards (reward-model scores).
      mask: `[B, T]` nonzero at generated tokens.
      kl_coef: weight of the KL penalty.
      kl_estimator: per-token KL estimator `(logp, ref_logp) -> [B, T]`.
      dense_rewards: optional `[B, T]` extra token rewards (e.g. `rto_token_rewards`).

    Returns:
      `[B, T]` float32 token rewards, 0 at masked positions.

    References:
      Ziegler et al., "Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593;
      Ouyang et al., arXiv:2203.02155; Zhong et al., "DPO Meets PPO: Reinforced Token
      Optimization for RLHF", arXiv:2404.18922.

    Example:
      >>> import jax.numpy as jnp
      >>> r = rlhf_token_rewards(jnp.array([[-1.0, -1.0, 0.0]]), jnp.array([[-2.0, -1.0, 0.0]]),
      ...                        jnp.array([3.0]), jnp.array([[1, 1, 0]]), kl_coef=0.1)
      >>> print([round(float(x), 4) for x in r[0]])  # -0.1 * 1, score at the last valid token
      [-0.1, 3.0, 0.0]
    """
    fn = "rlhf_token_rewards"
    shape = _check_grid(
        fn, {"logp": logp, "ref_logp": ref_logp, "dense_rewards": dense_rewards}, mask
    )
    check_floating({"scores": scores}, fn=fn)
    if tuple(jnp.shape(scores)) != shape[:1]:
        raise ValueError(
            f"{fn}: `scores` must have shape {shape[:1]} (one per row of `logp` {shape}), got "
            f"{tuple(jnp.shape(scores))}."
        )
    valid = jnp.asarray(mask) != 0
    logp, ref_logp = _zero_masked(valid, logp, ref_logp)
    kl = jnp.where(valid, kl_estimator(logp, ref_logp), 0.0)
    rewards = -kl_coef * kl
    if dense_rewards is not None:
        rewards = rewards + _zero_masked(valid, dense_rewards)[0]
    length = shape[1]
    last = length - 1 - jnp.argmax(valid[:, ::-1], axis=1)
    at_last = (jnp.arange(length)[None, :] == last[:, None]) & jnp.any(valid, axis=1)[:, None]
    return rewards + jnp.where(at_last, f32(scores)[:, None], 0.0)


class TokenAdvantages(NamedTuple):
    """Output of `token_advantages` (both `[B, T]` float32, 0 at masked positions).

    Attributes:
      advantages: GAE advantages `A_t`.
      returns: value targets `A_t + V(s_t)` (lambda-returns).
    """

    advantages: jax.Array
    returns: jax.Array


def token_advantages(
    rewards: ArrayLike,
    values: ArrayLike,
    mask: ArrayLike,
    *,
    gamma: float = 1.0,
    lambda_: float = 0.95,
    stop_target_gradients: bool = True,
) -> TokenAdvantages:
    r"""GAE advantages and value targets of token rewards, the episode ending at the last token.

        delta_t = r_t + gamma V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma lambda A_{t+1},
        V = 0 after the last valid token,   returns_t = A_t + V(s_t)

    with `s_{t+1}` the next valid position (masked positions are removed, see `batch_major`).
    `values` are state-aligned: `values[b, t]` is the critic's value of the state that generates
    token t.

    Args:
      rewards: `[B, T]` token rewards (e.g. `rlhf_token_rewards`).
      values: `[B, T]` critic values of the states.
      mask: `[B, T]` nonzero at generated tokens.
      gamma: discount.
      lambda_: GAE parameter.
      stop_target_gradients: if True (default, as in PPO), both outputs are constants.

    Returns:
      `TokenAdvantages(advantages, returns)`.

    References:
      Schulman et al., arXiv:1506.02438 (GAE); arXiv:1707.06347 (PPO).

    Example:
      >>> import jax.numpy as jnp
      >>> out = token_advantages(jnp.array([[0.0, 1.0, 0.0]]), jnp.array([[0.5, 0.5, 9.0]]),
      ...                        jnp.array([[1, 1, 0]]), gamma=1.0, lambda_=1.0)
      >>> print(out.advantages[0].tolist(), out.returns[0].tolist())
      [0.5, 0.5, 0.0] [1.0, 1.0, 0.0]
    """
    fn = "token_advantages"
    shape = _check_grid(fn, {"rewards": rewards, "values": values}, mask)
    valid = jnp.asarray(mask) != 0
    (values_f,) = _zero_masked(valid, values)
    padded = jnp.concatenate([values_f, jnp.zeros((shape[0], 1), values_f.dtype)], axis=1)
    advantages = batch_major(truncated_generalized_advantage_estimation)(
        rewards, gamma, lambda_, padded, mask=mask
    )
    returns = jnp.where(valid, advantages + values_f, 0.0)
    if stop_target_gradients:
        advantages, returns = jax.lax.stop_gradient((advantages, returns))
    return TokenAdvantages(advantages, returns)


def masked_whiten(
    x: ArrayLike, mask: ArrayLike, *, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
    r"""Whitens values over the valid entries (PPO advantage normalisation).

        y = (x - mean) / sqrt(var + eps)     (+ mean again if not `shift_mean`)

    with the mean and the unbiased variance taken over the valid entries only; masked entries
    are 0 in the output.

    Args:
      x: `[B, T]` values (e.g. advantages).
      mask: `[B, T]` nonzero at valid entries.
      shift_mean: if False, the mean is added back (only the scale is normalised).
      eps: added to the variance.

    Returns:
      `[B, T]` float32 whitened values.

    References:
      Schulman et al., arXiv:1707.06347 (PPO).

    Example:
      >>> import jax.numpy as jnp
      >>> y = masked_whiten(jnp.array([[1.0, 3.0, 100.0]]), jnp.array([[1, 1, 0]]))
      >>> print([round(float(v), 4) for v in y[0]])  # mean 2, unbiased var 2
      [-0.7071, 0.7071, 0.0]
    """
    fn = "masked_whiten"
    _check_grid(fn, {"x": x}, mask)
    valid = jnp.asarray(mask) != 0
    (x,) = _zero_masked(valid, x)
    count = jnp.sum(valid)
    mean = jnp.sum(x) / jnp.maximum(count, 1)
    centred = jnp.where(valid, x - mean, 0.0)
    var = jnp.sum(centred * centred) / jnp.maximum(count - 1, 1)
    y = centred * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        y = y + mean
    return jnp.where(valid, y, 0.0)


def ppo_clipped_surrogate_loss(
    logp: ArrayLike,
    old_logp: ArrayLike,
    advantages: ArrayLike,
    mask: ArrayLike,
    *,
    epsilon: float = 0.2,
) -> jax.Array:
    r"""Per-token PPO clipped surrogate policy loss (unreduced).

        L_t = -m_t * min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t),
        rho_t = exp(logp_t - old_logp_t)

    Advantages are treated as constants (stop-gradient). The mean over valid tokens equals
    `rlax.clipped_surrogate_pg_loss` on the flattened valid tokens.

    Args:
      logp: `[B, T]` log-probs of the sampled tokens under the current policy.
      old_logp: `[B, T]` log-probs under the policy that sampled them.
      advantages: `[B, T]` advantages.
      mask: `[B, T]` nonzero at generated tokens.
      epsilon: clipping range.

    Returns:
      `[B, T]` float32 losses, 0 at masked positions.

    References:
      Schulman, Wolski, Dhariwal, Radford, Klimov, "Proximal Policy Optimization Algorithms",
      arXiv:1707.06347.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = ppo_clipped_surrogate_loss(jnp.log(jnp.array([[2.0, 0.5]])), jnp.zeros((1, 2)),
      ...                                   jnp.array([[1.0, 1.0]]), jnp.ones((1, 2)))
      >>> print([round(float(x), 4) for x in loss[0]])  # -min(2, 1.2), -min(0.5, 0.8)
      [-1.2, -0.5]
    """
    fn = "ppo_clipped_surrogate_loss"
    _check_grid(fn, {"logp": logp, "old_logp": old_logp, "advantages": advantages}, mask)
    valid = jnp.asarray(mask) != 0
    logp, old_logp, advantages = _zero_masked(valid, logp, old_logp, advantages)
    advantages = jax.lax.stop_gradient(advantages)
    ratio = jnp.exp(logp - old_logp)
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
    objective = jnp.minimum(ratio * advantages, clipped * advantages)
    return jnp.where(valid, -objective, 0.0)


def ppo_clipped_value_loss(
    values: ArrayLike,
    old_values: ArrayLike,
    returns: ArrayLike,
    mask: ArrayLike,
    *,
    epsilon: float = 0.2,
) -> jax.Array:
    r"""Per-token PPO clipped value loss (unreduced).

        L_t = 0.5 m_t max((v_t - R_t)^2, (old_t + clip(v_t - old_t, -eps, eps) - R_t)^2)

    Returns (targets) are treated as constants.

    Args:
      values: `[B, T]` current critic values.
      old_values: `[B, T]` critic values when the data was collected.
      returns: `[B, T]` value targets (e.g. `token_advantages(...).returns`).
      mask: `[B, T]` nonzero at generated tokens.
      epsilon: clipping range of the value change.

    Returns:
      `[B, T]` float32 losses, 0 at masked positions.

    References:
      Schulman et al., arXiv:1707.06347; Ziegler et al., arXiv:1909.08593.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = ppo_clipped_value_loss(jnp.array([[1.0]]), jnp.array([[0.0]]),
      ...                               jnp.array([[1.0]]), jnp.ones((1, 1)), epsilon=0.5)
      >>> print(round(float(loss[0, 0]), 4))  # max(0, (0.5 - 1)^2) / 2
      0.125
    """
    fn = "ppo_clipped_value_loss"
    _check_grid(fn, {"values": values, "old_values": old_values, "returns": returns}, mask)
    valid = jnp.asarray(mask) != 0
    values, old_values, returns = _zero_masked(valid, values, old_values, returns)
    returns = jax.lax.stop_gradient(returns)
    clipped = old_values + jnp.clip(values - old_values, -epsilon, epsilon)
    loss = 0.5 * jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return jnp.where(valid, loss, 0.0)


class PPOAux(NamedTuple):
    """Metrics of `ppo_objective` (scalars, masked means over valid tokens).

    Attributes:
      policy_loss: clipped surrogate loss.
      value_loss: clipped value loss.
      clip_fraction: fraction of tokens where the clipped ratio is the active branch.
      value_clip_fraction: fraction of tokens where the clipped value is the active branch.
      approx_kl: `0.5 * mean((logp - old_logp)^2)`, a KL estimate of the update.
    """

    policy_loss: jax.Array
    value_loss: jax.Array
    clip_fraction: jax.Array
    value_clip_fraction: jax.Array
    approx_kl: jax.Array


def ppo_objective(
    logp: ArrayLike,
    old_logp: ArrayLike,
    advantages: ArrayLike,
    values: ArrayLike,
    old_values: ArrayLike,
    returns: ArrayLike,
    mask: ArrayLike,
    *,
    clip_epsilon: float = 0.2,
    value_clip_epsilon: float = 0.2,
    value_coef: float = 0.1,
) -> tuple[jax.Array, PPOAux]:
    r"""PPO objective over a masked token batch: clipped surrogate + weighted clipped value loss.

        L = mean_valid(L^clip_t) + value_coef * mean_valid(L^V_t)

    Means run over all valid tokens of the batch (token-level averaging); a fully masked batch
    gives 0 with zero gradients.

    Args:
      logp: `[B, T]` log-probs under the current policy.
      old_logp: `[B, T]` log-probs under the sampling policy.
      advantages: `[B, T]` advantages (constants).
      values: `[B, T]` current critic values.
      old_values: `[B, T]` critic values at collection time.
      returns: `[B, T]` value targets (constants).
      mask: `[B, T]` nonzero at generated tokens.
      clip_epsilon: policy ratio clipping range.
      value_clip_epsilon: value clipping range.
      value_coef: weight of the value loss.

    Returns:
      `(loss, PPOAux)`.

    References:
      Schulman et al., arXiv:1707.06347.

    Example:
      >>> import jax.numpy as jnp
      >>> z = jnp.zeros((1, 2))
      >>> loss, aux = ppo_objective(z, z, jnp.array([[1.0, -1.0]]), z, z, jnp.ones((1, 2)),
      ...                           jnp.ones((1, 2)), value_coef=0.5)
      >>> print(round(float(loss), 4), round(float(aux.value_loss), 4))  # 0 + 0.5 * 0.5
      0.25 0.5
    """
    policy_losses = ppo_clipped_surrogate_loss(
        logp, old_logp, advantages, mask, epsilon=clip_epsilon
    )
    value_losses = ppo_clipped_value_loss(
        values, old_values, returns, mask, epsilon=value_clip_epsilon
    )
    valid = jnp.asarray(mask) != 0
    logp, old_logp, advantages, values, old_values, returns = _zero_masked(
        valid, logp, old_logp, advantages, values, old_values, returns
    )
    policy_loss = _masked_mean(policy_losses, valid)
    value_loss = _masked_mean(value_losses, valid)
    ratio = jnp.exp(logp - old_logp)
    unclipped_obj = ratio * advantages
    clipped_obj = jnp.clip(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon) * advantages
    clipped_values = old_values + jnp.clip(
        values - old_values, -value_clip_epsilon, value_clip_epsilon
    )
    value_clipped = (clipped_values - returns) ** 2 > (values - returns) ** 2
    diff = logp - old_logp
    aux = PPOAux(
        policy_loss,
        value_loss,
        *jax.lax.stop_gradient(
            (
                _masked_mean((clipped_obj < unclipped_obj).astype(policy_loss.dtype), valid),
                _masked_mean(value_clipped.astype(policy_loss.dtype), valid),
                _masked_mean(0.5 * diff * diff, valid),
            )
        ),
    )
    return policy_loss + value_coef * value_loss, aux
