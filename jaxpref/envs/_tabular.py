"""Small tabular MDPs as arrays: random dense MDPs, gridworlds, and policy rollouts.

A `TabularMDP` is a NamedTuple of arrays, so a batch of MDPs is the same NamedTuple with a
leading axis (`jax.vmap(random_mdp, in_axes=(0, None, None))(keys, S, A)`) and every solver in
`jaxpref.bellman` can be `vmap`-ed over it. `random_mdp` and `rollout` are pure JAX functions of
a PRNG key; `gridworld` builds its (static) layout on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxpref._checks import check_interval

__all__ = [
    "TabularMDP",
    "Trajectory",
    "gridworld",
    "random_mdp",
    "rollout",
]

# Row and column offsets of the gridworld actions 0..3: up, right, down, left.
_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))


class TabularMDP(NamedTuple):
    """A finite MDP as arrays (float32).

    Attributes:
      reward: `[S, A]` expected reward of taking action a in state s.
      transitions: `[S, A, S]` transition probabilities `P(s' | s, a)` (rows sum to 1).
      initial_distribution: `[S]` start-state distribution.
      discount: scalar discount.
    """

    reward: jax.Array
    transitions: jax.Array
    initial_distribution: jax.Array
    discount: jax.Array


def random_mdp(
    key: jax.Array,
    num_states: int,
    num_actions: int,
    *,
    discount: float = 0.9,
    concentration: float = 1.0,
    reward_scale: float = 1.0,
) -> TabularMDP:
    r"""A random MDP with dense transitions, standard-normal rewards and a uniform start.

        P(. | s, a) ~ Dirichlet(concentration * 1_S),   r(s, a) ~ reward_scale * N(0, 1)

    Small `concentration` gives peaked (nearly deterministic) transitions, large gives nearly
    uniform ones. Pure in `key`, so `jax.vmap` over keys gives a batch of MDPs.

    Args:
      key: PRNG key.
      num_states: S (static).
      num_actions: A (static).
      discount: scalar discount stored in the MDP.
      concentration: Dirichlet concentration of each transition row.
      reward_scale: standard deviation of the rewards.

    Returns:
      A `TabularMDP`.

    References:
      Archibald, McKinnon, Thomas, "On the Generation of Markov Decision Processes", J. Oper.
      Res. Soc. 46 (1995) (random MDP benchmarks).

    Example:
      >>> import jax
      >>> mdp = random_mdp(jax.random.key(0), 4, 2)
      >>> print(mdp.transitions.shape, round(float(mdp.transitions[1, 0].sum()), 4))
      (4, 2, 4) 1.0
    """
    k_p, k_r = jax.random.split(key)
    if isinstance(concentration, int | float) and concentration == 1.0:
        # Dirichlet(1, ..., 1) is the uniform distribution on the simplex: normalised exponentials.
        e = jax.random.exponential(k_p, (num_states, num_actions, num_states), jnp.float32)
        transitions = e / jnp.sum(e, axis=-1, keepdims=True)
    else:
        alpha = jnp.full((num_states,), concentration, jnp.float32)
        transitions = jax.random.dirichlet(k_p, alpha, shape=(num_states, num_actions))
    reward = reward_scale * jax.random.normal(k_r, (num_states, num_actions), jnp.float32)
    initial = jnp.full((num_states,), 1.0 / num_states, jnp.float32)
    return TabularMDP(reward, transitions, initial, jnp.asarray(discount, jnp.float32))


def gridworld(
    height: int,
    width: int,
    *,
    goal: tuple[int, int] | None = None,
    start: tuple[int, int] = (0, 0),
    walls: Sequence[tuple[int, int]] = (),
    slip: float = 0.0,
    goal_reward: float = 1.0,
    step_reward: float = 0.0,
    discount: float = 0.95,
) -> TabularMDP:
    r"""A gridworld with walls, an absorbing goal and optional slipping.

    State `s = row * width + col`; actions 0, 1, 2, 3 move up, right, down, left. A move
    into a wall or off the grid leaves the agent in place. With probability `slip` the action is
    replaced by a uniformly random one. Entering the goal pays `goal_reward`; every move from a
    non-goal state also pays `step_reward` (e.g. -0.01 to favour short paths). The goal is
    absorbing with zero reward, so it acts as the terminal state.

        r(s, a) = step_reward + goal_reward * P(goal | s, a)   (s != goal),   r(goal, a) = 0

    Args:
      height: number of rows.
      width: number of columns.
      goal: goal cell `(row, col)`; defaults to the bottom-right corner.
      start: start cell; the initial distribution is a point mass on it.
      walls: cells that cannot be entered.
      slip: probability of a uniformly random action instead of the chosen one.
      goal_reward: reward for entering the goal.
      step_reward: reward of every move from a non-goal state.
      discount: scalar discount stored in the MDP.

    Returns:
      A `TabularMDP` with `height * width` states and 4 actions.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., ex. 3.5 (gridworld).

    Example:
      >>> mdp = gridworld(1, 3)  # start (0, 0), goal (0, 2)
      >>> print(mdp.transitions[1, 1].tolist(), float(mdp.reward[1, 1]))  # right from the middle
      [0.0, 0.0, 1.0] 1.0
    """
    goal = (height - 1, width - 1) if goal is None else tuple(goal)
    blocked = {tuple(w) for w in walls}
    for name, cell in (("goal", goal), ("start", tuple(start)), *(("walls", w) for w in blocked)):
        if not (0 <= cell[0] < height and 0 <= cell[1] < width):
            raise ValueError(
                f"gridworld: `{name}` cell {cell} is outside the {height}x{width} grid."
            )
    if goal in blocked or tuple(start) in blocked:
        raise ValueError("gridworld: the goal and the start must not be walls.")
    check_interval(slip, "slip", 0.0, 1.0, fn="gridworld")
    num_states, num_actions = height * width, len(_MOVES)
    deterministic = np.zeros((num_states, num_actions, num_states), np.float64)
    for row in range(height):
        for col in range(width):
            s = row * width + col
            for a, (dr, dc) in enumerate(_MOVES):
                r2, c2 = row + dr, col + dc
                inside = 0 <= r2 < height and 0 <= c2 < width and (r2, c2) not in blocked
                target = r2 * width + c2 if inside and (row, col) != goal else s
                deterministic[s, a, target] = 1.0
    transitions = (1.0 - slip) * deterministic + slip * deterministic.mean(axis=1, keepdims=True)
    g = goal[0] * width + goal[1]
    reward = step_reward + goal_reward * transitions[:, :, g]
    reward[g] = 0.0
    initial = np.zeros(num_states)
    initial[start[0] * width + start[1]] = 1.0
    return TabularMDP(
        jnp.asarray(reward, jnp.float32),
        jnp.asarray(transitions, jnp.float32),
        jnp.asarray(initial, jnp.float32),
        jnp.asarray(discount, jnp.float32),
    )


class Trajectory(NamedTuple):
    """A sampled trajectory (all `[H]`).

    Attributes:
      states: integer states `s_t`.
      actions: integer actions `a_t`.
      rewards: expected rewards `r(s_t, a_t)`.
      next_states: integer states `s_{t+1}`.
    """

    states: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_states: jax.Array


def _rollout_step(state, key, *, mdp: TabularMDP, policy):
    k_a, k_s = jax.random.split(key)
    action = jax.random.categorical(k_a, jnp.log(policy[state]))
    next_state = jax.random.categorical(k_s, jnp.log(mdp.transitions[state, action]))
    return next_state, (state, action, mdp.reward[state, action], next_state)


def rollout(key: jax.Array, mdp: TabularMDP, policy: ArrayLike, *, horizon: int) -> Trajectory:
    r"""Samples one trajectory of a stationary policy, as a `lax.scan`.

        s_0 ~ mu_0,   a_t ~ pi(. | s_t),   s_{t+1} ~ P(. | s_t, a_t)

    Args:
      key: PRNG key.
      mdp: the MDP.
      policy: `[S, A]` action probabilities.
      horizon: number of steps H (static).

    Returns:
      A `Trajectory` of length `horizon`.

    References:
      Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed., sec. 3.1.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> mdp = gridworld(1, 3)
      >>> right = jnp.zeros((3, 4)).at[:, 1].set(1.0)
      >>> traj = rollout(jax.random.key(0), mdp, right, horizon=3)
      >>> print(traj.states.tolist(), traj.rewards.tolist())
      [0, 1, 2] [0.0, 1.0, 0.0]
    """
    policy = jnp.asarray(policy, jnp.float32)
    if policy.shape != mdp.reward.shape:
        raise ValueError(
            f"rollout: `policy` must have the shape of `mdp.reward` {mdp.reward.shape} "
            f"([S, A]), got {policy.shape}."
        )
    k0, k_steps = jax.random.split(key)
    s0 = jax.random.categorical(k0, jnp.log(mdp.initial_distribution))
    step = lambda s, k: _rollout_step(s, k, mdp=mdp, policy=policy)
    _, (states, actions, rewards, next_states) = jax.lax.scan(
        step, s0, jax.random.split(k_steps, horizon)
    )
    return Trajectory(states, actions, rewards, next_states)
