"""Constrained QP differentiated through the KKT conditions.

Problem: `min_z 0.5 z^T Q z + c^T z` subject to `sum(z) = b` and `z >= 0` (written `-z <= 0`).
The forward solve is projected gradient onto the scaled simplex (optax projection); the duals are
recovered from stationarity. The reference is the closed form on the (locally fixed) active set:
with support `S`, `[[Q_SS, 1], [1^T, 0]] [z_S; nu] = [-c_S; b]`, differentiated by central finite
differences in numpy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxpref.solvers as js

Q_NP = np.array(
    [
        [2.0, 0.5, 0.0, 0.2],
        [0.5, 1.5, 0.3, 0.0],
        [0.0, 0.3, 1.0, 0.1],
        [0.2, 0.0, 0.1, 3.0],
    ]
)
C_NP = np.array([-1.0, -0.8, 0.5, 0.4])
B = 1.0
WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0])


def objective(z, params_obj):
    q, c = params_obj
    return 0.5 * z @ q @ z + c @ z


def eq_fun(z, b):
    return jnp.sum(z, keepdims=True) - b


def ineq_fun(z, _):
    return -z


def np_active_set_solution(q, c, b):
    support = [0, 1]  # verified against the iterative solve in the test
    n = len(support)
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = 0.5 * (q + q.T)[np.ix_(support, support)]  # Hessian of 0.5 z^T Q z
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    sol = np.linalg.solve(kkt, np.concatenate([-c[support], [b]]))
    z = np.zeros(len(c))
    z[support] = sol[:n]
    return z


def np_loss(q, c, b):
    return WEIGHTS @ np_active_set_solution(q, c, b)


def pg_solver():
    proj = lambda z, b: optax.projections.projection_simplex(z, b)
    lr = 1.0 / np.linalg.eigvalsh(Q_NP).max()
    return js.ProjectedGradient(
        objective,
        proj,
        learning_rate=lr,
        tol=1e-12,
        max_steps=5000,
        adjoint=js.ImplicitAdjoint(solve=js.solve_lu),
    )


def kkt_forward(init, params_obj, params_eq, params_ineq):
    """Primal by projected gradient, duals from stationarity `Qz + c + nu 1 - lambda = 0`."""
    del params_ineq
    z = pg_solver().run(init.primal, params_eq, params_obj).value
    q, c = params_obj
    grad = q @ z + c
    support = z > 1e-9
    nu = -jnp.sum(jnp.where(support, grad, 0.0)) / jnp.sum(support)
    lam = jnp.where(support, 0.0, grad + nu)
    return js.KKTSolution(z, jnp.reshape(nu, (1,)), lam)


def test_qp_through_kkt_matches_active_set_closed_form_and_jaxopt(x64, jaxopt):
    optimality = js.make_kkt_optimality_fun(objective, eq_fun, ineq_fun)
    solver = js.custom_root(optimality, solve=js.solve_lu)(kkt_forward)
    init = js.KKTSolution(jnp.full(4, 0.25), jnp.zeros(1), jnp.zeros(4))
    q, c = jnp.asarray(Q_NP), jnp.asarray(C_NP)

    def loss(q, c, b, solve_fn):
        return jnp.asarray(WEIGHTS) @ solve_fn(init, (q, c), b, None).primal

    from jaxopt._src import base as jaxopt_base
    from jaxopt._src import implicit_diff as jaxopt_implicit_diff

    theirs_solver = jaxopt.implicit_diff.custom_root(
        jaxopt_implicit_diff.make_kkt_optimality_fun(objective, eq_fun, ineq_fun),
        solve=functools.partial(jaxopt.linear_solve.solve_normal_cg, tol=1e-13),
    )(
        lambda init, po, pe, pi: jaxopt_base.KKTSolution(
            *kkt_forward(js.KKTSolution(*init), po, pe, pi)
        )
    )

    @jax.jit
    def compute(q, c, b):
        x = solver(init, (q, c), b, None)
        residual = optimality(x, (q, c), b, None)
        ours = jax.grad(loss, argnums=(0, 1, 2))(q, c, b, solver)
        theirs = jax.grad(
            lambda q, c, b: (
                jnp.asarray(WEIGHTS)
                @ theirs_solver(jaxopt_base.KKTSolution(*init), (q, c), b, None)[0]
            ),
            argnums=(0, 1, 2),
        )(q, c, b)
        return x, residual, ours, theirs

    x, residual, (g_q, g_c, g_b), (t_q, t_c, t_b) = compute(q, c, B)

    # The forward solve is a KKT point with strict complementarity on the expected support.
    np.testing.assert_allclose(x.primal, np_active_set_solution(Q_NP, C_NP, B), atol=1e-10)
    for r in jax.tree.leaves(residual):
        np.testing.assert_allclose(r, 0.0, atol=1e-9)
    assert np.all(np.asarray(x.dual_ineq)[2:] > 1e-3)

    eps = 1e-6
    fd_c = np.array(
        [
            (np_loss(Q_NP, C_NP + eps * e, B) - np_loss(Q_NP, C_NP - eps * e, B)) / (2 * eps)
            for e in np.eye(4)
        ]
    )
    fd_b = (np_loss(Q_NP, C_NP, B + eps) - np_loss(Q_NP, C_NP, B - eps)) / (2 * eps)
    fd_q = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            e = np.zeros((4, 4))
            e[i, j] = eps
            fd_q[i, j] = (np_loss(Q_NP + e, C_NP, B) - np_loss(Q_NP - e, C_NP, B)) / (2 * eps)
    np.testing.assert_allclose(g_c, fd_c, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(g_b, fd_b, rtol=1e-6)
    np.testing.assert_allclose(g_q, fd_q, rtol=1e-6, atol=1e-9)
    for ours, theirs in ((g_q, t_q), (g_c, t_c), (g_b, t_b)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_projected_gradient_fixed_point_gives_the_same_gradients(x64):
    solver = pg_solver()
    q, c = jnp.asarray(Q_NP), jnp.asarray(C_NP)

    @jax.jit
    def grads(q, c, b):
        def loss(q, c, b):
            return jnp.asarray(WEIGHTS) @ solver.run(jnp.full(4, 0.25), b, (q, c)).value

        return jax.grad(loss, argnums=(1, 2))(q, c, b)

    g_c, g_b = grads(q, c, B)
    eps = 1e-6
    fd_c = np.array(
        [
            (np_loss(Q_NP, C_NP + eps * e, B) - np_loss(Q_NP, C_NP - eps * e, B)) / (2 * eps)
            for e in np.eye(4)
        ]
    )
    fd_b = (np_loss(Q_NP, C_NP, B + eps) - np_loss(Q_NP, C_NP, B - eps)) / (2 * eps)
    np.testing.assert_allclose(g_c, fd_c, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(g_b, fd_b, rtol=1e-6)
