"""Argument checks shared by the pure-function layers.

Every public function validates shapes at trace time (shapes are static under `jax.jit`), so a
mistake raises a `ValueError` naming the argument and the expected vs actual shape instead of
broadcasting silently.

One argument order for every check: the value (or a `{name: array}` dict of values) first, then
its name, then the constraint, then the keyword-only `fn` (the calling function's name, which
prefixes the message):

    check_rank(x, "r_t", 1, fn=fn)
    check_same_shape({"r_t": r_t, "mask": mask}, "r_t", fn=fn)
    check_floating({"r_t": r_t}, fn=fn)
    check_positive(beta, "beta", fn=fn)
    check_interval(label_smoothing, "label_smoothing", 0.0, 0.5, fn=fn)

Hyperparameter checks (`check_positive`, `check_nonnegative`, `check_interval`) apply to Python
numbers; traced values (for example a `beta` being differentiated) pass through unchecked.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax.numpy as jnp


def _where(fn: str | None) -> str:
    return f"{fn}: " if fn else ""


def check_rank(x, name: str, rank: int | Sequence[int], *, fn: str | None = None) -> None:
    """Raises `ValueError` unless `x` has one of the given ranks."""
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if jnp.ndim(x) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{_where(fn)}`{name}` must have rank {want}, got shape {tuple(jnp.shape(x))} "
            f"(rank {jnp.ndim(x)})."
        )


def check_same_shape(arrays: dict, reference: str, *, fn: str | None = None) -> tuple[int, ...]:
    """Raises `ValueError` unless every non-None array in `arrays` has the shape of `reference`.

    Args:
      arrays: mapping from argument name to array (or None, which is skipped).
      reference: key of `arrays` whose shape the others must match.
      fn: name of the calling function, used in the message.

    Returns:
      The common shape.
    """
    shape = tuple(jnp.shape(arrays[reference]))
    for name, value in arrays.items():
        if value is None:
            continue
        got = tuple(jnp.shape(value))
        if got != shape:
            raise ValueError(
                f"{_where(fn)}`{name}` must have the shape of `{reference}` {shape}, got {got}."
            )
    return shape


def check_floating(arrays: dict, *, fn: str | None = None) -> None:
    """Raises `TypeError` if a non-None array in `arrays` is not of a floating dtype."""
    for name, value in arrays.items():
        if value is None:
            continue
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise TypeError(
                f"{_where(fn)}`{name}` must be a floating-point array, got dtype "
                f"{jnp.result_type(value)}."
            )


def _is_static(value) -> bool:
    return isinstance(value, numbers.Real)


def check_positive(x, name: str, *, fn: str | None = None) -> None:
    """Raises `ValueError` if `x` is a Python number that is not > 0 (traced values pass)."""
    if _is_static(x) and not x > 0:
        raise ValueError(f"{_where(fn)}`{name}` must be > 0, got {x}.")


def check_nonnegative(x, name: str, *, fn: str | None = None) -> None:
    """Raises `ValueError` if `x` is a Python number below 0 (traced values pass)."""
    if _is_static(x) and x < 0:
        raise ValueError(f"{_where(fn)}`{name}` must be >= 0, got {x}.")


def check_interval(
    x,
    name: str,
    low: float,
    high: float,
    *,
    closed_low: bool = True,
    closed_high: bool = True,
    fn: str | None = None,
) -> None:
    """Raises `ValueError` if `x` is a Python number outside the interval (traced values pass).

    The interval is `[low, high]`; `closed_low=False` / `closed_high=False` open either end.
    """
    if not _is_static(x):
        return
    ok_low = x >= low if closed_low else x > low
    ok_high = x <= high if closed_high else x < high
    if not (ok_low and ok_high):
        left = "[" if closed_low else "("
        right = "]" if closed_high else ")"
        raise ValueError(f"{_where(fn)}`{name}` must lie in {left}{low}, {high}{right}, got {x}.")


def check_int(x, name: str, *, minimum: int, fn: str | None = None) -> None:
    """Raises `ValueError` unless `x` is a Python int `>= minimum` (a static count)."""
    if not isinstance(x, int) or x < minimum:
        raise ValueError(f"{_where(fn)}`{name}` must be a Python int >= {minimum}, got {x!r}.")


def f32(x):
    """Upcasts a floating array to at least float32 (float64 stays float64); None passes."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float32)
    return x
