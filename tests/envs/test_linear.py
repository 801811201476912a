"""Linear bandits, multitask linear bandits and linear MDPs."""

import jax
import numpy as np

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
