"""Trajectory preferences in linear MDPs (`jaxpref.envs.LinearMDP`).

Pairs of trajectories are rolled out by two policies and labelled
`o ~ Bernoulli(sigmoid(<theta, phi(tau_1) - phi(tau_0)>))` with
`phi(tau) = sum_h gamma^h phi(s_h, a_h)` (`jaxpref.envs.trajectory_features`).

References:
  Wu, Sun, "Making RL with Preference-based Feedback Efficient via Randomization",
  arXiv 2310.14554.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref.data.synthetic._control import rollout_from_uniform
from jaxpref.data.synthetic._sampling import categorical_from_uniform
from jaxpref.envs import LinearMDP, linear_mdp_to_tabular, trajectory_features

__all__ = [
    "TrajectoryPreferences",
    "sample_trajectory_preferences",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class TrajectoryPreferences(NamedTuple):
    """Pairs of trajectories with their features and a Bernoulli preference label.

    Attributes:
      states_0: `[N, H]` states of trajectory 0.
      actions_0: `[N, H]` actions of trajectory 0.
      states_1: `[N, H]` states of trajectory 1.
      actions_1: `[N, H]` actions of trajectory 1.
      features_0: `[N, d]` trajectory features `phi(tau_0)`.
      features_1: `[N, d]` trajectory features `phi(tau_1)`.
      label: `[N]` int32, 1 when trajectory 1 is preferred.
      prob_1: `[N]` probability that trajectory 1 is preferred.
    """

    states_0: jax.Array
    actions_0: jax.Array
    states_1: jax.Array
    actions_1: jax.Array
    features_0: jax.Array
    features_1: jax.Array
    label: jax.Array
    prob_1: jax.Array


@functools.partial(jax.jit, static_argnames=("num_pairs", "horizon"))
def sample_trajectory_preferences(
    key,
    mdp: LinearMDP,
    policy_logits_0,
    policy_logits_1,
    num_pairs: int,
    horizon: int,
    *,
    temperature: float = 1.0,
    discount: float = 1.0,
) -> TrajectoryPreferences:
    """Rolls out two policies from the initial distribution and draws preference labels.

    `P(tau_1 > tau_0) = sigmoid(<theta, phi(tau_1) - phi(tau_0)> / temperature)`.

    Args:
      key: PRNG key.
      mdp: the linear MDP.
      policy_logits_0: `[S, A]` logits of the policy generating trajectory 0.
      policy_logits_1: `[S, A]` logits of the policy generating trajectory 1.
      num_pairs: `N`.
      horizon: `H`.
      temperature: Bradley-Terry temperature.
      discount: `gamma` in the trajectory features.

    Returns:
      `TrajectoryPreferences`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxpref.envs import make_linear_mdp
      >>> m = make_linear_mdp(jax.random.key(0), num_states=5, num_actions=2, dim=3)
      >>> t = sample_trajectory_preferences(jax.random.key(1), m, jnp.zeros((5, 2)),
      ...                                   jnp.zeros((5, 2)), 4, 6)
      >>> print(t.features_1.shape, t.label.dtype)
      (4, 3) int32
    """
    tab = linear_mdp_to_tabular(mdp)
    u = jax.random.uniform(key, (horizon + 1, 2, num_pairs, 2))
    starts = categorical_from_uniform(mdp.initial_distribution[None, None, :], u[horizon, :, :, 0])
    s0, a0 = rollout_from_uniform(u[:horizon, 0], tab, policy_logits_0, starts[0])
    s1, a1 = rollout_from_uniform(u[:horizon, 1], tab, policy_logits_1, starts[1])
    f0 = trajectory_features(mdp, s0, a0, discount=discount)
    f1 = trajectory_features(mdp, s1, a1, discount=discount)
    p1 = jax.nn.sigmoid(jnp.dot(f1 - f0, mdp.theta, precision=_HIGHEST) / temperature)
    label = (u[horizon, 0, :, 1] < p1).astype(jnp.int32)
    return TrajectoryPreferences(s0, a0, s1, a1, f0, f1, label, p1)
