"""Multistep returns and advantages of a single trajectory as reverse `lax.scan`s.

Names, argument order and semantics follow rlax (`rlax._src.multistep`), so code written against
rlax runs unchanged: index `t` of `r_t`, `discount_t` and `v_t` describes the transition out of
state `s_t` (reward and discount received on arrival in `s_{t+1}`, and the value of `s_{t+1}`).
Episode boundaries inside a trajectory are marked by `discount_t = 0`. The recursions are the
reverse-scan cores of `_recursions`. Each function is declared once, with a `Recursion` that
tells `_layouts` how it reads its arguments, so `time_major(fn)` (`[T, B]` rollouts) and
`batch_major(fn)` (masked `[B, T]` rows) apply it in the other layouts with the same checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref.bellman._layouts import Recursion, apply, with_layouts
from jaxpref.bellman._recursions import (
    scan_discounted_returns,
    scan_gae,
    scan_lambda_returns,
    scan_masked_discounted_returns,
    scan_masked_gae,
    scan_masked_lambda_returns,
    scan_n_step,
)

__all__ = [
    "discounted_returns",
    "lambda_returns",
    "n_step_bootstrapped_returns",
    "truncated_generalized_advantage_estimation",
]


# --------------------------------------------------------------------------------------------
# How each function reads its arguments (for the three layouts of `_layouts`).
# --------------------------------------------------------------------------------------------


def _discounted_returns_core(r_t, discount_t, v_t, *, unroll: int, in_place: bool):
    bootstrap = v_t[-1] if v_t.ndim == r_t.ndim else jnp.broadcast_to(v_t, r_t.shape[1:])
    return scan_discounted_returns(r_t, discount_t, bootstrap, unroll=unroll, in_place=in_place)


def _n_step_core(r_t, discount_t, v_t, lambda_t, *, n: int, unroll: int, in_place: bool):
    del unroll, in_place  # a scan over the n shifted backups, vectorised over time
    return scan_n_step(r_t, discount_t, v_t, n, lambda_t)


_LAMBDA_RETURNS = Recursion(
    arrays=(
        ("r_t", "reward"),
        ("discount_t", "discount"),
        ("v_t", "value"),
        ("lambda_", "trace"),
    ),
    core=scan_lambda_returns,
    masked_core=scan_masked_lambda_returns,
)
_DISCOUNTED_RETURNS = Recursion(
    arrays=(("r_t", "reward"), ("discount_t", "discount"), ("v_t", "bootstrap")),
    core=_discounted_returns_core,
    masked_core=scan_masked_discounted_returns,
)
_N_STEP_BOOTSTRAPPED_RETURNS = Recursion(
    arrays=(
        ("r_t", "reward"),
        ("discount_t", "discount"),
        ("v_t", "value"),
        ("lambda_t", "trace"),
    ),
    core=_n_step_core,
    static=("n",),
)
_GAE = Recursion(
    arrays=(
        ("r_t", "reward"),
        ("discount_t", "discount"),
        ("lambda_", "trace"),
        ("values", "values"),
    ),
    core=scan_gae,
    masked_core=scan_masked_gae,
)


# --------------------------------------------------------------------------------------------
# Public single-trajectory functions (rlax-compatible).
# --------------------------------------------------------------------------------------------


@with_layouts(_LAMBDA_RETURNS)
def lambda_returns(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    lambda_: ArrayLike = 1.0,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""Truncated lambda-returns of one trajectory, computed backwards by a reverse scan.

        G_t = r_t + discount_t * ((1 - lambda_t) * v_t + lambda_t * G_{t+1}),   G_T = v_{T-1}

    so the last step bootstraps fully from `v_{T-1}`. `lambda_ = 1` gives the discounted return
    bootstrapped at the end, `lambda_ = 0` the one-step target `r_t + discount_t * v_t`. A per-step
    `lambda_` implements off-policy traces (e.g. `lambda_t = min(1, rho_t)` for V-trace style
    cuts). Same name, argument order and semantics as `rlax.lambda_returns`.

    Args:
      r_t: `[T]` rewards received on the transition out of step t (times 1..T in rlax terms).
      discount_t: `[T]` discounts of those transitions (or one scalar); 0 marks an episode end.
      v_t: `[T]` values of the states reached (bootstrap values `v(s_{t+1})`).
      lambda_: scalar or `[T]` mixing parameter.
      stop_target_gradients: if True, no gradient flows through the returns.
      unroll: `lax.scan` unroll factor, a speed knob (results agree to float rounding); None
        picks 1 on CPU and 32 on accelerators.

    Returns:
      `[T]` lambda-returns `G_0 .. G_{T-1}` (float32, or float64 for float64 inputs).

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., ch. 12.

    Example:
      >>> import jax.numpy as jnp
      >>> g = lambda_returns(jnp.array([1.0, 1.0]), jnp.array([0.5, 0.5]),
      ...                    jnp.array([2.0, 4.0]), 0.5)
      >>> print([round(float(x), 4) for x in g])  # G_1 = 1 + .5*4 = 3; G_0 = 1 + .5*(1 + 1.5)
      [2.25, 3.0]
    """
    return apply(
        _LAMBDA_RETURNS,
        "lambda_returns",
        {"r_t": r_t, "discount_t": discount_t, "v_t": v_t, "lambda_": lambda_},
        layout="single",
        stop_target_gradients=stop_target_gradients,
        unroll=unroll,
    )


