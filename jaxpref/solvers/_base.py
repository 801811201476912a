"""Shared machinery of the iterative solvers: results, status codes, adjoints and the loop.

Every solver is a frozen dataclass holding its configuration (static under `jax.jit`: close over
it or mark it static) with an explicit state: `init(x0, *args) -> state`,
`step(x, state, *args) -> (x, state)` and `run(x0, *args) -> Solution`. States are NamedTuples
carrying at least `num_steps` and `error` (the convergence measure of the current point).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.solvers._implicit_diff import custom_root
from jaxpref.solvers._linear_solve import solve_normal_cg
from jaxpref.solvers._tracing import with_trace_memo

__all__ = [
    "ImplicitAdjoint",
    "IterativeSolver",
    "Solution",
    "SolverError",
    "Stats",
    "Status",
    "UnrolledAdjoint",
    "raise_if_failed",
    "status_message",
    "tree_l2_norm",
]


class Status(enum.IntEnum):
    """Termination status of a solver, stored as an `int32` array in `Solution.result`.

    `CONVERGED = 0`: the error reached `tol`. `MAX_STEPS = 1`: `max_steps` iterations ran without
    reaching `tol`. `NONFINITE = 2`: the iterate or its error became NaN or infinite.

    Example:
      >>> print(int(Status.MAX_STEPS), Status(2).name)
      1 NONFINITE
    """

    CONVERGED = 0
    MAX_STEPS = 1
    NONFINITE = 2


_MESSAGES = {
    Status.CONVERGED: "converged",
    Status.MAX_STEPS: "reached max_steps before meeting tol",
    Status.NONFINITE: "produced a non-finite (NaN or inf) iterate or error",
}


def status_message(code) -> str:
    """Human-readable description of a status code.

    Args:
      code: an integer status (`Status` member, Python int or scalar array).

    Returns:
      A short message, for example `"converged"`.

    Example:
      >>> print(status_message(1))
      reached max_steps before meeting tol
    """
    return _MESSAGES[Status(int(code))]


class SolverError(RuntimeError):
    """Raised when a solver run with `throw=True` does not converge.

    Under `jax.jit` the error travels through the runtime and surfaces as a
    `jax.errors.JaxRuntimeError` whose message contains this error's text.

    Example:
      >>> print(issubclass(SolverError, RuntimeError))
      True
    """


class Stats(NamedTuple):
    """Diagnostics of a solver run (no gradient flows through them).

    Attributes:
      num_steps: `[]` int32 number of iterations taken.
      error: `[]` convergence measure at the returned point (gradient norm for minimisers,
        `||T(x) - x||` for fixed points, `||F(x)||` for root finders).

    Example:
      >>> import jax.numpy as jnp
      >>> print(Stats(jnp.int32(3), jnp.float32(0.5)).num_steps)
      3
    """

    num_steps: Any
    error: Any


class Solution(NamedTuple):
    """Result of `solver.run`.

    Attributes:
      value: the solution `x*` (pytree shaped like the initial point); differentiable with
        respect to the positional arguments of `run`, implicitly or by unrolling.
      aux: auxiliary output of the user function evaluated at `value` (None without `has_aux`);
        differentiable through `value` and the arguments.
      stats: `Stats` of the run.
      result: `[]` int32 `Status` code (0 converged, 1 max steps, 2 non-finite); batched like
        the solve under `jax.vmap`.

    Example:
      >>> import jax.numpy as jnp
      >>> sol = Solution(jnp.zeros(2), None, Stats(jnp.int32(1), jnp.float32(0.0)), jnp.int32(0))
      >>> print(Status(int(sol.result)).name)
      CONVERGED
    """

    value: Any
    aux: Any
    stats: Stats
    result: Any


@dataclasses.dataclass(frozen=True)
class ImplicitAdjoint:
    """Differentiate a solver by the implicit function theorem (constant memory).

    The forward loop is a `lax.while_loop` that stops at convergence; the backward pass solves the
    transposed linearised optimality system `A^T u = -v` with `solve`.

    Attributes:
      solve: linear solver `solve(matvec, b)` (`solve_cg`, `solve_normal_cg`, `solve_gmres`,
        `solve_bicgstab`, `solve_lu`, `solve_cholesky`, or a `functools.partial` of one).

    References:
      Blondel et al. "Efficient and Modular Implicit Differentiation." arXiv:2105.15183.

    Example:
      >>> from jaxpref.solvers import solve_cg
      >>> print(ImplicitAdjoint(solve=solve_cg).solve.__name__)
      solve_cg
    """

    solve: Callable = solve_normal_cg


@dataclasses.dataclass(frozen=True)
class UnrolledAdjoint:
    """Differentiate a solver by backpropagating through its iterations.

    The loop becomes a `lax.scan` of exactly `max_steps` iterations (the iterate is frozen once the
    stopping rule holds, so the value matches the implicit forward loop), and reverse mode stores
    per-iteration residuals: memory grows linearly with `max_steps`. `checkpoint=True`
    rematerialises each iteration in the backward pass, storing only the loop carry.

    Attributes:
      checkpoint: wrap the loop body in `jax.checkpoint`.

    Example:
      >>> print(UnrolledAdjoint().checkpoint)
      False
    """

    checkpoint: bool = False


def tree_l2_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves of a pytree, `sqrt(sum_i ||leaf_i||^2)`.

    Args:
      tree: pytree of arrays.

    Returns:
      `[]` float norm (`inf` if the sum of squares overflows).

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(tree_l2_norm({"a": jnp.array([3.0]), "b": jnp.array(4.0)})), 4))
      5.0
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(_abs2(leaf)) for leaf in leaves))


def _abs2(x):
    x = jnp.asarray(x)
    return jnp.square(jnp.abs(x)) if jnp.iscomplexobj(x) else jnp.square(x)


def _tree_all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    finite = jnp.array(True)
    for leaf in leaves:
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            finite = finite & jnp.all(jnp.isfinite(leaf))
    return finite


def _host_check(code, solver_name: str) -> None:
    codes = np.atleast_1d(np.asarray(code))
    failed = sorted({int(c) for c in codes.tolist() if c != int(Status.CONVERGED)})
    if failed:
        reasons = "; ".join(f"{status_message(c)} (status {c})" for c in failed)
        raise SolverError(f"{solver_name} did not converge: {reasons}.")


def raise_if_failed(result, solver_name: str = "solver") -> None:
    """Raises `SolverError` when a status code is not `CONVERGED`, also inside `jax.jit`.

    The check runs on the host through `jax.debug.callback`: called eagerly it raises
    `SolverError`; inside a jitted function the error surfaces when the computation executes, as a
    `jax.errors.JaxRuntimeError` carrying the same message. Under `jax.vmap` any failing instance
    raises.

    Args:
      result: status code(s) (`Solution.result`).
      solver_name: name used in the message.

    Returns:
      None.

    Example:
      >>> import jax.numpy as jnp
      >>> raise_if_failed(jnp.int32(0))  # converged: nothing happens
      >>> try:
      ...     raise_if_failed(jnp.int32(1), "GradientDescent")
      ... except SolverError as e:
      ...     print(e)
      GradientDescent did not converge: reached max_steps before meeting tol (status 1).
    """
    jax.debug.callback(lambda code: _host_check(code, solver_name), result)


def _status(x, state, tol) -> jax.Array:
    finite = jnp.isfinite(state.error) & _tree_all_finite(x)
    code = jnp.where(
        finite,
        jnp.where(state.error <= tol, int(Status.CONVERGED), int(Status.MAX_STEPS)),
        int(Status.NONFINITE),
    )
    return code.astype(jnp.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IterativeSolver:
    """Base class of the iterative solvers: loop, adjoint choice, status and `throw`.

    Subclasses implement `init(x0, *args)`, `step(x, state, *args)`, `optimality_fun(x, *args)`
    (zero at the solution; used by `ImplicitAdjoint`) and, when they support auxiliary outputs,
    `aux_fun(x, *args)`. `run` iterates `step` while `error > tol`, fewer than `max_steps` steps
    were taken and everything is finite.

    Attributes:
      max_steps: maximum number of iterations.
      tol: convergence tolerance on `state.error`.
      adjoint: `ImplicitAdjoint(...)` (default) or `UnrolledAdjoint(...)`.
      throw: if True, a run that does not converge raises `SolverError` (see `raise_if_failed`).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.solvers import FixedPointIteration
      >>> sol = FixedPointIteration(lambda x, a: 0.5 * x + a, tol=1e-6).run(jnp.zeros(()), 1.0)
      >>> print(round(float(sol.value), 4), Status(int(sol.result)).name)
      2.0 CONVERGED
    """

    max_steps: int = 500
    tol: float = 1e-6
    adjoint: ImplicitAdjoint | UnrolledAdjoint = ImplicitAdjoint()
    throw: bool = False

    def init(self, x0, *args):  # pragma: no cover - abstract
        """Returns the initial state at `x0`.

        Args:
          x0: initial point (pytree).
          *args: positional arguments of the user function(s) (pytrees of arrays).

        Returns:
          The solver's state (a NamedTuple with at least `num_steps` and `error`).
        """
        raise NotImplementedError

    def step(self, x, state, *args):  # pragma: no cover - abstract
        """Performs one iteration; returns `(x, state)`.

        Args:
          x: current point (pytree shaped like `x0`).
          state: current state (from `init` or the previous `step`).
          *args: positional arguments of the user function(s) (pytrees of arrays).

        Returns:
          `(x_next, state_next)`.
        """
        raise NotImplementedError

    def optimality_fun(self, x, *args):  # pragma: no cover - abstract
        """Optimality residual, zero at the solution.

        Args:
          x: point at which to evaluate the residual (pytree shaped like `x0`).
          *args: positional arguments of the user function(s) (pytrees of arrays).

        Returns:
          The residual, a pytree shaped like `x` (what `ImplicitAdjoint` differentiates).
        """
        raise NotImplementedError

    def aux_fun(self, x, *args):
        """Auxiliary output at `x` (None by default).

        Args:
          x: point (pytree shaped like `x0`), typically the solution.
          *args: positional arguments of the user function(s) (pytrees of arrays).

        Returns:
          The auxiliary output (`Solution.aux`); None here.
        """
        del x, args
        return None

    def _continue(self, state) -> jax.Array:
        return (
            (state.num_steps < self.max_steps)
            & (state.error > self.tol)
            & jnp.isfinite(state.error)
        )

    def _loop_while(self, x, state, args):
        def body(carry):
            return self.step(carry[0], carry[1], *args)

        return jax.lax.while_loop(lambda carry: self._continue(carry[1]), body, (x, state))

    def _loop_scan(self, x, state, args, checkpoint: bool):
        def body(carry, _):
            # Every iteration computes a step and keeps it only while the loop would continue (a
            # select, not a `lax.cond`: a cond would make loop-invariant values such as the data
            # matrix a per-iteration residual of the backward pass).
            go = self._continue(carry[1])
            new = self.step(carry[0], carry[1], *args)
            return jax.tree.map(lambda n, o: jnp.where(go, n, o), new, carry), None

        if checkpoint:
            body = jax.checkpoint(body)
        (x, state), _ = jax.lax.scan(body, (x, state), None, length=self.max_steps)
        return x, state

    def _solve(self, x0, *args):
        state = self.init(x0, *args)
        if isinstance(self.adjoint, UnrolledAdjoint):
            x, state = self._loop_scan(x0, state, args, self.adjoint.checkpoint)
        else:
            x, state = self._loop_while(x0, state, args)
        stats = jax.lax.stop_gradient(Stats(state.num_steps, state.error))
        return x, (stats, _status(x, state, self.tol))

    def run(self, x0, *args) -> Solution:
        """Runs the solver from `x0`; gradients flow to every positional argument in `args`.

        Args:
          x0: initial point (pytree).
          *args: positional arguments of the user function(s) (pytrees of arrays).

        Returns:
          A `Solution(value, aux, stats, result)`.
        """
        if isinstance(self.adjoint, ImplicitAdjoint):
            # A copy carrying a memo scoped to this call: `traced_once` methods are traced once.
            solver = with_trace_memo(self)
            solve = custom_root(solver.optimality_fun, solve=self.adjoint.solve, has_aux=True)
            x, (stats, result) = solve(solver._solve)(x0, *args)
        elif isinstance(self.adjoint, UnrolledAdjoint):
            x, (stats, result) = self._solve(jax.tree.map(jnp.asarray, x0), *args)
        else:
            raise TypeError(
                f"{type(self).__name__}: `adjoint` must be ImplicitAdjoint(...) or "
                f"UnrolledAdjoint(...), got {self.adjoint!r}."
            )
        if self.throw:
            raise_if_failed(result, type(self).__name__)
        return Solution(x, self.aux_fun(x, *args), stats, result)
