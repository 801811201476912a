"""Multistep returns and advantages of a single trajectory as reverse `lax.scan`s.

Names, argument order and semantics follow rlax (`rlax._src.multistep`), so code written against
rlax runs unchanged: index `t` of `r_t`, `discount_t` and `v_t` describes the transition out of
state `s_t` (reward and discount received on arrival in `s_{t+1}`, and the value of `s_{t+1}`).
Episode boundaries inside a trajectory are marked by `discount_t = 0`. Every recursion is one
reverse scan over the leading (time) axis with a named body over a NamedTuple carry; the private
`_scan_*` cores accept trailing batch axes, which the time-major helpers in `_batching` use to scan
a `[T, B]` rollout directly.

With `in_place=True` (the time-major helpers) and no unrolling, a core runs the same recursion as
a loop that overwrites, row by row from the last step, an array it needs anyway (the TD errors for
GAE, a copy of the rewards for returns) instead of stacking scan outputs into a fresh zero-filled
buffer, and keeps a scalar `lambda_` a scalar instead of broadcasting it to `[T, B]`. Each step
does the scan body's arithmetic, so results agree to float rounding (bit for bit on the
benchmark); on a 2-core CPU the loop runs `[1024, 256]` GAE and lambda-returns 1.1-1.6x faster
than the stacked scan and `jax.vmap`-ed rlax (`experiments/bench/bellman.py`). Derivatives come
from a `jax.custom_jvp`: the tangent recursion is linear, its coefficients are computed
vectorised, and one `lax.scan` runs it (differentiating the in-place loop itself made XLA copy the
buffer every step, ~50x slower). Single-trajectory functions keep the stacked scan: under
`jax.vmap` over a trailing axis the in-place buffer would be laid out batch-first, each step would
write a strided column, and the loop was ~10x slower than the vmapped scan.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = [
    "discounted_returns",
    "lambda_returns",
    "n_step_bootstrapped_returns",
    "truncated_generalized_advantage_estimation",
]


# --------------------------------------------------------------------------------------------
# Argument handling shared with `_batching` and `_value_learning`.
# --------------------------------------------------------------------------------------------


def _floats(*arrays):
    """Upcasts to >= float32 and to one common floating dtype (float64 stays float64)."""
    arrays = [f32(a) for a in arrays]
    dtype = jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]


def _per_step(fn: str, name: str, value, shape: tuple[int, ...], reference: str = "r_t") -> None:
    """Raises `ValueError` unless `value` is a scalar or has the `shape` of `reference`."""
    got = tuple(jnp.shape(value))
    if got and got != tuple(shape):
        raise ValueError(
            f"{fn}: `{name}` must be a scalar or have the shape of `{reference}` "
            f"{tuple(shape)}, got {got}."
        )


def _resolve_unroll(fn: str, unroll: int | None) -> int:
    """The `lax.scan` unroll factor: `None` picks 1 on CPU and 32 on accelerators.

    Each scan step is tiny (one row of the trajectory), so the loop overhead dominates. On GPU a
    step costs a kernel launch and unrolling 32 steps per loop iteration made `[1024, 256]` GAE
    about 40x faster (H100, `experiments/bench/bellman.py`); on CPU, XLA's unrolled loop bodies
    were slower than the plain loop. With 1, the time-major cores run in place (module docstring);
    an unrolled in-place loop makes XLA copy the whole buffer every step, so unrolled cores keep
    the stacked scan.
    """
    if unroll is None:
        return 1 if jax.default_backend() == "cpu" else 32
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"{fn}: `unroll` must be a Python int >= 1 or None, got {unroll!r}.")
    return unroll


def _maybe_stop(x, stop_target_gradients: bool):
    return jax.lax.stop_gradient(x) if stop_target_gradients else x


def _check_sequences(fn: str, rank: int, arrays: dict) -> tuple[int, ...]:
    first = next(iter(arrays))
    for name, value in arrays.items():
        check_rank(name, value, rank, fn=fn)
    check_floating(fn, arrays)
    return check_same_shape(fn, first, arrays)


# --------------------------------------------------------------------------------------------
# Scan bodies and cores (time is the leading axis; trailing axes are batch axes).
# --------------------------------------------------------------------------------------------


class _ReturnCarry(NamedTuple):
    """Reverse-scan state: the return `G_{t+1}` of the step after the current one."""

    g: jax.Array


def _lambda_return(g, r_t, discount_t, v_t, lambda_t):
    """One backward step of the lambda-return: `G_t` from `G_{t+1}` (elementwise)."""
    return r_t + discount_t * ((1.0 - lambda_t) * v_t + lambda_t * g)


def _lambda_return_step(carry: _ReturnCarry, xs):
    g = _lambda_return(carry.g, *xs)
    return _ReturnCarry(g), g


def _scan_lambda_returns(r_t, discount_t, v_t, lambda_t, *, unroll: int, in_place: bool = False):
    """`G_t = r_t + d_t ((1 - l_t) v_t + l_t G_{t+1})`, `G_T = v_{T-1}`; scans axis 0."""
    lambda_t = jnp.asarray(lambda_t, r_t.dtype)
    if in_place and unroll == 1:
        rows, consts = _split_per_step((discount_t, v_t, lambda_t))
        return _reverse_scan_in_place(_lambda_return, v_t[-1], r_t, rows, consts)
    lambda_t = jnp.broadcast_to(lambda_t, r_t.shape)
    _, g = jax.lax.scan(
        _lambda_return_step,
        _ReturnCarry(v_t[-1]),
        (r_t, discount_t, v_t, lambda_t),
        reverse=True,
        unroll=unroll,
    )
    return g


def _discounted_return(g, r_t, discount_t):
    """One backward step of the discounted return: `G_t` from `G_{t+1}` (elementwise)."""
    return r_t + discount_t * g


def _discounted_return_step(carry: _ReturnCarry, xs):
    g = _discounted_return(carry.g, *xs)
    return _ReturnCarry(g), g


def _scan_discounted_returns(r_t, discount_t, bootstrap, *, unroll: int, in_place: bool = False):
    """`G_t = r_t + d_t G_{t+1}`, `G_T = bootstrap`; scans axis 0."""
    if in_place and unroll == 1:
        return _reverse_scan_in_place(_discounted_return, bootstrap, r_t, (discount_t,), ())
    _, g = jax.lax.scan(
        _discounted_return_step,
        _ReturnCarry(bootstrap),
        (r_t, discount_t),
        reverse=True,
        unroll=unroll,
    )
    return g


class _AdvantageCarry(NamedTuple):
    """Reverse-scan state: the advantage `A_{t+1}` of the step after the current one."""

    a: jax.Array


def _advantage(a, delta_t, discount_t, lambda_t):
    """One backward step of GAE: `A_t` from `A_{t+1}` (elementwise)."""
    return delta_t + discount_t * lambda_t * a


def _gae_step(carry: _AdvantageCarry, xs):
    a = _advantage(carry.a, *xs)
    return _AdvantageCarry(a), a


def _scan_gae(r_t, discount_t, lambda_t, values, *, unroll: int, in_place: bool = False):
    """`A_t = delta_t + d_t l_t A_{t+1}`, `delta_t = r_t + d_t v_{t+1} - v_t`; scans axis 0."""
    lambda_t = jnp.asarray(lambda_t, r_t.dtype)
    delta_t = r_t + discount_t * values[1:] - values[:-1]
    if in_place and unroll == 1:
        rows, consts = _split_per_step((discount_t, lambda_t))
        return _reverse_scan_in_place(_advantage, jnp.zeros_like(r_t[0]), delta_t, rows, consts)
    lambda_t = jnp.broadcast_to(lambda_t, r_t.shape)
    _, a = jax.lax.scan(
        _gae_step,
        _AdvantageCarry(jnp.zeros_like(r_t[0])),
        (delta_t, discount_t, lambda_t),
        reverse=True,
        unroll=unroll,
    )
    return a


# --------------------------------------------------------------------------------------------
# In-place reverse loop (time-major cores): same steps, no stacked output buffer.
# --------------------------------------------------------------------------------------------


def _split_per_step(args: tuple) -> tuple[tuple, tuple]:
    """Splits step arguments into per-step arrays and a trailing run of scalars.

    The arrays are read one row per step; the scalars are loop invariants. Only trailing scalars
    are split off, so the step function sees its arguments in the same order.
    """
    args = tuple(args)
    cut = len(args)
    while cut and jnp.ndim(args[cut - 1]) == 0:
        cut -= 1
    return args[:cut], args[cut:]


def _row(x, t):
    return jax.lax.dynamic_index_in_dim(x, t, 0, keepdims=False, allow_negative_indices=False)


class _InPlaceCarry(NamedTuple):
    """In-place loop state.

    Attributes:
      g: value of the step after the current one (`G_{t+1}`, `A_{t+1}`).
      out: `[T, ...]` buffer; rows `> t` hold results, rows `<= t` still hold the input that the
        step reads in the first argument position (rewards, TD errors).
    """

    g: jax.Array
    out: jax.Array


def _in_place_step(i, carry: _InPlaceCarry, *, step, rows, consts, length: int):
    t = length - 1 - i
    g = step(carry.g, _row(carry.out, t), *(_row(x, t) for x in rows), *consts)
    out = jax.lax.dynamic_update_index_in_dim(carry.out, g, t, 0, allow_negative_indices=False)
    return _InPlaceCarry(g, out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _reverse_scan_in_place(step, init, first, rows, consts):
    """`g_t = step(g_{t+1}, first_t, *rows_t, *consts)` for t = T-1 .. 0, with `g_T = init`.

    `step` is elementwise; `first` and every array in `rows` have a leading time axis, `consts`
    are scalars. The loop writes `g_t` over row t of (XLA's copy of) `first`, so no output buffer
    is zero-filled and nothing is stacked.
    """
    length = first.shape[0]
    body = functools.partial(
        _in_place_step, step=step, rows=tuple(rows), consts=tuple(consts), length=length
    )
    return jax.lax.fori_loop(0, length, body, _InPlaceCarry(init, first)).out


def _linear_reverse_step(g_dot, xs):
    u_t, k_t = xs
    g_dot = u_t + k_t * g_dot
    return g_dot, g_dot


@_reverse_scan_in_place.defjvp
def _reverse_scan_in_place_jvp(step, primals, tangents):
    """Tangents of the recursion: `dg_t = u_t + k_t dg_{t+1}`, `dg_T = d init`.

    `k_t = d step / d g` and `u_t` (the step's tangent from its other inputs) are evaluated at
    the primal `g_{t+1}` for all t at once; one linear `lax.scan` then runs the recursion, which
    JAX transposes into a forward scan for reverse mode.
    """
    init, first, rows, consts = primals
    init_dot, first_dot, rows_dot, consts_dot = tangents
    out = _reverse_scan_in_place(step, init, first, rows, consts)
    g_next = jnp.concatenate([out[1:], init[None]])
    data = (first, *rows, *consts)
    data_dot = (first_dot, *rows_dot, *consts_dot)
    _, u = jax.jvp(lambda *a: step(g_next, *a), data, data_dot)
    _, k = jax.jvp(lambda g: step(g, *data), (g_next,), (jnp.ones_like(g_next),))
    u, k = (jnp.broadcast_to(x, out.shape) for x in (u, k))
    _, out_dot = jax.lax.scan(_linear_reverse_step, init_dot, (u, k), reverse=True)
    return out, out_dot


class _NStepCarry(NamedTuple):
    """State of the n-step recursion: targets after accumulating `n - 1 - i` more rewards."""

    targets: jax.Array


def _n_step_update(carry: _NStepCarry, i, *, padded, length: int):
    r_pad, discount_pad, lambda_pad, v_pad = padded

    def window(x):
        return jax.lax.dynamic_slice_in_dim(x, i, length, axis=0)

    r_, discount_, lambda_, v_ = (
        window(r_pad),
        window(discount_pad),
        window(lambda_pad),
        window(v_pad),
    )
    targets = r_ + discount_ * ((1.0 - lambda_) * v_ + lambda_ * carry.targets)
    return _NStepCarry(targets), None


def _scan_n_step(r_t, discount_t, v_t, n: int, lambda_t):
    """Strided n-step targets; `n` iterations of a shifted one-step backup, scanned."""
    length = r_t.shape[0]
    lambda_t = jnp.broadcast_to(jnp.asarray(lambda_t, r_t.dtype), r_t.shape)
    pad = n - 1
    tail = jnp.repeat(v_t[-1:], pad, axis=0)
    targets = jnp.concatenate([v_t[n - 1 :], jnp.repeat(v_t[-1:], min(pad, length), axis=0)])
    padded = (
        jnp.concatenate([r_t, jnp.zeros((pad, *r_t.shape[1:]), r_t.dtype)]),
        jnp.concatenate([discount_t, jnp.ones((pad, *r_t.shape[1:]), r_t.dtype)]),
        jnp.concatenate([lambda_t, jnp.ones((pad, *r_t.shape[1:]), r_t.dtype)]),
        jnp.concatenate([v_t, tail]),
    )
    body = functools.partial(_n_step_update, padded=padded, length=length)
    carry, _ = jax.lax.scan(body, _NStepCarry(targets), jnp.arange(n), reverse=True)
    return carry.targets


# --------------------------------------------------------------------------------------------
# Public single-trajectory functions (rlax-compatible).
# --------------------------------------------------------------------------------------------


def lambda_returns(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    lambda_: ArrayLike = 1.0,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""Truncated lambda-returns of one trajectory, computed backwards by a reverse scan.

        G_t = r_t + discount_t * ((1 - lambda_t) * v_t + lambda_t * G_{t+1}),   G_T = v_{T-1}

    so the last step bootstraps fully from `v_{T-1}`. `lambda_ = 1` gives the discounted return
    bootstrapped at the end, `lambda_ = 0` the one-step target `r_t + discount_t * v_t`. A per-step
    `lambda_` implements off-policy traces (e.g. `lambda_t = min(1, rho_t)` for V-trace style
    cuts). Same name, argument order and semantics as `rlax.lambda_returns`.

    Args:
      r_t: `[T]` rewards received on the transition out of step t (times 1..T in rlax terms).
      discount_t: `[T]` discounts of those transitions; 0 marks an episode end.
      v_t: `[T]` values of the states reached (bootstrap values `v(s_{t+1})`).
      lambda_: scalar or `[T]` mixing parameter.
      stop_target_gradients: if True, no gradient flows through the returns.
      unroll: `lax.scan` unroll factor, a speed knob (results agree to float rounding); None
        picks 1 on CPU and 32 on accelerators.

    Returns:
      `[T]` lambda-returns `G_0 .. G_{T-1}` (float32, or float64 for float64 inputs).

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., ch. 12.

    Example:
      >>> import jax.numpy as jnp
      >>> g = lambda_returns(jnp.array([1.0, 1.0]), jnp.array([0.5, 0.5]),
      ...                    jnp.array([2.0, 4.0]), 0.5)
      >>> print([round(float(x), 4) for x in g])  # G_1 = 1 + .5*4 = 3; G_0 = 1 + .5*(1 + 1.5)
      [2.25, 3.0]
    """
    fn = "lambda_returns"
    shape = _check_sequences(fn, 1, {"r_t": r_t, "discount_t": discount_t, "v_t": v_t})
    check_rank("lambda_", lambda_, (0, 1), fn=fn)
    _per_step(fn, "lambda_", lambda_, shape)
    r_t, discount_t, v_t, lambda_ = _floats(r_t, discount_t, v_t, lambda_)
    returns = _scan_lambda_returns(
        r_t, discount_t, v_t, lambda_, unroll=_resolve_unroll(fn, unroll)
    )
    return _maybe_stop(returns, stop_target_gradients)


def discounted_returns(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""Discounted returns of one trajectory, bootstrapped from the value after the last step.

        G_t = r_t + discount_t * G_{t+1},   G_T = v_{T-1}

    Only the bootstrap value after the final step matters: `v_t` may be a scalar, or a `[T]`
    array of which only the last entry is used (as in `rlax.discounted_returns`).

    Args:
      r_t: `[T]` rewards.
      discount_t: `[T]` discounts; 0 marks an episode end.
      v_t: scalar or `[T]` bootstrap value(s).
      stop_target_gradients: if True, no gradient flows through the returns.
      unroll: `lax.scan` unroll factor (None: 1 on CPU, 32 on accelerators).

    Returns:
      `[T]` discounted returns.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., sec. 3.3.

    Example:
      >>> import jax.numpy as jnp
      >>> g = discounted_returns(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 0.0, 0.5]), 10.0)
      >>> print([round(float(x), 4) for x in g])  # the episode ends after step 1
      [2.0, 2.0, 8.0]
    """
    fn = "discounted_returns"
    shape = _check_sequences(fn, 1, {"r_t": r_t, "discount_t": discount_t})
    check_rank("v_t", v_t, (0, 1), fn=fn)
    _per_step(fn, "v_t", v_t, shape)
    r_t, discount_t, v_t = _floats(r_t, discount_t, v_t)
    bootstrap = v_t[-1] if v_t.ndim else v_t
    returns = _scan_discounted_returns(
        r_t, discount_t, bootstrap, unroll=_resolve_unroll(fn, unroll)
    )
    return _maybe_stop(returns, stop_target_gradients)


def n_step_bootstrapped_returns(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    n: int,
    lambda_t: ArrayLike = 1.0,
    stop_target_gradients: bool = False,
) -> jax.Array:
    r"""Strided n-step bootstrapped returns: accumulate up to `n` rewards, then bootstrap.

        G_t^(n) = r_t + d_t (r_{t+1} + d_{t+1} (... (r_{t+n-1} + d_{t+n-1} v_{t+n-1})))

    with the general form `G <- r + d ((1 - lambda) v + lambda G)` iterated `n` times (so a
    `lambda_t` below 1 mixes in shorter bootstraps). Windows running past the end bootstrap from
    `v_{T-1}`. Computed as a scan over the `n` shifted one-step backups (n is static).

    Args:
      r_t: `[T]` rewards.
      discount_t: `[T]` discounts; 0 marks an episode end.
      v_t: `[T]` bootstrap values of the states reached.
      n: number of rewards to accumulate before bootstrapping (>= 1).
      lambda_t: scalar or `[T]` mixing parameter (1 gives pure n-step returns).
      stop_target_gradients: if True, no gradient flows through the returns.

    Returns:
      `[T]` n-step returns.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., sec. 7.1.

    Example:
      >>> import jax.numpy as jnp
      >>> g = n_step_bootstrapped_returns(jnp.array([1.0, 1.0, 1.0]), jnp.ones(3),
      ...                                 jnp.array([10.0, 20.0, 30.0]), 2)
      >>> print([round(float(x), 4) for x in g])  # 1 + 1 + v_1, 1 + 1 + v_2, 1 + v_2
      [22.0, 32.0, 31.0]
    """
    fn = "n_step_bootstrapped_returns"
    shape = _check_sequences(fn, 1, {"r_t": r_t, "discount_t": discount_t, "v_t": v_t})
    check_rank("lambda_t", lambda_t, (0, 1), fn=fn)
    _per_step(fn, "lambda_t", lambda_t, shape)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{fn}: `n` must be a Python int >= 1, got {n!r}.")
    r_t, discount_t, v_t, lambda_t = _floats(r_t, discount_t, v_t, lambda_t)
    returns = _scan_n_step(r_t, discount_t, v_t, n, lambda_t)
    return _maybe_stop(returns, stop_target_gradients)


def truncated_generalized_advantage_estimation(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    lambda_: ArrayLike,
    values: ArrayLike,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""Truncated generalized advantage estimates (GAE) of one trajectory.

        delta_t = r_t + discount_t * values_{t+1} - values_t
        A_t     = delta_t + discount_t * lambda_t * A_{t+1},   A_T = 0

    Same name, argument order (`lambda_` before `values`) and semantics as
    `rlax.truncated_generalized_advantage_estimation`.

    Args:
      r_t: `[T]` rewards.
      discount_t: `[T]` discounts; 0 marks an episode end.
      lambda_: scalar or `[T]` GAE mixing parameter.
      values: `[T + 1]` state values `v(s_0) .. v(s_T)` (the last one is the bootstrap).
      stop_target_gradients: if True, no gradient flows through the advantages.
      unroll: `lax.scan` unroll factor (None: 1 on CPU, 32 on accelerators).

    Returns:
      `[T]` advantages `A_0 .. A_{T-1}`.

    References:
      Schulman, Moritz, Levine, Jordan, Abbeel, "High-Dimensional Continuous Control Using
      Generalized Advantage Estimation", arXiv:1506.02438.

    Example:
      >>> import jax.numpy as jnp
      >>> a = truncated_generalized_advantage_estimation(
      ...     jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0]), 0.5, jnp.array([0.0, 1.0, 2.0]))
      >>> print([round(float(x), 4) for x in a])  # deltas (2, 2); A_0 = 2 + 0.5 * 2
      [3.0, 2.0]
    """
    fn = "truncated_generalized_advantage_estimation"
    shape = _check_sequences(fn, 1, {"r_t": r_t, "discount_t": discount_t})
    check_rank("values", values, 1, fn=fn)
    check_floating(fn, {"values": values})
    if jnp.shape(values) != (shape[0] + 1,):
        raise ValueError(
            f"{fn}: `values` must have shape {(shape[0] + 1,)} (one more than `r_t` {shape}), "
            f"got {tuple(jnp.shape(values))}."
        )
    check_rank("lambda_", lambda_, (0, 1), fn=fn)
    _per_step(fn, "lambda_", lambda_, shape)
    r_t, discount_t, lambda_, values = _floats(r_t, discount_t, lambda_, values)
    advantages = _scan_gae(r_t, discount_t, lambda_, values, unroll=_resolve_unroll(fn, unroll))
    return _maybe_stop(advantages, stop_target_gradients)
