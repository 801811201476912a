"""Linear solvers for the linearised optimality systems of implicit differentiation.

Every solver has the signature `solve(matvec, b, **options) -> x` and solves `A x = b` where
`matvec(v) = A v` is linear and `b` (a pytree) has the structure of `x`. Iterative solvers
(`solve_cg`, `solve_normal_cg`, `solve_gmres`, `solve_bicgstab`) only call `matvec`; dense
solvers (`solve_lu`, `solve_cholesky`) materialise `A` once, which is the fast choice for a few
hundred unknowns. Any of them, with options bound by `functools.partial`, can be passed as the
`solve=` argument of `custom_root` or of `ImplicitAdjoint`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy as jsp
from jax.flatten_util import ravel_pytree

__all__ = [
    "solve_bicgstab",
    "solve_cg",
    "solve_cholesky",
    "solve_gmres",
    "solve_lu",
    "solve_normal_cg",
]


def _with_ridge(matvec: Callable, ridge: float | None) -> Callable:
    if ridge is None:
        return matvec

    def ridge_matvec(v):
        return jax.tree.map(lambda av, vv: av + ridge * vv, matvec(v), v)

    return ridge_matvec


def solve_cg(
    matvec: Callable,
    b: Any,
    *,
    ridge: float | None = None,
    init: Any = None,
    tol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
) -> Any:
    """Solves `(A + ridge I) x = b` by conjugate gradient, for symmetric positive definite `A`.

    The iteration stops when `||b - (A + ridge I) x|| <= max(tol * ||b||, atol)` or after
    `maxiter` steps (default `10 * size(b)`). Only products `A v` are used.

    Args:
      matvec: linear map `v -> A v` on pytrees shaped like `b`; `A` symmetric positive definite.
      b: right-hand side (pytree of arrays).
      ridge: optional Tikhonov term added to the diagonal of `A`.
      init: optional initial guess shaped like `b` (defaults to zeros).
      tol: relative residual tolerance.
      atol: absolute residual tolerance.
      maxiter: maximum number of iterations.

    Returns:
      The solution `x`, a pytree shaped like `b`.

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> x = solve_cg(lambda v: a @ v, jnp.array([1.0, 2.0]))
      >>> print([round(float(v), 4) for v in x])
      [0.0909, 0.6364]
    """
    matvec = _with_ridge(matvec, ridge)
    b = jax.tree.map(jnp.asarray, b)
    zero_init = init is None
    init = jax.tree.map(jnp.zeros_like, b) if zero_init else jax.tree.map(jnp.asarray, init)
    if jax.tree.structure(init) != jax.tree.structure(b) or _shapes(init) != _shapes(b):
        raise ValueError(
            "solve_cg: `init` must have the structure and shapes of `b`, got "
            f"{jax.tree.structure(init)} {_shapes(init)} vs {jax.tree.structure(b)} {_shapes(b)}."
        )
    if maxiter is None:
        maxiter = 10 * sum(leaf.size for leaf in jax.tree.leaves(b))
    loop = _traced_once_per_operator(
        functools.partial(
            _cg_loop, x0=init, zero_init=zero_init, tol=tol, atol=atol, maxiter=maxiter
        )
    )
    # Real right-hand sides: the operator is symmetric, so the transposed solve (used when
    # differentiating the solution) reuses the traced loop.
    real = all(not jnp.iscomplexobj(leaf) for leaf in jax.tree.leaves(b))
    return jax.lax.custom_linear_solve(matvec, b, solve=loop, transpose_solve=loop, symmetric=real)


def _shapes(tree) -> list[tuple[int, ...]]:
    return [jnp.shape(leaf) for leaf in jax.tree.leaves(tree)]


def _tree_vdot_real(x, y) -> jax.Array:
    """`Re <x, y>` summed over the leaves (highest matmul precision)."""
    total = None
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
        term = jnp.vdot(a.real, b.real, precision=jax.lax.Precision.HIGHEST)
        if jnp.iscomplexobj(a) or jnp.iscomplexobj(b):
            term = term + jnp.vdot(a.imag, b.imag, precision=jax.lax.Precision.HIGHEST)
        total = term if total is None else total + term
    return total


def _cg_loop(
    matvec: Callable,
    b: Any,
    *,
    x0: Any,
    zero_init: bool,
    tol: float,
    atol: float,
    maxiter: int,
) -> Any:
    """Conjugate-gradient iterations from `x0` until `||r||^2 <= max(tol^2 ||b||^2, atol^2)`."""
    threshold = jnp.maximum(jnp.square(tol) * _tree_vdot_real(b, b), jnp.square(atol))
    # From the zero initial point the residual is `b` itself (no product with A needed).
    r0 = b if zero_init else jax.tree.map(jnp.subtract, b, matvec(x0))
    dtype = jnp.result_type(*jax.tree.leaves(r0))
    gamma0 = _tree_vdot_real(r0, r0).astype(dtype)

    def cond(carry):
        _, _, gamma, _, k = carry
        return (gamma.real > threshold) & (k < maxiter)

    def body(carry):
        x, r, gamma, p, k = carry
        ap = matvec(p)
        alpha = gamma / _tree_vdot_real(p, ap).astype(dtype)
        x = jax.tree.map(lambda xi, pi: xi + alpha * pi, x, p)
        r = jax.tree.map(lambda ri, api: ri - alpha * api, r, ap)
        gamma_next = _tree_vdot_real(r, r).astype(dtype)
        beta = gamma_next / gamma
        p = jax.tree.map(lambda ri, pi: ri + beta * pi, r, p)
        return x, r, gamma_next, p, k + 1

    return jax.lax.while_loop(cond, body, (x0, r0, gamma0, r0, 0))[0]


def _traced_once_per_operator(loop: Callable) -> Callable:
    """Wraps `loop(matvec, b)` so that a second call with the same `matvec` and argument types
    (the transposed solve of a symmetric system) evaluates the jaxpr traced by the first call."""
    memo = {}

    def solve(matvec, b):
        leaves, tree = jax.tree.flatten(b)
        key = (matvec, tree, tuple(jax.typeof(leaf) for leaf in leaves))
        if key not in memo:
            closed, out_shape = jax.make_jaxpr(lambda v: loop(matvec, v), return_shape=True)(b)
            memo[key] = (closed, jax.tree.structure(out_shape))
        closed, out_tree = memo[key]
        return jax.tree.unflatten(
            out_tree, jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *leaves)
        )

    return solve


def solve_normal_cg(
    matvec: Callable,
    b: Any,
    *,
    ridge: float | None = None,
    init: Any = None,
    tol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
) -> Any:
    """Solves `A x = b` for any square non-singular `A` by CG on the normal equations.

    Solves `(A^T A + ridge I) x = A^T b`, which is symmetric positive (semi-)definite whatever
    `A` is. `A^T` is obtained by transposing `matvec` (`jax.linear_transpose`), so `matvec` must
    be linear in its argument. The condition number is squared relative to `A`, so prefer
    `solve_cg` when `A` is symmetric positive definite (a Hessian at a strict minimum).

    Args:
      matvec: linear map `v -> A v`; its output has the structure of `b`.
      b: right-hand side (pytree of arrays).
      ridge: optional Tikhonov term added to the diagonal of `A^T A`.
      init: optional initial guess (also fixes the structure of `x` when `A` is not square).
      tol: relative residual tolerance of the normal system.
      atol: absolute residual tolerance of the normal system.
      maxiter: maximum number of CG iterations.

    Returns:
      The solution `x`.

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([[1.0, 2.0], [0.0, 1.0]])
      >>> x = solve_normal_cg(lambda v: a @ v, jnp.array([5.0, 2.0]), tol=1e-7)
      >>> print([round(float(v), 4) for v in x])
      [1.0, 2.0]
    """
    example = b if init is None else init
    transpose = jax.linear_transpose(matvec, example)

    def normal_matvec(v):
        return transpose(matvec(v))[0]

    normal_matvec = _with_ridge(normal_matvec, ridge)
    rhs = transpose(b)[0]
    return jsp.sparse.linalg.cg(normal_matvec, rhs, x0=init, tol=tol, atol=atol, maxiter=maxiter)[0]


def solve_gmres(
    matvec: Callable,
    b: Any,
    *,
    ridge: float | None = None,
    init: Any = None,
    tol: float = 1e-5,
    atol: float = 0.0,
    restart: int = 20,
    maxiter: int | None = None,
) -> Any:
    """Solves `(A + ridge I) x = b` by restarted GMRES, for any square non-singular `A`.

    Args:
      matvec: linear map `v -> A v` on pytrees shaped like `b`.
      b: right-hand side (pytree of arrays).
      ridge: optional Tikhonov term added to the diagonal of `A`.
      init: optional initial guess shaped like `b`.
      tol: relative residual tolerance.
      atol: absolute residual tolerance.
      restart: Krylov subspace size between restarts.
      maxiter: maximum number of restart cycles.

    Returns:
      The solution `x`, a pytree shaped like `b`.

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([[1.0, 2.0], [0.0, 1.0]])
      >>> x = solve_gmres(lambda v: a @ v, jnp.array([5.0, 2.0]))
      >>> print([round(float(v), 4) for v in x])
      [1.0, 2.0]
    """
    matvec = _with_ridge(matvec, ridge)
    return jsp.sparse.linalg.gmres(
        matvec, b, x0=init, tol=tol, atol=atol, restart=restart, maxiter=maxiter
    )[0]


def solve_bicgstab(
    matvec: Callable,
    b: Any,
    *,
    ridge: float | None = None,
    init: Any = None,
    tol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
) -> Any:
    """Solves `(A + ridge I) x = b` by BiCGSTAB, for any square non-singular `A`.

    Args:
      matvec: linear map `v -> A v` on pytrees shaped like `b`.
      b: right-hand side (pytree of arrays).
      ridge: optional Tikhonov term added to the diagonal of `A`.
      init: optional initial guess shaped like `b`.
      tol: relative residual tolerance.
      atol: absolute residual tolerance.
      maxiter: maximum number of iterations.

    Returns:
      The solution `x`, a pytree shaped like `b`.

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([[1.0, 2.0], [0.0, 1.0]])
      >>> x = solve_bicgstab(lambda v: a @ v, jnp.array([5.0, 2.0]))
      >>> print([round(float(v), 4) for v in x])
      [1.0, 2.0]
    """
    matvec = _with_ridge(matvec, ridge)
    return jsp.sparse.linalg.bicgstab(matvec, b, x0=init, tol=tol, atol=atol, maxiter=maxiter)[0]


def _dense_system(matvec: Callable, b: Any, ridge: float | None):
    """Returns `(A, b_flat, unravel)` with `A` materialised column by column."""
    matvec = _with_ridge(matvec, ridge)
    b_flat, unravel = ravel_pytree(b)

    def flat_matvec(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    eye = jnp.eye(b_flat.shape[0], dtype=b_flat.dtype)
    a = jax.vmap(flat_matvec, in_axes=1, out_axes=1)(eye)
    return a, b_flat, unravel


def solve_lu(matvec: Callable, b: Any, *, ridge: float | None = None) -> Any:
    """Solves `(A + ridge I) x = b` exactly by LU factorisation of the materialised `A`.

    `A` is built with one `matvec` per unknown (vectorised), so memory is `size(b)^2`.

    Args:
      matvec: linear map `v -> A v` on pytrees shaped like `b`.
      b: right-hand side (pytree of arrays, flattened internally).
      ridge: optional Tikhonov term added to the diagonal of `A`.

    Returns:
      The solution `x`, a pytree shaped like `b`.

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([[1.0, 2.0], [0.0, 1.0]])
      >>> x = solve_lu(lambda v: a @ v, jnp.array([5.0, 2.0]))
      >>> print([round(float(v), 4) for v in x])
      [1.0, 2.0]
    """
    a, b_flat, unravel = _dense_system(matvec, b, ridge)
    return unravel(jnp.linalg.solve(a, b_flat))


def solve_cholesky(matvec: Callable, b: Any, *, ridge: float | None = None) -> Any:
    """Solves `(A + ridge I) x = b` by Cholesky factorisation, for symmetric positive definite `A`.

    Args:
      matvec: linear map `v -> A v` on pytrees shaped like `b`; `A` symmetric positive definite.
      b: right-hand side (pytree of arrays, flattened internally).
      ridge: optional Tikhonov term added to the diagonal of `A`.

    Returns:
      The solution `x`, a pytree shaped like `b`.

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> x = solve_cholesky(lambda v: a @ v, jnp.array([1.0, 2.0]))
      >>> print([round(float(v), 4) for v in x])
      [0.0909, 0.6364]
    """
    a, b_flat, unravel = _dense_system(matvec, b, ridge)
    factor = jsp.linalg.cho_factor(0.5 * (a + a.T))
    return unravel(jsp.linalg.cho_solve(factor, b_flat))
