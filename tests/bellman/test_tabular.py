"""Tabular solvers: NumPy references, fixed points, closed forms, vmap, gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxpref.bellman as jb
from jaxpref.envs import random_mdp

S, A = 6, 3


def _np_lse(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _np_soft_vi(reward, transitions, gamma, tau, iterations, log_ref=None):
    reward, transitions = np.float64(reward), np.float64(transitions)
    v = np.zeros(reward.shape[0])
    for _ in range(iterations):
        q = reward + gamma * transitions @ v
        if tau == 0:
            v = q.max(-1) if log_ref is None else np.where(np.isfinite(log_ref), q, -np.inf).max(-1)
        else:
            v = tau * _np_lse(q / tau + (0.0 if log_ref is None else log_ref))
    return v


def _mdp(seed=0, discount=0.9):
    mdp = random_mdp(jax.random.key(seed), S, A, discount=discount)
    return np.asarray(mdp.reward), np.asarray(mdp.transitions), np.asarray(mdp.initial_distribution)


def test_soft_value_iteration_against_numpy():
    reward, p, _ = _mdp()
    solve = jax.jit(
        lambda tau: jb.soft_value_iteration(reward, p, discount=0.9, tau=tau, num_iterations=40)
    )
    for tau in (0.0, 0.5, 2.0):
        res = solve(tau)
        np.testing.assert_allclose(res.v, _np_soft_vi(reward, p, 0.9, tau, 40), atol=1e-4)
        q = reward + 0.9 * p @ np.asarray(res.v, np.float64)
        np.testing.assert_allclose(res.q, q, atol=1e-4)
        np.testing.assert_allclose(res.policy.sum(-1), 1.0, atol=1e-5)


def test_fixed_point_property():
    reward, p, _ = _mdp(1)
    res = jb.soft_value_iteration(reward, p, discount=0.9, tau=0.5, num_iterations=300)
    assert float(res.residual) < 1e-5
    residual = jb.soft_bellman_residual(res.v, reward, p, discount=0.9, tau=0.5)
    np.testing.assert_allclose(residual, 0.0, atol=1e-5)
    tv = jb.soft_bellman_operator(res.v, reward, p, discount=0.9, tau=0.5)
    np.testing.assert_allclose(tv, res.v, atol=1e-5)
    # the soft-optimal policy's soft value is the optimal soft value
    v_pi = jb.soft_policy_evaluation(
        res.policy, reward, p, discount=0.9, tau=0.5, num_iterations=300
    )
    np.testing.assert_allclose(v_pi, res.v, atol=1e-4)
    # contraction: a few iterations from v* stay at v*
    again = jb.soft_value_iteration(
        reward, p, discount=0.9, tau=0.5, num_iterations=3, v_init=res.v
    )
    np.testing.assert_allclose(again.v, res.v, atol=1e-5)


def test_kl_regularized_value_iteration():
    reward, p, _ = _mdp(2)
    rng = np.random.default_rng(0)
    log_ref = np.log(rng.dirichlet(np.ones(A), size=S))
    res = jb.soft_value_iteration(
        reward, p, discount=0.8, tau=0.7, num_iterations=30, log_pi_ref=log_ref.astype(np.float32)
    )
    np.testing.assert_allclose(res.v, _np_soft_vi(reward, p, 0.8, 0.7, 30, log_ref), atol=1e-4)
    # uniform reference: the soft values shifted by tau log A / (1 - discount)
    uniform = np.full((S, A), -np.log(A), np.float32)
    kl = jb.soft_value_iteration(
        reward, p, discount=0.8, tau=0.7, num_iterations=150, log_pi_ref=uniform
    )
    soft = jb.soft_value_iteration(reward, p, discount=0.8, tau=0.7, num_iterations=150)
    np.testing.assert_allclose(kl.v, np.asarray(soft.v) - 0.7 * np.log(A) / 0.2, atol=1e-4)
    np.testing.assert_allclose(kl.policy, soft.policy, atol=1e-5)


def test_soft_policy_evaluation_closed_form():
    reward, p, _ = _mdp(3)
    rng = np.random.default_rng(1)
    policy = rng.dirichlet(np.ones(A), size=S)
    policy[0] = [1.0, 0.0, 0.0]  # a deterministic state: 0 log 0 = 0
    tau, gamma = 0.3, 0.85
    p_pi = np.einsum("sa,sat->st", policy, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(policy > 0, policy * np.log(policy), 0.0).sum(-1)
    r_pi = (policy * reward).sum(-1) + tau * ent
    closed = np.linalg.solve(np.eye(S) - gamma * p_pi, r_pi)
    v = jb.soft_policy_evaluation(
        policy.astype(np.float32), reward, p, discount=gamma, tau=tau, num_iterations=200
    )
    np.testing.assert_allclose(v, closed, atol=1e-4)
    tv = jb.soft_policy_evaluation_operator(
        v, policy.astype(np.float32), reward, p, discount=gamma, tau=tau
    )
    np.testing.assert_allclose(tv, v, atol=1e-5)
    g = jax.grad(
        lambda pol: jb.soft_policy_evaluation(
            pol, reward, p, discount=gamma, tau=tau, num_iterations=5
        ).sum()
    )(jnp.asarray(policy, jnp.float32))
    assert np.all(np.isfinite(g))


def test_state_visitation():
    _, p, mu0 = _mdp(4)
    rng = np.random.default_rng(2)
    policy = rng.dirichlet(np.ones(A), size=S)
    p_pi = np.einsum("sa,sat->st", policy, p)
    # finite horizon, NumPy loop
    d, total = mu0.astype(np.float64), np.zeros(S)
    for t in range(7):
        total += 0.9**t * d
        d = d @ p_pi
    out = jb.state_visitation(policy.astype(np.float32), p, mu0, horizon=7, discount=0.9)
    np.testing.assert_allclose(out, total, atol=1e-5)
    # long discounted horizon: closed form mu0 (I - gamma P_pi)^-1
    long = jb.state_visitation(policy.astype(np.float32), p, mu0, horizon=200, discount=0.8)
    np.testing.assert_allclose(long, np.linalg.solve((np.eye(S) - 0.8 * p_pi).T, mu0), atol=1e-4)
    # time-varying policy equal at every step == stationary
    tv = jb.state_visitation(
        np.broadcast_to(policy, (7, S, A)).astype(np.float32), p, mu0, horizon=7, discount=0.9
    )
    np.testing.assert_allclose(tv, out, atol=1e-6)


def test_value_gradient_is_occupancy():
    """d (mu0 . V*) / d r(s, a) = sum_t gamma^t P(s_t = s, a_t = a) under the optimal policy."""
    reward, p, mu0 = _mdp(5)
    for log_ref in (
        None,
        np.log(np.random.default_rng(3).dirichlet(np.ones(A), size=S)).astype(np.float32),
    ):

        @jax.jit
        def grad_and_occupancy(r, log_ref=log_ref):
            def objective(r):
                res = jb.soft_value_iteration(
                    r, p, discount=0.5, tau=0.4, num_iterations=60, log_pi_ref=log_ref
                )
                return jnp.dot(mu0, res.v)

            res = jb.soft_value_iteration(
                r, p, discount=0.5, tau=0.4, num_iterations=60, log_pi_ref=log_ref
            )
            visits = jb.state_visitation(res.policy, p, mu0, horizon=60, discount=0.5)
            return jax.grad(objective)(r), visits[:, None] * res.policy

        grad, occupancy = grad_and_occupancy(jnp.asarray(reward))
        np.testing.assert_allclose(grad, occupancy, atol=1e-5)


def test_vmap_over_mdps_equals_loop_and_jit():
    mdps = jax.vmap(lambda k: random_mdp(k, S, A))(jax.random.split(jax.random.key(7), 3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def solve(reward, transitions):
        return jb.soft_value_iteration(
            reward, transitions, discount=0.9, tau=0.5, num_iterations=20
        )

    batched = jax.vmap(solve)(mdps.reward, mdps.transitions)
    for i in range(3):
        single = jb.soft_value_iteration(
            mdps.reward[i], mdps.transitions[i], discount=0.9, tau=0.5, num_iterations=20
        )
        np.testing.assert_allclose(batched.v[i], single.v, atol=1e-5)
        np.testing.assert_allclose(batched.policy[i], single.policy, atol=1e-5)
    solve(mdps.reward[0], mdps.transitions[0])
    solve(mdps.reward[1], mdps.transitions[1])  # same shapes: no retrace
    chex.clear_trace_counter()


def test_check_grads_through_solvers():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        reward = jnp.asarray(rng.normal(size=(3, 2)))
        p = jnp.asarray(rng.dirichlet(np.ones(3), size=(3, 2)))
        mu0 = jnp.asarray([0.5, 0.3, 0.2])
        policy = jnp.asarray(rng.dirichlet(np.ones(2), size=3))
        w = jnp.arange(1.0, 4.0)

        @jax.jit
        def vi(reward, p, tau):
            return w @ jb.soft_value_iteration(reward, p, discount=0.8, tau=tau, num_iterations=6).v

        check_grads(vi, (reward, p, jnp.asarray(0.5)), order=1, modes=("fwd", "rev"))
        check_grads(
            jax.jit(
                lambda pol, p, mu0: w @ jb.state_visitation(pol, p, mu0, horizon=5, discount=0.9)
            ),
            (policy, p, mu0),
            order=1,
            modes=("rev",),
        )


def test_errors():
    with pytest.raises(
        ValueError, match=r"soft_value_iteration: `transitions` must have shape \(3, 2, 3\)"
    ):
        jb.soft_value_iteration(jnp.zeros((3, 2)), jnp.zeros((3, 2, 4)), discount=0.9)
    with pytest.raises(ValueError, match=r"soft_bellman_operator: `v` must have shape \(3,\)"):
        jb.soft_bellman_operator(
            jnp.zeros(4), jnp.zeros((3, 2)), jnp.zeros((3, 2, 3)), discount=0.9
        )
    with pytest.raises(ValueError, match=r"state_visitation: a time-varying `policy` must have 4"):
        jb.state_visitation(jnp.zeros((3, 3, 2)), jnp.zeros((3, 2, 3)), jnp.ones(3), horizon=4)


def test_operator_as_fixed_point_map_for_implicit_differentiation():
    """`soft_bellman_operator` plugs into jaxopt's `custom_fixed_point` (the solvers' contract)."""
    implicit_diff = pytest.importorskip("jaxopt.implicit_diff")
    reward, p, mu0 = _mdp(6)

    def operator(v, reward, transitions):
        return jb.soft_bellman_operator(v, reward, transitions, discount=0.7, tau=0.5)

    @implicit_diff.custom_fixed_point(operator)
    def solve(v_init, reward, transitions):
        return jb.soft_value_iteration(
            reward, transitions, discount=0.7, tau=0.5, num_iterations=80, v_init=v_init
        ).v

    def unrolled(reward, transitions):
        return jb.soft_value_iteration(
            reward, transitions, discount=0.7, tau=0.5, num_iterations=80
        ).v

    v0 = jnp.zeros(S)
    g_implicit = jax.jit(jax.grad(lambda r, t: mu0 @ solve(v0, r, t), argnums=(0, 1)))(reward, p)
    g_unrolled = jax.jit(jax.grad(lambda r, t: mu0 @ unrolled(r, t), argnums=(0, 1)))(reward, p)
    for a, b in zip(g_implicit, g_unrolled, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
