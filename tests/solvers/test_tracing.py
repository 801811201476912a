"""Tracing cost of implicit differentiation: how often user code is traced, what is kept alive,
and the conjugate-gradient solver against `jax.scipy.sparse.linalg.cg`.

The ridge problem `w*(lam) = argmin_w 0.5 ||X w - y||^2 + 0.5 lam ||w||^2` has the closed-form
hypergradient of `L(lam) = 0.5 ||w*(lam)||^2`: `dL/dlam = -w*^T (X^T X + lam I)^{-1} w*`.
"""

import dataclasses
import functools
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxpref.solvers as js

RNG = np.random.default_rng(7)
X = RNG.normal(size=(12, 3))
Y = RNG.normal(size=12)
LAM = 0.4


def np_ridge_hypergrad(lam):
    h = X.T @ X + lam * np.eye(3)
    w = np.linalg.solve(h, X.T @ Y)
    return -w @ np.linalg.solve(h, w)


class Counted:
    """A pure function that counts how many times its Python body runs (i.e. is traced)."""

    def __init__(self, fun):
        self.fun = fun
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.fun(*args)


def ridge(w, lam):
    r = jnp.asarray(X) @ w - jnp.asarray(Y)
    return 0.5 * jnp.sum(r**2) + 0.5 * lam * jnp.sum(w**2)


def ridge_map(w, lam):  # gradient step: fixed point = ridge solution
    return w - 0.02 * jax.grad(ridge)(w, lam)


def ridge_residual(w, lam):
    return jax.grad(ridge)(w, lam)


TIGHT_CG = functools.partial(js.solve_cg, tol=1e-12)
SOLVERS = {
    "gradient_descent": lambda f: js.GradientDescent(f, learning_rate=0.02, max_steps=3000),
    "optax_adam": lambda f: js.OptaxMinimiser(f, optax.adam(0.05), max_steps=3000, tol=1e-7),
    "lbfgs": lambda f: js.LBFGS(f, max_steps=100, tol=1e-9),
    "fixed_point": lambda f: js.FixedPointIteration(f, max_steps=3000, tol=1e-9),
    "anderson": lambda f: js.AndersonAcceleration(f, max_steps=300, tol=1e-9),
    "newton": lambda f: js.Newton(f, linear_solve=js.solve_lu, max_steps=20, tol=1e-10),
}
USER_FUN = {"fixed_point": ridge_map, "anderson": ridge_map, "newton": ridge_residual}
# L-BFGS's line search evaluates the objective alone: one more trace than the other solvers.
TRACES = {"lbfgs": 2}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_user_function_is_traced_once_per_implicit_solve(x64, name):
    fun = Counted(USER_FUN.get(name, ridge))
    solver = dataclasses.replace(SOLVERS[name](fun), adjoint=js.ImplicitAdjoint(TIGHT_CG))

    def loss(lam):
        return 0.5 * jnp.sum(solver.run(jnp.zeros(3), lam).value ** 2)

    hyper = jax.jit(jax.grad(loss))
    g = hyper(LAM)
    # init, every loop body, the optimality function and its linearisation share one trace.
    expected = TRACES.get(name, 1)
    assert fun.calls == expected
    hyper(LAM)
    assert fun.calls == expected  # cached executable: no re-trace
    np.testing.assert_allclose(g, np_ridge_hypergrad(LAM), rtol=1e-6)
    fun.calls = 0
    np.testing.assert_allclose(jax.grad(loss)(LAM), g, rtol=1e-10)  # eager grad: same
    assert fun.calls == expected


def test_unrolled_adjoint_still_traces_init_and_loop_body_separately(x64):
    fun = Counted(ridge)
    solver = js.GradientDescent(
        fun, learning_rate=0.02, max_steps=50, tol=0.0, adjoint=js.UnrolledAdjoint()
    )
    jax.jit(jax.grad(lambda lam: jnp.sum(solver.run(jnp.zeros(3), lam).value)))(LAM)
    assert fun.calls == 2  # `init` and the scan body: the unrolled path is unchanged


def test_custom_root_traces_solver_and_optimality_function_once(x64):
    optimality = Counted(ridge_residual)

    @js.custom_root(optimality, solve=TIGHT_CG)
    @Counted
    def solver(init, lam):
        del init
        a = jnp.asarray(X)
        return jnp.linalg.solve(a.T @ a + lam * jnp.eye(3), a.T @ jnp.asarray(Y))

    loss = jax.jit(jax.grad(lambda lam: 0.5 * jnp.sum(solver(jnp.zeros(3), lam) ** 2)))
    np.testing.assert_allclose(loss(LAM), np_ridge_hypergrad(LAM), rtol=1e-8)
    assert optimality.calls == 1
    assert solver.__wrapped__.calls == 1


