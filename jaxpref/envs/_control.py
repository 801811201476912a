"""Exact maximum-entropy solutions and policy returns of tabular control tasks.

Tasks are `TabularMDP`s (`gridworld`, `random_mdp`, or `linear_mdp_to_tabular`).
`soft_optimal_solution` runs maximum-entropy (soft) value iteration at temperature `alpha`
(`jaxpref.bellman.soft_value_iteration`) and returns `Q*`, `V*`, the optimal policy and the
optimal advantage `A*(s, a) = Q*(s, a) - V*(s) = alpha log pi*(a | s)`, the identity Contrastive
Preference Learning builds on. `policy_return` is the exact discounted return of a policy.
Labelled behaviour segments are sampled by `jaxpref.data.synthetic.sample_segment_pairs`.

References:
  Hejna et al., "Contrastive Preference Learning: Learning from Human Feedback without RL",
  arXiv 2310.13639; Ziebart et al., "Maximum Entropy Inverse Reinforcement Learning", AAAI 2008.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref.bellman import soft_value_iteration
from jaxpref.envs._tabular import TabularMDP

__all__ = [
    "SoftOptimal",
    "policy_return",
    "soft_optimal_solution",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class SoftOptimal(NamedTuple):
    """The maximum-entropy optimum of a `TabularMDP` at temperature `alpha`.

    Attributes:
      q: `[S, A]` soft optimal action values.
      v: `[S]` soft optimal values `alpha log sum_a exp(Q / alpha)`.
      advantage: `[S, A]` `A* = Q* - V* = alpha log pi*`.
      policy_logits: `[S, A]` log-probabilities of `pi*`.
    """

    q: jax.Array
    v: jax.Array
    advantage: jax.Array
    policy_logits: jax.Array


@functools.partial(jax.jit, static_argnames=("num_iterations",))
def soft_optimal_solution(
    mdp: TabularMDP, *, alpha: float, num_iterations: int = 500
) -> SoftOptimal:
    """The maximum-entropy optimum at temperature `alpha`, by soft value iteration.

    `V <- alpha log sum_a exp((r + gamma P V) / alpha)` for `num_iterations` backups (the error
    shrinks by `discount` per backup); `A* = Q* - alpha logsumexp(Q* / alpha)`.

    Args:
      mdp: the task.
      alpha: temperature (> 0).
      num_iterations: number of backups.

    Returns:
      `SoftOptimal(q, v, advantage, policy_logits)`.

    References:
      Ziebart et al., "Maximum Entropy Inverse Reinforcement Learning", AAAI 2008; Hejna et al.,
      "Contrastive Preference Learning: Learning from Human Feedback without RL", arXiv 2310.13639.

    Example:
      >>> import jax.numpy as jnp
      >>> m = TabularMDP(jnp.zeros((1, 2)), jnp.ones((1, 2, 1)), jnp.ones(1), jnp.asarray(0.5))
      >>> print(round(float(soft_optimal_solution(m, alpha=1.0, num_iterations=60).v[0]), 4))
      1.3863
    """
    res = soft_value_iteration(
        mdp.reward, mdp.transitions, discount=mdp.discount, tau=alpha, num_iterations=num_iterations
    )
    v = alpha * jax.nn.logsumexp(res.q / alpha, axis=-1)
    adv = res.q - v[:, None]
    return SoftOptimal(q=res.q, v=v, advantage=adv, policy_logits=adv / alpha)


@jax.jit
def policy_return(mdp: TabularMDP, policy_logits):
    """Exact expected discounted return `mu_0 . (I - gamma P_pi)^{-1} r_pi` of a policy.

    Args:
      mdp: the task.
      policy_logits: `[S, A]` logits of a stationary policy.

    Returns:
      Scalar float32: the expected discounted return from `mdp.initial_distribution`.

    References:
      Ziebart et al., "Maximum Entropy Inverse Reinforcement Learning", AAAI 2008; Hejna et al.,
      "Contrastive Preference Learning: Learning from Human Feedback without RL", arXiv 2310.13639.

    Example:
      >>> import jax.numpy as jnp
      >>> m = TabularMDP(jnp.ones((1, 2)), jnp.ones((1, 2, 1)), jnp.ones(1), jnp.asarray(0.5))
      >>> print(round(float(policy_return(m, jnp.zeros((1, 2)))), 4))
      2.0
    """
    pi = jax.nn.softmax(jnp.asarray(policy_logits), axis=-1)
    r_pi = jnp.sum(pi * mdp.reward, axis=-1)
    p_pi = jnp.einsum("sa,sat->st", pi, mdp.transitions, precision=_HIGHEST)
    eye = jnp.eye(p_pi.shape[0], dtype=p_pi.dtype)
    v = jnp.linalg.solve(eye - mdp.discount * p_pi, r_pi)
    return jnp.dot(mdp.initial_distribution, v, precision=_HIGHEST)
