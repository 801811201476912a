"""Tests for the synthetic preference bandit against closed forms and sampling statistics."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.data import synthetic


def test_pairs_are_distinct_and_labels_follow_bradley_terry():
    bandit = synthetic.PreferenceBandit(
        gold_reward=jnp.array([[0.0, 1.0]]), ref_logits=jnp.zeros((1, 2))
    )
    n = 20000
    pairs = synthetic.sample_preference_pairs(jax.random.key(3), bandit, n)
    assert bool(jnp.all(pairs.chosen != pairs.rejected))
    frac = float(jnp.mean(pairs.chosen == 1))
    p = 1.0 / (1.0 + np.exp(-1.0))
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_pairs_follow_reference_policy():
    bandit = synthetic.PreferenceBandit(
        gold_reward=jnp.zeros((1, 3)), ref_logits=jnp.log(jnp.array([[0.7, 0.2, 0.1]]))
    )
    n = 30000
    pairs = synthetic.sample_preference_pairs(jax.random.key(0), bandit, n)
    # Unordered pair {0, 1} has probability p0 p1/(1-p0) + p1 p0/(1-p1).
    p = np.array([0.7, 0.2, 0.1])
    want = p[0] * p[1] / (1 - p[0]) + p[1] * p[0] / (1 - p[1])
    got = float(jnp.mean((pairs.chosen + pairs.rejected) == 1))
    assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / n)


def test_optimal_policy_maximises_regularised_objective():
    bandit = synthetic.make_preference_bandit(jax.random.key(1), num_prompts=4, num_responses=6)
    beta = 0.7

    def objective(logits):
        return synthetic.expected_reward(logits, bandit) - beta * synthetic.kl_to_reference(
            logits, bandit.ref_logits
        )

    star = synthetic.optimal_policy_logits(bandit, beta=beta)
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
    bandit = synthetic.PreferenceBandit(
        gold_reward=jnp.array([[0.0, 1.0, 1.0]]), ref_logits=jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    )
    pi = jnp.log(jnp.array([[0.2, 0.3, 0.5]]))
    # wins: pi(1 or 2) * ref(0) = 0.8 * 0.5; ties: 0.2*0.5 + 0.8*0.5 -> half.
    want = 0.8 * 0.5 + 0.5 * (0.2 * 0.5 + 0.8 * 0.5)
    np.testing.assert_allclose(synthetic.win_rate(pi, bandit), want, rtol=1e-6)
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.25, 0.25])
    np.testing.assert_allclose(
        synthetic.kl_to_reference(pi, bandit.ref_logits), np.sum(p * np.log(p / q)), rtol=1e-5
    )
    np.testing.assert_allclose(synthetic.expected_reward(pi, bandit), 0.8, rtol=1e-6)