def test_closed_over_differentiated_value_gets_gradient_through_an_iterative_solver(x64):
    def via_closure(lam):
        solver = js.GradientDescent(
            lambda w: ridge(w, lam),
            learning_rate=0.02,
            max_steps=3000,
            adjoint=js.ImplicitAdjoint(TIGHT_CG),
        )
        return 0.5 * jnp.sum(solver.run(jnp.zeros(3)).value ** 2)

    expected = np_ridge_hypergrad(LAM)
    np.testing.assert_allclose(jax.grad(via_closure)(LAM), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(via_closure))(LAM), expected, rtol=1e-6)
    lams = jnp.array([LAM, 2.0])
    np.testing.assert_allclose(
        jax.vmap(jax.grad(via_closure))(lams),
        [np_ridge_hypergrad(LAM), np_ridge_hypergrad(2.0)],
        rtol=1e-6,
    )


def _closure_over_large_array():
    data = jnp.ones((64, 3))

    def objective(w, lam):
        return 0.5 * jnp.sum((data @ w - 1.0) ** 2) + 0.5 * lam * jnp.sum(w**2)

    return objective


def _eager_implicit_solve():
    objective = _closure_over_large_array()
    solver = js.GradientDescent(objective, learning_rate=0.005, max_steps=20)
    jax.grad(lambda lam: jnp.sum(solver.run(jnp.zeros(3), lam).value))(LAM)
    return weakref.ref(objective)


def _eager_custom_root_call():
    optimality = jax.grad(_closure_over_large_array())
    solver = js.custom_root(optimality, solve=js.solve_lu)(
        lambda init, lam: jax.lax.fori_loop(
            0, 20, lambda _, w: w - 0.005 * optimality(w, lam), init
        )
    )
    jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(3), lam)))(LAM)
    return weakref.ref(optimality)


@pytest.mark.parametrize("call", [_eager_implicit_solve, _eager_custom_root_call])
def test_an_eager_implicit_solve_keeps_no_reference_to_the_user_functions(call):
    # The functions (and the arrays they close over) are freed once the caller drops them.
    ref = call()
    gc.collect()
    assert ref() is None


def _spd(n, rng, dtype):
    m = rng.normal(size=(n, n))
    return jnp.asarray((m @ m.T + n * np.eye(n)).astype(dtype))


@pytest.mark.parametrize("with_init", [False, True])
def test_solve_cg_matches_jax_scipy_cg_values_and_gradients(x64, with_init):
    rng = np.random.default_rng(0)
    a = _spd(20, rng, np.float64)
    b = jnp.asarray(rng.normal(size=20))
    init = jnp.asarray(rng.normal(size=20)) if with_init else None

    def ours(b):
        return js.solve_cg(lambda v: a @ v, b, init=init, tol=1e-8)

    def theirs(b):
        return jax.scipy.sparse.linalg.cg(lambda v: a @ v, b, x0=init, tol=1e-8)[0]

    np.testing.assert_allclose(ours(b), theirs(b), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jax.jit(ours)(b), ours(b), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours(b), np.linalg.solve(a, b), rtol=1e-6)

    def loss(f):
        return lambda b: jnp.sum(jnp.sin(f(b)))

    np.testing.assert_allclose(
        jax.grad(loss(ours))(b), jax.grad(loss(theirs))(b), rtol=1e-12, atol=1e-14
    )


def test_solve_cg_complex_hermitian_matches_jax_scipy_cg(x64):
    rng = np.random.default_rng(1)
    m = rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6))
    a = jnp.asarray(m @ m.conj().T + 6 * np.eye(6))
    b = jnp.asarray(rng.normal(size=6) + 1j * rng.normal(size=6))
    ours = js.solve_cg(lambda v: a @ v, b, tol=1e-10)
    theirs = jax.scipy.sparse.linalg.cg(lambda v: a @ v, b, tol=1e-10)[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours, np.linalg.solve(a, b), rtol=1e-8)


def test_solve_cg_respects_maxiter_like_jax_scipy_cg(x64):
    rng = np.random.default_rng(2)
    a = _spd(30, rng, np.float64)
    b = jnp.asarray(rng.normal(size=30))
    for maxiter in (1, 3):
        ours = js.solve_cg(lambda v: a @ v, b, tol=1e-14, maxiter=maxiter)
        theirs = jax.scipy.sparse.linalg.cg(lambda v: a @ v, b, tol=1e-14, maxiter=maxiter)[0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    # One step from zero is the steepest-descent step with exact line search.
    one = js.solve_cg(lambda v: a @ v, b, maxiter=1)
    alpha = (b @ b) / (b @ (a @ b))
    np.testing.assert_allclose(one, alpha * b, rtol=1e-12)


def test_solve_cg_rejects_an_initial_point_of_another_shape():
    with pytest.raises(ValueError, match=r"solve_cg.*init"):
        js.solve_cg(lambda v: 2.0 * v, jnp.ones(3), init=jnp.zeros(4))
