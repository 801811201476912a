"""Implicit differentiation of roots and fixed points.

A solver maps parameters `theta` to a point `x*(theta)` characterised by an optimality condition
`F(x*(theta), theta) = 0`. By the implicit function theorem, with `A = d_x F(x*, theta)` and
`B = d_theta F(x*, theta)`, the Jacobian is `dx*/dtheta = -A^{-1} B`. Reverse mode therefore needs
one linear solve `A^T u = -v` per cotangent `v` and returns `u^T B`; forward mode solves
`A t = -B dtheta`. Both only use Jacobian-vector / vector-Jacobian products of `F`, so memory does
not grow with the number of solver iterations.

Contract (as in jaxopt): the solver `solver_fun(init, *args)` and the optimality function
`optimality_fun(x, *args)` share a signature; gradients flow to every positional argument after
`init` (pytrees of arrays allowed), and `init` receives a zero gradient. Keyword arguments are
matched to positions through the signature of `optimality_fun`. Differentiable values closed over
by the two functions (for example an outer parameter captured by a lambda) are hoisted into
explicit arguments, so they receive exact gradients too; passing every differentiated quantity as
a positional argument remains the clearest style.

Each of the two functions is traced to a jaxpr exactly once per call: the forward pass and the
backward pass evaluate those jaxprs instead of re-running the Python code, and nothing is cached
beyond the call (closed-over arrays are released with the functions that hold them).

References:
  Blondel, Berthet, Cuturi, Frostig, Hoyer, Llinares-Lopez, Pedregosa, Vert. "Efficient and
  Modular Implicit Differentiation." NeurIPS 2022, arXiv:2105.15183.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxpref.solvers._linear_solve import solve_normal_cg

__all__ = [
    "custom_fixed_point",
    "custom_root",
    "root_jvp",
    "root_vjp",
]


def _neg(tree):
    return jax.tree.map(jnp.negative, tree)


def root_vjp(
    optimality_fun: Callable,
    sol: Any,
    args: tuple,
    cotangent: Any,
    *,
    solve: Callable = solve_normal_cg,
) -> tuple:
    """Vector-Jacobian product of a root `x*(args)` defined by `optimality_fun(x*, *args) = 0`.

    Solves `A^T u = -v` with `A = d_x F(x*, args)` (matrix-free, by `vjp` of `F` in `x`) and returns
    `u^T d_args F(x*, args)`, which equals `v^T dx*/dargs` by the implicit function theorem.

    Args:
      optimality_fun: `F(x, *args)`, zero at the root; its output has the structure of `x`.
      sol: the root `x*` (pytree).
      args: tuple of the arguments to differentiate with respect to.
      cotangent: `v`, a pytree shaped like `sol`.
      solve: linear solver `solve(matvec, b)` (see `solve_cg`, `solve_lu`, ...).

    Returns:
      A tuple with one cotangent per entry of `args`, each shaped like that argument.

    References:
      Blondel et al. "Efficient and Modular Implicit Differentiation." arXiv:2105.15183.

    Example:
      >>> import jax.numpy as jnp
      >>> f = lambda x, a: x**2 - a  # root sqrt(a), dx/da = 1 / (2 sqrt(a))
      >>> (g,) = root_vjp(f, jnp.array(2.0), (jnp.array(4.0),), jnp.array(1.0))
      >>> print(round(float(g), 4))
      0.25
    """
    args = tuple(args)
    _, vjp_x = jax.vjp(lambda x: optimality_fun(x, *args), sol)
    u = solve(lambda w: vjp_x(w)[0], _neg(cotangent))
    _, vjp_args = jax.vjp(lambda *a: optimality_fun(sol, *a), *args)
    return vjp_args(u)


def root_jvp(
    optimality_fun: Callable,
    sol: Any,
    args: tuple,
    tangents: tuple,
    *,
    solve: Callable = solve_normal_cg,
) -> Any:
    """Jacobian-vector product of a root `x*(args)` defined by `optimality_fun(x*, *args) = 0`.

    Solves `A t = -B dargs` with `A = d_x F(x*, args)` and `B = d_args F(x*, args)`, both applied
    matrix-free by `jvp`; `t = (dx*/dargs) dargs`.

    Args:
      optimality_fun: `F(x, *args)`, zero at the root; its output has the structure of `x`.
      sol: the root `x*` (pytree).
      args: tuple of arguments.
      tangents: tuple of tangents, one per entry of `args`, each shaped like it.
      solve: linear solver `solve(matvec, b)`.

    Returns:
      The tangent of the root, a pytree shaped like `sol`.

    References:
      Blondel et al. "Efficient and Modular Implicit Differentiation." arXiv:2105.15183.

    Example:
      >>> import jax.numpy as jnp
      >>> f = lambda x, a: x**2 - a
      >>> t = root_jvp(f, jnp.array(2.0), (jnp.array(4.0),), (jnp.array(1.0),))
      >>> print(round(float(t), 4))
      0.25
    """
    args, tangents = tuple(args), tuple(tangents)
    if len(args) != len(tangents):
        raise ValueError(
            f"root_jvp: `tangents` must have one entry per argument, got {len(tangents)} "
            f"tangents for {len(args)} arguments."
        )

    def matvec(t):
        return jax.jvp(lambda x: optimality_fun(x, *args), (sol,), (t,))[1]

    rhs = jax.jvp(lambda *a: optimality_fun(sol, *a), args, tangents)[1]
    return solve(matvec, _neg(rhs))


def _positional(signature: inspect.Signature | None, name: str, args: tuple, kwargs: dict):
    """Resolves keyword arguments to positions using the reference signature."""
    if not kwargs:
        return args
    if signature is None:
        raise TypeError(
            f"{name}: keyword arguments {sorted(kwargs)} cannot be matched to positions because "
            "the signature of the optimality function is unavailable; pass them positionally."
        )
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    if bound.kwargs:
        raise TypeError(
            f"{name}: keyword arguments {sorted(bound.kwargs)} do not correspond to positional "
            f"parameters of the optimality function {signature}; pass them positionally."
        )
    return tuple(bound.args)


def _signature(fun: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fun)
    except (TypeError, ValueError):
        return None


def _maybe_differentiated(value) -> bool:
    """Whether a closed-over value may carry a derivative: a tracer of an inexact dtype."""
    return isinstance(value, jax.core.Tracer) and jnp.issubdtype(value.dtype, jnp.inexact)


def _closure_convert(fun: Callable, example_args: tuple) -> tuple[Callable, list]:
    """Traces `fun(*example_args)` once; returns `(converted, hoisted)`.

    `hoisted` lists the closed-over values that may carry derivatives (tracers of enclosing
    transformations), and `converted(*args, *hoisted)` evaluates the traced jaxpr with them as
    explicit inputs, without running the Python code of `fun` again. Unlike `jax.closure_convert`,
    nothing is cached across calls.
    """
    closed, out_shape = jax.make_jaxpr(lambda *a: fun(*a), return_shape=True)(*example_args)
    in_tree = jax.tree.structure(example_args)
    out_tree = jax.tree.structure(out_shape)
    jaxpr, consts = closed.jaxpr, closed.consts
    is_hoisted = [_maybe_differentiated(c) for c in consts]
    hoisted = [c for c, h in zip(consts, is_hoisted, strict=True) if h]
    kept = [c for c, h in zip(consts, is_hoisted, strict=True) if not h]
    num_args = len(example_args)

    def converted(*args_and_hoisted):
        args, values = args_and_hoisted[:num_args], args_and_hoisted[num_args:]
        leaves, tree = jax.tree.flatten(args)
        if tree != in_tree:
            raise TypeError(f"expected arguments with structure {in_tree}, got {tree}.")
        values_it, kept_it = iter(values), iter(kept)
        all_consts = [next(values_it) if h else next(kept_it) for h in is_hoisted]
        return jax.tree.unflatten(out_tree, jax.core.eval_jaxpr(jaxpr, all_consts, *leaves))

    return converted, hoisted


def _implicit_root_call(
    solver_fun: Callable,
    optimality_fun: Callable,
    init: Any,
    args: tuple,
    *,
    solve: Callable,
    has_aux: bool,
):
    """Calls `solver_fun(init, *args)` with a reverse-mode rule given by the implicit function
    theorem (internal entry point shared by `custom_root` and the iterative solvers)."""
    args = tuple(args)
    init = jax.tree.map(jnp.asarray, init)
    # Trace both functions once, hoisting differentiable values captured in their closures into
    # explicit arguments, so that the custom VJP sees them (and, for the optimality function,
    # differentiates them).
    solver_c, solver_consts = _closure_convert(solver_fun, (init, *args))
    opt_c, opt_consts = _closure_convert(optimality_fun, (init, *args))
    n_args = len(args)

    @jax.custom_vjp
    def run(x0, a, oc, sc):
        return solver_c(x0, *a, *sc)

    def run_fwd(x0, a, oc, sc):
        out = run(x0, a, oc, sc)
        sol = out[0] if has_aux else out
        return out, (sol, a, oc)

    def run_bwd(res, cotangent):
        sol, a, oc = res
        ct_sol = cotangent[0] if has_aux else cotangent
        grads = root_vjp(opt_c, sol, (*a, *oc), ct_sol, solve=solve)
        return None, tuple(grads[:n_args]), list(grads[n_args:]), None

    run.defvjp(run_fwd, run_bwd)
    return run(init, args, list(opt_consts), list(solver_consts))


def custom_root(
    optimality_fun: Callable,
    *,
    solve: Callable | None = None,
    has_aux: bool = False,
    reference_signature: Callable | inspect.Signature | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator adding implicit differentiation to a root solver.

    `custom_root(F)(solver_fun)` returns a function with the signature of `solver_fun(init, *args)`
    whose forward value is whatever `solver_fun` returns and whose reverse-mode derivative with
    respect to `args` is `dx*/dargs = -(d_x F)^{-1} d_args F` at the returned point, computed by
    `root_vjp` with the linear solver `solve`. The solver itself is never differentiated, so memory
    is independent of its iteration count.

    Args:
      optimality_fun: `F(x, *args)`, zero at the solution; same signature as `solver_fun`.
      solve: linear solver `solve(matvec, b)` for the transposed system (default
        `solve_normal_cg`; `solve_cg` suits symmetric positive definite `d_x F`, such as the
        Hessian of a strictly convex objective).
      has_aux: if True, `solver_fun` returns `(x, aux)`; `aux` is passed through and treated as a
        constant (it receives no gradient).
      reference_signature: function or `inspect.Signature` used to map keyword arguments to
        positions (defaults to the signature of `optimality_fun`).

    Returns:
      A decorator `solver_fun -> implicitly differentiated solver_fun`. The wrapped function
      supports `jax.jit`, `jax.vmap` and reverse mode (`jax.grad`, `jax.vjp`); forward mode is
      available through `root_jvp`.

    References:
      Blondel et al. "Efficient and Modular Implicit Differentiation." arXiv:2105.15183.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> def F(x, a):  # root of x^3 = a
      ...     return x**3 - a
      >>> @custom_root(F)
      ... def cube_root(x0, a):
      ...     return jax.lax.fori_loop(0, 30, lambda _, x: x - F(x, a) / (3 * x**2), x0)
      >>> print(round(float(jax.grad(cube_root, argnums=1)(1.0, 8.0)), 4))  # 1 / (3 * 4)
      0.0833
    """
    solve = solve_normal_cg if solve is None else solve
    if reference_signature is None:
        signature = _signature(optimality_fun)
    elif isinstance(reference_signature, inspect.Signature):
        signature = reference_signature
    else:
        signature = _signature(reference_signature)

    def decorator(solver_fun: Callable) -> Callable:
        @functools.wraps(solver_fun)
        def wrapped(*args, **kwargs):
            positional = _positional(signature, "custom_root", args, kwargs)
            if not positional:
                raise TypeError("custom_root: the solver needs an initial point `init`.")
            return _implicit_root_call(
                solver_fun,
                optimality_fun,
                positional[0],
                positional[1:],
                solve=solve,
                has_aux=has_aux,
            )

        return wrapped

    return decorator


