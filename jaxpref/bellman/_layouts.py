"""Layouts of the return and advantage functions: one trajectory, `[T, B]` rollouts, `[B, T]` rows.

Each return or advantage function of `_multistep` is written once, for one trajectory `[T]`, with
a `Recursion`: which of its arguments are rewards, values, discounts, traces, state values or
bootstrap values, and which reverse-scan cores of `_recursions` compute it. `apply` checks and
casts the arguments of a call in one of three layouts and runs a core:

- `"single"`: one trajectory `[T]` (the public functions themselves; rlax's semantics). The core
  is the stacked `lax.scan`, which `jax.vmap` batches over any axis.
- `"time_major"`: rollouts `[T, B]` (`time_major(fn)`). The same core scans the `[T, B]` arrays
  directly; without unrolling it runs in place (`_recursions`), 1.1-1.6x faster than vmapping
  the scan. Equals `jax.vmap(fn, in_axes=1, out_axes=1)`.
- `"batch_major"`: language-model rows `[B, T]` with a mask (`batch_major(fn)`). The rows are
  transposed, zeroed at masked steps, and run by the function's masked scan, whose carry skips
  masked steps. n-step returns, whose windows count steps, have no masked scan: each row's
  valid steps are moved, in order, to the end of the row by a permutation, the time-major core
  runs, and the results are permuted back. Both give exactly the result of compacting each row,
  applying `fn` and scattering back, with 0 at masked steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from jaxpref._checks import check_floating, check_int, check_rank, check_same_shape
from jaxpref.bellman._args import check_per_step, floats, maybe_stop
from jaxpref.bellman._recursions import resolve_unroll

__all__ = ["batch_major", "time_major"]

Layout = Literal["single", "time_major", "batch_major"]

Kind = Literal["reward", "value", "discount", "trace", "values", "bootstrap"]
"""How a recursion reads one argument (shapes for one trajectory of length T):

- `"reward"`: a floating `[T]` array (`r_t`), the shape reference.
- `"value"`: a floating `[T]` array of values of the states reached (`v_t`); the last step
  bootstraps from its own value.
- `"discount"`: a scalar or `[T]` (`discount_t`), broadcast to `[T]`.
- `"trace"`: a scalar or `[T]` (`lambda_`); a scalar stays a scalar (a loop invariant).
- `"values"`: a floating `[T + 1]` array of state values, the last one the bootstrap.
- `"bootstrap"`: a scalar, or `[T]` of which only the last step is used (`discounted_returns`).
"""


class Recursion(NamedTuple):
    """A return or advantage function of one trajectory, as the layouts see it.

    Attributes:
      arrays: `(name, kind)` of the array arguments, in signature order (see `Kind`).
      core: `core(*arrays, unroll=, in_place=, **static)`: the result `[T, ...]` from float
        arrays with time leading and any trailing batch axes (scalars stay scalars, except
        discounts, which are broadcast).
      static: names of Python int arguments (>= 1) passed to `core` by name (`n`).
      masked_core: `masked_core(valid, *arrays, unroll=, **static)`: the recursion over masked
        rows, time-major (`valid` and the arrays `[T, B]`, zero at masked steps; `values`
        `[T + 1, B]`; a bootstrap `[B]`), skipping masked steps in its carry and returning 0
        there. None: the batch-major layout moves each row's valid steps to its end instead
        (n-step returns, whose windows count steps, have no masked scan).
    """

    arrays: tuple[tuple[str, Kind], ...]
    core: Callable[..., jax.Array]
    static: tuple[str, ...] = ()
    masked_core: Callable[..., jax.Array] | None = None


_RECURSIONS: dict[Callable, Recursion] = {}


def with_layouts(recursion: Recursion):
    """Decorator: registers a single-trajectory function's `Recursion` for the layout transforms."""

    def register(fn):
        _RECURSIONS[fn] = recursion
        return fn

    return register


# --------------------------------------------------------------------------------------------
# Checks, casts and the three layouts.
# --------------------------------------------------------------------------------------------


