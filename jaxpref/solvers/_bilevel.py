"""Bilevel helpers: the gradient of an outer loss through an inner solver, in one call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from jaxpref.solvers._base import Solution

__all__ = ["Hypergradient", "hypergradient"]


class Hypergradient(NamedTuple):
    """Result of `hypergradient`.

    Attributes:
      value: `[]` outer loss `L(x*(theta), theta)`.
      grad: `dL/dtheta`, shaped like `theta`.
      solution: the inner `Solution` (its `value` is `x*(theta)`).
      aux: auxiliary output of the outer loss (None unless `has_aux`).

    Example:
      >>> print(Hypergradient._fields)
      ('value', 'grad', 'solution', 'aux')
    """

    value: Any
    grad: Any
    solution: Solution
    aux: Any


def hypergradient(
    outer_fun: Callable,
    solver,
    theta,
    inner_init,
    *inner_args,
    has_aux: bool = False,
) -> Hypergradient:
    """Value and gradient of `L(x*(theta), theta)` with `x*(theta) = solver.run(init, theta, ...)`.

    The total derivative is `dL/dtheta = d_theta L + (dx*/dtheta)^T d_x L`; the second term comes
    from the solver's adjoint (implicit: one linear solve; unrolled: backpropagation through the
    iterations).

    Args:
      outer_fun: `L(x, theta) -> []` (or `([], aux)` with `has_aux`).
      solver: any solver of this package; its user function takes `(x, theta, *inner_args)`.
      theta: outer parameters (pytree), the first argument after the initial point.
      inner_init: initial point of the inner solver.
      *inner_args: further (non-differentiated) arguments of the inner problem.
      has_aux: whether `outer_fun` returns `(value, aux)`.

    Returns:
      `Hypergradient(value, grad, solution, aux)`.

    References:
      Blondel et al. "Efficient and Modular Implicit Differentiation." arXiv:2105.15183.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.solvers import GradientDescent
      >>> inner = lambda x, lam: 0.5 * (x - 1.0) ** 2 + 0.5 * lam * x**2  # x* = 1 / (1 + lam)
      >>> outer = lambda x, lam: x  # dx*/dlam = -1 / (1 + lam)^2
      >>> gd = GradientDescent(inner, learning_rate=0.5, tol=1e-7)
      >>> hg = hypergradient(outer, gd, jnp.array(1.0), jnp.array(0.0))
      >>> print(round(float(hg.value), 4), round(float(hg.grad), 4))
      0.5 -0.25
    """

    def total(th):
        solution = solver.run(inner_init, th, *inner_args)
        out = outer_fun(solution.value, th)
        if has_aux:
            value, aux = out
        else:
            value, aux = out, None
        return value, (solution, aux)

    (value, (solution, aux)), grad = jax.value_and_grad(total, has_aux=True)(theta)
    return Hypergradient(value, grad, solution, aux)
