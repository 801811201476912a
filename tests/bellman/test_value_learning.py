"""TD, TD(lambda), Q-learning, expected SARSA and Retrace: hand values and rlax parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

import jaxpref.bellman as jb
from tests.bellman._reference import np_lambda_returns, trajectory

T, A = 10, 4


def _transitions(rng, n):
    q_tm1 = rng.normal(size=(n, A)).astype(np.float32)
    q_t = rng.normal(size=(n, A)).astype(np.float32)
    a_tm1 = rng.integers(0, A, size=n).astype(np.int32)
    a_t = rng.integers(0, A, size=n).astype(np.int32)
    r_t = rng.normal(size=n).astype(np.float32)
    discount_t = np.where(rng.random(n) < 0.2, 0.0, 0.9).astype(np.float32)
    probs = rng.dirichlet(np.ones(A), size=n).astype(np.float32)
    return q_tm1, a_tm1, r_t, discount_t, q_t, a_t, probs


def test_td_learning_hand_and_rlax():
    assert float(jb.td_learning(1.0, 0.5, 0.9, 2.0)) == pytest.approx(1.3, abs=1e-6)
    rng = np.random.default_rng(0)
    v_tm1, r_t, d_t, v_t = (rng.normal(size=T).astype(np.float32) for _ in range(4))
    ours = jb.td_learning(v_tm1, r_t, d_t, v_t)  # elementwise over [T]
    theirs = jax.vmap(rlax.td_learning)(v_tm1, r_t, d_t, v_t)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_td_lambda_rlax_parity_and_numpy():
    rng = np.random.default_rng(1)
    r, d, v, lam = trajectory(rng, T)
    v_tm1 = rng.normal(size=T).astype(np.float32)
    for lam_ in (0.7, lam):
        ours = jb.td_lambda(v_tm1, r, d, v, lam_)
        np.testing.assert_allclose(ours, rlax.td_lambda(v_tm1, r, d, v, lam_), atol=1e-6, rtol=0)
        np.testing.assert_allclose(ours, np_lambda_returns(r, d, v, lam_) - v_tm1, atol=1e-5)


def test_q_learning_and_expected_sarsa_by_hand():
    td = jb.q_learning(jnp.array([1.0, 2.0]), 1, 0.5, 0.9, jnp.array([3.0, -1.0]))
    assert float(td) == pytest.approx(0.5 + 0.9 * 3.0 - 2.0, abs=1e-6)
    td = jb.expected_sarsa(
        jnp.array([1.0, 2.0]), 0, 0.5, 0.9, jnp.array([3.0, -1.0]), jnp.array([0.25, 0.75])
    )
    assert float(td) == pytest.approx(0.5 + 0.9 * (0.75 - 0.75) - 1.0, abs=1e-6)


def test_q_learning_expected_sarsa_rlax_parity_and_batch_axes():
    rng = np.random.default_rng(2)
    q_tm1, a_tm1, r_t, d_t, q_t, _, probs = _transitions(rng, 2 * T)
    q_ours = jb.q_learning(q_tm1, a_tm1, r_t, d_t, q_t)  # leading batch axis, no vmap
    theirs = jax.vmap(rlax.q_learning)(q_tm1, a_tm1, r_t, d_t, q_t)
    np.testing.assert_allclose(q_ours, theirs, atol=1e-6, rtol=0)
    ours = jb.expected_sarsa(q_tm1, a_tm1, r_t, d_t, q_t, probs)
    theirs = jax.vmap(rlax.expected_sarsa)(q_tm1, a_tm1, r_t, d_t, q_t, probs)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    # [B, T] grid == per-transition
    grid = jb.q_learning(
        q_tm1.reshape(2, T, A),
        a_tm1.reshape(2, T),
        r_t.reshape(2, T),
        d_t.reshape(2, T),
        q_t.reshape(2, T, A),
    )
    np.testing.assert_allclose(grid.reshape(-1), q_ours, atol=1e-7)


def test_q_learning_target_gradients():
    q_tm1, a, r, d, q_t = jnp.array([1.0, 2.0]), 0, 1.0, 0.9, jnp.array([3.0, 5.0])
    g_stop = jax.grad(lambda q: jb.q_learning(q_tm1, a, r, d, q))(q_t)
    g_flow = jax.grad(lambda q: jb.q_learning(q_tm1, a, r, d, q, False))(q_t)
    np.testing.assert_allclose(g_stop, [0.0, 0.0])
    np.testing.assert_allclose(g_flow, [0.0, 0.9], atol=1e-6)


def _np_retrace(q_tm1, q_t, a_tm1, a_t, r, d, pi, mu, lam, eps=1e-8):
    """Retrace targets from the definition, in float64."""
    q_tm1, q_t, r, d, pi, mu = (np.asarray(x, np.float64) for x in (q_tm1, q_t, r, d, pi, mu))
    lam = np.broadcast_to(np.asarray(lam, np.float64), r.shape)
    n = len(r)
    c = lam * np.minimum(1.0, pi[np.arange(n), a_t] / (mu + eps))
    exp_q = (pi * q_t).sum(-1)
    g = np.zeros(n)
    g[-1] = r[-1] + d[-1] * exp_q[-1]
    for t in reversed(range(n - 1)):
        g[t] = r[t] + d[t] * (exp_q[t] - c[t] * q_t[t, a_t[t]] + c[t] * g[t + 1])
    return g - q_tm1[np.arange(n), a_tm1]


@pytest.mark.parametrize("vector_lambda", [False, True])
def test_retrace_rlax_parity_and_numpy(vector_lambda):
    rng = np.random.default_rng(3)
    q_tm1, a_tm1, r_t, d_t, q_t, a_t, pi = _transitions(rng, T)
    mu = rng.uniform(0.1, 1.0, size=T).astype(np.float32)
    lam = rng.uniform(0.5, 1.0, size=T).astype(np.float32) if vector_lambda else 0.9
    ours = jb.retrace(q_tm1, q_t, a_tm1, a_t, r_t, d_t, pi, mu, lam)
    theirs = rlax.retrace(q_tm1, q_t, a_tm1, a_t, r_t, d_t, pi, mu, lam)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    ref = _np_retrace(q_tm1, q_t, a_tm1, a_t, r_t, d_t, pi, mu, lam)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_retrace_float64_parity():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        q_tm1, a_tm1, r_t, d_t, q_t, a_t, pi = (
            x.astype(np.float64) if x.dtype == np.float32 else x for x in _transitions(rng, T)
        )
        mu = rng.uniform(0.1, 1.0, size=T)
        ours = jb.retrace(q_tm1, q_t, a_tm1, a_t, r_t, d_t, pi, mu, 0.8)
        theirs = rlax.retrace(q_tm1, q_t, a_tm1, a_t, r_t, d_t, pi, mu, 0.8)
        np.testing.assert_allclose(ours, theirs, atol=1e-12, rtol=0)


def test_errors():
    with pytest.raises(TypeError, match=r"q_learning: `a_tm1` must be an integer"):
        jb.q_learning(jnp.zeros(3), 0.0, 0.0, 1.0, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"q_learning: `r_t` must have shape \(2,\)"):
        jb.q_learning(
            jnp.zeros((2, 3)), jnp.zeros(2, int), jnp.zeros(3), jnp.zeros(2), jnp.zeros((2, 3))
        )
    with pytest.raises(ValueError, match=r"td_lambda: `r_t` must have the shape of `v_tm1`"):
        jb.td_lambda(jnp.zeros(5), jnp.zeros(4), jnp.zeros(5), jnp.zeros(5), 0.9)
    with pytest.raises(ValueError, match=r"retrace: `a_t` must have shape \(4,\)"):
        z = jnp.zeros((4, 2))
        jb.retrace(
            z,
            z,
            jnp.zeros(4, int),
            jnp.zeros(3, int),
            jnp.zeros(4),
            jnp.zeros(4),
            z,
            jnp.ones(4),
            0.9,
        )