def _check(recursion: Recursion, fn: str, args: dict, rank: int, time_axis: int) -> tuple:
    """Checks the array arguments of one call; returns the shape of the reference sequence."""
    sequences = {name: args[name] for name, kind in recursion.arrays if kind in ("reward", "value")}
    for name, value in sequences.items():
        check_rank(value, name, rank, fn=fn)
    check_floating(sequences, fn=fn)
    reference = next(iter(sequences))
    shape = check_same_shape(sequences, reference, fn=fn)
    batch = shape[:time_axis] + shape[time_axis + 1 :]
    for name, kind in recursion.arrays:
        value = args[name]
        if kind in ("discount", "trace"):
            check_rank(value, name, (0, rank), fn=fn)
            check_per_step(value, name, shape, reference=reference, fn=fn)
            if kind == "discount" and jnp.ndim(value):
                check_floating({name: value}, fn=fn)
        elif kind == "values":
            check_rank(value, name, rank, fn=fn)
            check_floating({name: value}, fn=fn)
            want = list(shape)
            want[time_axis] += 1
            if tuple(jnp.shape(value)) != tuple(want):
                raise ValueError(
                    f"{fn}: `{name}` must have shape {tuple(want)} (one more step than "
                    f"`{reference}` {shape}), got {tuple(jnp.shape(value))}."
                )
        elif kind == "bootstrap":
            check_rank(value, name, sorted({0, rank - 1, rank}), fn=fn)
            got = tuple(jnp.shape(value))
            if len(got) == rank:
                check_per_step(value, name, shape, reference=reference, fn=fn)
            elif got and got != batch:
                raise ValueError(
                    f"{fn}: `{name}` of rank {len(got)} must have shape {batch} (the batch axis "
                    f"of `{reference}` {shape}), got {got}."
                )
    return shape