@with_layouts(_DISCOUNTED_RETURNS)
def discounted_returns(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""Discounted returns of one trajectory, bootstrapped from the value after the last step.

        G_t = r_t + discount_t * G_{t+1},   G_T = v_{T-1}

    Only the bootstrap value after the final step matters: `v_t` may be a scalar, or a `[T]`
    array of which only the last entry is used (as in `rlax.discounted_returns`).

    Args:
      r_t: `[T]` rewards.
      discount_t: `[T]` discounts (or one scalar); 0 marks an episode end.
      v_t: scalar or `[T]` bootstrap value(s).
      stop_target_gradients: if True, no gradient flows through the returns.
      unroll: `lax.scan` unroll factor (None: 1 on CPU, 32 on accelerators).

    Returns:
      `[T]` discounted returns.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., sec. 3.3.

    Example:
      >>> import jax.numpy as jnp
      >>> g = discounted_returns(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 0.0, 0.5]), 10.0)
      >>> print([round(float(x), 4) for x in g])  # the episode ends after step 1
      [2.0, 2.0, 8.0]
    """
    return apply(
        _DISCOUNTED_RETURNS,
        "discounted_returns",
        {"r_t": r_t, "discount_t": discount_t, "v_t": v_t},
        layout="single",
        stop_target_gradients=stop_target_gradients,
        unroll=unroll,
    )


@with_layouts(_N_STEP_BOOTSTRAPPED_RETURNS)
def n_step_bootstrapped_returns(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    n: int,
    lambda_t: ArrayLike = 1.0,
    stop_target_gradients: bool = False,
) -> jax.Array:
    r"""Strided n-step bootstrapped returns: accumulate up to `n` rewards, then bootstrap.

        G_t^(n) = r_t + d_t (r_{t+1} + d_{t+1} (... (r_{t+n-1} + d_{t+n-1} v_{t+n-1})))

    with the general form `G <- r + d ((1 - lambda) v + lambda G)` iterated `n` times (so a
    `lambda_t` below 1 mixes in shorter bootstraps). Windows running past the end bootstrap from
    `v_{T-1}`. Computed as a scan over the `n` shifted one-step backups (n is static).

    Args:
      r_t: `[T]` rewards.
      discount_t: `[T]` discounts (or one scalar); 0 marks an episode end.
      v_t: `[T]` bootstrap values of the states reached.
      n: number of rewards to accumulate before bootstrapping (>= 1).
      lambda_t: scalar or `[T]` mixing parameter (1 gives pure n-step returns).
      stop_target_gradients: if True, no gradient flows through the returns.

    Returns:
      `[T]` n-step returns.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., sec. 7.1.

    Example:
      >>> import jax.numpy as jnp
      >>> g = n_step_bootstrapped_returns(jnp.array([1.0, 1.0, 1.0]), jnp.ones(3),
      ...                                 jnp.array([10.0, 20.0, 30.0]), 2)
      >>> print([round(float(x), 4) for x in g])  # 1 + 1 + v_1, 1 + 1 + v_2, 1 + v_2
      [22.0, 32.0, 31.0]
    """
    return apply(
        _N_STEP_BOOTSTRAPPED_RETURNS,
        "n_step_bootstrapped_returns",
        {"r_t": r_t, "discount_t": discount_t, "v_t": v_t, "lambda_t": lambda_t, "n": n},
        layout="single",
        stop_target_gradients=stop_target_gradients,
    )


@with_layouts(_GAE)
def truncated_generalized_advantage_estimation(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    lambda_: ArrayLike,
    values: ArrayLike,
    stop_target_gradients: bool = False,
    *,
    unroll: int | None = None,
) -> jax.Array:
    r"""Truncated generalized advantage estimates (GAE) of one trajectory.

        delta_t = r_t + discount_t * values_{t+1} - values_t
        A_t     = delta_t + discount_t * lambda_t * A_{t+1},   A_T = 0

    Same name, argument order (`lambda_` before `values`) and semantics as
    `rlax.truncated_generalized_advantage_estimation`.

    Args:
      r_t: `[T]` rewards.
      discount_t: `[T]` discounts (or one scalar); 0 marks an episode end.
      lambda_: scalar or `[T]` GAE mixing parameter.
      values: `[T + 1]` state values `v(s_0) .. v(s_T)` (the last one is the bootstrap).
      stop_target_gradients: if True, no gradient flows through the advantages.
      unroll: `lax.scan` unroll factor (None: 1 on CPU, 32 on accelerators).

    Returns:
      `[T]` advantages `A_0 .. A_{T-1}`.

    References:
      Schulman, Moritz, Levine, Jordan, Abbeel, "High-Dimensional Continuous Control Using
      Generalized Advantage Estimation", arXiv:1506.02438.

    Example:
      >>> import jax.numpy as jnp
      >>> a = truncated_generalized_advantage_estimation(
      ...     jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0]), 0.5, jnp.array([0.0, 1.0, 2.0]))
      >>> print([round(float(x), 4) for x in a])  # deltas (2, 2); A_0 = 2 + 0.5 * 2
      [3.0, 2.0]
    """
    return apply(
        _GAE,
        "truncated_generalized_advantage_estimation",
        {"r_t": r_t, "discount_t": discount_t, "lambda_": lambda_, "values": values},
        layout="single",
        stop_target_gradients=stop_target_gradients,
        unroll=unroll,
    )
