"""Labelled behaviour segments of tabular control tasks, for Contrastive Preference Learning.

Tasks are `jaxpref.envs.TabularMDP`s (`jaxpref.envs.gridworld`, `jaxpref.envs.random_mdp`, or
`jaxpref.envs.linear_mdp_to_tabular`); their soft optimum (`jaxpref.envs.soft_optimal_solution`)
gives the optimal advantage `A*(s, a) = alpha log pi*(a | s)`.

`sample_segment_pairs` rolls out a behaviour policy from random start states and labels pairs of
segments with a Bradley-Terry model on either

* the regret (advantage) preference model of CPL: `S(sigma) = sum_t gamma^t A*(s_t, a_t)`, or
* the reward model: `S(sigma) = sum_t gamma^t r(s_t, a_t)`,

`P(sigma_1 > sigma_2) = sigmoid((S_1 - S_2) / temperature)`, optionally with label noise.

References:
  Hejna et al., "Contrastive Preference Learning: Learning from Human Feedback without RL",
  arXiv 2310.13639; Knox et al., "Models of human preference for learning reward functions",
  arXiv 2206.02231.
"""

from __future__ import annotations

import enum
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref._checks import check_interval
from jaxpref.data.synthetic._sampling import categorical_from_uniform
from jaxpref.envs import SoftOptimal, TabularMDP, soft_optimal_solution

__all__ = [
    "PreferenceModel",
    "SegmentPairs",
    "rollout_from_uniform",
    "sample_segment_pairs",
    "sample_segments",
    "segment_scores",
]


class PreferenceModel(enum.Enum):
    """Which per-step score a labeller sums over a segment (`sample_segment_pairs`).

    `REGRET`: the optimal advantage `A*(s, a)` (CPL's regret preference model). `REWARD`: the
    reward `r(s, a)`. A config holding the name builds the member with `PreferenceModel(name)`
    (`"regret"` or `"reward"`).

    Attributes:
      REGRET: score each step by the optimal advantage `A*(s, a)` at temperature `alpha`.
      REWARD: score each step by the reward `r(s, a)`.

    Example:
      >>> print(PreferenceModel("reward") is PreferenceModel.REWARD)
      True
    """

    REGRET = "regret"
    REWARD = "reward"


class SegmentPairs(NamedTuple):
    """Labelled pairs of behaviour segments, preferred segment first.

    Attributes:
      states_chosen: `[N, K]` int32 states of the preferred segments.
      actions_chosen: `[N, K]` int32 actions of the preferred segments.
      states_rejected: `[N, K]` int32 states of the dispreferred segments.
      actions_rejected: `[N, K]` int32 actions of the dispreferred segments.
      score_chosen: `[N]` preference score (discounted advantage or reward sum) of `chosen`.
      score_rejected: `[N]` score of `rejected`.
      prob_chosen: `[N]` probability the labeller gave to this ordering.
    """

    states_chosen: jax.Array
    actions_chosen: jax.Array
    states_rejected: jax.Array
    actions_rejected: jax.Array
    score_chosen: jax.Array
    score_rejected: jax.Array
    prob_chosen: jax.Array


@functools.partial(jax.jit, static_argnames=("length",))
def sample_segments(key, mdp: TabularMDP, policy_logits, start, length: int):
    """Rolls a stationary policy out for `length` steps from each of `N` start states.

    Args:
      key: PRNG key.
      mdp: the task.
      policy_logits: `[S, A]` logits.
      start: `[N]` int start states.
      length: steps `K`.

    Returns:
      `(states [N, K], actions [N, K])` int32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxpref.envs import gridworld
      >>> m = gridworld(1, 3)  # actions: up, right, down, left
      >>> right = jnp.log(jnp.array([[0.0, 1.0, 0.0, 0.0]] * 3) + 1e-30)
      >>> s, a = sample_segments(jax.random.key(0), m, right, jnp.array([0]), 3)
      >>> print(s, a)
      [[0 1 2]] [[1 1 1]]
    """
    start = jnp.asarray(start, jnp.int32)
    u = jax.random.uniform(key, (length, start.shape[0], 2))
    return rollout_from_uniform(u, mdp, policy_logits, start)


def _rollout_step(s, u_t, *, policy, transitions):
    a = categorical_from_uniform(policy[s], u_t[:, 0])
    nxt = categorical_from_uniform(transitions[s, a], u_t[:, 1])
    return nxt, (s, a)


def rollout_from_uniform(u, mdp: TabularMDP, policy_logits, start):
    """Rolls a stationary policy out with given uniforms, two per step (action, next state).

    The same `u` gives the same segments, so two policies can be compared on common random
    numbers. `sample_segments` draws `u` from a key and calls this.

    Args:
      u: `[K, N, 2]` uniforms in `[0, 1)`: `u[t, n, 0]` picks the action and `u[t, n, 1]` the
        next state of step `t` of rollout `n`.
      mdp: the task.
      policy_logits: `[S, A]` logits.
      start: `[N]` int start states.

    Returns:
      `(states [N, K], actions [N, K])` int32.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.envs import gridworld
      >>> m = gridworld(1, 3)  # actions: up, right, down, left
      >>> right = jnp.log(jnp.array([[0.0, 1.0, 0.0, 0.0]] * 3) + 1e-30)
      >>> s, a = rollout_from_uniform(jnp.full((2, 1, 2), 0.5), m, right, jnp.array([0]))
      >>> print(s, a)
      [[0 1]] [[1 1]]
    """
    policy = jax.nn.softmax(jnp.asarray(policy_logits, jnp.float32), axis=-1)
    step = functools.partial(_rollout_step, policy=policy, transitions=mdp.transitions)
    _, (states, actions) = jax.lax.scan(step, start, u)
    return states.T, actions.T


