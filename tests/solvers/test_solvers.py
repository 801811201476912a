"""Iterative solvers: solutions, implicit vs unrolled gradients vs finite differences vs jaxopt."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxpref.solvers as js

# ---------------------------------------------------------------------------------------------
# L2-regularised logistic regression: w*(lam) = argmin mean softplus(-y Xw) + 0.5 lam ||w||^2.

RNG = np.random.default_rng(3)
XL = RNG.normal(size=(30, 4))
YL = np.sign(XL @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.5 * RNG.normal(size=30))
XLV = RNG.normal(size=(12, 4))
YLV = np.sign(XLV @ np.array([1.0, -2.0, 0.5, 0.0]))


def logistic_objective(w, lam):
    margins = jnp.asarray(YL) * (jnp.asarray(XL) @ w)
    return jnp.mean(jax.nn.softplus(-margins)) + 0.5 * lam * jnp.sum(w**2)


def logistic_outer(w):
    return jnp.mean(jax.nn.softplus(-jnp.asarray(YLV) * (jnp.asarray(XLV) @ w)))


def np_logistic_argmin(lam):
    """Independent numpy Newton solve of the inner problem."""
    w = np.zeros(4)
    for _ in range(50):
        m = YL * (XL @ w)
        s = 1.0 / (1.0 + np.exp(m))  # sigmoid(-m)
        grad = -(XL.T @ (YL * s)) / len(YL) + lam * w
        hess = (XL.T * (s * (1.0 - s))) @ XL / len(YL) + lam * np.eye(4)
        w = w - np.linalg.solve(hess, grad)
    return w


def np_logistic_outer(lam):
    w = np_logistic_argmin(lam)
    return np.mean(np.logaddexp(0.0, -YLV * (XLV @ w)))


def fd_logistic(lam, eps=1e-5):
    return (np_logistic_outer(lam + eps) - np_logistic_outer(lam - eps)) / (2 * eps)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: js.LBFGS(logistic_objective, tol=1e-10, max_steps=200), id="lbfgs"),
        pytest.param(
            lambda: js.Newton(
                jax.grad(logistic_objective), linear_solve=js.solve_lu, tol=1e-12, max_steps=30
            ),
            id="newton",
        ),
        pytest.param(
            lambda: js.Newton(
                jax.grad(logistic_objective),
                linear_solve=js.solve_lu,
                tol=1e-12,
                max_steps=30,
                adjoint=js.UnrolledAdjoint(),
            ),
            id="newton-unrolled",
        ),
    ],
)
def test_logistic_regression_hypergradient_vs_finite_differences(x64, make):
    solver = make()
    lam = 0.3

    def total(lam):
        sol = solver.run(jnp.zeros(4), lam)
        return logistic_outer(sol.value), sol

    grad, sol = jax.jit(jax.grad(total, has_aux=True))(lam)
    assert int(sol.result) == js.Status.CONVERGED
    np.testing.assert_allclose(sol.value, np_logistic_argmin(lam), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(grad, fd_logistic(lam), rtol=1e-6)


def test_logistic_regression_matches_jaxopt_custom_root(x64, jaxopt):
    newton = js.Newton(
        jax.grad(logistic_objective), linear_solve=js.solve_lu, tol=1e-12, max_steps=30
    )
    optimality = jax.grad(logistic_objective)

    def forward(init, lam):
        return newton.run(init, lam).value

    @jax.jit
    def both(lam):
        ours = js.custom_root(optimality, solve=js.solve_lu)(forward)
        theirs = jaxopt.implicit_diff.custom_root(optimality, solve=jaxopt.linear_solve.solve_lu)(
            forward
        )
        return [
            jax.grad(lambda lam: logistic_outer(f(jnp.zeros(4), lam)))(lam) for f in (ours, theirs)
        ]

    ours, theirs = both(0.3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    np.testing.assert_allclose(ours, fd_logistic(0.3), rtol=1e-6)


def test_optax_minimiser_reaches_the_argmin_and_gives_the_same_hypergradient(x64):
    lam = 0.3
    solver = js.OptaxMinimiser(
        logistic_objective,
        optax.adam(0.05),
        max_steps=5000,
        tol=1e-9,
        adjoint=js.ImplicitAdjoint(solve=js.solve_cholesky),
    )
    grad, sol = jax.jit(
        jax.grad(
            lambda lam: (lambda s: (logistic_outer(s.value), s))(solver.run(jnp.zeros(4), lam)),
            has_aux=True,
        )
    )(lam)
    assert int(sol.result) == js.Status.CONVERGED
    np.testing.assert_allclose(sol.value, np_logistic_argmin(lam), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad, fd_logistic(lam), rtol=1e-6)


def test_has_aux_is_evaluated_at_the_solution_and_differentiable(x64):
    def objective(w, lam):
        value = logistic_objective(w, lam)
        return value, {"value": value, "norm": jnp.sum(w**2)}

    solver = js.GradientDescent(
        objective, learning_rate=1.0, has_aux=True, tol=1e-10, max_steps=2000
    )

    @jax.jit
    def compute(lam):
        return solver.run(jnp.zeros(4), lam), jax.grad(
            lambda lam: solver.run(jnp.zeros(4), lam).aux["norm"]
        )(lam)

    sol, g = compute(0.3)
    assert int(sol.result) == js.Status.CONVERGED
    w = np_logistic_argmin(0.3)
    np.testing.assert_allclose(sol.aux["norm"], np.sum(w**2), rtol=1e-8)
    np.testing.assert_allclose(
        sol.aux["value"], logistic_objective(jnp.asarray(w), 0.3), rtol=1e-10
    )
    # d/dlam ||w*(lam)||^2 through the aux output vs finite differences of the numpy argmin.
    eps = 1e-5
    fd = (
        np.sum(np_logistic_argmin(0.3 + eps) ** 2) - np.sum(np_logistic_argmin(0.3 - eps) ** 2)
    ) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Deep-equilibrium-style fixed point z = tanh(W z + U x + b) with a contractive W.


def deq_params():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(4, 4))
    w = 0.5 * w / np.linalg.norm(w, 2)
    return {
        "W": jnp.asarray(w),
        "U": jnp.asarray(rng.normal(size=(4, 3))),
        "b": jnp.asarray(rng.normal(size=4)),
    }


DEQ_X = np.array([0.3, -1.0, 0.5])


def deq_layer(z, params, x):
    return jnp.tanh(params["W"] @ z + params["U"] @ x + params["b"])


def deq_loss(solver):
    def loss(params):
        z = solver.run(jnp.zeros(4), params, jnp.asarray(DEQ_X)).value
        return jnp.sum(z * jnp.arange(1.0, 5.0))

    return loss


def test_deq_fixed_point_gradients_vs_finite_differences_and_unrolled(x64):
    params = deq_params()
    tight = js.ImplicitAdjoint(solve=js.solve_lu)
    plain = js.FixedPointIteration(deq_layer, tol=1e-12, max_steps=500, adjoint=tight)
    anderson = js.AndersonAcceleration(deq_layer, tol=1e-12, max_steps=500, adjoint=tight)
    unrolled = js.FixedPointIteration(
        deq_layer, tol=1e-12, max_steps=200, adjoint=js.UnrolledAdjoint(checkpoint=True)
    )
    run = jax.jit(lambda p: [s.run(jnp.zeros(4), p, jnp.asarray(DEQ_X)) for s in (plain, anderson)])
    sol_p, sol_a = run(params)
    assert int(sol_p.result) == int(sol_a.result) == js.Status.CONVERGED
    np.testing.assert_allclose(sol_a.value, sol_p.value, rtol=1e-10)
    np.testing.assert_allclose(
        deq_layer(sol_p.value, params, jnp.asarray(DEQ_X)), sol_p.value, rtol=1e-10
    )
    assert int(sol_a.stats.num_steps) < int(sol_p.stats.num_steps)

    check_grads(jax.jit(deq_loss(plain)), (params,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
    grads = jax.jit(lambda p: [jax.grad(deq_loss(s))(p) for s in (plain, anderson, unrolled)])
    g_plain, g_anderson, g_unrolled = grads(params)
    for key in params:
        np.testing.assert_allclose(g_anderson[key], g_plain[key], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(g_unrolled[key], g_plain[key], rtol=1e-8, atol=1e-12)


def test_deq_matches_jaxopt_fixed_point_iteration(x64, jaxopt):
    params = deq_params()
    ours = deq_loss(js.FixedPointIteration(deq_layer, tol=1e-12, max_steps=500))
    solver = jaxopt.FixedPointIteration(deq_layer, tol=1e-12, maxiter=500, implicit_diff=True)

    def theirs(params):
        z = solver.run(jnp.zeros(4), params, jnp.asarray(DEQ_X)).params
        return jnp.sum(z * jnp.arange(1.0, 5.0))

    g_ours, g_theirs = jax.jit(lambda p: (jax.grad(ours)(p), jax.grad(theirs)(p)))(params)
    for key in params:
        np.testing.assert_allclose(g_ours[key], g_theirs[key], rtol=1e-6, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Soft value iteration: Q = r_theta + gamma P V(Q), V(Q)(s) = alpha logsumexp_a Q(s, a) / alpha.

S, A, K, GAMMA, ALPHA = 4, 2, 3, 0.9, 0.5
MDP_RNG = np.random.default_rng(11)
P = MDP_RNG.dirichlet(np.ones(S), size=(S, A))  # [S, A, S']
PHI = MDP_RNG.normal(size=(S, A, K))  # reward features
DEMO = [(0, 1), (1, 0), (2, 1), (3, 1), (1, 1)]  # (state, action) pairs of a demonstrator


def soft_bellman(q, theta):
    v = ALPHA * jax.nn.logsumexp(q / ALPHA, axis=1)  # [S]
    return jnp.asarray(PHI) @ theta + GAMMA * jnp.asarray(P) @ v


def np_soft_q(theta):
    q = np.zeros((S, A))
    for _ in range(400):  # gamma^400 < 1e-18
        v = ALPHA * np.log(np.sum(np.exp(q / ALPHA), axis=1))
        q = PHI @ theta + GAMMA * P @ v
    return q


def np_demo_nll(theta):
    q = np_soft_q(theta)
    logp = q / ALPHA - np.log(np.sum(np.exp(q / ALPHA), axis=1, keepdims=True))
    return -sum(logp[s, a] for s, a in DEMO)


def demo_nll(q):
    logp = jax.nn.log_softmax(q / ALPHA, axis=1)
    states, actions = zip(*DEMO, strict=True)
    return -jnp.sum(logp[jnp.array(states), jnp.array(actions)])


def test_soft_value_iteration_gradient_vs_finite_differences(x64):
    theta = jnp.array([0.5, -0.2, 1.0])
    implicit = js.FixedPointIteration(
        soft_bellman, tol=1e-12, max_steps=1000, adjoint=js.ImplicitAdjoint(solve=js.solve_gmres)
    )
    unrolled = js.FixedPointIteration(
        soft_bellman, tol=1e-12, max_steps=400, adjoint=js.UnrolledAdjoint()
    )

    def loss(solver):
        return lambda th: demo_nll(solver.run(jnp.zeros((S, A)), th).value)

    @jax.jit
    def compute(th):
        sol = implicit.run(jnp.zeros((S, A)), th)
        return sol, jax.grad(loss(implicit))(th), jax.grad(loss(unrolled))(th)

    sol, g_implicit, g_unrolled = compute(theta)
    assert int(sol.result) == js.Status.CONVERGED
    np.testing.assert_allclose(sol.value, np_soft_q(np.asarray(theta)), rtol=1e-10)
    eps = 1e-6
    fd = np.array(
        [
            (np_demo_nll(np.asarray(theta) + eps * e) - np_demo_nll(np.asarray(theta) - eps * e))
            / (2 * eps)
            for e in np.eye(K)
        ]
    )
    np.testing.assert_allclose(g_implicit, fd, rtol=1e-6)
    np.testing.assert_allclose(g_unrolled, g_implicit, rtol=1e-8)


# ---------------------------------------------------------------------------------------------
# Status codes, throw, jit / vmap.


def quadratic(x, a):
    return 0.5 * jnp.sum((x - a) ** 2)


@pytest.mark.parametrize(
    "adjoint", [js.ImplicitAdjoint(), js.UnrolledAdjoint()], ids=["implicit", "unrolled"]
)
def test_status_codes(adjoint):
    a = jnp.array([1.0, -2.0])
    ok = js.GradientDescent(quadratic, learning_rate=0.5, tol=1e-5, max_steps=100, adjoint=adjoint)
    short = js.GradientDescent(quadratic, learning_rate=0.01, max_steps=3, adjoint=adjoint)
    diverge = js.GradientDescent(quadratic, learning_rate=100.0, max_steps=100, adjoint=adjoint)
    sol = ok.run(jnp.zeros(2), a)
    assert int(sol.result) == js.Status.CONVERGED and float(sol.stats.error) <= 1e-5
    sol = short.run(jnp.zeros(2), a)
    assert int(sol.result) == js.Status.MAX_STEPS and int(sol.stats.num_steps) == 3
    # x_{k+1} = -99 x_k + 100 a overflows float32 after about 20 steps.
    sol = diverge.run(jnp.zeros(2), a)
    assert int(sol.result) == js.Status.NONFINITE and int(sol.stats.num_steps) < 100
    nan = js.GradientDescent(lambda x, a: jnp.sum(jnp.sqrt(x - a)), learning_rate=0.1)
    sol = nan.run(jnp.zeros(2), a)
    assert int(sol.result) == js.Status.NONFINITE and int(sol.stats.num_steps) == 0
    assert js.status_message(sol.result) == "produced a non-finite (NaN or inf) iterate or error"


def test_status_codes_are_per_instance_under_vmap_and_jit():
    solver = js.GradientDescent(quadratic, learning_rate=0.5, tol=1e-5, max_steps=20)

    @jax.jit
    def run(x0, a):
        return jax.vmap(solver.run)(x0, a)

    x0 = jnp.array([[0.0], [1e3], [jnp.nan]])
    a = jnp.array([[1.0], [0.0], [0.0]])
    sols = run(x0, a)
    # Each step halves the gap to a: 2^-17 < 1e-5 (instance 0 converges), 1e3 * 2^-20 > 1e-5.
    assert sols.result.tolist() == [0, 1, 2]
    loop = [solver.run(x0[i], a[i]) for i in range(3)]
    assert [int(s.result) for s in loop] == [0, 1, 2]
    np.testing.assert_allclose(sols.value[:2], np.stack([s.value for s in loop[:2]]), rtol=1e-6)
    assert sols.stats.num_steps.tolist() == [int(s.stats.num_steps) for s in loop]


def test_throw_raises_a_clear_error():
    a = jnp.array([1.0, -2.0])
    failing = js.GradientDescent(quadratic, learning_rate=0.01, max_steps=3, throw=True)
    with pytest.raises(js.SolverError, match="GradientDescent did not converge: reached max_steps"):
        failing.run(jnp.zeros(2), a)
    with pytest.raises(Exception, match="GradientDescent did not converge: reached max_steps"):
        jax.jit(failing.run)(jnp.zeros(2), a).value.block_until_ready()
    with pytest.raises(Exception, match="GradientDescent did not converge"):
        jax.jit(jax.vmap(failing.run))(
            jnp.zeros((2, 2)), jnp.stack([a, 0 * a])
        ).value.block_until_ready()
    fine = js.GradientDescent(quadratic, learning_rate=0.5, tol=1e-5, throw=True)
    sol = jax.jit(fine.run)(jnp.zeros(2), a)
    np.testing.assert_allclose(sol.value, a, atol=1e-5)
    g = jax.jit(jax.grad(lambda a: fine.run(jnp.zeros(2), a).value.sum()))(a)
    np.testing.assert_allclose(g, [1.0, 1.0], rtol=1e-5)


def test_bad_adjoint_is_rejected():
    with pytest.raises(TypeError, match="adjoint"):
        js.GradientDescent(quadratic, learning_rate=0.1, adjoint="implicit").run(jnp.zeros(1), 1.0)


def test_solver_objective_closing_over_the_differentiated_value(x64):
    # The objective captures `lam` in a closure instead of receiving it as an argument.
    def hyper(lam):
        solver = js.Newton(
            lambda w: jax.grad(logistic_objective)(w, lam), linear_solve=js.solve_lu, tol=1e-12
        )
        return logistic_outer(solver.run(jnp.zeros(4)).value)

    np.testing.assert_allclose(jax.jit(jax.grad(hyper))(0.3), fd_logistic(0.3), rtol=1e-6)


def test_jit_equals_eager_and_vmap_equals_loop_for_newton():
    f = lambda x, a: x**3 + x - a
    solver = js.Newton(f, linear_solve=js.solve_lu, tol=1e-5)
    a = jnp.array([[1.0, 2.0], [10.0, -3.0], [0.5, 0.0]])
    eager = [solver.run(jnp.zeros(2), ai).value for ai in a]
    batched = jax.jit(jax.vmap(lambda ai: solver.run(jnp.zeros(2), ai).value))(a)
    np.testing.assert_allclose(batched, np.stack(eager), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(batched) ** 3 + np.asarray(batched), a, atol=1e-4)
    # d x*/d a = 1 / (3 x*^2 + 1), per element.
    g = jax.grad(lambda a: jnp.sum(jax.vmap(lambda ai: solver.run(jnp.zeros(2), ai).value)(a)))(a)
    np.testing.assert_allclose(g, 1.0 / (3 * np.asarray(batched) ** 2 + 1), rtol=1e-5)
