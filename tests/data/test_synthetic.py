"""Pairs sampled from the tabular bandit follow the reference policy and Bradley-Terry."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref import envs
from jaxpref.data import synthetic


def test_pairs_are_distinct_and_labels_follow_bradley_terry():
    bandit = envs.PreferenceBandit(
        gold_reward=jnp.array([[0.0, 1.0]]), ref_logits=jnp.zeros((1, 2))
    )
    n = 20000
    pairs = synthetic.sample_preference_pairs(jax.random.key(3), bandit, n)
    assert bool(jnp.all(pairs.chosen != pairs.rejected))
    frac = float(jnp.mean(pairs.chosen == 1))
    p = 1.0 / (1.0 + np.exp(-1.0))
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_pairs_follow_reference_policy():
    bandit = envs.PreferenceBandit(
        gold_reward=jnp.zeros((1, 3)), ref_logits=jnp.log(jnp.array([[0.7, 0.2, 0.1]]))
    )
    n = 30000
    pairs = synthetic.sample_preference_pairs(jax.random.key(0), bandit, n)
    # Unordered pair {0, 1} has probability p0 p1/(1-p0) + p1 p0/(1-p1).
    p = np.array([0.7, 0.2, 0.1])
    want = p[0] * p[1] / (1 - p[0]) + p[1] * p[0] / (1 - p[1])
    got = float(jnp.mean((pairs.chosen + pairs.rejected) == 1))
    assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / n)
