"""Newton's method for root finding with a matrix-free linear solve."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpref.solvers._base import IterativeSolver, tree_l2_norm
from jaxpref.solvers._linear_solve import solve_gmres
from jaxpref.solvers._tracing import traced_once

__all__ = ["Newton", "NewtonState"]


class NewtonState(NamedTuple):
    """State of `Newton` at the current point `x`.

    Attributes:
      num_steps: `[]` int32 iterations taken.
      error: `[]` residual norm `||F(x)||`.
      residual: `F(x)` (pytree shaped like `x`).

    Example:
      >>> print(NewtonState._fields)
      ('num_steps', 'error', 'residual')
    """

    num_steps: Any
    error: Any
    residual: Any


@dataclasses.dataclass(frozen=True)
class Newton(IterativeSolver):
    """Newton's method for `F(x, *args) = 0`: `x_{k+1} = x_k - step_size * J(x_k)^{-1} F(x_k)`.

    `J = d_x F` is applied matrix-free through `jax.jvp`, and the Newton system is solved with
    `linear_solve` (GMRES by default; `solve_lu` for small dense problems). To minimise `f`, pass
    `F = jax.grad(f)` and `solve_cg` (the Hessian is symmetric). Stops when `||F(x)|| <= tol`.
    The same `F` is the optimality condition of `ImplicitAdjoint`.

    Args:
      fun: `F(x, *args) -> residual` shaped like `x` (or `(residual, aux)` with `has_aux`).
      linear_solve: linear solver `solve(matvec, b)` for the Newton step.
      step_size: damping of the Newton step.
      has_aux: whether `F` returns `(residual, aux)`.
      max_steps, tol, adjoint, throw: see `IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> F = lambda x, a: x**3 - a
      >>> sol = Newton(F, tol=1e-5).run(jnp.ones(2), jnp.array([8.0, 27.0]))
      >>> print([round(float(v), 4) for v in sol.value], int(sol.result))
      [2.0, 3.0] 0
    """

    fun: Callable
    _: dataclasses.KW_ONLY
    linear_solve: Callable = solve_gmres
    step_size: float = 1.0
    has_aux: bool = False

    @traced_once
    def _residual(self, x, *args):
        out = self.fun(x, *args)
        return out[0] if self.has_aux else out

    def optimality_fun(self, x, *args):
        """The root function `F(x, *args)`.

        Args:
          x: point (pytree shaped like `x0`).
          *args: positional arguments of `F` (pytrees of arrays).

        Returns:
          `F(x, *args)` shaped like `x` (without the auxiliary output when `has_aux`).
        """
        return self._residual(x, *args)

    def aux_fun(self, x, *args):
        """Auxiliary output of `F` at `x` (None unless `has_aux`).

        Args:
          x: point (pytree shaped like `x0`), typically the solution.
          *args: positional arguments of `F` (pytrees of arrays).

        Returns:
          The second output of `F(x, *args)` when `has_aux`, else None.
        """
        return self.fun(x, *args)[1] if self.has_aux else None

    def init(self, x0, *args) -> NewtonState:
        """Evaluates `F(x0)`.

        Args:
          x0: initial point (pytree).
          *args: positional arguments of `F` (pytrees of arrays).

        Returns:
          A `NewtonState` with 0 steps, the residual `F(x0, *args)` and its norm.
        """
        residual = self._residual(x0, *args)
        return NewtonState(jnp.int32(0), tree_l2_norm(residual), residual)

    def step(self, x, state: NewtonState, *args):
        """One Newton step; returns `(x_next, state_next)`.

        Args:
          x: current point (pytree shaped like `x0`).
          state: current state; its `residual` is `F(x, *args)`.
          *args: positional arguments of `F` (pytrees of arrays).

        Returns:
          `(x_next, state_next)` with `x_next = x + step_size * delta`, `delta` the solution of
          `J(x) delta = -F(x)` by `linear_solve`.
        """

        def matvec(t):
            return jax.jvp(lambda y: self._residual(y, *args), (x,), (t,))[1]

        delta = self.linear_solve(matvec, jax.tree.map(jnp.negative, state.residual))
        x = jax.tree.map(lambda p, d: p + self.step_size * d, x, delta)
        residual = self._residual(x, *args)
        return x, NewtonState(state.num_steps + 1, tree_l2_norm(residual), residual)
