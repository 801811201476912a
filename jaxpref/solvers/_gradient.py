"""Minimisers driven by `lax.while_loop`: gradient descent, any optax optimizer, L-BFGS (through
`optax.lbfgs`) and projected gradient with optax projections.

The objective `fun(x, *args)` returns a scalar (or `(scalar, aux)` with `has_aux=True`). The
optimality condition used by `ImplicitAdjoint` is the stationarity `grad_x fun(x, *args) = 0`
(for projected gradient, the projected-gradient fixed point), so the implicit gradient is exact at
a minimiser whatever optimizer reached it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpref.solvers._base import IterativeSolver, tree_l2_norm
from jaxpref.solvers._tracing import trace_memo, traced_once

__all__ = [
    "LBFGS",
    "GradientDescent",
    "GradientDescentState",
    "OptaxMinimiser",
    "OptaxMinimiserState",
    "ProjectedGradient",
    "ProjectedGradientState",
]


class _Objective:
    """Helpers shared by the minimisers (expects `fun` and `has_aux` attributes)."""

    fun: Callable
    has_aux: bool

    def _objective(self, x, *args):
        out = self.fun(x, *args)
        return out[0] if self.has_aux else out

    @traced_once
    def _value(self, x, *args):  # for line searches; steps use `_value_and_grad`
        return self._objective(x, *args)

    @traced_once
    def _value_and_grad(self, x, *args):
        return jax.value_and_grad(self._objective)(x, *args)

    def optimality_fun(self, x, *args):
        """Stationarity residual `grad_x fun(x, *args)`.

        Args:
          x: point (pytree shaped like `x0`).
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          The gradient of the objective at `x`, shaped like `x`.
        """
        if trace_memo(self) is not None:
            return self._value_and_grad(x, *args)[1]  # reuses the solver's traced gradient
        return jax.grad(self._objective)(x, *args)

    def aux_fun(self, x, *args):
        """Auxiliary output of `fun` at `x` (None unless `has_aux`).

        Args:
          x: point (pytree shaped like `x0`), typically the solution.
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          The second output of `fun(x, *args)` when `has_aux`, else None.
        """
        return self.fun(x, *args)[1] if self.has_aux else None


class GradientDescentState(NamedTuple):
    """State of `GradientDescent` at the current point `x`.

    Attributes:
      num_steps: `[]` int32 iterations taken.
      error: `[]` gradient norm `||grad f(x)||`.
      value: `[]` objective `f(x)`.
      grad: gradient at `x` (pytree shaped like `x`).

    Example:
      >>> print(GradientDescentState._fields)
      ('num_steps', 'error', 'value', 'grad')
    """

    num_steps: Any
    error: Any
    value: Any
    grad: Any


@dataclasses.dataclass(frozen=True)
class GradientDescent(_Objective, IterativeSolver):
    """Gradient descent with a fixed step, `x_{k+1} = x_k - eta * grad f(x_k, *args)`.

    Stops when `||grad f(x_k)|| <= tol` or after `max_steps` steps. With the default
    `ImplicitAdjoint`, gradients of the solution with respect to `args` solve
    `H u = -v` with `H = grad^2_x f(x*)` (use `solve_cg` for strictly convex `f`).

    Args:
      fun: objective `f(x, *args) -> []` (or `([], aux)` with `has_aux`).
      learning_rate: step size `eta`.
      has_aux: whether `fun` returns `(value, aux)`.
      max_steps, tol, adjoint, throw: see `IterativeSolver`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda x, a: 0.5 * jnp.sum((x - a) ** 2)
      >>> gd = GradientDescent(f, learning_rate=0.5, tol=1e-6)
      >>> sol = gd.run(jnp.zeros(2), jnp.array([1.0, 2.0]))
      >>> print([round(float(v), 4) for v in sol.value], int(sol.result))
      [1.0, 2.0] 0
      >>> g = jax.grad(lambda a: gd.run(jnp.zeros(2), a).value.sum())(jnp.array([1.0, 2.0]))
      >>> print([round(float(v), 4) for v in g])
      [1.0, 1.0]
    """

    fun: Callable
    _: dataclasses.KW_ONLY
    learning_rate: float
    has_aux: bool = False

    def init(self, x0, *args) -> GradientDescentState:
        """Evaluates the objective and gradient at `x0`.

        Args:
          x0: initial point (pytree).
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          A `GradientDescentState` with 0 steps and the value, gradient and gradient norm at `x0`.
        """
        value, grad = self._value_and_grad(x0, *args)
        return GradientDescentState(jnp.int32(0), tree_l2_norm(grad), value, grad)

    def step(self, x, state: GradientDescentState, *args):
        """One gradient step; returns `(x_next, state_next)`.

        Args:
          x: current point (pytree shaped like `x0`).
          state: current state; its `grad` is the gradient at `x`.
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          `(x_next, state_next)` with `x_next = x - learning_rate * state.grad` and the value and
          gradient at `x_next`.
        """
        x = jax.tree.map(lambda p, g: p - self.learning_rate * g, x, state.grad)
        value, grad = self._value_and_grad(x, *args)
        return x, GradientDescentState(state.num_steps + 1, tree_l2_norm(grad), value, grad)


class OptaxMinimiserState(NamedTuple):
    """State of `OptaxMinimiser` (and `LBFGS`) at the current point `x`.

    Attributes:
      num_steps: `[]` int32 iterations taken.
      error: `[]` gradient norm at `x`.
      value: `[]` objective at `x`.
      grad: gradient at `x`.
      opt_state: the optax optimizer state.

    Example:
      >>> print(OptaxMinimiserState._fields[-1])
      opt_state
    """

    num_steps: Any
    error: Any
    value: Any
    grad: Any
    opt_state: Any


class _OptaxLoop(_Objective):
    """Loop over an optax transformation (expects `_transformation()`)."""

    def _transformation(self) -> optax.GradientTransformationExtraArgs:
        raise NotImplementedError

    def init(self, x0, *args) -> OptaxMinimiserState:
        """Initialises the optimizer state and evaluates the objective at `x0`.

        Args:
          x0: initial point (pytree).
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          An `OptaxMinimiserState` with 0 steps, the value and gradient at `x0` and a fresh
          optimizer state.
        """
        opt_state = self._transformation().init(x0)
        value, grad = self._value_and_grad(x0, *args)
        return OptaxMinimiserState(jnp.int32(0), tree_l2_norm(grad), value, grad, opt_state)

    def step(self, x, state: OptaxMinimiserState, *args):
        """One optimizer update; returns `(x_next, state_next)`.

        Args:
          x: current point (pytree shaped like `x0`).
          state: current state; its `value` and `grad` are those at `x`.
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          `(x_next, state_next)` after one `optimizer.update` and `optax.apply_updates`.
        """
        optimizer = self._transformation()

        def value_fn(p):
            return self._value(p, *args)

        updates, opt_state = optimizer.update(
            state.grad, state.opt_state, x, value=state.value, grad=state.grad, value_fn=value_fn
        )
        x = optax.apply_updates(x, updates)
        if _stores_value_and_grad(opt_state):
            value, grad = optax.value_and_grad_from_state(value_fn)(x, state=opt_state)
        else:
            value, grad = self._value_and_grad(x, *args)
        return x, OptaxMinimiserState(
            state.num_steps + 1, tree_l2_norm(grad), value, grad, opt_state
        )


def _stores_value_and_grad(opt_state) -> bool:
    try:
        value = optax.tree.get(opt_state, "value")
        grad = optax.tree.get(opt_state, "grad")
    except KeyError:
        return False
    return value is not None and grad is not None


@dataclasses.dataclass(frozen=True)
class OptaxMinimiser(_OptaxLoop, IterativeSolver):
    """Minimises `f(x, *args)` with any optax optimizer inside `lax.while_loop`.

    Each step calls `optimizer.update(grad, opt_state, x, value=f(x), grad=grad, value_fn=...)`
    (the extra arguments serve line searches), then `x <- optax.apply_updates(x, updates)`. When
    the optimizer state stores the value and gradient at the new point (optax line searches do),
    they are reused. Stops when `||grad f(x)|| <= tol`.

    Args:
      fun: objective `f(x, *args) -> []` (or `([], aux)` with `has_aux`).
      optimizer: an `optax.GradientTransformation` (e.g. `optax.adam(1e-2)`).
      has_aux: whether `fun` returns `(value, aux)`.
      max_steps, tol, adjoint, throw: see `IterativeSolver`. Unrolled differentiation needs an
        optimizer without inner `while_loop`s (line searches are not reverse-differentiable).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> f = lambda x, a: jnp.sum((x - a) ** 2)
      >>> solver = OptaxMinimiser(f, optax.adam(0.1), max_steps=2000, tol=1e-4)
      >>> sol = solver.run(jnp.zeros(2), jnp.array([1.0, -1.0]))
      >>> print([round(float(v), 2) for v in sol.value], int(sol.result))
      [1.0, -1.0] 0
    """

    fun: Callable
    optimizer: optax.GradientTransformation
    _: dataclasses.KW_ONLY
    has_aux: bool = False

    def _transformation(self):
        return optax.with_extra_args_support(self.optimizer)


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


class ProjectedGradientState(NamedTuple):
    """State of `ProjectedGradient` at the current point `x`.

    Attributes:
      num_steps: `[]` int32 iterations taken.
      error: `[]` gradient-mapping norm `||x - T(x)|| / eta`.
      next_value: `T(x) = proj(x - eta grad f(x))`, the next iterate.

    Example:
      >>> print(ProjectedGradientState._fields)
      ('num_steps', 'error', 'next_value')
    """

    num_steps: Any
    error: Any
    next_value: Any


@dataclasses.dataclass(frozen=True)
class ProjectedGradient(_Objective, IterativeSolver):
    """Projected gradient descent, `x_{k+1} = proj(x_k - eta * grad f(x_k, *args), hp)`.

    `run(x0, hyperparams_proj, *args)`: the projection's hyperparameters come first, then the
    objective's arguments; both receive gradients. The optimality condition is the fixed point
    `T(x) - x = 0` with `T(x) = proj(x - eta grad f(x), hp)`, differentiable through the projection
    (optax projections such as `projection_simplex`, `projection_box`, `projection_l2_ball` are
    differentiable almost everywhere).

    Args:
      fun: objective `f(x, *args) -> []` (or `([], aux)` with `has_aux`).
      projection: `proj(x, hyperparams_proj) -> x`, e.g.
        `lambda x, r: optax.projections.projection_l2_ball(x, r)`.
      learning_rate: step size `eta`.
      has_aux: whether `fun` returns `(value, aux)`.
      max_steps, tol, adjoint, throw: see `IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> f = lambda x, c: 0.5 * jnp.sum((x - c) ** 2)
      >>> proj = lambda x, s: optax.projections.projection_simplex(x, s)
      >>> pg = ProjectedGradient(f, proj, learning_rate=0.5)
      >>> sol = pg.run(jnp.full(3, 1 / 3), 1.0, jnp.array([1.0, 0.5, -1.0]))
      >>> print([round(float(v), 4) for v in sol.value])
      [0.75, 0.25, 0.0]
    """

    fun: Callable
    projection: Callable
    _: dataclasses.KW_ONLY
    learning_rate: float
    has_aux: bool = False

    @traced_once
    def _map(self, x, hyperparams_proj, *args):
        grad = jax.grad(self._objective)(x, *args)
        moved = jax.tree.map(lambda p, g: p - self.learning_rate * g, x, grad)
        return self.projection(moved, hyperparams_proj)

    def _state(self, x, num_steps, hyperparams_proj, *args) -> ProjectedGradientState:
        nxt = self._map(x, hyperparams_proj, *args)
        diff = jax.tree.map(lambda a, b: a - b, x, nxt)
        return ProjectedGradientState(num_steps, tree_l2_norm(diff) / self.learning_rate, nxt)

    def init(self, x0, hyperparams_proj, *args) -> ProjectedGradientState:
        """Computes the first projected step from `x0`.

        Args:
          x0: initial point (pytree).
          hyperparams_proj: hyperparameters of `projection` (pytree, e.g. a radius).
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          A `ProjectedGradientState` with 0 steps, `next_value = proj(x0 - eta grad f(x0), hp)`
          and the gradient-mapping norm.
        """
        return self._state(x0, jnp.int32(0), hyperparams_proj, *args)

    def step(self, x, state: ProjectedGradientState, hyperparams_proj, *args):
        """Moves to the stored projected step; returns `(x_next, state_next)`.

        Args:
          x: current point (pytree shaped like `x0`); not read, since `state.next_value` already
            holds its projected step.
          state: current state (from `init` or the previous `step`).
          hyperparams_proj: hyperparameters of `projection` (pytree, e.g. a radius).
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          `(x_next, state_next)` with `x_next = state.next_value` and its projected step computed.
        """
        x = state.next_value
        return x, self._state(x, state.num_steps + 1, hyperparams_proj, *args)

    def optimality_fun(self, x, hyperparams_proj, *args):
        """Fixed-point residual `proj(x - eta grad f(x), hp) - x`.

        Args:
          x: point (pytree shaped like `x0`).
          hyperparams_proj: hyperparameters of `projection` (pytree, e.g. a radius).
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          The residual, shaped like `x`.
        """
        return jax.tree.map(lambda a, b: a - b, self._map(x, hyperparams_proj, *args), x)

    def aux_fun(self, x, hyperparams_proj, *args):
        """Auxiliary output of `fun` at `x` (None unless `has_aux`).

        Args:
          x: point (pytree shaped like `x0`), typically the solution.
          hyperparams_proj: hyperparameters of `projection` (not used by `fun`).
          *args: positional arguments of `fun` (pytrees of arrays).

        Returns:
          The second output of `fun(x, *args)` when `has_aux`, else None.
        """
        return self.fun(x, *args)[1] if self.has_aux else None
