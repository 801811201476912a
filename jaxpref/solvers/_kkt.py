"""Karush-Kuhn-Tucker optimality conditions of constrained problems, for `custom_root`.

For `min_z f(z, theta_f)` subject to `h(z, theta_h) = 0` and `g(z, theta_g) <= 0`, a solution
`(z*, nu*, lambda*)` with strict complementarity satisfies the square system
`F = (grad_z f + J_h^T nu + J_g^T lambda, h(z), g(z) * lambda) = 0`, whose Jacobian is generically
non-singular, so the implicit function theorem differentiates `z*` (and the duals) with respect to
every parameter. The primal and dual feasibility inequalities hold with slack almost everywhere and
are not part of `F`. Projections onto simple sets come from `optax.projections`; see
`ProjectedGradient`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = ["KKTSolution", "make_kkt_optimality_fun"]


class KKTSolution(NamedTuple):
    """Primal-dual point of a constrained problem (also the layout of the KKT residual).

    Attributes:
      primal: the primal variable `z` (pytree).
      dual_eq: multipliers `nu` of the equality constraints (None without them).
      dual_ineq: multipliers `lambda >= 0` of the inequality constraints (None without them).

    Example:
      >>> import jax.numpy as jnp
      >>> print(KKTSolution(jnp.zeros(2), None, None).dual_eq)
      None
    """

    primal: Any
    dual_eq: Any = None
    dual_ineq: Any = None


def make_kkt_optimality_fun(
    obj_fun: Callable,
    eq_fun: Callable | None = None,
    ineq_fun: Callable | None = None,
) -> Callable:
    """Builds the KKT residual `F(x, params_obj, params_eq, params_ineq)` of a constrained problem.

    With `x = KKTSolution(z, nu, lambda)`, the residual is
    `KKTSolution(grad_z f(z) + J_h(z)^T nu + J_g(z)^T lambda, h(z), g(z) * lambda)`; terms of
    absent constraints are None. Use it with `custom_root` (a non-symmetric system: prefer
    `solve_normal_cg`, `solve_gmres` or `solve_lu`) around any solver that returns a
    `KKTSolution`.

    Args:
      obj_fun: objective `f(z, params_obj) -> []`.
      eq_fun: equality constraints `h(z, params_eq) -> [p]` (imposed `= 0`), or None.
      ineq_fun: inequality constraints `g(z, params_ineq) -> [q]` (imposed `<= 0`), or None.

    Returns:
      `optimality_fun(x, params_obj, params_eq, params_ineq) -> KKTSolution` (pass None for the
      parameters of absent constraints).

    References:
      Blondel et al. "Efficient and Modular Implicit Differentiation." arXiv:2105.15183 (KKT
      conditions as an optimality mapping); Amos & Kolter. "OptNet." arXiv:1703.00443.

    Example:
      >>> import jax.numpy as jnp
      >>> f = lambda z, c: 0.5 * jnp.sum(z**2) - jnp.dot(c, z)
      >>> h = lambda z, b: jnp.sum(z, keepdims=True) - b  # sum(z) = b
      >>> F = make_kkt_optimality_fun(f, h)
      >>> x = KKTSolution(jnp.array([0.25, 0.75]), jnp.array([0.25]))
      >>> r = F(x, jnp.array([0.5, 1.0]), 1.0, None)
      >>> print([round(float(v), 4) for v in r.primal], round(float(r.dual_eq[0]), 4))
      [0.0, 0.0] 0.0
    """
    grad_obj = jax.grad(obj_fun)

    def optimality_fun(x: KKTSolution, params_obj, params_eq, params_ineq) -> KKTSolution:
        primal, dual_eq, dual_ineq = x
        stationarity = grad_obj(primal, params_obj)
        feasibility = None
        slackness = None
        if dual_eq is not None:
            if eq_fun is None:
                raise ValueError(
                    "make_kkt_optimality_fun: `x.dual_eq` is set but no `eq_fun` was given."
                )
            h, vjp = jax.vjp(lambda z: eq_fun(z, params_eq), primal)
            stationarity = jax.tree.map(lambda s, t: s + t, stationarity, vjp(dual_eq)[0])
            feasibility = h
        if dual_ineq is not None:
            if ineq_fun is None:
                raise ValueError(
                    "make_kkt_optimality_fun: `x.dual_ineq` is set but no `ineq_fun` was given."
                )
            g, vjp = jax.vjp(lambda z: ineq_fun(z, params_ineq), primal)
            stationarity = jax.tree.map(lambda s, t: s + t, stationarity, vjp(dual_ineq)[0])
            slackness = jax.tree.map(lambda a, b: a * b, g, dual_ineq)
        return KKTSolution(stationarity, feasibility, slackness)

    return optimality_fun
