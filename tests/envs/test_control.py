"""Tabular control tasks: the soft optimum against NumPy and exact policy returns."""

import jax
import numpy as np

from jaxpref import envs


def _softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_soft_vi(r, p, gamma, alpha, iters=2000):
    v = np.zeros(r.shape[0])
    for _ in range(iters):
        q = r + gamma * p @ v
        m = q.max(-1)
        v = m + alpha * np.log(np.exp((q - m[:, None]) / alpha).sum(-1))
    return q, v


def test_soft_optimal_solution_matches_numpy():
    mdp = envs.random_mdp(jax.random.key(0), 6, 3, discount=0.8)
    sol = envs.soft_optimal_solution(mdp, alpha=0.5, num_iterations=300)
    r, p = np.asarray(mdp.reward, np.float64), np.asarray(mdp.transitions, np.float64)
    q, v = _np_soft_vi(r, p, 0.8, 0.5)
    np.testing.assert_allclose(sol.v, v, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sol.q, q, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sol.advantage, 0.5 * sol.policy_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.nn.logsumexp(sol.policy_logits, -1), 0.0, atol=1e-5)


def test_policy_return_matches_iterative_evaluation():
    mdp = envs.random_mdp(jax.random.key(1), 5, 2, discount=0.9)
    logits = jax.random.normal(jax.random.key(2), (5, 2))
    pi = _softmax(logits)
    r, p = np.asarray(mdp.reward, np.float64), np.asarray(mdp.transitions, np.float64)
    v = np.zeros(5)
    for _ in range(2000):
        v = (pi * r).sum(-1) + 0.9 * np.einsum("sa,sat,t->s", pi, p, v)
    np.testing.assert_allclose(
        envs.policy_return(mdp, logits), v @ np.asarray(mdp.initial_distribution), rtol=1e-4
    )
