"""Implicit differentiation and inner solvers.

- `custom_root` / `custom_fixed_point` decorate any solver `solver_fun(init, *args)` so that its
  output is differentiated by the implicit function theorem; `root_vjp` / `root_jvp` expose the
  products directly. Gradients flow to every positional argument after `init`.
- Linear solvers for the linearised optimality system: `solve_cg`, `solve_normal_cg`,
  `solve_gmres`, `solve_bicgstab`, `solve_lu`, `solve_cholesky` (the `solve=` argument).
- Iterative solvers with explicit state and a `Solution(value, aux, stats, result)`:
  `GradientDescent`, `OptaxMinimiser`, `LBFGS`, `ProjectedGradient`, `FixedPointIteration`,
  `AndersonAcceleration`, `Newton`, `SSO`. Differentiated by `ImplicitAdjoint(solve=...)` (default,
  constant memory) or `UnrolledAdjoint()` (backpropagation through the iterations).
- `make_kkt_optimality_fun` for constrained problems; `hypergradient` for bilevel problems.

Everything is pure, `jax.jit`- and `jax.vmap`-able (including `jax.grad` of `jax.vmap` of a solve).
Solver objects are static configuration: close over them inside jitted functions.
"""

from jaxpref.solvers._base import (
    ImplicitAdjoint,
    IterativeSolver,
    Solution,
    SolverError,
    Stats,
    Status,
    UnrolledAdjoint,
    raise_if_failed,
    status_message,
    tree_l2_norm,
)
from jaxpref.solvers._bilevel import Hypergradient, hypergradient
from jaxpref.solvers._fixed_point import (
    AndersonAcceleration,
    AndersonState,
    FixedPointIteration,
    FixedPointState,
)
from jaxpref.solvers._gradient import (
    LBFGS,
    GradientDescent,
    GradientDescentState,
    OptaxMinimiser,
    OptaxMinimiserState,
    ProjectedGradient,
    ProjectedGradientState,
)
from jaxpref.solvers._implicit_diff import custom_fixed_point, custom_root, root_jvp, root_vjp
from jaxpref.solvers._kkt import KKTSolution, make_kkt_optimality_fun
from jaxpref.solvers._linear_solve import (
    solve_bicgstab,
    solve_cg,
    solve_cholesky,
    solve_gmres,
    solve_lu,
    solve_normal_cg,
)
from jaxpref.solvers._newton import Newton, NewtonState
from jaxpref.solvers._sso import SSO, SSOState, target_surrogate

__all__ = [
    "LBFGS",
    "SSO",
    "AndersonAcceleration",
    "AndersonState",
    "FixedPointIteration",
    "FixedPointState",
    "GradientDescent",
    "GradientDescentState",
    "Hypergradient",
    "ImplicitAdjoint",
    "IterativeSolver",
    "KKTSolution",
    "Newton",
    "NewtonState",
    "OptaxMinimiser",
    "OptaxMinimiserState",
    "ProjectedGradient",
    "ProjectedGradientState",
    "SSOState",
    "Solution",
    "SolverError",
    "Stats",
    "Status",
    "UnrolledAdjoint",
    "custom_fixed_point",
    "custom_root",
    "hypergradient",
    "make_kkt_optimality_fun",
    "raise_if_failed",
    "root_jvp",
    "root_vjp",
    "solve_bicgstab",
    "solve_cg",
    "solve_cholesky",
    "solve_gmres",
    "solve_lu",
    "solve_normal_cg",
    "status_message",
    "target_surrogate",
    "tree_l2_norm",
]
