"""Soft (entropy- and KL-regularised) values, policies, backups and TD errors.

With temperature `tau > 0` the soft value of action values `q` is the log-sum-exp
`V = tau * log sum_a exp(q_a / tau)` and the soft-greedy policy is `softmax(q / tau)`; with a
reference policy `pi_ref` the KL-regularised value is `V = tau * log sum_a pi_ref(a) exp(q_a / tau)`
and the policy `pi(a) ∝ pi_ref(a) exp(q_a / tau)` (the maximiser of `E_pi[q] - tau KL(pi||pi_ref)`;
with a uniform reference it is the soft value minus `tau * log A`). At `tau = 0` both reduce to
the hard maximum (over the support of `pi_ref`) and a greedy policy spreading its mass evenly
over tied maximisers. All reductions run over the last axis and in float32 (float64 stays
float64); `tau` may be a Python number or a traced scalar (e.g. for hyper-gradients), and `tau = 0`
gives finite gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_rank, check_same_shape
from jaxpref.bellman._args import check_tau, check_transition, floats, maybe_stop, select
from jaxpref.bellman._soft_max import soft_argmax, soft_max

__all__ = [
    "kl_regularized_bellman_backup",
    "kl_regularized_policy",
    "kl_regularized_q_learning",
    "kl_regularized_value",
    "soft_bellman_backup",
    "soft_policy",
    "soft_q_learning",
    "soft_value",
]


def _check_q(fn: str, q, log_pi_ref=None):
    check_rank(q, "q", range(1, 8), fn=fn)
    check_floating({"q": q, "log_pi_ref": log_pi_ref}, fn=fn)
    if log_pi_ref is not None:
        check_same_shape({"q": q, "log_pi_ref": log_pi_ref}, "q", fn=fn)


def soft_value(q: ArrayLike, *, tau: ArrayLike = 1.0) -> jax.Array:
    r"""Soft (log-sum-exp) state value of action values, over the last axis.

        V = tau * log sum_a exp(q_a / tau)      (tau > 0),     V = max_a q_a      (tau = 0)

    Computed as `max q + tau * log sum exp((q - max q) / tau)`, so it neither overflows nor
    underflows for small `tau` and tends continuously to the hard maximum.

    Args:
      q: `[..., A]` action values.
      tau: scalar temperature >= 0 (entropy weight).

    Returns:
      `[...]` soft values.

    References:
      Haarnoja, Tang, Abbeel, Levine, "Reinforcement Learning with Deep Energy-Based Policies",
      arXiv:1702.08165.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(soft_value(jnp.array([0.0, 0.0]), tau=1.0)), 4))  # log 2
      0.6931
      >>> print(round(float(soft_value(jnp.array([1.0, 3.0]), tau=0.0)), 4))
      3.0
    """
    fn = "soft_value"
    _check_q(fn, q)
    check_tau(tau, fn=fn)
    (q,) = floats(q)
    return soft_max(q, None, tau)


def soft_policy(q: ArrayLike, *, tau: ArrayLike = 1.0) -> jax.Array:
    r"""Soft-greedy (Boltzmann) policy of action values, over the last axis.

        pi(a) = exp((q_a - V) / tau) = softmax(q / tau)_a,     V = soft_value(q, tau)

    At `tau = 0` it is the greedy policy, uniform over tied maximisers.

    Args:
      q: `[..., A]` action values.
      tau: scalar temperature >= 0.

    Returns:
      `[..., A]` action probabilities.

    References:
      Haarnoja et al., arXiv:1702.08165.

    Example:
      >>> import jax.numpy as jnp
      >>> p = soft_policy(jnp.array([0.0, jnp.log(3.0)]), tau=1.0)
      >>> print([round(float(x), 4) for x in p])
      [0.25, 0.75]
    """
    fn = "soft_policy"
    _check_q(fn, q)
    check_tau(tau, fn=fn)
    (q,) = floats(q)
    return soft_argmax(q, None, tau)


def kl_regularized_value(q: ArrayLike, log_pi_ref: ArrayLike, *, tau: ArrayLike = 1.0) -> jax.Array:
    r"""KL-regularised state value against a reference policy, over the last axis.

        V = tau * log sum_a pi_ref(a) exp(q_a / tau) = max_pi E_pi[q] - tau * KL(pi || pi_ref)

    At `tau = 0` it is `max q` over the support of `pi_ref` (actions with `log_pi_ref = -inf`
    are excluded at every `tau`). With a uniform reference it equals
    `soft_value(q, tau) - tau * log A`.

    Args:
      q: `[..., A]` action values.
      log_pi_ref: `[..., A]` log-probabilities of the reference policy.
      tau: scalar KL weight >= 0.

    Returns:
      `[...]` values.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv:2404.12358 (the token-MDP form with `tau = beta`).

    Example:
      >>> import jax.numpy as jnp
      >>> v = kl_regularized_value(jnp.array([1.0, 1.0]), jnp.log(jnp.array([0.5, 0.5])), tau=2.0)
      >>> print(round(float(v), 4))  # equal action values: V = q whatever the reference
      1.0
    """
    fn = "kl_regularized_value"
    _check_q(fn, q, log_pi_ref)
    check_tau(tau, fn=fn)
    q, log_pi_ref = floats(q, log_pi_ref)
    return soft_max(q, log_pi_ref, tau)


def kl_regularized_policy(
    q: ArrayLike, log_pi_ref: ArrayLike, *, tau: ArrayLike = 1.0
) -> jax.Array:
    r"""KL-regularised greedy policy: the reference policy tilted by `exp(q / tau)`.

        pi(a) = pi_ref(a) exp((q_a - V) / tau),     V = kl_regularized_value(q, log_pi_ref, tau)

    At `tau = 0` it is greedy over the support of `pi_ref`.

    Args:
      q: `[..., A]` action values.
      log_pi_ref: `[..., A]` log-probabilities of the reference policy.
      tau: scalar KL weight >= 0.

    Returns:
      `[..., A]` action probabilities.

    References:
      Rafailov et al., arXiv:2305.18290 (DPO, the closed-form optimum
      `pi* ∝ pi_ref exp(r / beta)`); arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> p = kl_regularized_policy(jnp.zeros(2), jnp.log(jnp.array([0.2, 0.8])), tau=1.0)
      >>> print([round(float(x), 4) for x in p])  # equal values keep the reference
      [0.2, 0.8]
    """
    fn = "kl_regularized_policy"
    _check_q(fn, q, log_pi_ref)
    check_tau(tau, fn=fn)
    q, log_pi_ref = floats(q, log_pi_ref)
    return soft_argmax(q, log_pi_ref, tau)


def _check_backup(fn: str, r_t, discount_t, q_t, log_pi_ref_t=None):
    check_rank(q_t, "q_t", range(1, 8), fn=fn)
    check_floating(
        {"r_t": r_t, "discount_t": discount_t, "q_t": q_t, "log_pi_ref_t": log_pi_ref_t}, fn=fn
    )
    if log_pi_ref_t is not None:
        check_same_shape({"q_t": q_t, "log_pi_ref_t": log_pi_ref_t}, "q_t", fn=fn)
    batch = tuple(jnp.shape(q_t))[:-1]
    for name, value in (("r_t", r_t), ("discount_t", discount_t)):
        if tuple(jnp.shape(value)) != batch:
            raise ValueError(
                f"{fn}: `{name}` must have shape {batch} (the leading axes of `q_t` "
                f"{tuple(jnp.shape(q_t))}), got {tuple(jnp.shape(value))}."
            )


def soft_bellman_backup(
    r_t: ArrayLike, discount_t: ArrayLike, q_t: ArrayLike, *, tau: ArrayLike = 1.0
) -> jax.Array:
    r"""Sampled soft Bellman backup: the soft Q-learning target for `Q(s_{t-1}, a_{t-1})`.

        y = r_t + discount_t * tau * log sum_a exp(q_t[a] / tau)

    Args:
      r_t: `[...]` rewards.
      discount_t: `[...]` discounts (0 at episode ends).
      q_t: `[..., A]` action values at the state reached.
      tau: scalar temperature >= 0 (`tau = 0` gives the Q-learning target).

    Returns:
      `[...]` targets.

    References:
      Haarnoja et al., arXiv:1702.08165 (soft Q-learning).

    Example:
      >>> import jax.numpy as jnp
      >>> y = soft_bellman_backup(jnp.array(1.0), jnp.array(0.5), jnp.zeros(4), tau=1.0)
      >>> print(round(float(y), 4))  # 1 + 0.5 * log 4
      1.6931
    """
    fn = "soft_bellman_backup"
    _check_backup(fn, r_t, discount_t, q_t)
    check_tau(tau, fn=fn)
    r_t, discount_t, q_t = floats(r_t, discount_t, q_t)
    return r_t + discount_t * soft_max(q_t, None, tau)


def kl_regularized_bellman_backup(
    r_t: ArrayLike,
    discount_t: ArrayLike,
    q_t: ArrayLike,
    log_pi_ref_t: ArrayLike,
    *,
    tau: ArrayLike = 1.0,
) -> jax.Array:
    r"""Sampled KL-regularised Bellman backup against a reference policy.

        y = r_t + discount_t * tau * log sum_a pi_ref(a | s_t) exp(q_t[a] / tau)

    Args:
      r_t: `[...]` rewards.
      discount_t: `[...]` discounts (0 at episode ends).
      q_t: `[..., A]` action values at the state reached.
      log_pi_ref_t: `[..., A]` reference log-probabilities at the state reached.
      tau: scalar KL weight >= 0.

    Returns:
      `[...]` targets.

    References:
      Rafailov et al., arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> y = kl_regularized_bellman_backup(jnp.array(1.0), jnp.array(0.5), jnp.zeros(4),
      ...                                   jnp.full(4, -jnp.log(4.0)), tau=1.0)
      >>> print(round(float(y), 4))  # uniform reference cancels the log 4 of the soft value
      1.0
    """
    fn = "kl_regularized_bellman_backup"
    _check_backup(fn, r_t, discount_t, q_t, log_pi_ref_t)
    check_tau(tau, fn=fn)
    r_t, discount_t, q_t, log_pi_ref_t = floats(r_t, discount_t, q_t, log_pi_ref_t)
    return r_t + discount_t * soft_max(q_t, log_pi_ref_t, tau)


def soft_q_learning(
    q_tm1: ArrayLike,
    a_tm1: ArrayLike,
    r_t: ArrayLike,
    discount_t: ArrayLike,
    q_t: ArrayLike,
    *,
    tau: ArrayLike = 1.0,
    stop_target_gradients: bool = True,
) -> jax.Array:
    r"""Soft Q-learning TD error (the sampled soft Bellman residual).

        td = r_t + discount_t * tau * log sum_a exp(q_t[a] / tau) - q_tm1[a_tm1]

    Arguments as `q_learning`; at `tau = 0` it equals `q_learning`.

    Args:
      q_tm1: `[..., A]` action values at the state acted in.
      a_tm1: `[...]` integer action taken.
      r_t: `[...]` reward.
      discount_t: `[...]` discount (0 at an episode end).
      q_t: `[..., A]` action values at the state reached.
      tau: scalar temperature >= 0.
      stop_target_gradients: if True, no gradient flows through the target.

    Returns:
      `[...]` TD errors.

    References:
      Haarnoja et al., arXiv:1702.08165.

    Example:
      >>> import jax.numpy as jnp
      >>> td = soft_q_learning(jnp.array([1.0, 2.0]), 0, 1.0, 1.0, jnp.zeros(2), tau=1.0)
      >>> print(round(float(td), 4))  # 1 + log 2 - 1
      0.6931
    """
    fn = "soft_q_learning"
    a_tm1 = jnp.asarray(a_tm1)
    check_transition(q_tm1, a_tm1, r_t, discount_t, q_t, fn=fn)
    check_tau(tau, fn=fn)
    q_tm1, r_t, discount_t, q_t = floats(q_tm1, r_t, discount_t, q_t)
    target = maybe_stop(r_t + discount_t * soft_max(q_t, None, tau), stop_target_gradients)
    return target - select(q_tm1, a_tm1)


def kl_regularized_q_learning(
    q_tm1: ArrayLike,
    a_tm1: ArrayLike,
    r_t: ArrayLike,
    discount_t: ArrayLike,
    q_t: ArrayLike,
    log_pi_ref_t: ArrayLike,
    *,
    tau: ArrayLike = 1.0,
    stop_target_gradients: bool = True,
) -> jax.Array:
    r"""KL-regularised Q-learning TD error against a reference policy.

        td = r_t + discount_t * tau * log sum_a pi_ref(a | s_t) exp(q_t[a] / tau) - q_tm1[a_tm1]

    Args:
      q_tm1: `[..., A]` action values at the state acted in.
      a_tm1: `[...]` integer action taken.
      r_t: `[...]` reward.
      discount_t: `[...]` discount (0 at an episode end).
      q_t: `[..., A]` action values at the state reached.
      log_pi_ref_t: `[..., A]` reference log-probabilities at the state reached.
      tau: scalar KL weight >= 0.
      stop_target_gradients: if True, no gradient flows through the target.

    Returns:
      `[...]` TD errors.

    References:
      Rafailov et al., arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> td = kl_regularized_q_learning(jnp.array([1.0, 2.0]), 1, 1.0, 1.0, jnp.zeros(2),
      ...                                jnp.log(jnp.array([0.5, 0.5])), tau=1.0)
      >>> print(round(float(td), 4))  # 1 + 0 - 2
      -1.0
    """
    fn = "kl_regularized_q_learning"
    a_tm1 = jnp.asarray(a_tm1)
    check_transition(
        q_tm1, a_tm1, r_t, discount_t, q_t, extra={"log_pi_ref_t": log_pi_ref_t}, fn=fn
    )
    check_floating({"log_pi_ref_t": log_pi_ref_t}, fn=fn)
    check_tau(tau, fn=fn)
    q_tm1, r_t, discount_t, q_t, log_pi_ref_t = floats(q_tm1, r_t, discount_t, q_t, log_pi_ref_t)
    target = r_t + discount_t * soft_max(q_t, log_pi_ref_t, tau)
    return maybe_stop(target, stop_target_gradients) - select(q_tm1, a_tm1)