def custom_fixed_point(
    fixed_point_fun: Callable,
    *,
    solve: Callable | None = None,
    has_aux: bool = False,
    reference_signature: Callable | inspect.Signature | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator adding implicit differentiation to a fixed-point solver.

    Same as `custom_root` with the optimality function `F(x, *args) = T(x, *args) - x`, so
    `d_x F = d_x T - I` and `dx*/dargs = (I - d_x T)^{-1} d_args T`.

    Args:
      fixed_point_fun: `T(x, *args)`, with `T(x*, *args) = x*` at the solution; same signature as
        the solver.
      solve: linear solver `solve(matvec, b)` (default `solve_normal_cg`; `solve_gmres` or
        `solve_lu` also suit the non-symmetric `I - d_x T`).
      has_aux: if True, the solver returns `(x, aux)` and `aux` receives no gradient.
      reference_signature: function or signature used to map keyword arguments to positions
        (defaults to the signature of `fixed_point_fun`).

    Returns:
      A decorator `solver_fun -> implicitly differentiated solver_fun`.

    References:
      Blondel et al. "Efficient and Modular Implicit Differentiation." arXiv:2105.15183.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> T = lambda x, a: 0.5 * x + a  # fixed point x* = 2a
      >>> @custom_fixed_point(T)
      ... def iterate(x0, a):
      ...     return jax.lax.fori_loop(0, 60, lambda _, x: T(x, a), x0)
      >>> print(round(float(jax.grad(iterate, argnums=1)(0.0, 3.0)), 4))
      2.0
    """

    def optimality_fun(x, *args):
        return jax.tree.map(jnp.subtract, fixed_point_fun(x, *args), x)

    if reference_signature is None:
        reference_signature = _signature(fixed_point_fun)
    return custom_root(
        optimality_fun, solve=solve, has_aux=has_aux, reference_signature=reference_signature
    )
