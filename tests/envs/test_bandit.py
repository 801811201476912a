"""The tabular preference bandit: closed-form optimum, win rates and KLs."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref import envs


def test_optimal_policy_maximises_regularised_objective():
    bandit = envs.make_preference_bandit(jax.random.key(1), num_prompts=4, num_responses=6)
    beta = 0.7

    def objective(logits):
        return envs.expected_reward(logits, bandit) - beta * envs.kl_to_reference(
            logits, bandit.ref_logits
        )

    star = envs.optimal_policy_logits(bandit, beta=beta)
    # Closed form: the optimum value is beta * E_x log Z(x).
    log_z = jax.nn.logsumexp(
        jax.nn.log_softmax(bandit.ref_logits, -1) + bandit.gold_reward / beta, axis=-1
    )
    np.testing.assert_allclose(objective(star), beta * jnp.mean(log_z), rtol=1e-5)
    grad = jax.grad(objective)(star)
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)
    for i in range(5):
        other = star + 0.3 * jax.random.normal(jax.random.key(10 + i), star.shape)
        assert float(objective(other)) < float(objective(star))


def test_win_rate_and_kl_hand_computed():
    bandit = envs.PreferenceBandit(
        gold_reward=jnp.array([[0.0, 1.0, 1.0]]), ref_logits=jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    )
    pi = jnp.log(jnp.array([[0.2, 0.3, 0.5]]))
    # wins: pi(1 or 2) * ref(0) = 0.8 * 0.5; ties: 0.2*0.5 + 0.8*0.5 -> half.
    want = 0.8 * 0.5 + 0.5 * (0.2 * 0.5 + 0.8 * 0.5)
    np.testing.assert_allclose(envs.win_rate(pi, bandit), want, rtol=1e-6)
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.25, 0.25])
    np.testing.assert_allclose(
        envs.kl_to_reference(pi, bandit.ref_logits), np.sum(p * np.log(p / q)), rtol=1e-5
    )
    np.testing.assert_allclose(envs.expected_reward(pi, bandit), 0.8, rtol=1e-6)
