"""Soft and KL-regularised values, policies, backups and TD errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from jax.test_util import check_grads

import jaxpref.bellman as jb

A = 5


def _np_lse(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


@pytest.fixture
def q():
    return np.random.default_rng(0).normal(size=(3, A)).astype(np.float32)


def test_soft_value_and_policy_against_numpy(q):
    for tau in (0.3, 1.0, 4.0):
        v = jb.soft_value(q, tau=tau)
        np.testing.assert_allclose(v, tau * _np_lse(q / tau), atol=1e-5)
        pi = jb.soft_policy(q, tau=tau)
        np.testing.assert_allclose(pi, np.exp((q - np.asarray(v)[:, None]) / tau), atol=1e-5)
        np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-6)


def test_soft_value_variational_form(q):
    """V = max_pi E_pi[q] + tau H(pi), attained at the soft policy."""
    tau = 0.7
    pi = np.asarray(jb.soft_policy(q, tau=tau), np.float64)
    objective = (pi * q).sum(-1) - tau * (pi * np.log(pi)).sum(-1)
    np.testing.assert_allclose(jb.soft_value(q, tau=tau), objective, atol=1e-5)
    other = np.full_like(pi, 1.0 / A)
    worse = (other * q).sum(-1) - tau * (other * np.log(other)).sum(-1)
    assert np.all(np.asarray(jb.soft_value(q, tau=tau)) >= worse - 1e-6)


def test_tau_zero_limit(q):
    hard = q.max(-1)
    np.testing.assert_array_equal(jb.soft_value(q, tau=0.0), hard)
    np.testing.assert_allclose(jb.soft_value(q, tau=1e-4), hard, atol=1e-3)
    np.testing.assert_allclose(jb.soft_value(q, tau=1e-30), hard, atol=1e-6)  # no overflow
    # traced tau = 0 under jit: exact maximum, finite gradients
    f = jax.jit(lambda q, tau: jb.soft_value(q, tau=tau).sum())
    np.testing.assert_allclose(f(q, 0.0), hard.sum(), atol=1e-6)
    gq, gtau = jax.grad(f, argnums=(0, 1))(q, 0.0)
    assert np.all(np.isfinite(gq)) and np.isfinite(gtau)
    greedy = jb.soft_policy(np.array([1.0, 3.0, 3.0, 0.0]), tau=0.0)
    np.testing.assert_allclose(greedy, [0.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(
        jax.jit(lambda t: jb.soft_policy(jnp.array([1.0, 3.0, 3.0, 0.0]), tau=t))(0.0),
        [0.0, 0.5, 0.5, 0.0],
    )


def test_kl_regularized_value_and_policy(q):
    rng = np.random.default_rng(1)
    ref = rng.dirichlet(np.ones(A), size=3)
    log_ref = np.log(ref).astype(np.float32)
    tau = 0.5
    v = jb.kl_regularized_value(q, log_ref, tau=tau)
    np.testing.assert_allclose(v, tau * _np_lse(q / tau + np.log(ref)), atol=1e-5)
    pi = np.asarray(jb.kl_regularized_policy(q, log_ref, tau=tau), np.float64)
    np.testing.assert_allclose(pi, ref * np.exp((q - np.asarray(v)[:, None]) / tau), atol=1e-5)
    # variational form: V = E_pi[q] - tau KL(pi || ref) at the tilted policy
    kl = (pi * (np.log(pi) - np.log(ref))).sum(-1)
    np.testing.assert_allclose(v, (pi * q).sum(-1) - tau * kl, atol=1e-5)
    # uniform reference: soft value minus tau log A
    uniform = np.full((3, A), -np.log(A), np.float32)
    np.testing.assert_allclose(
        jb.kl_regularized_value(q, uniform, tau=tau),
        np.asarray(jb.soft_value(q, tau=tau)) - tau * np.log(A),
        atol=1e-5,
    )


def test_kl_regularized_support(q):
    """Actions outside the reference's support are never chosen, at any temperature."""
    log_ref = np.array([-np.inf, np.log(0.5), np.log(0.5), -np.inf, -np.inf], np.float32)
    row = q[0]
    for tau in (0.0, 0.3):
        pi = jb.kl_regularized_policy(row, log_ref, tau=tau)
        np.testing.assert_array_equal(np.asarray(pi)[[0, 3, 4]], 0.0)
    np.testing.assert_allclose(jb.kl_regularized_value(row, log_ref, tau=0.0), row[1:3].max())
    g = jax.grad(lambda q: jb.kl_regularized_value(q, log_ref, tau=0.3))(row)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[[0, 3, 4]], 0.0)


def test_backups_and_q_learning(q):
    rng = np.random.default_rng(2)
    q_tm1 = rng.normal(size=(3, A)).astype(np.float32)
    a = np.array([0, 2, 4], np.int32)
    r = rng.normal(size=3).astype(np.float32)
    d = np.array([0.9, 0.0, 0.5], np.float32)
    tau = 0.4
    target = jb.soft_bellman_backup(r, d, q, tau=tau)
    np.testing.assert_allclose(target, r + d * tau * _np_lse(q / tau), atol=1e-5)
    td = jb.soft_q_learning(q_tm1, a, r, d, q, tau=tau)
    np.testing.assert_allclose(td, np.asarray(target) - q_tm1[np.arange(3), a], atol=1e-5)
    # tau = 0: exactly Q-learning (rlax as oracle)
    np.testing.assert_allclose(
        jb.soft_q_learning(q_tm1, a, r, d, q, tau=0.0),
        jax.vmap(rlax.q_learning)(q_tm1, a, r, d, q),
        atol=1e-6,
    )
    log_ref = np.log(rng.dirichlet(np.ones(A), size=3)).astype(np.float32)
    kl_target = jb.kl_regularized_bellman_backup(r, d, q, log_ref, tau=tau)
    np.testing.assert_allclose(kl_target, r + d * tau * _np_lse(q / tau + log_ref), atol=1e-5)
    np.testing.assert_allclose(
        jb.kl_regularized_q_learning(q_tm1, a, r, d, q, log_ref, tau=tau),
        np.asarray(kl_target) - q_tm1[np.arange(3), a],
        atol=1e-5,
    )
    g = jax.grad(lambda q: jb.soft_q_learning(q_tm1, a, r, d, q, tau=tau).sum())(q)
    np.testing.assert_array_equal(g, 0.0)  # targets are stop-gradient by default


def test_gradients():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        q = jnp.asarray(rng.normal(size=(2, A)))
        log_ref = jnp.log(jnp.asarray(rng.dirichlet(np.ones(A), size=2)))
        check_grads(
            jax.jit(lambda q, tau: jb.soft_value(q, tau=tau).sum()),
            (q, jnp.asarray(0.7)),
            order=1,
            modes=("fwd", "rev"),
        )
        check_grads(
            jax.jit(lambda q, lr: jb.kl_regularized_value(q, lr, tau=0.7).sum()),
            (q, log_ref),
            order=1,
            modes=("rev",),
        )


def test_errors():
    with pytest.raises(ValueError, match=r"soft_bellman_backup: `r_t` must have shape \(3,\)"):
        jb.soft_bellman_backup(jnp.zeros(2), jnp.zeros(3), jnp.zeros((3, A)))
    with pytest.raises(ValueError, match=r"`log_pi_ref` must have the shape of `q`"):
        jb.kl_regularized_value(jnp.zeros((3, A)), jnp.zeros((3, A - 1)))
    with pytest.raises(ValueError, match=r"`tau` must be >= 0"):
        jb.soft_value(jnp.zeros(A), tau=-1.0)
