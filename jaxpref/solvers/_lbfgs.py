"""L-BFGS through `optax.lbfgs`, driven by `lax.while_loop` with an explicit status."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax

from jaxpref.solvers._base import IterativeSolver
from jaxpref.solvers._gradient import _OptaxLoop

__all__ = ["LBFGS"]


@dataclasses.dataclass(frozen=True)
class LBFGS(_OptaxLoop, IterativeSolver):
    """Limited-memory BFGS minimiser (`optax.lbfgs`) with a zoom line search by default.

    The search direction is `-H_k grad f(x_k)` with `H_k` the two-loop-recursion inverse-Hessian
    estimate from the last `memory_size` pairs `(s_i, y_i) = (x_{i+1} - x_i, g_{i+1} - g_i)`; the
    step length satisfies the strong Wolfe conditions (zoom line search). Stops when
    `||grad f(x)|| <= tol`. The state is an `OptaxMinimiserState`.

    Differentiate it with `ImplicitAdjoint` (the line search is a `while_loop`, which reverse mode
    cannot unroll; `UnrolledAdjoint` needs `linesearch=None` and a `learning_rate`).

    Args:
      fun: objective `f(x, *args) -> []` (or `([], aux)` with `has_aux`).
      memory_size: number of stored curvature pairs.
      learning_rate: fixed step scale (None: 1, left to the line search).
      linesearch: an optax line search, or None for fixed steps (default: zoom line search with
        at most `max_linesearch_steps` evaluations).
      max_linesearch_steps: used by the default line search.
      has_aux: whether `fun` returns `(value, aux)`.
      max_steps, tol, adjoint, throw: see `IterativeSolver`.

    References:
      Liu & Nocedal. "On the limited memory BFGS method for large scale optimization."
      Mathematical Programming 45 (1989).

    Example:
      >>> import jax.numpy as jnp
      >>> f = lambda x, a: jnp.sum((x - a) ** 2) + 0.1 * jnp.sum(x**4)
      >>> sol = LBFGS(f, tol=1e-5).run(jnp.zeros(3), jnp.array([1.0, 0.0, -1.0]))
      >>> print([round(float(v), 4) for v in sol.value], int(sol.result))
      [0.8688, 0.0, -0.8688] 0
    """

    fun: Callable
    _: dataclasses.KW_ONLY
    memory_size: int = 10
    learning_rate: float | None = None
    linesearch: Any = "zoom"
    max_linesearch_steps: int = 20
    has_aux: bool = False

    def _transformation(self):
        linesearch = self.linesearch
        if isinstance(linesearch, str):
            if linesearch != "zoom":
                raise ValueError(
                    f"LBFGS: `linesearch` must be 'zoom', None or an optax line search, "
                    f"got {linesearch!r}."
                )
            linesearch = optax.scale_by_zoom_linesearch(
                max_linesearch_steps=self.max_linesearch_steps
            )
        return optax.lbfgs(
            learning_rate=self.learning_rate,
            memory_size=self.memory_size,
            linesearch=linesearch,
        )
