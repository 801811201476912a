"""Tabular environments: structure, known optimal values, rollouts vs exact visitation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpref.bellman as jb
from jaxpref.envs import TabularMDP, gridworld, random_mdp, rollout


def test_random_mdp_is_a_valid_mdp_and_vmaps():
    keys = jax.random.split(jax.random.key(0), 4)
    mdps = jax.jit(jax.vmap(lambda k: random_mdp(k, 5, 3, concentration=0.3)))(keys)
    assert isinstance(mdps, TabularMDP)
    assert mdps.transitions.shape == (4, 5, 3, 5) and mdps.reward.shape == (4, 5, 3)
    np.testing.assert_allclose(mdps.transitions.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.asarray(mdps.transitions) >= 0)
    np.testing.assert_allclose(mdps.initial_distribution.sum(-1), 1.0, atol=1e-6)
    # concentration 1 (normalised exponentials): pure in the key, vmap == per-key calls
    uniform = jax.vmap(lambda k: random_mdp(k, 5, 3))(keys)
    np.testing.assert_allclose(uniform.transitions.sum(-1), 1.0, atol=1e-5)
    single = random_mdp(keys[2], 5, 3)
    np.testing.assert_allclose(uniform.transitions[2], single.transitions, atol=1e-6)
    np.testing.assert_allclose(uniform.reward[2], single.reward, atol=1e-6)


def test_gridworld_structure():
    mdp = gridworld(3, 3, walls=[(1, 1)], goal=(2, 2), slip=0.2)
    p = np.asarray(mdp.transitions)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    wall = 1 * 3 + 1
    assert np.all(p[:, :, wall] == 0), "walls are never entered"
    goal = 8
    np.testing.assert_allclose(p[goal, :, goal], 1.0)  # absorbing
    np.testing.assert_allclose(mdp.reward[goal], 0.0)
    # from (0, 1), "down" would hit the wall: stay with prob 0.8 + slip share
    s = 1
    assert p[s, 2, s] == pytest.approx(0.8 + 0.2 * (1 / 4 + 1 / 4), abs=1e-6)  # down and up stay
    # deterministic grid: moving right from (2, 1) enters the goal
    det = gridworld(3, 3, goal=(2, 2))
    assert float(det.reward[7, 1]) == pytest.approx(1.0)
    assert float(det.transitions[7, 1, 8]) == 1.0


def test_gridworld_optimal_values_by_hand():
    """Hard value iteration: V*(s) = gamma^(steps to goal - 1) for an entering reward of 1."""
    gamma = 0.9
    mdp = gridworld(3, 4, goal=(0, 3), discount=gamma)
    res = jb.soft_value_iteration(
        mdp.reward, mdp.transitions, discount=gamma, tau=0.0, num_iterations=50
    )
    for row in range(3):
        for col in range(4):
            steps = row + (3 - col)
            expected = 0.0 if steps == 0 else gamma ** (steps - 1)
            assert float(res.v[row * 4 + col]) == pytest.approx(expected, abs=1e-5)


def test_rollout_deterministic_path():
    mdp = gridworld(2, 3, goal=(1, 2))
    policy = np.zeros((6, 4), np.float32)
    policy[:, 1] = 1.0  # right
    policy[2, :] = 0.0
    policy[2, 2] = 1.0  # down from (0, 2)
    traj = rollout(jax.random.key(1), mdp, policy, horizon=4)
    assert traj.states.tolist() == [0, 1, 2, 5]
    assert traj.next_states.tolist() == [1, 2, 5, 5]
    assert traj.rewards.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_rollout_frequencies_match_state_visitation():
    mdp = gridworld(2, 2, goal=(1, 1), slip=0.3)
    policy = jnp.full((4, 4), 0.25)
    n, horizon = 4000, 4
    trajs = jax.vmap(lambda k: rollout(k, mdp, policy, horizon=horizon))(
        jax.random.split(jax.random.key(2), n)
    )
    counts = np.zeros(4)
    for s in range(4):
        counts[s] = float(jnp.mean(jnp.sum(trajs.states == s, axis=1)))
    exact = jb.state_visitation(policy, mdp.transitions, mdp.initial_distribution, horizon=horizon)
    # each count is a mean of n i.i.d. values in [0, horizon]: 5 sigma <= 5 * 2 / sqrt(n) ~ 0.16
    np.testing.assert_allclose(counts, exact, atol=0.16)
    np.testing.assert_allclose(counts.sum(), horizon, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="outside the 2x2 grid"):
        gridworld(2, 2, goal=(2, 0))
    with pytest.raises(ValueError, match="must not be walls"):
        gridworld(2, 2, walls=[(1, 1)])
    with pytest.raises(ValueError, match=r"`policy` must have the shape of `mdp.reward`"):
        rollout(jax.random.key(0), gridworld(2, 2), jnp.ones((4, 3)) / 3, horizon=2)
