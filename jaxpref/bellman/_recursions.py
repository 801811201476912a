"""Reverse-scan cores of the return and advantage recursions, shared by `_multistep`, `_layouts`
and `_value_learning`.

Every recursion is one reverse scan over the leading (time) axis with a named body over a
NamedTuple carry; the cores accept trailing batch axes, which the time-major layout
(`time_major(fn)`, `_layouts`) uses to scan a `[T, B]` rollout directly. The masked cores at the
end scan batch-major rows (transposed) whose carry skips masked steps (`batch_major(fn)`).
Arguments are checked and cast by the callers.

With `in_place=True` (the time-major layout) and no unrolling, a core runs the same recursion
as a loop that overwrites, row by row from the last step, an array it needs anyway (the TD errors
for GAE, a copy of the rewards for returns) instead of stacking scan outputs into a fresh
zero-filled buffer, and keeps a scalar `lambda_` a scalar instead of broadcasting it to `[T, B]`.
Each step does the scan body's arithmetic, so results agree to float rounding (bit for bit on the
benchmark); on a 2-core CPU the loop runs `[1024, 256]` GAE and lambda-returns 1.1-1.6x faster
than the stacked scan and `jax.vmap`-ed rlax (`experiments/bench/bellman.py`). Derivatives come
from a `jax.custom_jvp`: the tangent recursion is linear, its coefficients are computed
vectorised, and one `lax.scan` runs it (differentiating the in-place loop itself made XLA copy the
buffer every step, ~50x slower). The single-trajectory layout keeps the stacked scan: under
`jax.vmap` over a trailing axis the in-place buffer would be laid out batch-first, each step would
write a strided column, and the loop was ~10x slower than the vmapped scan.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__: list[str] = []


def resolve_unroll(fn: str, unroll: int | None) -> int:
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


def scan_lambda_returns(r_t, discount_t, v_t, lambda_t, *, unroll: int, in_place: bool = False):
    """`G_t = r_t + d_t ((1 - l_t) v_t + l_t G_{t+1})`, `G_T = v_{T-1}`; scans axis 0."""
    lambda_t = jnp.asarray(lambda_t, r_t.dtype)
    if in_place and unroll == 1:
        rows, consts = split_per_step((discount_t, v_t, lambda_t))
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


def scan_discounted_returns(r_t, discount_t, bootstrap, *, unroll: int, in_place: bool = False):
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


def scan_gae(r_t, discount_t, lambda_t, values, *, unroll: int, in_place: bool = False):
    """`A_t = delta_t + d_t l_t A_{t+1}`, `delta_t = r_t + d_t v_{t+1} - v_t`; scans axis 0."""
    lambda_t = jnp.asarray(lambda_t, r_t.dtype)
    delta_t = r_t + discount_t * values[1:] - values[:-1]
    if in_place and unroll == 1:
        rows, consts = split_per_step((discount_t, lambda_t))
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


def split_per_step(args: tuple) -> tuple[tuple, tuple]:
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


def scan_n_step(r_t, discount_t, v_t, n: int, lambda_t):
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
# Masked cores (batch-major rows, scanned time-major): masked steps are skipped.
# --------------------------------------------------------------------------------------------
#
# Inputs are time-major `[T, B]` with masked entries zeroed; `valid` is `[T, B]` bool. A masked
# step leaves the carry unchanged and outputs 0, so the recursion runs through masked gaps as if
# they were absent, exactly as on the row compacted to its valid steps.


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
    g = _lambda_return(g_next, r_t, discount_t, v_t, lambda_t)
    new = _MaskedReturnCarry(jnp.where(valid, g, carry.g), carry.started | valid)
    return new, jnp.where(valid, g, 0.0)


def scan_masked_lambda_returns(valid, r_t, discount_t, v_t, lambda_t, *, unroll: int):
    """Lambda-returns of the valid steps; the last valid step bootstraps from its own `v_t`."""
    batch = r_t.shape[1:]
    lambda_t = jnp.broadcast_to(jnp.asarray(lambda_t, r_t.dtype), r_t.shape)
    init = _MaskedReturnCarry(jnp.zeros(batch, r_t.dtype), jnp.zeros(batch, bool))
    _, g = jax.lax.scan(
        _masked_lambda_return_step,
        init,
        (valid, r_t, discount_t, v_t, lambda_t),
        reverse=True,
        unroll=unroll,
    )
    return g


def _masked_discounted_return_step(carry: _MaskedReturnCarry, xs):
    valid, r_t, discount_t = xs
    g = _discounted_return(carry.g, r_t, discount_t)
    new = _MaskedReturnCarry(jnp.where(valid, g, carry.g), carry.started | valid)
    return new, jnp.where(valid, g, 0.0)


def scan_masked_discounted_returns(valid, r_t, discount_t, bootstrap, *, unroll: int):
    """Discounted returns of the valid steps, `bootstrap` (`[B]`) after the last one."""
    init = _MaskedReturnCarry(bootstrap, jnp.zeros(r_t.shape[1:], bool))
    _, g = jax.lax.scan(
        _masked_discounted_return_step,
        init,
        (valid, r_t, discount_t),
        reverse=True,
        unroll=unroll,
    )
    return g


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
    a = _advantage(carry.a, delta, discount_t, lambda_t)
    new = _MaskedAdvantageCarry(jnp.where(valid, a, carry.a), jnp.where(valid, v_t, carry.v_next))
    return new, jnp.where(valid, a, 0.0)


def scan_masked_gae(valid, r_t, discount_t, lambda_t, values, *, unroll: int):
    """GAE of the valid steps; `values` is `[T + 1, B]`, row T the value after the last one."""
    lambda_t = jnp.broadcast_to(jnp.asarray(lambda_t, r_t.dtype), r_t.shape)
    init = _MaskedAdvantageCarry(jnp.zeros(r_t.shape[1:], r_t.dtype), values[-1])
    _, a = jax.lax.scan(
        _masked_gae_step,
        init,
        (valid, r_t, discount_t, lambda_t, values[:-1]),
        reverse=True,
        unroll=unroll,
    )
    return a
