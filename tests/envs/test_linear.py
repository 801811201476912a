"""Linear bandits, multitask linear bandits and linear MDPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import envs


def test_multitask_bandit_shares_a_low_rank_representation():
    m = envs.make_multitask_linear_bandit(jax.random.key(0), num_tasks=5, dim=6, rank=2)
    np.testing.assert_allclose(m.representation.T @ m.representation, np.eye(2), atol=1e-5)
    thetas = np.asarray(m.representation @ m.heads.T).T
    assert np.linalg.matrix_rank(thetas, tol=1e-5) == 2
    np.testing.assert_allclose(
        envs.multitask_rewards(m),
        np.einsum("xad,md->mxa", m.features, thetas),
        rtol=1e-4,
        atol=1e-5,
    )


# A small instance: every quantity below is checked against plain loops over it.
_SMALL = dict(num_tasks=3, num_contexts=4, num_actions=5, dim=4, rank=2)


def _small(seed=0):
    return envs.make_multitask_linear_bandit(jax.random.key(seed), **_SMALL)


def test_multitask_bandit_shapes_and_dtypes():
    m = _small()
    assert isinstance(m, envs.MultitaskLinearBandit)
    assert m.features.shape == (4, 5, 4)
    assert m.representation.shape == (4, 2)
    assert m.heads.shape == (3, 2)
    r = envs.multitask_rewards(m)
    assert r.shape == (3, 4, 5)
    assert all(x.dtype == jnp.float32 for x in (m.features, m.representation, m.heads, r))


def test_multitask_representation_is_shared_orthonormal_and_spans_the_task_parameters():
    m = _small()
    b = np.asarray(m.representation, np.float64)
    heads = np.asarray(m.heads, np.float64)
    # B has orthonormal columns; every head is a unit vector of R^k.
    np.testing.assert_allclose(b.T @ b, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(heads, axis=-1), 1.0, rtol=1e-5)
    # theta_m = B w_m: unit norm, inside span(B), and (M >= k generic tasks) spanning all of it.
    thetas = heads @ b.T
    np.testing.assert_allclose(np.linalg.norm(thetas, axis=-1), 1.0, rtol=1e-5)
    projector = b @ b.T
    np.testing.assert_allclose(thetas @ projector, thetas, atol=1e-5)
    np.testing.assert_allclose(np.linalg.pinv(thetas) @ thetas, projector, atol=1e-4)


def test_multitask_rewards_equal_features_times_task_parameters():
    m = _small()
    phi = np.asarray(m.features, np.float64)
    b, heads = np.asarray(m.representation, np.float64), np.asarray(m.heads, np.float64)
    got = np.asarray(envs.multitask_rewards(m))
    for task in range(3):
        theta = b @ heads[task]
        for x in range(4):
            for a in range(5):
                want = sum(phi[x, a, i] * theta[i] for i in range(4))
                np.testing.assert_allclose(got[task, x, a], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(envs.multitask_rewards)(m), got, rtol=1e-6, atol=1e-7)


def test_multitask_optimal_arm_is_the_brute_force_argmax_of_expected_reward():
    m = _small(seed=3)
    phi = np.asarray(m.features, np.float64)
    thetas = np.asarray(m.heads, np.float64) @ np.asarray(m.representation, np.float64).T
    rewards = envs.multitask_rewards(m)
    for task in range(3):
        # The greedy limit of the KL-regularised optimum of task `task`, uniform reference.
        bandit = envs.PreferenceBandit(rewards[task], jnp.zeros((4, 5)))
        greedy = np.asarray(jnp.argmax(envs.optimal_policy_logits(bandit, beta=1e-3), -1))
        for x in range(4):
            values = [float(phi[x, a] @ thetas[task]) for a in range(5)]
            best = max(range(5), key=values.__getitem__)
            assert sorted(values)[-1] - sorted(values)[-2] > 1e-4  # no near-tie at this seed
            assert int(jnp.argmax(rewards[task, x])) == best
            assert int(greedy[x]) == best


def test_multitask_bandit_is_reproducible_from_its_key():
    a, b, c = _small(seed=1), _small(seed=1), _small(seed=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    for x, z in zip(a, c, strict=True):
        assert not np.allclose(x, z)


def test_multitask_bandit_rejects_a_rank_outside_one_to_dim():
    for rank in (0, 5):
        with pytest.raises(ValueError, match="1 <= rank <= dim"):
            envs.make_multitask_linear_bandit(jax.random.key(0), dim=4, rank=rank)