def _permutations(valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(order, inverse)` of `[B, T]` rows moving the valid steps, in order, to the row's end.

    `take_along_axis(x, order, 1)` compacts (masked steps first, then the valid ones) and
    `take_along_axis(y, inverse, 1)` puts each step back where it came from.
    """
    length = valid.shape[1]
    n_valid = jnp.sum(valid, axis=1, keepdims=True, dtype=jnp.int32)
    seen_valid = jnp.cumsum(valid, axis=1, dtype=jnp.int32)
    seen_masked = jnp.cumsum(~valid, axis=1, dtype=jnp.int32)
    inverse = jnp.where(valid, length - n_valid + seen_valid, seen_masked) - 1
    rows = jnp.arange(valid.shape[0])[:, None]
    steps = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), valid.shape)
    order = jnp.zeros_like(inverse).at[rows, inverse].set(steps, unique_indices=True)
    return order, inverse


def apply(
    recursion: Recursion,
    fn: str,
    args: dict,
    *,
    layout: Layout,
    stop_target_gradients: bool = False,
    unroll: int | None = None,
    mask=None,
) -> jax.Array:
    """Runs `recursion` on the arguments `args` (by name) of one call in `layout`.

    `fn` names the caller in error messages. `mask` (`[B, T]`, nonzero = valid) only applies to
    the batch-major layout, where None means every step is valid.
    """
    rank, time_axis = (1, 0) if layout == "single" else (2, 1 if layout == "batch_major" else 0)
    shape = _check(recursion, fn, args, rank, time_axis)
    if layout == "batch_major" and mask is not None:
        check_same_shape({"r_t": args["r_t"], "mask": mask}, "r_t", fn=fn)
    static = {name: args[name] for name in recursion.static}
    for name, value in static.items():
        check_int(value, name, minimum=1, fn=fn)
    unroll = resolve_unroll(fn, unroll)
    names = [name for name, _ in recursion.arrays]
    kinds = dict(recursion.arrays)
    arrays = dict(zip(names, floats(*(args[name] for name in names)), strict=True))
    for name, kind in recursion.arrays:
        if kind == "discount":
            arrays[name] = jnp.broadcast_to(arrays[name], shape)

    if layout != "batch_major":
        out = recursion.core(
            *arrays.values(), unroll=unroll, in_place=layout == "time_major", **static
        )
        return maybe_stop(out, stop_target_gradients)

    if mask is None:
        columns = [x.T if x.ndim == 2 else x for x in arrays.values()]
        out = recursion.core(*columns, unroll=unroll, in_place=True, **static)
        return maybe_stop(out.T, stop_target_gradients)
    valid = jnp.asarray(mask) != 0
    if recursion.masked_core is None:
        columns, restore = _compact(valid, arrays, kinds)
        out = restore(recursion.core(*columns, unroll=unroll, in_place=True, **static).T)
        return maybe_stop(jnp.where(valid, out, 0.0), stop_target_gradients)
    columns = [_masked_column(valid, x, kinds[name], shape) for name, x in arrays.items()]
    out = recursion.masked_core(valid.T, *columns, unroll=unroll, **static)
    return maybe_stop(out.T, stop_target_gradients)


def _last_valid(valid: jax.Array, x: jax.Array) -> jax.Array:
    """`[B]`: each row's entry of `x` (`[B, T]`, zero where masked) at its last valid step."""
    steps = jnp.arange(valid.shape[1])[None, :]
    last = jnp.max(jnp.where(valid, steps, -1), axis=1, keepdims=True)
    return jnp.sum(jnp.where(steps == last, x, 0.0), axis=1)


def _masked_column(valid, x, kind: Kind, shape: tuple):
    """One argument of a masked core: time-major, broadcast, zero at masked steps.

    `values` keep their last column (the bootstrap) as row T; a bootstrap becomes `[B]` (a
    `[B, T]` one is read at each row's last valid step).
    """
    if kind == "values":
        steps = jnp.where(valid, x[:, :-1], 0.0).T
        return jnp.concatenate([steps, x[None, :, -1]])
    if kind == "bootstrap":
        if x.ndim == 2:
            return _last_valid(valid, jnp.where(valid, x, 0.0))
        return jnp.broadcast_to(x, shape[:1])
    return jnp.where(valid, jnp.broadcast_to(x, shape), 0.0).T


def _compact(valid, arrays: dict, kinds: dict):
    """Batch-major masking by compaction: each row's valid steps move, in order, to its end.

    A reverse recursion reads the valid steps first and the (zeroed) masked ones after them, so
    these never reach a valid step. Returns the time-major arrays and the map from time-major
    results back to rows (the inverse permutation).
    """
    order, inverse = _permutations(valid)

    def compact(x):
        return jnp.take_along_axis(jnp.where(valid, x, 0.0), order, axis=1).T

    columns = []
    for name, x in arrays.items():
        if x.ndim < 2:
            columns.append(x)
        elif kinds[name] == "values":
            columns.append(jnp.concatenate([compact(x[:, :-1]), x[None, :, -1]]))
        else:
            columns.append(compact(x))
    return columns, lambda out: jnp.take_along_axis(out, inverse, axis=1)


# --------------------------------------------------------------------------------------------
# Public layout transforms.
# --------------------------------------------------------------------------------------------


def _recursion_of(fn: Callable, transform: str) -> Recursion:
    try:
        return _RECURSIONS[fn]
    except (KeyError, TypeError):
        names = ", ".join(sorted(f.__name__ for f in _RECURSIONS))
        raise TypeError(
            f"{transform}: expected one of the return and advantage functions of "
            f"jaxpref.bellman ({names}), got {fn!r}. Other per-trajectory functions batch with "
            f"`jax.vmap`."
        ) from None


def _arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _call(recursion: Recursion, name: str, arguments: dict, layout: Layout, mask=None):
    stop = arguments.pop("stop_target_gradients", False)
    unroll = arguments.pop("unroll", None)
    return apply(
        recursion,
        name,
        arguments,
        layout=layout,
        stop_target_gradients=stop,
        unroll=unroll,
        mask=mask,
    )


def time_major(fn: Callable) -> Callable:
    r"""A return or advantage function of one trajectory, applied to time-major rollouts `[T, B]`.

    ::

        time_major(fn)(*args) == jax.vmap(fn, in_axes=1, out_axes=1)(*args)

    for `fn` one of `lambda_returns`, `discounted_returns`, `n_step_bootstrapped_returns` and
    `truncated_generalized_advantage_estimation`. The returned function has `fn`'s signature,
    names and defaults; every `[T]` of `fn` reads `[T, B]` (`values`: `[T + 1, B]`; the bootstrap
    `v_t` of `discounted_returns`: a scalar, `[B]` or `[T, B]`), and scalars (discounts, lambda)
    stay scalars. Instead of vmapping the single-trajectory scan it scans the `[T, B]` arrays
    directly, carrying a `[B]` vector; without unrolling (`unroll=1`, the CPU default) the loop
    overwrites the TD errors, or a copy of the rewards, in place, 1.1-1.6x faster than `jax.vmap`
    of the single-trajectory function on `[1024, 256]` (`experiments/bench/bellman.py`).

    Args:
      fn: `jaxpref.bellman.lambda_returns`, `discounted_returns`, `n_step_bootstrapped_returns`
        or `truncated_generalized_advantage_estimation`.

    Returns:
      `fn` over `[T, B]` arrays, returning `[T, B]`.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., ch. 7 and 12;
      Schulman et al., arXiv:1506.02438 (GAE).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.bellman import lambda_returns
      >>> g = time_major(lambda_returns)(jnp.ones((2, 3)), jnp.full((2, 3), 0.5),
      ...                                jnp.full((2, 3), 2.0), 0.0)
      >>> print(g[:, 0].tolist())  # one-step targets 1 + 0.5 * 2
      [2.0, 2.0]
    """
    recursion = _recursion_of(fn, "time_major")
    signature = inspect.signature(fn)
    name = f"time_major({fn.__name__})"

    def over_rollouts(*args, **kwargs):
        return _call(recursion, name, _arguments(signature, args, kwargs), "time_major")

    over_rollouts.__name__ = over_rollouts.__qualname__ = name
    over_rollouts.__signature__ = signature
    over_rollouts.__wrapped__ = fn
    over_rollouts.__doc__ = (
        f"`{fn.__name__}` of time-major rollouts `[T, B]` (see `jaxpref.bellman.time_major`); "
        f"every `[T]` below reads `[T, B]`.\n\n{inspect.getdoc(fn)}"
    )
    return over_rollouts


def batch_major(fn: Callable) -> Callable:
    r"""A return or advantage function of one trajectory, applied to masked rows `[B, T]`.

    ::

        batch_major(fn)(*args, mask=mask)[b] == scatter(fn(*compact(args[b], mask[b])), mask[b])

    for `fn` one of `lambda_returns`, `discounted_returns`, `n_step_bootstrapped_returns` and
    `truncated_generalized_advantage_estimation`. The returned function has `fn`'s signature plus
    a keyword-only `mask`; every `[T]` of `fn` reads `[B, T]` (`values`: `[B, T + 1]`; the
    bootstrap `v_t` of `discounted_returns`: a scalar, `[B]` or `[B, T]`), and scalars stay
    scalars. Rows are language-model sequences and `mask` (`[B, T]`, nonzero = valid; None: all
    valid) marks the steps that exist (completion tokens). Masked steps are removed from the
    trajectory: the result equals compacting each row to its valid steps, applying `fn`, and
    scattering back, with 0 at masked steps. So padding anywhere (left, right or in the middle)
    contributes nothing, the recursion runs through masked gaps as if they were absent (the last
    valid step bootstraps as the last step of a trajectory; `values[:, T]` is the value after it),
    values at masked positions never reach the result or its gradients even if they are NaN, and
    a fully masked row gives zeros with zero (finite) gradients. The rows run, time-major, as
    one scan whose carry skips masked steps (n-step returns: compacted by a permutation and run
    by the time-major loop); without a mask, as the time-major loop.

    Args:
      fn: `jaxpref.bellman.lambda_returns`, `discounted_returns`, `n_step_bootstrapped_returns`
        or `truncated_generalized_advantage_estimation`.

    Returns:
      `fn` over `[B, T]` arrays with a keyword-only `mask`, returning `[B, T]`, 0 at masked
      steps.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., ch. 7 and 12;
      Schulman et al., arXiv:1506.02438 (GAE).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.bellman import lambda_returns
      >>> g = batch_major(lambda_returns)(jnp.array([[1.0, 9.0, 1.0]]), 1.0,
      ...                                 jnp.array([[0.0, 9.0, 5.0]]), mask=jnp.array([[1, 0, 1]]))
      >>> print(g[0].tolist())  # the middle step is skipped: (1 + 1 + 5, 0, 1 + 5)
      [7.0, 0.0, 6.0]
    """
    recursion = _recursion_of(fn, "batch_major")
    signature = inspect.signature(fn)
    mask_parameter = inspect.Parameter("mask", inspect.Parameter.KEYWORD_ONLY, default=None)
    name = f"batch_major({fn.__name__})"

    def over_rows(*args, mask=None, **kwargs):
        arguments = _arguments(signature, args, kwargs)
        return _call(recursion, name, arguments, "batch_major", mask)

    over_rows.__name__ = over_rows.__qualname__ = name
    over_rows.__signature__ = signature.replace(
        parameters=[*signature.parameters.values(), mask_parameter]
    )
    over_rows.__wrapped__ = fn
    over_rows.__doc__ = (
        f"`{fn.__name__}` of masked batch-major rows `[B, T]` (see "
        f"`jaxpref.bellman.batch_major`); every `[T]` below reads `[B, T]`, and `mask` `[B, T]` "
        f"(nonzero = valid) removes steps.\n\n{inspect.getdoc(fn)}"
    )
    return over_rows
