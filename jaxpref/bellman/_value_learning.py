"""Temporal-difference errors for value and action-value learning (rlax-compatible).

`td_learning`, `q_learning` and `expected_sarsa` act on single transitions as in rlax and also
accept leading batch axes (`[..., A]` action values with `[...]` actions, rewards, discounts),
so a `[B, T]` grid of transitions needs no `vmap`. `td_lambda` and `retrace` act on one
trajectory `[T]` and are reverse scans (see `_recursions`). Targets are wrapped in
`stop_gradient` by default (`stop_target_gradients=True`), as in rlax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_rank, check_same_shape
from jaxpref.bellman._args import (
    check_actions,
    check_per_step,
    check_sequences,
    check_transition,
    floats,
    maybe_stop,
    select,
)
from jaxpref.bellman._recursions import resolve_unroll, scan_lambda_returns

__all__ = [
    "expected_sarsa",
    "q_learning",
    "retrace",
    "td_lambda",
    "td_learning",
]


def td_learning(
    v_tm1: ArrayLike,
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    stop_target_gradients: bool = True,
) -> jax.Array:
    r"""One-step temporal-difference error of state values.

        td = r_t + discount_t * v_t - v_tm1

    Same name, arguments and semantics as `rlax.td_learning` (a single transition); arrays of
    any equal shape are treated elementwise.

    Args:
      v_tm1: value `v(s_{t-1})` of the state acted in (any shape, e.g. `[]` or `[B]`).
      r_t: reward of the transition, same shape.
      discount_t: discount of the transition (0 at an episode end), same shape.
      v_t: value `v(s_t)` of the state reached, same shape.
      stop_target_gradients: if True, no gradient flows through the target.

    Returns:
      TD errors with the shape of `v_tm1`.

    References:
      Sutton, "Learning to Predict by the Methods of Temporal Differences", Machine Learning 3
      (1988).

    Example:
      >>> print(round(float(td_learning(1.0, 0.5, 0.9, 2.0)), 4))  # 0.5 + 0.9 * 2 - 1
      1.3
    """
    fn = "td_learning"
    check_floating({"v_tm1": v_tm1, "r_t": r_t, "discount_t": discount_t, "v_t": v_t}, fn=fn)
    check_same_shape(
        {"v_tm1": v_tm1, "r_t": r_t, "discount_t": discount_t, "v_t": v_t}, "v_tm1", fn=fn
    )
    v_tm1, r_t, discount_t, v_t = floats(v_tm1, r_t, discount_t, v_t)
    target = maybe_stop(r_t + discount_t * v_t, stop_target_gradients)
    return target - v_tm1


def td_lambda(
    v_tm1: ArrayLike,
    r_t: ArrayLike,
    discount_t: ArrayLike,
    v_t: ArrayLike,
    lambda_: ArrayLike,
    stop_target_gradients: bool = True,
) -> jax.Array:
    r"""TD(lambda) errors of one trajectory: lambda-returns minus the current values.

        td_t = G_t^lambda - v_tm1_t,   G_t^lambda = r_t + d_t ((1 - l_t) v_t + l_t G_{t+1}^lambda)

    Same name, arguments and semantics as `rlax.td_lambda`.

    Args:
      v_tm1: `[T]` values of the states acted in.
      r_t: `[T]` rewards.
      discount_t: `[T]` discounts (0 at episode ends).
      v_t: `[T]` values of the states reached.
      lambda_: scalar or `[T]` mixing parameter.
      stop_target_gradients: if True, no gradient flows through the lambda-returns.

    Returns:
      `[T]` TD(lambda) errors.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., ch. 12.

    Example:
      >>> import jax.numpy as jnp
      >>> td = td_lambda(jnp.zeros(2), jnp.ones(2), jnp.ones(2), jnp.array([1.0, 2.0]), 1.0)
      >>> print([round(float(x), 4) for x in td])  # returns (1 + 1 + 2, 1 + 2)
      [4.0, 3.0]
    """
    fn = "td_lambda"
    shape = check_sequences(
        {"v_tm1": v_tm1, "r_t": r_t, "discount_t": discount_t, "v_t": v_t}, 1, fn=fn
    )
    check_rank(lambda_, "lambda_", (0, 1), fn=fn)
    check_per_step(lambda_, "lambda_", shape, reference="v_tm1", fn=fn)
    v_tm1, r_t, discount_t, v_t, lambda_ = floats(v_tm1, r_t, discount_t, v_t, lambda_)
    target = scan_lambda_returns(r_t, discount_t, v_t, lambda_, unroll=resolve_unroll(fn, None))
    return maybe_stop(target, stop_target_gradients) - v_tm1


def q_learning(
    q_tm1: ArrayLike,
    a_tm1: ArrayLike,
    r_t: ArrayLike,
    discount_t: ArrayLike,
    q_t: ArrayLike,
    stop_target_gradients: bool = True,
) -> jax.Array:
    r"""Q-learning temporal-difference error.

        td = r_t + discount_t * max_a q_t[a] - q_tm1[a_tm1]

    Same name, arguments and semantics as `rlax.q_learning` (one transition: `q_tm1` `[A]`,
    scalar `a_tm1`, `r_t`, `discount_t`); leading batch axes are also accepted.

    Args:
      q_tm1: `[..., A]` action values at the state acted in.
      a_tm1: `[...]` integer action taken.
      r_t: `[...]` reward.
      discount_t: `[...]` discount (0 at an episode end).
      q_t: `[..., A]` action values at the state reached.
      stop_target_gradients: if True, no gradient flows through the target.

    Returns:
      `[...]` TD errors.

    References:
      Watkins and Dayan, "Q-learning", Machine Learning 8 (1992).

    Example:
      >>> import jax.numpy as jnp
      >>> td = q_learning(jnp.array([1.0, 2.0]), 0, 1.0, 0.5, jnp.array([4.0, 3.0]))
      >>> print(round(float(td), 4))  # 1 + 0.5 * 4 - 1
      2.0
    """
    fn = "q_learning"
    a_tm1 = jnp.asarray(a_tm1)
    check_transition(q_tm1, a_tm1, r_t, discount_t, q_t, fn=fn)
    q_tm1, r_t, discount_t, q_t = floats(q_tm1, r_t, discount_t, q_t)
    target = maybe_stop(r_t + discount_t * jnp.max(q_t, axis=-1), stop_target_gradients)
    return target - select(q_tm1, a_tm1)


def expected_sarsa(
    q_tm1: ArrayLike,
    a_tm1: ArrayLike,
    r_t: ArrayLike,
    discount_t: ArrayLike,
    q_t: ArrayLike,
    probs_a_t: ArrayLike,
    stop_target_gradients: bool = True,
) -> jax.Array:
    r"""Expected-SARSA temporal-difference error.

        td = r_t + discount_t * sum_a pi(a | s_t) q_t[a] - q_tm1[a_tm1]

    Same name, arguments and semantics as `rlax.expected_sarsa`; leading batch axes are also
    accepted.

    Args:
      q_tm1: `[..., A]` action values at the state acted in.
      a_tm1: `[...]` integer action taken.
      r_t: `[...]` reward.
      discount_t: `[...]` discount (0 at an episode end).
      q_t: `[..., A]` action values at the state reached.
      probs_a_t: `[..., A]` probabilities of the evaluated policy at the state reached.
      stop_target_gradients: if True, no gradient flows through the target.

    Returns:
      `[...]` TD errors.

    References:
      van Seijen, van Hasselt, Whiteson, Wiering, "A Theoretical and Empirical Analysis of
      Expected Sarsa", ADPRL 2009.

    Example:
      >>> import jax.numpy as jnp
      >>> td = expected_sarsa(jnp.array([1.0, 2.0]), 1, 0.0, 1.0, jnp.array([4.0, 2.0]),
      ...                     jnp.array([0.25, 0.75]))
      >>> print(round(float(td), 4))  # 0.25 * 4 + 0.75 * 2 - 2
      0.5
    """
    fn = "expected_sarsa"
    a_tm1 = jnp.asarray(a_tm1)
    check_floating({"probs_a_t": probs_a_t}, fn=fn)
    check_transition(q_tm1, a_tm1, r_t, discount_t, q_t, extra={"probs_a_t": probs_a_t}, fn=fn)
    q_tm1, r_t, discount_t, q_t, probs_a_t = floats(q_tm1, r_t, discount_t, q_t, probs_a_t)
    expected = jnp.sum(q_t * probs_a_t, axis=-1)
    target = maybe_stop(r_t + discount_t * expected, stop_target_gradients)
    return target - select(q_tm1, a_tm1)


class _OffPolicyCarry(NamedTuple):
    """Reverse-scan state: the off-policy return `G_{t+1}` of the next step."""

    g: jax.Array


def _off_policy_return_step(carry: _OffPolicyCarry, xs):
    r_t, discount_t, c_t, v_t, q_t = xs
    g = r_t + discount_t * (v_t - c_t * q_t + c_t * carry.g)
    return _OffPolicyCarry(g), g


def _scan_off_policy_returns(q_t, v_t, r_t, discount_t, c_t, *, unroll: int):
    """`G_t = r_t + d_t (v_t - c_t q_t + c_t G_{t+1})` for t < K-1, `G_{K-1} = r + d v`."""
    g_last = r_t[-1] + discount_t[-1] * v_t[-1]
    _, g = jax.lax.scan(
        _off_policy_return_step,
        _OffPolicyCarry(g_last),
        (r_t[:-1], discount_t[:-1], c_t, v_t[:-1], q_t),
        reverse=True,
        unroll=unroll,
    )
    return jnp.concatenate([g, g_last[None]], axis=0)


def retrace(
    q_tm1: ArrayLike,
    q_t: ArrayLike,
    a_tm1: ArrayLike,
    a_t: ArrayLike,
    r_t: ArrayLike,
    discount_t: ArrayLike,
    pi_t: ArrayLike,
    mu_t: ArrayLike,
    lambda_: ArrayLike,
    eps: float = 1e-8,
    stop_target_gradients: bool = True,
) -> jax.Array:
    r"""Retrace errors of one trajectory of behaviour-policy experience.

        c_t = lambda_t * min(1, pi(a_t | s_t) / (mu(a_t | s_t) + eps))
        G_t = r_t + d_t (E_pi q_t - c_t q_t[a_t] + c_t G_{t+1}),   G_{T-1} = r + d E_pi q_t
        err_t = G_t - q_tm1[a_tm1]

    Same name, arguments and semantics as `rlax.retrace`, except that `lambda_` may also be a
    `[T]` vector of per-step trace parameters.

    Args:
      q_tm1: `[T, A]` action values at the states acted in (times 0..T-1).
      q_t: `[T, A]` action values at the states reached (times 1..T).
      a_tm1: `[T]` integer actions taken at times 0..T-1.
      a_t: `[T]` integer actions taken at times 1..T.
      r_t: `[T]` rewards.
      discount_t: `[T]` discounts (0 at episode ends).
      pi_t: `[T, A]` target-policy probabilities at times 1..T.
      mu_t: `[T]` behaviour-policy probabilities of `a_t`.
      lambda_: scalar or `[T]` trace parameter.
      eps: added to `mu_t` before dividing.
      stop_target_gradients: if True, no gradient flows through the targets.

    Returns:
      `[T]` Retrace errors.

    References:
      Munos, Stepleton, Harutyunyan, Bellemare, "Safe and Efficient Off-Policy Reinforcement
      Learning", arXiv:1606.02647.

    Example:
      >>> import jax.numpy as jnp
      >>> q = jnp.array([[0.0, 1.0], [2.0, 0.0]])
      >>> err = retrace(jnp.zeros((2, 2)), q, jnp.array([0, 0]), jnp.array([1, 0]),
      ...               jnp.ones(2), jnp.ones(2), jnp.full((2, 2), 0.5), jnp.full(2, 0.5), 1.0)
      >>> print([round(float(x), 4) for x in err])  # G_1 = 1 + 1; G_0 = 1 + (0.5 - 1 + 2)
      [2.5, 2.0]
    """
    fn = "retrace"
    a_tm1, a_t = jnp.asarray(a_tm1), jnp.asarray(a_t)
    for name, value, rank in (
        ("q_tm1", q_tm1, 2),
        ("q_t", q_t, 2),
        ("pi_t", pi_t, 2),
        ("r_t", r_t, 1),
        ("discount_t", discount_t, 1),
        ("mu_t", mu_t, 1),
    ):
        check_rank(value, name, rank, fn=fn)
    check_floating(
        {
            "q_tm1": q_tm1,
            "q_t": q_t,
            "r_t": r_t,
            "discount_t": discount_t,
            "pi_t": pi_t,
            "mu_t": mu_t,
        },
        fn=fn,
    )
    check_same_shape({"q_tm1": q_tm1, "q_t": q_t, "pi_t": pi_t}, "q_tm1", fn=fn)
    steps = (jnp.shape(q_tm1)[0],)
    check_same_shape({"r_t": r_t, "discount_t": discount_t, "mu_t": mu_t}, "r_t", fn=fn)
    if tuple(jnp.shape(r_t)) != steps:
        raise ValueError(
            f"{fn}: `r_t` must have shape {steps} (the time axis of `q_tm1` "
            f"{tuple(jnp.shape(q_tm1))}), got {tuple(jnp.shape(r_t))}."
        )
    check_actions(a_tm1, "a_tm1", steps, q_name="q_tm1", fn=fn)
    check_actions(a_t, "a_t", steps, q_name="q_t", fn=fn)
    check_rank(lambda_, "lambda_", (0, 1), fn=fn)
    check_per_step(lambda_, "lambda_", steps, fn=fn)
    q_tm1, q_t, r_t, discount_t, pi_t, mu_t, lambda_ = floats(
        q_tm1, q_t, r_t, discount_t, pi_t, mu_t, lambda_
    )
    pi_a_t = select(pi_t, a_t)
    c_t = jnp.minimum(1.0, pi_a_t / (mu_t + eps)) * lambda_
    expected_q_t = jnp.sum(pi_t * q_t, axis=-1)
    q_a_t = select(q_t, a_t)
    target = _scan_off_policy_returns(
        q_a_t[:-1], expected_q_t, r_t, discount_t, c_t[:-1], unroll=resolve_unroll(fn, None)
    )
    return maybe_stop(target, stop_target_gradients) - select(q_tm1, a_tm1)
