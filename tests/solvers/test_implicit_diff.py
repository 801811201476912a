"""custom_root / custom_fixed_point / root_vjp / root_jvp and the linear solvers.

The running example is the ridge-regression hypergradient (Blondel et al. 2022, Fig. 1):
`w*(lam) = argmin_w 0.5 ||X w - y||^2 + 0.5 lam ||w||^2 = (X^T X + lam I)^{-1} X^T y` and the outer
loss `L(lam) = 0.5 ||X_v w*(lam) - y_v||^2`, whose derivative has the closed form
`dL/dlam = -grad L(w*)^T (X^T X + lam I)^{-1} w*` (computed in numpy below).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpref.solvers as js

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 5))
Y = RNG.normal(size=20)
XV = RNG.normal(size=(10, 5))
YV = RNG.normal(size=10)
LAM = 0.7


def np_ridge(lam):
    return np.linalg.solve(X.T @ X + lam * np.eye(5), X.T @ Y)


def np_outer(lam):
    r = XV @ np_ridge(lam) - YV
    return 0.5 * r @ r


def np_hypergrad(lam):
    w = np_ridge(lam)
    g = XV.T @ (XV @ w - YV)
    return -g @ np.linalg.solve(X.T @ X + lam * np.eye(5), w)


def inner_objective(w, lam):
    r = jnp.asarray(X) @ w - jnp.asarray(Y)
    return 0.5 * jnp.sum(r**2) + 0.5 * lam * jnp.sum(w**2)


def ridge_optimality(w, lam):
    return jax.grad(inner_objective)(w, lam)


def outer_loss(w):
    r = jnp.asarray(XV) @ w - jnp.asarray(YV)
    return 0.5 * jnp.sum(r**2)


def closed_form_solver(init, lam):
    del init
    a = jnp.asarray(X)
    return jnp.linalg.solve(a.T @ a + lam * jnp.eye(5), a.T @ jnp.asarray(Y))


TIGHT = {
    "cg": functools.partial(js.solve_cg, tol=1e-12),
    "normal_cg": functools.partial(js.solve_normal_cg, tol=1e-12),
    "gmres": functools.partial(js.solve_gmres, tol=1e-12),
    "bicgstab": functools.partial(js.solve_bicgstab, tol=1e-12),
    "lu": js.solve_lu,
    "cholesky": js.solve_cholesky,
}


def test_central_finite_differences_match_closed_form():
    eps = 1e-5
    fd = (np_outer(LAM + eps) - np_outer(LAM - eps)) / (2 * eps)
    np.testing.assert_allclose(fd, np_hypergrad(LAM), rtol=1e-7)


@pytest.mark.parametrize("name", sorted(TIGHT))
def test_custom_root_ridge_hypergradient_every_linear_solver(x64, name):
    solver = js.custom_root(ridge_optimality, solve=TIGHT[name])(closed_form_solver)
    hyper = jax.jit(jax.grad(lambda lam: outer_loss(solver(jnp.zeros(5), lam))))(LAM)
    np.testing.assert_allclose(hyper, np_hypergrad(LAM), rtol=1e-8)


def test_custom_root_matches_jaxopt_oracle(x64, jaxopt):
    def hyper(decorator):
        solver = decorator(ridge_optimality, solve=TIGHT["normal_cg"])(closed_form_solver)
        return jax.jit(jax.grad(lambda lam: outer_loss(solver(jnp.zeros(5), lam))))(LAM)

    ours = hyper(js.custom_root)
    theirs = hyper(
        lambda f, solve: jaxopt.implicit_diff.custom_root(
            f, solve=functools.partial(jaxopt.linear_solve.solve_normal_cg, tol=1e-12)
        )
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)


def test_ridge_gradient_descent_implicit_vs_unrolled_vs_closed_form_vs_jaxopt(x64, jaxopt):
    lr = 1.0 / (np.linalg.eigvalsh(X.T @ X).max() + LAM)

    def hyper(adjoint):
        gd = js.GradientDescent(
            inner_objective, learning_rate=lr, max_steps=3000, tol=1e-10, adjoint=adjoint
        )

        def total(lam):
            sol = gd.run(jnp.zeros(5), lam)
            return outer_loss(sol.value), sol

        return jax.grad(total, has_aux=True)

    theirs_gd = jaxopt.GradientDescent(
        inner_objective,
        stepsize=lr,
        maxiter=3000,
        tol=1e-10,
        acceleration=False,
        implicit_diff=True,
    )

    @jax.jit
    def compute(lam):
        implicit = hyper(js.ImplicitAdjoint(solve=TIGHT["cg"]))(lam)
        unrolled = hyper(js.UnrolledAdjoint())(lam)
        theirs = jax.grad(lambda lam: outer_loss(theirs_gd.run(jnp.zeros(5), lam).params))(lam)
        return implicit, unrolled, theirs

    (implicit, sol_i), (unrolled, sol_u), theirs = compute(LAM)
    assert int(sol_i.result) == js.Status.CONVERGED
    assert int(sol_u.result) == js.Status.CONVERGED
    assert int(sol_i.stats.num_steps) == int(sol_u.stats.num_steps)
    np.testing.assert_allclose(sol_i.value, np_ridge(LAM), rtol=1e-8)
    np.testing.assert_allclose(sol_u.value, sol_i.value, rtol=1e-12)
    np.testing.assert_allclose(implicit, np_hypergrad(LAM), rtol=1e-7)
    np.testing.assert_allclose(unrolled, np_hypergrad(LAM), rtol=1e-7)
    np.testing.assert_allclose(implicit, theirs, rtol=1e-7)


def test_root_vjp_and_root_jvp_match_closed_form(x64):
    w = jnp.asarray(np_ridge(LAM))
    ct = jax.grad(outer_loss)(w)
    (vjp,) = js.root_vjp(ridge_optimality, w, (LAM,), ct, solve=js.solve_lu)
    np.testing.assert_allclose(vjp, np_hypergrad(LAM), rtol=1e-10)
    tangent = js.root_jvp(ridge_optimality, w, (LAM,), (1.0,), solve=js.solve_lu)
    expected = -np.linalg.solve(X.T @ X + LAM * np.eye(5), np.asarray(w))
    np.testing.assert_allclose(tangent, expected, rtol=1e-10)
    with pytest.raises(ValueError, match="root_jvp"):
        js.root_jvp(ridge_optimality, w, (LAM,), (), solve=js.solve_lu)


def test_pytree_arguments_and_keywords_receive_gradients(x64):
    def optimality(w, params):
        return ridge_optimality(w, params["lam"] * params["scale"][0])

    def solver(init, params):
        return closed_form_solver(init, params["lam"] * params["scale"][0])

    wrapped = js.custom_root(optimality, solve=js.solve_lu)(solver)
    params = {"lam": jnp.array(0.35), "scale": jnp.array([2.0])}
    g_pos = jax.grad(lambda p: outer_loss(wrapped(jnp.zeros(5), p)))(params)
    g_kw = jax.grad(lambda p: outer_loss(wrapped(jnp.zeros(5), params=p)))(params)
    # d/d lam = 2 * h, d/d scale = 0.35 * h, h = dL/d(effective lam) at 0.7.
    np.testing.assert_allclose(g_pos["lam"], 2.0 * np_hypergrad(LAM), rtol=1e-10)
    np.testing.assert_allclose(g_pos["scale"], [0.35 * np_hypergrad(LAM)], rtol=1e-10)
    np.testing.assert_allclose(g_kw["lam"], g_pos["lam"], rtol=1e-12)


def test_keyword_arguments_that_cannot_be_placed_are_rejected():
    def optimality(x, *args, **kwargs):
        return x

    wrapped = js.custom_root(optimality)(lambda x0, *args, **kwargs: x0)
    with pytest.raises(TypeError, match="do not correspond to positional parameters"):
        wrapped(jnp.zeros(2), scale=1.0)
    with pytest.raises(TypeError, match="initial point"):
        js.custom_root(lambda *a: a[0])(lambda *a: a[0])()


def test_closure_captured_parameter_gets_the_same_gradient_as_an_explicit_one(x64):
    def via_closure(lam):
        solver = js.custom_root(lambda w, _: ridge_optimality(w, lam), solve=js.solve_lu)(
            lambda init, _: closed_form_solver(init, lam)
        )
        return outer_loss(solver(jnp.zeros(5), 0.0))

    np.testing.assert_allclose(jax.grad(via_closure)(LAM), np_hypergrad(LAM), rtol=1e-10)
    np.testing.assert_allclose(jax.jit(jax.grad(via_closure))(LAM), np_hypergrad(LAM), rtol=1e-10)


def test_has_aux_passes_aux_through_without_gradient(x64):
    def solver(init, lam):
        w = closed_form_solver(init, lam)
        return w, {"norm": jnp.sum(w**2), "count": jnp.int32(3)}

    wrapped = js.custom_root(ridge_optimality, solve=js.solve_lu, has_aux=True)(solver)
    _, aux = wrapped(jnp.zeros(5), LAM)
    np.testing.assert_allclose(aux["norm"], np.sum(np_ridge(LAM) ** 2), rtol=1e-12)
    assert int(aux["count"]) == 3
    g = jax.grad(lambda lam: outer_loss(wrapped(jnp.zeros(5), lam)[0]))(LAM)
    np.testing.assert_allclose(g, np_hypergrad(LAM), rtol=1e-10)
    # The aux output is treated as a constant: it contributes no gradient.
    g_aux = jax.grad(lambda lam: wrapped(jnp.zeros(5), lam)[1]["norm"])(LAM)
    assert float(g_aux) == 0.0


def test_custom_fixed_point_scalar_and_jit_equals_eager(x64):
    fp = lambda x, a, b: 0.5 * jnp.tanh(x) + a * b  # contraction, solution depends on a * b

    @js.custom_fixed_point(fp, solve=js.solve_lu)
    def solve(x0, a, b):
        return jax.lax.fori_loop(0, 200, lambda _, x: fp(x, a, b), x0)

    def loss(a, b):
        return solve(jnp.zeros(3), a, b).sum()

    a, b = jnp.array([0.1, 0.4, -0.3]), jnp.array(1.5)
    x = solve(jnp.zeros(3), a, b)
    # Implicit derivative of x = 0.5 tanh(x) + a b: dx/da = b / (1 - 0.5 (1 - tanh(x)^2)).
    denom = 1.0 - 0.5 * (1.0 - np.tanh(np.asarray(x)) ** 2)
    ga, gb = jax.grad(loss, argnums=(0, 1))(a, b)
    np.testing.assert_allclose(ga, 1.5 / denom, rtol=1e-10)
    np.testing.assert_allclose(gb, np.sum(np.asarray(a) / denom), rtol=1e-10)
    ga_jit, gb_jit = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    np.testing.assert_allclose(ga_jit, ga, rtol=1e-12)
    np.testing.assert_allclose(gb_jit, gb, rtol=1e-12)


def test_vmap_over_instances_and_grad_of_vmap(x64):
    solver = js.custom_root(ridge_optimality, solve=TIGHT["cg"])(closed_form_solver)
    lams = jnp.array([0.1, 0.7, 3.0])

    def batch_loss(lams):
        ws = jax.vmap(solver, in_axes=(None, 0))(jnp.zeros(5), lams)
        return jnp.sum(jax.vmap(outer_loss)(ws))

    expected = [np_hypergrad(float(lam)) for lam in lams]
    grad_of_vmap, vmap_of_grad = jax.jit(
        lambda lams: (
            jax.grad(batch_loss)(lams),
            jax.vmap(jax.grad(lambda lam: outer_loss(solver(jnp.zeros(5), lam))))(lams),
        )
    )(lams)
    np.testing.assert_allclose(grad_of_vmap, expected, rtol=1e-8)
    np.testing.assert_allclose(vmap_of_grad, expected, rtol=1e-8)
    # Eager (no jit) gives the same.
    np.testing.assert_allclose(jax.grad(batch_loss)(lams), expected, rtol=1e-8)


@pytest.mark.parametrize("name", sorted(TIGHT))
def test_linear_solvers_solve_pytree_systems(x64, name):
    rng = np.random.default_rng(1)
    m = rng.normal(size=(4, 4))
    a = m @ m.T + 4.0 * np.eye(4)  # symmetric positive definite (valid for every solver)
    b = {"u": jnp.asarray(rng.normal(size=2)), "v": jnp.asarray(rng.normal(size=2))}

    def matvec(t):
        flat = jnp.asarray(a) @ jnp.concatenate([t["u"], t["v"]])
        return {"u": flat[:2], "v": flat[2:]}

    x = TIGHT[name](matvec, b, ridge=0.5)
    b_flat = np.concatenate([b["u"], b["v"]])
    if name == "normal_cg":  # the ridge term regularises the normal equations A^T A x = A^T b
        expected = np.linalg.solve(a.T @ a + 0.5 * np.eye(4), a.T @ b_flat)
    else:
        expected = np.linalg.solve(a + 0.5 * np.eye(4), b_flat)
    np.testing.assert_allclose(np.concatenate([x["u"], x["v"]]), expected, rtol=1e-9)
