"""Target-based surrogate optimisation (SSO).

Problems of the form `min_theta l(f(theta))` where the targets `z = f(theta)` (logits, policy
outputs on a batch) are cheap to compute but the target-space gradient `grad_z l` is expensive (a
simulator, an environment, a reward model). Each outer step makes one expensive call at
`z_t = f(theta_t)` and then takes `m` cheap steps on the surrogate

  g_t(theta) = l(z_t) + <grad_z l(z_t), f(theta) - z_t> + ||f(theta) - z_t||^2 / (2 eta),

a global upper bound of `l(f(theta))` when `l` is `(1/eta)`-smooth in `z` (majorisation-
minimisation), whose minimiser is the projection of the target-space gradient step
`z_t - eta grad_z l(z_t)` onto the model's realisable set.

References:
  Lavington, Vaswani, Babanezhad, Schmidt, Le Roux. "Target-based Surrogates for Stochastic
  Optimization." ICML 2023, arXiv:2302.02607.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpref.solvers._base import IterativeSolver, tree_l2_norm

__all__ = ["SSO", "SSOState", "target_surrogate"]


def _tree_vdot(a, b):
    return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def target_surrogate(z, z_t, grad_t, *, eta: float, value_t=0.0) -> jax.Array:
    """Target-space surrogate `l(z_t) + <grad_t, z - z_t> + ||z - z_t||^2 / (2 eta)`.

    Args:
      z: targets `f(theta)` at the candidate parameters (pytree, e.g. `[B, K]` logits).
      z_t: targets at the anchor parameters, shaped like `z` (treated as constants).
      grad_t: target-space gradient `grad_z l(z_t)`, shaped like `z` (constant).
      eta: target-space step size; the surrogate upper-bounds `l` when `l` is `(1/eta)`-smooth.
      value_t: optional `l(z_t)`, so that the surrogate equals `l` at `z = z_t`.

    Returns:
      `[]` surrogate value (summed over all targets).

    References:
      Lavington et al. "Target-based Surrogates for Stochastic Optimization." arXiv:2302.02607.

    Example:
      >>> import jax.numpy as jnp
      >>> z, z_t, g = jnp.array([1.0, 2.0]), jnp.array([0.0, 1.0]), jnp.array([1.0, -1.0])
      >>> print(round(float(target_surrogate(z, z_t, g, eta=0.5)), 4))  # 0 + (1 + 1) / 1
      2.0
    """
    z_t, grad_t = jax.lax.stop_gradient((z_t, grad_t))
    diff = jax.tree.map(jnp.subtract, z, z_t)
    return value_t + _tree_vdot(grad_t, diff) + 0.5 / eta * _tree_vdot(diff, diff)


class SSOState(NamedTuple):
    """State of `SSO` at the current parameters `theta`.

    Attributes:
      num_steps: `[]` int32 outer steps taken (= expensive calls minus one).
      error: `[]` norm of the true gradient `||J_f(theta)^T grad_z l(f(theta))||`.
      value: `[]` target loss `l(f(theta))`.
      targets: `z = f(theta)`.
      target_grad: `grad_z l(z)`.

    Example:
      >>> print(SSOState._fields[-2:])
      ('targets', 'target_grad')
    """

    num_steps: Any
    error: Any
    value: Any
    targets: Any
    target_grad: Any


@dataclasses.dataclass(frozen=True)
class SSO(IterativeSolver):
    """Target-based surrogate optimisation: one expensive `grad_z l` per `inner_steps` cheap steps.

    Outer step `t`: evaluate `z_t = f(theta_t, *args)` and `(l(z_t), grad_z l(z_t))` once, then run
    `inner_steps` updates of `inner_optimizer` on `target_surrogate(f(theta, *args), z_t, grad_t)`
    starting from `theta_t` (a `lax.scan`, so the inner loop is unrollable). Stops when the true
    gradient norm `||J_f^T grad_z l||` is at most `tol`. The optimality condition for
    `ImplicitAdjoint` is `grad_theta l(f(theta, *args), *args) = 0`.

    Args:
      model_fn: `f(theta, *args) -> z` (cheap; differentiated in the inner loop).
      target_loss: `l(z, *args) -> []` (expensive; one value-and-gradient per outer step).
      eta: target-space step size of the surrogate.
      inner_optimizer: optax transformation for the surrogate steps (e.g. `optax.sgd(1e-1)`);
        its state is re-initialised at every outer step.
      inner_steps: number `m` of surrogate steps per expensive call.
      max_steps, tol, adjoint, throw: see `IterativeSolver` (`max_steps` counts outer steps).

    References:
      Lavington et al. "Target-based Surrogates for Stochastic Optimization." arXiv:2302.02607.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> X = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> y = jnp.array([1.0, 2.0, 2.0])
      >>> f = lambda w, X, y: X @ w
      >>> loss = lambda z, X, y: 0.5 * jnp.sum((z - y) ** 2)
      >>> sso = SSO(f, loss, eta=1.0, inner_optimizer=optax.sgd(0.2), inner_steps=20, tol=1e-5)
      >>> sol = sso.run(jnp.zeros(2), X, y)
      >>> print([round(float(v), 3) for v in sol.value], int(sol.result))
      [1.0, 1.0] 0
    """

    model_fn: Callable
    target_loss: Callable
    _: dataclasses.KW_ONLY
    eta: float
    inner_optimizer: optax.GradientTransformation
    inner_steps: int = 10

    def _objective(self, theta, *args):
        return self.target_loss(self.model_fn(theta, *args), *args)

    def optimality_fun(self, theta, *args):
        """True gradient `grad_theta l(f(theta, *args), *args)`.

        Args:
          theta: parameters (pytree shaped like `theta0`).
          *args: positional arguments of `model_fn` and `target_loss` (pytrees of arrays).

        Returns:
          The gradient with respect to `theta`, shaped like `theta`.
        """
        return jax.grad(self._objective)(theta, *args)

    def _state(self, theta, num_steps, *args) -> SSOState:
        z, vjp = jax.vjp(lambda p: self.model_fn(p, *args), theta)
        value, grad_z = jax.value_and_grad(lambda t: self.target_loss(t, *args))(z)
        error = tree_l2_norm(vjp(grad_z)[0])
        return SSOState(num_steps, error, value, z, grad_z)

    def init(self, theta0, *args) -> SSOState:
        """Makes the first expensive call at `theta0`.

        Args:
          theta0: initial parameters (pytree).
          *args: positional arguments of `model_fn` and `target_loss` (pytrees of arrays).

        Returns:
          An `SSOState` with 0 steps and the targets `f(theta0)`, loss, target-space gradient
          and true gradient norm there.
        """
        return self._state(theta0, jnp.int32(0), *args)

    def step(self, theta, state: SSOState, *args):
        """`inner_steps` surrogate updates, then one expensive call; returns `(theta, state)`.

        Args:
          theta: current parameters (pytree shaped like `theta0`), the surrogate's anchor.
          state: current state; its `targets` and `target_grad` define the surrogate.
          *args: positional arguments of `model_fn` and `target_loss` (pytrees of arrays).

        Returns:
          `(theta_next, state_next)`: the parameters after `inner_steps` updates of
          `inner_optimizer` (whose state starts fresh) and the expensive call there.
        """

        def surrogate(p):
            z = self.model_fn(p, *args)
            return target_surrogate(z, state.targets, state.target_grad, eta=self.eta)

        def inner(carry, _):
            p, opt_state = carry
            grad = jax.grad(surrogate)(p)
            updates, opt_state = self.inner_optimizer.update(grad, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        opt_state = self.inner_optimizer.init(theta)
        (theta, _), _ = jax.lax.scan(inner, (theta, opt_state), None, length=self.inner_steps)
        return theta, self._state(theta, state.num_steps + 1, *args)
