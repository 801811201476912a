"""Linear solvers for the linearised optimality systems of implicit differentiation.

Every solver has the signature `solve(matvec, b, **options) -> x` and solves `A x = b` where
`matvec(v) = A v` is linear and `b` (a pytree) has the structure of `x`. Iterative solvers
(`solve_cg`, `solve_normal_cg`, `solve_gmres`, `solve_bicgstab`) only call `matvec`; dense
solvers (`solve_lu`, `solve_cholesky`) materialise `A` once, which is the fast choice for a few
hundred unknowns. Any of them, with options bound by `functools.partial`, can be passed as the
`solve=` argument of `custom_root` or of `ImplicitAdjoint`.
"""

from __future__ import annotations

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
    return jsp.sparse.linalg.cg(matvec, b, x0=init, tol=tol, atol=atol, maxiter=maxiter)[0]


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
