"""Returns and advantages in two layouts: time-major `[T, B]` rollouts, masked batch-major `[B, T]`.

Time-major functions scan the `[T, B]` arrays directly (one reverse loop whose carry is a `[B]`
vector, run in place over the TD errors or a copy of the rewards when not unrolled; see
`_recursions`) and equal `jax.vmap` of the single-trajectory function over axis 1. Their arguments
follow the single-trajectory functions exactly, with an extra trailing batch axis.

Batch-major functions are the language-model case: rows are sequences, and `mask` (`[B, T]`,
nonzero = valid) marks the steps that exist (completion tokens). Masked steps are removed from
the trajectory: the result equals compacting each row to its valid steps, applying the
single-trajectory function, and scattering back, with 0 at masked steps. So padding anywhere
(left, right or in the middle) contributes nothing, the recursion runs through masked gaps as if
they were absent, and a fully masked row gives zeros with zero (finite) gradients. Values held at
masked positions never reach the result, even if they are NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_int, check_rank, check_same_shape
from jaxpref.bellman._args import check_per_step, check_sequences, floats, maybe_stop
from jaxpref.bellman._recursions import (
    resolve_unroll,
    scan_discounted_returns,
    scan_gae,
    scan_lambda_returns,
    scan_n_step,
)

__all__ = [
    "discounted_returns_batch_major",
    "discounted_returns_time_major",
    "lambda_returns_batch_major",
    "lambda_returns_time_major",
    "n_step_bootstrapped_returns_time_major",
    "truncated_generalized_advantage_estimation_batch_major",
    "truncated_generalized_advantage_estimation_time_major",
]


# --------------------------------------------------------------------------------------------
# Time-major [T, B].
# --------------------------------------------------------------------------------------------


def lambda_returns_time_major(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    lambda_: ArrayLike = 1.0,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""`lambda_returns` of a time-major rollout `[T, B]`, scanned over time in one pass.

        G_t = r_t + discount_t * ((1 - lambda_t) * v_t + lambda_t * G_{t+1}),   G_T = v_{T-1}

    Equals `jax.vmap(lambda_returns, in_axes=1, out_axes=1)` on the same arrays.

    Args:
      r_t: `[T, B]` rewards.
      discount_t: `[T, B]` discounts (0 at episode ends).
      v_t: `[T, B]` bootstrap values of the states reached.
      lambda_: scalar or `[T, B]` mixing parameter.
      stop_target_gradients: if True, no gradient flows through the returns.
      unroll: loop unroll factor, a speed knob (results agree to float rounding); None picks 1
        on CPU and 32 on accelerators. With 1 the loop overwrites a copy of `r_t` in place.

    Returns:
      `[T, B]` lambda-returns.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., ch. 12.

    Example:
      >>> import jax.numpy as jnp
      >>> g = lambda_returns_time_major(jnp.ones((2, 3)), jnp.full((2, 3), 0.5),
      ...                               jnp.full((2, 3), 2.0), 0.0)
      >>> print(g[:, 0].tolist())  # one-step targets 1 + 0.5 * 2
      [2.0, 2.0]
    """
    fn = "lambda_returns_time_major"
    shape = check_sequences({"r_t": r_t, "discount_t": discount_t, "v_t": v_t}, 2, fn=fn)
    check_rank(lambda_, "lambda_", (0, 2), fn=fn)
    check_per_step(lambda_, "lambda_", shape, fn=fn)
    r_t, discount_t, v_t, lambda_ = floats(r_t, discount_t, v_t, lambda_)
    returns = scan_lambda_returns(
        r_t, discount_t, v_t, lambda_, unroll=resolve_unroll(fn, unroll), in_place=True
    )
    return maybe_stop(returns, stop_target_gradients)


