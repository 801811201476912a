"""Argument checks shared by the pure-function layers.

Every public function validates shapes at trace time (shapes are static under `jax.jit`), so a
mistake raises a `ValueError` naming the argument and the expected vs actual shape instead of
broadcasting silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp


def check_rank(name: str, x, rank: int | Sequence[int], *, fn: str | None = None) -> None:
    """Raises `ValueError` unless `x` has one of the given ranks."""
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if jnp.ndim(x) not in ranks:
        where = f"{fn}: " if fn else ""
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{where}`{name}` must have rank {want}, got shape {tuple(jnp.shape(x))} "
            f"(rank {jnp.ndim(x)})."
        )


def check_same_shape(fn: str, reference: str, arrays: dict) -> tuple[int, ...]:
    """Raises `ValueError` unless every non-None array in `arrays` has the shape of `reference`.

    Args:
      fn: name of the calling function, used in the message.
      reference: key of `arrays` whose shape the others must match.
      arrays: mapping from argument name to array (or None, which is skipped).

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
                f"{fn}: `{name}` must have the shape of `{reference}` {shape}, got {got}."
            )
    return shape


def check_floating(fn: str, arrays: dict) -> None:
    """Raises `TypeError` if a non-None array in `arrays` is not of a floating dtype."""
    for name, value in arrays.items():
        if value is None:
            continue
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise TypeError(
                f"{fn}: `{name}` must be a floating-point array, got dtype "
                f"{jnp.result_type(value)}."
            )


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
