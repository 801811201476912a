"""Fixed-point solvers: plain iteration and Anderson acceleration.

Both solve `x = T(x, *args)`; the optimality condition for `ImplicitAdjoint` is
`T(x, *args) - x = 0`, so the backward pass solves `(I - d_x T)^T u = v` (non-symmetric: use
`solve_normal_cg`, `solve_gmres`, `solve_bicgstab` or `solve_lu`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxpref.solvers._base import IterativeSolver, tree_l2_norm
from jaxpref.solvers._tracing import traced_once

__all__ = [
    "AndersonAcceleration",
    "AndersonState",
    "FixedPointIteration",
    "FixedPointState",
]


class _FixedPointMap:
    """Helpers shared by fixed-point solvers (expects `fixed_point_fun` and `has_aux`)."""

    fixed_point_fun: Callable
    has_aux: bool

    @traced_once
    def _map(self, x, *args):
        out = self.fixed_point_fun(x, *args)
        return out[0] if self.has_aux else out

    def optimality_fun(self, x, *args):
        """Fixed-point residual `T(x, *args) - x`.

        Args:
          x: point (pytree shaped like `x0`).
          *args: positional arguments of `T` (pytrees of arrays).

        Returns:
          `T(x, *args) - x`, shaped like `x`.
        """
        return jax.tree.map(jnp.subtract, self._map(x, *args), x)

    def aux_fun(self, x, *args):
        """Auxiliary output of `T` at `x` (None unless `has_aux`).

        Args:
          x: point (pytree shaped like `x0`), typically the solution.
          *args: positional arguments of `T` (pytrees of arrays).

        Returns:
          The second output of `T(x, *args)` when `has_aux`, else None.
        """
        return self.fixed_point_fun(x, *args)[1] if self.has_aux else None


class FixedPointState(NamedTuple):
    """State of `FixedPointIteration` at the current point `x`.

    Attributes:
      num_steps: `[]` int32 iterations taken.
      error: `[]` residual `||T(x) - x||`.
      next_value: `T(x)`, the next iterate.

    Example:
      >>> print(FixedPointState._fields)
      ('num_steps', 'error', 'next_value')
    """

    num_steps: Any
    error: Any
    next_value: Any


@dataclasses.dataclass(frozen=True)
class FixedPointIteration(_FixedPointMap, IterativeSolver):
    """Banach iteration `x_{k+1} = T(x_k, *args)` until `||T(x_k) - x_k|| <= tol`.

    Converges linearly when `T` is a contraction in `x` (e.g. a soft Bellman operator with
    discount `gamma < 1`, or a deep-equilibrium layer with small weights).

    Args:
      fixed_point_fun: `T(x, *args) -> x` (or `(x, aux)` with `has_aux`).
      has_aux: whether `T` returns `(x, aux)`.
      max_steps, tol, adjoint, throw: see `IterativeSolver`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> T = lambda x, a: jnp.cos(x) * a
      >>> sol = FixedPointIteration(T, tol=1e-6, max_steps=200).run(jnp.zeros(()), 0.5)
      >>> print(round(float(sol.value), 4), int(sol.result))
      0.4502 0
    """

    fixed_point_fun: Callable
    _: dataclasses.KW_ONLY
    has_aux: bool = False

    def _state(self, x, num_steps, *args) -> FixedPointState:
        nxt = self._map(x, *args)
        return FixedPointState(num_steps, tree_l2_norm(jax.tree.map(jnp.subtract, nxt, x)), nxt)

    def init(self, x0, *args) -> FixedPointState:
        """Evaluates `T(x0)`.

        Args:
          x0: initial point (pytree).
          *args: positional arguments of `T` (pytrees of arrays).

        Returns:
          A `FixedPointState` with 0 steps, `next_value = T(x0, *args)` and the residual norm.
        """
        return self._state(x0, jnp.int32(0), *args)

    def step(self, x, state: FixedPointState, *args):
        """Moves to `T(x)`; returns `(x_next, state_next)`.

        Args:
          x: current point (pytree shaped like `x0`); not read, since `state.next_value` already
            holds `T(x)`.
          state: current state (from `init` or the previous `step`).
          *args: positional arguments of `T` (pytrees of arrays).

        Returns:
          `(x_next, state_next)` with `x_next = state.next_value` and `T(x_next)` evaluated.
        """
        x = state.next_value
        return x, self._state(x, state.num_steps + 1, *args)


class AndersonState(NamedTuple):
    """State of `AndersonAcceleration` at the current point `x`.

    Attributes:
      num_steps: `[]` int32 iterations taken.
      error: `[]` residual `||T(x) - x||`.
      next_value: `T(x)`.
      xs: `[m, n]` flattened past iterates (ring buffer, `m = history_size`).
      gs: `[m, n]` flattened `T` of the past iterates.

    Example:
      >>> print(AndersonState._fields[-2:])
      ('xs', 'gs')
    """

    num_steps: Any
    error: Any
    next_value: Any
    xs: Any
    gs: Any


@dataclasses.dataclass(frozen=True)
class AndersonAcceleration(_FixedPointMap, IterativeSolver):
    """Anderson-accelerated fixed-point iteration (type II, with damping and a ridge term).

    With the last `m` iterates `x_i`, their images `g_i = T(x_i)` and residuals `f_i = g_i - x_i`,
    the weights solve `min_alpha ||sum_i alpha_i f_i||^2 + ridge * ||alpha||^2` subject to
    `sum_i alpha_i = 1`, i.e. `alpha ∝ (F F^T + ridge I)^{-1} 1` (ridge relative to the mean
    squared residual norm), and
    `x_{k+1} = mixing * sum_i alpha_i g_i + (1 - mixing) * sum_i alpha_i x_i`.

    Args:
      fixed_point_fun: `T(x, *args) -> x` (or `(x, aux)` with `has_aux`).
      history_size: number `m` of stored iterates.
      mixing: damping `beta` in `(0, 1]`.
      ridge: relative Tikhonov regularisation of the small least-squares problem.
      has_aux: whether `T` returns `(x, aux)`.
      max_steps, tol, adjoint, throw: see `IterativeSolver`.

    References:
      Anderson. "Iterative procedures for nonlinear integral equations." JACM 12 (1965);
      Walker & Ni. "Anderson acceleration for fixed-point iterations." SINUM 49 (2011).

    Example:
      >>> import jax.numpy as jnp
      >>> T = lambda x, a: jnp.cos(x) * a
      >>> sol = AndersonAcceleration(T, tol=1e-6).run(jnp.zeros(()), 0.5)
      >>> print(round(float(sol.value), 4), int(sol.result))
      0.4502 0
    """

    fixed_point_fun: Callable
    _: dataclasses.KW_ONLY
    history_size: int = 5
    mixing: float = 1.0
    ridge: float = 1e-8
    has_aux: bool = False

    def init(self, x0, *args) -> AndersonState:
        """Evaluates `T(x0)` and allocates an empty history.

        Args:
          x0: initial point (pytree; flattened to `n` entries for the history).
          *args: positional arguments of `T` (pytrees of arrays).

        Returns:
          An `AndersonState` with 0 steps, `next_value = T(x0, *args)`, the residual norm and
          zero `[m, n]` histories `xs`, `gs`.
        """
        nxt = self._map(x0, *args)
        flat, _ = ravel_pytree(x0)
        hist = jnp.zeros((self.history_size, flat.shape[0]), flat.dtype)
        error = tree_l2_norm(jax.tree.map(jnp.subtract, nxt, x0))
        return AndersonState(jnp.int32(0), error, nxt, hist, hist)

    def step(self, x, state: AndersonState, *args):
        """One Anderson update; returns `(x_next, state_next)`.

        Args:
          x: current point (pytree shaped like `x0`); stored with `state.next_value = T(x)` in
            the `[m, n]` history ring buffer.
          state: current state (from `init` or the previous `step`).
          *args: positional arguments of `T` (pytrees of arrays).

        Returns:
          `(x_next, state_next)` with `x_next` the mixed Anderson extrapolation and `T(x_next)`
          evaluated.
        """
        x_flat, unravel = ravel_pytree(x)
        g_flat, _ = ravel_pytree(state.next_value)
        slot = state.num_steps % self.history_size
        xs = state.xs.at[slot].set(x_flat)
        gs = state.gs.at[slot].set(g_flat)
        valid = jnp.arange(self.history_size) <= state.num_steps
        residuals = jnp.where(valid[:, None], gs - xs, 0.0)
        gram = residuals @ residuals.T
        both = valid[:, None] & valid[None, :]
        scale = jnp.sum(jnp.where(valid, jnp.diagonal(gram), 0.0)) / jnp.sum(valid)
        scale = jnp.maximum(scale, jnp.finfo(gram.dtype).tiny)
        diag = jnp.where(valid, self.ridge * scale, 1.0)
        system = jnp.where(both, gram, 0.0) + jnp.diag(diag)
        weights = jnp.linalg.solve(system, valid.astype(gram.dtype))
        weights = weights / jnp.sum(weights)
        mixed = self.mixing * (weights @ gs) + (1.0 - self.mixing) * (weights @ xs)
        x_next = unravel(mixed.astype(x_flat.dtype))
        nxt = self._map(x_next, *args)
        error = tree_l2_norm(jax.tree.map(jnp.subtract, nxt, x_next))
        return x_next, AndersonState(state.num_steps + 1, error, nxt, xs, gs)