def discounted_returns_time_major(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""`discounted_returns` of a time-major rollout `[T, B]`.

        G_t = r_t + discount_t * G_{t+1},   G_T = bootstrap

    Args:
      r_t: `[T, B]` rewards.
      discount_t: `[T, B]` discounts (0 at episode ends).
      v_t: bootstrap values: a scalar, `[B]`, or `[T, B]` (of which only row `T - 1` is used).
      stop_target_gradients: if True, no gradient flows through the returns.
      unroll: loop unroll factor (None: 1 on CPU, 32 on accelerators); with 1 the loop
        overwrites a copy of `r_t` in place.

    Returns:
      `[T, B]` discounted returns.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., sec. 3.3.

    Example:
      >>> import jax.numpy as jnp
      >>> g = discounted_returns_time_major(jnp.ones((3, 2)), jnp.full((3, 2), 0.5),
      ...                                   jnp.array([0.0, 8.0]))
      >>> print(g[:, 1].tolist())  # 1 + .5 * 8 = 5, 1 + .5 * 5, ...
      [2.75, 3.5, 5.0]
    """
    fn = "discounted_returns_time_major"
    shape = check_sequences({"r_t": r_t, "discount_t": discount_t}, 2, fn=fn)
    check_rank(v_t, "v_t", (0, 1, 2), fn=fn)
    if jnp.ndim(v_t) == 2:
        check_per_step(v_t, "v_t", shape, fn=fn)
    elif jnp.ndim(v_t) == 1 and tuple(jnp.shape(v_t)) != shape[1:]:
        raise ValueError(
            f"{fn}: `v_t` of rank 1 must have shape {shape[1:]} (the batch axis of `r_t` "
            f"{shape}), got {tuple(jnp.shape(v_t))}."
        )
    r_t, discount_t, v_t = floats(r_t, discount_t, v_t)
    bootstrap = v_t[-1] if v_t.ndim == 2 else jnp.broadcast_to(v_t, shape[1:])
    returns = scan_discounted_returns(
        r_t, discount_t, bootstrap, unroll=resolve_unroll(fn, unroll), in_place=True
    )
    return maybe_stop(returns, stop_target_gradients)


def n_step_bootstrapped_returns_time_major(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    n: int,
    lambda_t: ArrayLike = 1.0,
    stop_target_gradients: bool = False,
) -> jax.Array:
    r"""`n_step_bootstrapped_returns` of a time-major rollout `[T, B]`.

        G_t^(n) = r_t + d_t (r_{t+1} + ... + d_{t+n-1} v_{t+n-1})

    Args:
      r_t: `[T, B]` rewards.
      discount_t: `[T, B]` discounts (0 at episode ends).
      v_t: `[T, B]` bootstrap values.
      n: number of rewards to accumulate (>= 1).
      lambda_t: scalar or `[T, B]` mixing parameter.
      stop_target_gradients: if True, no gradient flows through the returns.

    Returns:
      `[T, B]` n-step returns.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., sec. 7.1.

    Example:
      >>> import jax.numpy as jnp
      >>> g = n_step_bootstrapped_returns_time_major(jnp.ones((3, 1)), jnp.ones((3, 1)),
      ...                                            jnp.full((3, 1), 10.0), 2)
      >>> print(g[:, 0].tolist())
      [12.0, 12.0, 11.0]
    """
    fn = "n_step_bootstrapped_returns_time_major"
    shape = check_sequences({"r_t": r_t, "discount_t": discount_t, "v_t": v_t}, 2, fn=fn)
    check_rank(lambda_t, "lambda_t", (0, 2), fn=fn)
    check_per_step(lambda_t, "lambda_t", shape, fn=fn)
    check_int(n, "n", minimum=1, fn=fn)
    r_t, discount_t, v_t, lambda_t = floats(r_t, discount_t, v_t, lambda_t)
    returns = scan_n_step(r_t, discount_t, v_t, n, lambda_t)
    return maybe_stop(returns, stop_target_gradients)


def truncated_generalized_advantage_estimation_time_major(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    lambda_: ArrayLike,
    values: ArrayLike,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""`truncated_generalized_advantage_estimation` of a time-major rollout `[T, B]`.

        A_t = delta_t + discount_t * lambda_t * A_{t+1},   delta_t = r_t + d_t v_{t+1} - v_t

    Args:
      r_t: `[T, B]` rewards.
      discount_t: `[T, B]` discounts (0 at episode ends).
      lambda_: scalar or `[T, B]` mixing parameter.
      values: `[T + 1, B]` state values, the last row being the bootstrap.
      stop_target_gradients: if True, no gradient flows through the advantages.
      unroll: loop unroll factor (None: 1 on CPU, 32 on accelerators); with 1 the loop
        overwrites the TD errors in place.

    Returns:
      `[T, B]` advantages.

    References:
      Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
      Estimation", arXiv:1506.02438.

    Example:
      >>> import jax.numpy as jnp
      >>> a = truncated_generalized_advantage_estimation_time_major(
      ...     jnp.ones((2, 1)), jnp.ones((2, 1)), 0.5, jnp.array([[0.0], [1.0], [2.0]]))
      >>> print(a[:, 0].tolist())
      [3.0, 2.0]
    """
    fn = "truncated_generalized_advantage_estimation_time_major"
    shape = check_sequences({"r_t": r_t, "discount_t": discount_t}, 2, fn=fn)
    check_rank(values, "values", 2, fn=fn)
    check_floating({"values": values}, fn=fn)
    if tuple(jnp.shape(values)) != (shape[0] + 1, shape[1]):
        raise ValueError(
            f"{fn}: `values` must have shape {(shape[0] + 1, shape[1])} (one more step than "
            f"`r_t` {shape}), got {tuple(jnp.shape(values))}."
        )
    check_rank(lambda_, "lambda_", (0, 2), fn=fn)
    check_per_step(lambda_, "lambda_", shape, fn=fn)
    r_t, discount_t, lambda_, values = floats(r_t, discount_t, lambda_, values)
    advantages = scan_gae(
        r_t, discount_t, lambda_, values, unroll=resolve_unroll(fn, unroll), in_place=True
    )
    return maybe_stop(advantages, stop_target_gradients)


# --------------------------------------------------------------------------------------------
# Batch-major [B, T] with a mask: masked steps are removed from the trajectory.
# --------------------------------------------------------------------------------------------


def _prepare_masked(fn: str, r_t, discount_t, mask, per_step: dict):
    """Checks `[B, T]` inputs; returns time-major float arrays with masked entries zeroed."""
    check_rank(r_t, "r_t", 2, fn=fn)
    check_floating({"r_t": r_t}, fn=fn)
    shape = tuple(jnp.shape(r_t))
    check_same_shape({"r_t": r_t, "mask": mask}, "r_t", fn=fn)
    scalars_ok = {"discount_t": discount_t, **per_step}
    for name, value in scalars_ok.items():
        check_rank(value, name, (0, 2), fn=fn)
        check_per_step(value, name, shape, fn=fn)
    valid = jnp.asarray(mask) != 0
    arrays = floats(r_t, discount_t, *per_step.values())

    def time_major(x):
        x = jnp.where(valid, jnp.broadcast_to(x, shape), 0.0)
        return x.T

    return valid.T, [time_major(x) for x in arrays], shape


class _MaskedReturnCarry(NamedTuple):
    """Reverse-scan state over a masked row.

    Attributes:
      g: return of the next valid step (`G_{t+1}` of the compacted trajectory).
      started: whether a valid step has been seen yet (scanning backwards); before that, the
        bootstrap comes from the current step's own value, as for the last step of a trajectory.
    """

    g: jax.Array
    started: jax.Array


def _masked_lambda_return_step(carry: _MaskedReturnCarry, xs):
    valid, r_t, discount_t, v_t, lambda_t = xs
    g_next = jnp.where(carry.started, carry.g, v_t)
    g = r_t + discount_t * ((1.0 - lambda_t) * v_t + lambda_t * g_next)
    new = _MaskedReturnCarry(jnp.where(valid, g, carry.g), carry.started | valid)
    return new, jnp.where(valid, g, 0.0)


def lambda_returns_batch_major(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    mask: ArrayLike,
    *,
    lambda_: ArrayLike = 1.0,
    stop_target_gradients: bool = False,
    unroll: int | None = None,
) -> jax.Array:
    r"""`lambda_returns` of batch-major rows `[B, T]`, with masked steps removed.

        G_t = r_t + discount_t * ((1 - lambda_t) * v_t + lambda_t * G_next(t)),  t valid

    where `G_next(t)` is the return of the next valid step of the row, and the last valid step
    bootstraps fully from its own `v_t`. Equals `lambda_returns` applied to each row compacted
    to its valid steps, scattered back, with 0 at masked steps.

    Args:
      r_t: `[B, T]` rewards.
      discount_t: scalar or `[B, T]` discounts (0 at episode ends).
      v_t: `[B, T]` bootstrap values of the states reached (rlax convention: index t holds
        `v(s_{t+1})`).
      mask: `[B, T]` nonzero at valid steps.
      lambda_: scalar or `[B, T]` mixing parameter.
      stop_target_gradients: if True, no gradient flows through the returns.
      unroll: `lax.scan` unroll factor (None: 1 on CPU, 32 on accelerators).

    Returns:
      `[B, T]` lambda-returns, 0 at masked steps.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., ch. 12.

    Example:
      >>> import jax.numpy as jnp
      >>> g = lambda_returns_batch_major(jnp.array([[1.0, 9.0, 1.0]]), 1.0,
      ...                                jnp.array([[0.0, 9.0, 5.0]]), jnp.array([[1, 0, 1]]))
      >>> print(g[0].tolist())  # the middle step is skipped: (1 + 1 + 5, 0, 1 + 5)
      [7.0, 0.0, 6.0]
    """
    fn = "lambda_returns_batch_major"
    check_same_shape({"r_t": r_t, "v_t": v_t}, "r_t", fn=fn)
    check_floating({"v_t": v_t}, fn=fn)
    valid, (r, d, v, lam), shape = _prepare_masked(
        fn, r_t, discount_t, mask, {"v_t": v_t, "lambda_": lambda_}
    )
    init = _MaskedReturnCarry(jnp.zeros(shape[:1], r.dtype), jnp.zeros(shape[:1], bool))
    _, g = jax.lax.scan(
        _masked_lambda_return_step,
        init,
        (valid, r, d, v, lam),
        reverse=True,
        unroll=resolve_unroll(fn, unroll),
    )
    return maybe_stop(g.T, stop_target_gradients)


def _masked_discounted_return_step(carry: _MaskedReturnCarry, xs):
    valid, r_t, discount_t = xs
    g = r_t + discount_t * carry.g
    new = _MaskedReturnCarry(jnp.where(valid, g, carry.g), carry.started | valid)
    return new, jnp.where(valid, g, 0.0)


def discounted_returns_batch_major(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    mask: ArrayLike,
    *,
    stop_target_gradients: bool = False,
    unroll: int | None = None,
) -> jax.Array:
    r"""`discounted_returns` of batch-major rows `[B, T]`, with masked steps removed.

        G_t = r_t + discount_t * G_next(t),   t valid;   G after the last valid step = bootstrap

    Args:
      r_t: `[B, T]` rewards.
      discount_t: scalar or `[B, T]` discounts (0 at episode ends).
      v_t: bootstrap value after each row's last valid step: a scalar or `[B]` (use 0 for rows
        that end in a terminal state, e.g. at EOS).
      mask: `[B, T]` nonzero at valid steps.
      stop_target_gradients: if True, no gradient flows through the returns.
      unroll: `lax.scan` unroll factor (None: 1 on CPU, 32 on accelerators).

    Returns:
      `[B, T]` discounted returns, 0 at masked steps.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., sec. 3.3.

    Example:
      >>> import jax.numpy as jnp
      >>> g = discounted_returns_batch_major(jnp.array([[1.0, 2.0, 7.0]]), 0.5, 0.0,
      ...                                    jnp.array([[1, 1, 0]]))
      >>> print(g[0].tolist())  # 1 + 0.5 * 2, 2, masked
      [2.0, 2.0, 0.0]
    """
    fn = "discounted_returns_batch_major"
    valid, (r, d), shape = _prepare_masked(fn, r_t, discount_t, mask, {})
    check_rank(v_t, "v_t", (0, 1), fn=fn)
    if jnp.ndim(v_t) == 1 and tuple(jnp.shape(v_t)) != shape[:1]:
        raise ValueError(
            f"{fn}: `v_t` must be a scalar or have shape {shape[:1]} (the batch axis of `r_t` "
            f"{shape}), got {tuple(jnp.shape(v_t))}."
        )
    (bootstrap,) = floats(v_t)
    bootstrap = jnp.broadcast_to(bootstrap.astype(r.dtype), shape[:1])
    init = _MaskedReturnCarry(bootstrap, jnp.zeros(shape[:1], bool))
    _, g = jax.lax.scan(
        _masked_discounted_return_step,
        init,
        (valid, r, d),
        reverse=True,
        unroll=resolve_unroll(fn, unroll),
    )
    return maybe_stop(g.T, stop_target_gradients)


class _MaskedAdvantageCarry(NamedTuple):
    """Reverse-scan state over a masked row.

    Attributes:
      a: advantage of the next valid step.
      v_next: value of the next valid state (the row's bootstrap value before any is seen).
    """

    a: jax.Array
    v_next: jax.Array


def _masked_gae_step(carry: _MaskedAdvantageCarry, xs):
    valid, r_t, discount_t, lambda_t, v_t = xs
    delta = r_t + discount_t * carry.v_next - v_t
    a = delta + discount_t * lambda_t * carry.a
    new = _MaskedAdvantageCarry(jnp.where(valid, a, carry.a), jnp.where(valid, v_t, carry.v_next))
    return new, jnp.where(valid, a, 0.0)


def truncated_generalized_advantage_estimation_batch_major(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    values: ArrayLike,
    mask: ArrayLike,
    *,
    lambda_: ArrayLike,
    stop_target_gradients: bool = False,
    unroll: int | None = None,
) -> jax.Array:
    r"""GAE of batch-major rows `[B, T]`, with masked steps removed.

        delta_t = r_t + discount_t * v(next valid state) - v_t
        A_t     = delta_t + discount_t * lambda_t * A_next(t),   t valid

    `values[:, :T]` are the values of the states acted in and `values[:, T]` the bootstrap after
    each row's last valid step (0 when the row ends in a terminal state, e.g. an LM completion
    ending at EOS). Equals `truncated_generalized_advantage_estimation` on each compacted row
    (values `[v_t for valid t] + [values[:, T]]`), with 0 at masked steps.

    Args:
      r_t: `[B, T]` rewards.
      discount_t: scalar or `[B, T]` discounts (0 at episode ends).
      values: `[B, T + 1]` state values; column T is the bootstrap.
      mask: `[B, T]` nonzero at valid steps.
      lambda_: scalar or `[B, T]` mixing parameter.
      stop_target_gradients: if True, no gradient flows through the advantages.
      unroll: `lax.scan` unroll factor (None: 1 on CPU, 32 on accelerators).

    Returns:
      `[B, T]` advantages, 0 at masked steps.

    References:
      Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
      Estimation", arXiv:1506.02438.

    Example:
      >>> import jax.numpy as jnp
      >>> a = truncated_generalized_advantage_estimation_batch_major(
      ...     jnp.array([[0.0, 0.0, 1.0]]), 1.0, jnp.array([[0.5, 0.0, 0.5, 0.0]]),
      ...     jnp.array([[1, 0, 1]]), lambda_=1.0)
      >>> print(a[0].tolist())  # deltas (0 + 0.5 - 0.5, -, 1 + 0 - 0.5)
      [0.5, 0.0, 0.5]
    """
    fn = "truncated_generalized_advantage_estimation_batch_major"
    check_rank(values, "values", 2, fn=fn)
    check_floating({"values": values}, fn=fn)
    shape = tuple(jnp.shape(r_t))
    if len(shape) == 2 and tuple(jnp.shape(values)) != (shape[0], shape[1] + 1):
        raise ValueError(
            f"{fn}: `values` must have shape {(shape[0], shape[1] + 1)} (one more step than "
            f"`r_t` {shape}), got {tuple(jnp.shape(values))}."
        )
    values_in = jnp.asarray(values)
    valid, (r, d, lam, v), shape = _prepare_masked(
        fn, r_t, discount_t, mask, {"lambda_": lambda_, "values": values_in[:, :-1]}
    )
    (bootstrap,) = floats(values_in[:, -1])
    init = _MaskedAdvantageCarry(jnp.zeros(shape[:1], r.dtype), bootstrap.astype(r.dtype))
    _, a = jax.lax.scan(
        _masked_gae_step,
        init,
        (valid, r, d, lam, v),
        reverse=True,
        unroll=resolve_unroll(fn, unroll),
    )
    return maybe_stop(a.T, stop_target_gradients)
