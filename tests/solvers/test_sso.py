"""Target-based surrogate optimisation (formulas.md section 10) and the bilevel helper."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxpref.solvers as js

RNG = np.random.default_rng(7)
X = RNG.normal(size=(12, 3))
Y = RNG.normal(size=12)
LABELS = np.sign(RNG.normal(size=12)).astype(np.float32)  # exact in either precision


def logistic_target_loss(z, *_):
    return jnp.sum(jax.nn.softplus(-jnp.asarray(LABELS) * z))


def test_surrogate_matches_loss_to_first_order_and_upper_bounds_it(x64):
    z_t = jnp.asarray(RNG.normal(size=12))
    value_t, grad_t = jax.value_and_grad(logistic_target_loss)(z_t)
    eta = 4.0  # the logistic loss is 1/4-smooth in each target
    surrogate = lambda z: js.target_surrogate(z, z_t, grad_t, eta=eta, value_t=value_t)
    np.testing.assert_allclose(surrogate(z_t), value_t, rtol=1e-12)
    np.testing.assert_allclose(jax.grad(surrogate)(z_t), grad_t, rtol=1e-12)
    for _ in range(20):
        z = z_t + jnp.asarray(RNG.normal(size=12) * 3.0)
        assert float(surrogate(z)) >= float(logistic_target_loss(z)) - 1e-12
    # The surrogate's minimiser in target space is the gradient step z_t - eta grad_t.
    z_star = z_t - eta * grad_t
    np.testing.assert_allclose(jax.grad(surrogate)(z_star), np.zeros(12), atol=1e-12)
    # Targets and target gradients are constants: no gradient flows into them.
    g_anchor = jax.grad(lambda zt: js.target_surrogate(z_star, zt, grad_t, eta=eta))(z_t)
    np.testing.assert_allclose(g_anchor, np.zeros(12))


def test_one_step_is_the_projection_of_the_target_space_gradient_step(x64):
    model = lambda theta, *_: jnp.asarray(X) @ theta
    eta = 0.5
    sso = js.SSO(
        model,
        logistic_target_loss,
        eta=eta,
        inner_optimizer=optax.sgd(0.05),
        inner_steps=2000,
        max_steps=1,
    )
    theta0 = jnp.asarray(RNG.normal(size=3))
    theta1, state1 = jax.jit(sso.step)(theta0, sso.init(theta0))
    z_t = X @ np.asarray(theta0)
    g_t = -LABELS / (1.0 + np.exp(LABELS * z_t))  # d/dz softplus(-y z)
    expected = np.linalg.lstsq(X, z_t - eta * g_t, rcond=None)[0]
    np.testing.assert_allclose(theta1, expected, rtol=1e-8)
    assert int(state1.num_steps) == 1
    np.testing.assert_allclose(state1.value, logistic_target_loss(X @ expected), rtol=1e-8)


def test_identity_model_with_one_inner_step_is_gradient_descent(x64):
    eta = 0.3
    sso = js.SSO(
        lambda theta: theta,
        logistic_target_loss,
        eta=eta,
        inner_optimizer=optax.sgd(eta),
        inner_steps=1,
        max_steps=7,
        tol=0.0,
    )
    gd = js.GradientDescent(logistic_target_loss, learning_rate=eta, max_steps=7, tol=0.0)
    z0 = jnp.zeros(12)
    a, b = jax.jit(lambda z: (sso.run(z).value, gd.run(z).value))(z0)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_full_batch_sso_decreases_the_loss_monotonically():
    features = jnp.asarray(X, dtype=jnp.float32)
    model = lambda theta: jnp.tanh(features @ theta["w"]) * theta["s"]
    sso = js.SSO(
        model, logistic_target_loss, eta=4.0, inner_optimizer=optax.sgd(0.02), inner_steps=5
    )
    theta = {"w": jnp.zeros(3) + 0.1, "s": jnp.array(1.0)}
    state = sso.init(theta)
    step = jax.jit(sso.step)
    values = [float(state.value)]
    for _ in range(15):
        theta, state = step(theta, state)
        values.append(float(state.value))
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(values)), values
    assert values[-1] < values[0] - 0.1


def test_sso_solution_is_implicitly_differentiable(x64):
    # min_theta 0.5 ||X theta - y||^2: theta* = (X^T X)^{-1} X^T y,
    # d(w . theta*)/dy = X (X^T X)^{-1} w.
    w = np.array([1.0, -1.0, 2.0])
    sso = js.SSO(
        lambda theta, y: jnp.asarray(X) @ theta,
        lambda z, y: 0.5 * jnp.sum((z - y) ** 2),
        eta=1.0,
        inner_optimizer=optax.sgd(0.04),
        inner_steps=20,
        max_steps=2000,
        tol=1e-10,
        adjoint=js.ImplicitAdjoint(solve=js.solve_cholesky),
    )

    @jax.jit
    def compute(y):
        sol = sso.run(jnp.zeros(3), y)
        return sol, jax.grad(lambda y: jnp.asarray(w) @ sso.run(jnp.zeros(3), y).value)(y)

    sol, g = compute(jnp.asarray(Y))
    assert int(sol.result) == js.Status.CONVERGED
    np.testing.assert_allclose(sol.value, np.linalg.lstsq(X, Y, rcond=None)[0], rtol=1e-8)
    np.testing.assert_allclose(g, X @ np.linalg.solve(X.T @ X, w), rtol=1e-8)


def test_hypergradient_helper_on_ridge(x64):
    # x*(lam) = (X^T X + lam I)^{-1} X^T y; outer L = 0.5 ||x* - 1||^2 + 0.1 lam^2.
    def inner(x, lam):
        return 0.5 * jnp.sum((jnp.asarray(X) @ x - jnp.asarray(Y)) ** 2) + 0.5 * lam * jnp.sum(x**2)

    def outer(x, lam):
        value = 0.5 * jnp.sum((x - 1.0) ** 2) + 0.1 * lam**2
        return value, {"x_norm": jnp.sum(x**2)}

    lam = 0.8
    solver = js.LBFGS(inner, tol=1e-10, adjoint=js.ImplicitAdjoint(solve=js.solve_cholesky))
    hg = jax.jit(lambda lam: js.hypergradient(outer, solver, lam, jnp.zeros(3), has_aux=True))(lam)
    h = X.T @ X + lam * np.eye(3)
    x = np.linalg.solve(h, X.T @ Y)
    expected = -(x - 1.0) @ np.linalg.solve(h, x) + 0.2 * lam
    np.testing.assert_allclose(hg.value, 0.5 * np.sum((x - 1.0) ** 2) + 0.1 * lam**2, rtol=1e-9)
    np.testing.assert_allclose(hg.grad, expected, rtol=1e-8)
    np.testing.assert_allclose(hg.solution.value, x, rtol=1e-8)
    np.testing.assert_allclose(hg.aux["x_norm"], np.sum(x**2), rtol=1e-8)
    assert int(hg.solution.result) == js.Status.CONVERGED