@jax.jit
def segment_scores(values, states, actions, *, discount: float = 1.0):
    """Discounted sums `sum_t gamma^t x(s_t, a_t)` of a per-step table over segments.

    Args:
      values: `[S, A]` per-step values (advantages `A*` or rewards).
      states: `[N, K]` states.
      actions: `[N, K]` actions.
      discount: `gamma` (CPL uses 1).

    Returns:
      `[N]` float32 scores.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> print(segment_scores(x, jnp.array([[0, 1]]), jnp.array([[1, 0]]), discount=0.5))
      [3.5]
    """
    per_step = jnp.asarray(values)[states, actions]
    weights = discount ** jnp.arange(per_step.shape[1], dtype=jnp.float32)
    return jnp.sum(per_step * weights[None, :], axis=-1)


def sample_segment_pairs(
    key,
    mdp: TabularMDP,
    behaviour_logits,
    num_pairs: int,
    length: int,
    *,
    preference: PreferenceModel = PreferenceModel.REGRET,
    alpha: float = 1.0,
    temperature: float = 1.0,
    discount: float = 1.0,
    label_noise: float = 0.0,
    start_distribution=None,
    solution: SoftOptimal | None = None,
) -> SegmentPairs:
    """Pairs of behaviour segments labelled by the regret (advantage) or reward preference model.

    Scores `S = sum_t gamma^t A*(s_t, a_t)` (regret, `A*` from `soft_optimal_solution` at
    temperature `alpha`) or `S = sum_t gamma^t r(s_t, a_t)` (reward); the first segment is
    preferred with probability `(1 - eps) sigmoid(dS / tau) + eps sigmoid(-dS / tau)`, where
    `tau` is `temperature` and `eps` is `label_noise`.

    Args:
      key: PRNG key.
      mdp: the task.
      behaviour_logits: `[S, A]` logits of the policy that generates segments.
      num_pairs: `N`.
      length: segment length `K`.
      preference: `PreferenceModel.REGRET` or `PreferenceModel.REWARD`.
      alpha: max-ent temperature of the optimal advantage (regret model).
      temperature: Bradley-Terry temperature.
      discount: `gamma` inside segment scores.
      label_noise: flip probability in `[0, 0.5]`.
      start_distribution: `[S]` start-state distribution; None is uniform over all states (a
        replay buffer covering the task); pass `mdp.initial_distribution` to start there.
      solution: a precomputed `soft_optimal_solution(mdp, alpha=alpha)`.

    Returns:
      `SegmentPairs`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxpref.envs import gridworld
      >>> m = gridworld(3, 3)
      >>> p = sample_segment_pairs(jax.random.key(0), m, jnp.zeros((9, 4)), 4, 6)
      >>> print(p.states_chosen.shape, bool((p.score_chosen >= -1e9).all()))
      (4, 6) True
    """
    if not isinstance(preference, PreferenceModel):
        raise TypeError(
            "sample_segment_pairs: `preference` must be a PreferenceModel (build one from a "
            f"config string with PreferenceModel(name)), got {preference!r}."
        )
    check_interval(label_noise, "label_noise", 0.0, 0.5, fn="sample_segment_pairs")
    if preference is PreferenceModel.REGRET:
        sol = soft_optimal_solution(mdp, alpha=alpha) if solution is None else solution
        table = sol.advantage
    else:
        table = mdp.reward
    s_count = mdp.reward.shape[0]
    if start_distribution is None:
        start_p = jnp.full((s_count,), 1.0 / s_count, jnp.float32)
    else:
        start_p = jnp.asarray(start_distribution, jnp.float32)
    return _sample_segment_pairs(
        key,
        mdp,
        behaviour_logits,
        table,
        start_p,
        temperature,
        discount,
        label_noise,
        num_pairs=num_pairs,
        length=length,
    )


@functools.partial(jax.jit, static_argnames=("num_pairs", "length"))
def _sample_segment_pairs(
    key,
    mdp,
    behaviour_logits,
    table,
    start_p,
    temperature,
    discount,
    label_noise,
    *,
    num_pairs: int,
    length: int,
) -> SegmentPairs:
    u = jax.random.uniform(key, (length + 1, 2 * num_pairs, 2))
    starts = categorical_from_uniform(start_p[None, :], u[length, :, 0])
    states, actions = rollout_from_uniform(u[:length], mdp, behaviour_logits, starts)
    s1, s2 = states[:num_pairs], states[num_pairs:]
    a1, a2 = actions[:num_pairs], actions[num_pairs:]
    sc1 = segment_scores(table, s1, a1, discount=discount)
    sc2 = segment_scores(table, s2, a2, discount=discount)
    margin = (sc1 - sc2) / temperature
    p1 = (1.0 - label_noise) * jax.nn.sigmoid(margin) + label_noise * jax.nn.sigmoid(-margin)
    first = u[length, :num_pairs, 1] < p1
    pick = lambda x, y: jnp.where(first.reshape((-1,) + (1,) * (x.ndim - 1)), x, y)
    return SegmentPairs(
        states_chosen=pick(s1, s2),
        actions_chosen=pick(a1, a2),
        states_rejected=pick(s2, s1),
        actions_rejected=pick(a2, a1),
        score_chosen=pick(sc1, sc2),
        score_rejected=pick(sc2, sc1),
        prob_chosen=jnp.where(first, p1, 1.0 - p1),
    )
