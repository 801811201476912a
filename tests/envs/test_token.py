"""The token task: gold credit, Markov log-probs, and the exact KL-regularised optimum."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import envs


def _softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture(scope="module")
def small_task():
    return envs.make_token_task(jax.random.key(0), vocab_size=3, reward_scale=1.0)


def test_gold_credit_hand_computed():
    r = jnp.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    task = envs.TokenTask(jnp.zeros(3), jnp.zeros((3, 3)), r)
    credit = envs.token_gold_credit(task, jnp.array([2, 0]), jnp.array([[0, 1, 1], [2, 2, 0]]))
    # prev 2 -> 0 (6), 0 -> 1 (1), 1 -> 1 (4); prev 0 -> 2 (2), 2 -> 2 (8), 2 -> 0 (6)
    np.testing.assert_array_equal(credit, [[6.0, 1.0, 4.0], [2.0, 8.0, 6.0]])


def test_sequence_logprobs_markov_hand_computed():
    logits = jnp.log(jnp.array([[0.5, 0.5], [0.1, 0.9]]))
    lp = envs.sequence_logprobs_markov(logits, jnp.array([1]), jnp.array([[1, 0, 0]]))
    np.testing.assert_allclose(lp, np.log([[0.9, 0.1, 0.5]]), rtol=1e-6)
    time_dep = jnp.stack([logits, logits[::-1]])
    lp = envs.sequence_logprobs_markov(time_dep, jnp.array([0]), jnp.array([[1, 1]]))
    np.testing.assert_allclose(lp, np.log([[0.5, 0.5]]), rtol=1e-6)


def test_token_optimum_matches_brute_force(small_task):
    beta, length, prev = 0.7, 3, 1
    logits = envs.token_optimal_policy_logits(small_task, beta=beta, length=length)
    ref = _softmax(small_task.ref_logits)
    r = np.asarray(small_task.token_reward, np.float64)
    seqs = list(itertools.product(range(3), repeat=length))
    log_w = []
    for y in seqs:
        p, s, total = 0.0, prev, 0.0
        for tok in y:
            p += np.log(ref[s, tok])
            total += r[s, tok]
            s = tok
        log_w.append(p + total / beta)
    target = _softmax(np.array(log_w))
    got = np.exp(
        envs.sequence_logprobs_markov(logits, jnp.full((len(seqs),), prev), jnp.array(seqs)).sum(-1)
    )
    np.testing.assert_allclose(got, target, rtol=1e-4, atol=1e-6)
    # V_0(prev) = beta log sum_y pi_ref(y) exp(R(y) / beta)
    v0 = envs.token_optimal_values(small_task, beta=beta, length=length)[0, prev]
    want = beta * np.log(np.sum(np.exp(np.array(log_w) - max(log_w)))) + beta * max(log_w)
    np.testing.assert_allclose(v0, want, rtol=1e-5)


def test_token_optimum_value_identity_and_optimality(small_task):
    beta, length = 0.5, 5
    prev = jnp.arange(3)
    star = envs.token_optimal_policy_logits(small_task, beta=beta, length=length)
    objective = lambda logits: (
        envs.token_expected_reward(logits, small_task, prev, length)
        - beta * envs.token_kl_to_reference(logits, small_task, prev, length)
    )
    v0 = envs.token_optimal_values(small_task, beta=beta, length=length)[0]
    np.testing.assert_allclose(objective(star), v0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(objective)(star), objective(star), rtol=1e-6)
    ref = jnp.broadcast_to(small_task.ref_logits, star.shape)
    assert bool(jnp.all(objective(ref) < v0))
    for i in range(3):
        other = star + 0.5 * jax.random.normal(jax.random.key(i), star.shape)
        assert bool(jnp.all(objective(other) < v0 + 1e-6))
    np.testing.assert_allclose(
        envs.token_kl_to_reference(ref, small_task, prev, length), 0.0, atol=1e-6
    )
