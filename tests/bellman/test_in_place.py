"""The in-place loops of `time_major(fn)` (`unroll=1`) vs the stacked scan, rlax, NumPy, autodiff.

`unroll=2` forces the stacked `lax.scan` core, so comparing `unroll=1` with it isolates the
in-place loop and its custom JVP (same step arithmetic, different loop and derivative rules).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from jax.test_util import check_grads

import jaxpref.bellman as jb
from jaxpref.bellman import _recursions
from tests.bellman._reference import np_discounted_returns, np_gae, np_lambda_returns

T, B = 37, 3  # T is not a multiple of anything in particular

lambda_returns_tm = jb.time_major(jb.lambda_returns)
gae_tm = jb.time_major(jb.truncated_generalized_advantage_estimation)
discounted_returns_tm = jb.time_major(jb.discounted_returns)


def _rollout(rng, shape, *, end_rate=0.15, dtype=np.float32):
    r = rng.normal(size=shape)
    d = np.where(rng.random(shape) < end_rate, 0.0, 0.97)
    v = rng.normal(size=shape)
    lam = rng.uniform(0.0, 1.0, size=shape)
    lam[rng.random(shape) < 0.1] = 0.0  # zero traces cut the recursion like episode ends
    values = rng.normal(size=(shape[0] + 1, *shape[1:]))
    return tuple(x.astype(dtype) for x in (r, d, v, lam, values))


def _columns(fn, *arrays):
    """Applies a float64 NumPy reference to each batch column; scalars are passed through."""
    out = []
    for b in range(B):
        out.append(fn(*(a[:, b] if np.ndim(a) == 2 else a for a in arrays)))
    return np.stack(out, axis=1)


def _cases(r, d, v, lam, values):
    """(in-place result, stacked-scan result, float64 reference) for each time-major function."""
    cases = {}
    for name, lam_ in (("scalar", 0.9), ("per_step", lam)):
        cases[f"lambda_returns/{name}"] = (
            lambda_returns_tm(r, d, v, lam_),
            lambda_returns_tm(r, d, v, lam_, unroll=2),
            _columns(np_lambda_returns, r, d, v, lam_),
        )
        cases[f"gae/{name}"] = (
            gae_tm(r, d, lam_, values),
            gae_tm(r, d, lam_, values, unroll=2),
            _columns(np_gae, r, d, lam_, values),
        )
    boot = values[-1]
    cases["discounted_returns"] = (
        discounted_returns_tm(r, d, boot),
        discounted_returns_tm(r, d, boot, unroll=2),
        np.stack([np_discounted_returns(r[:, b], d[:, b], boot[b]) for b in range(B)], axis=1),
    )
    return cases


def test_in_place_equals_scan_and_float64_reference():
    rng = np.random.default_rng(0)
    for name, (ours, scan, ref) in _cases(*_rollout(rng, (T, B))).items():
        assert ours.shape == (T, B) and ours.dtype == jnp.float32, name
        np.testing.assert_allclose(ours, scan, atol=1e-6, rtol=0, err_msg=name)
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5, err_msg=name)


def test_in_place_equals_rlax():
    rng = np.random.default_rng(1)
    r, d, v, lam, values = _rollout(rng, (T, B))
    vm = lambda f: jax.vmap(f, in_axes=1, out_axes=1)
    np.testing.assert_allclose(
        lambda_returns_tm(r, d, v, lam),
        vm(rlax.lambda_returns)(r, d, v, lam),
        atol=1e-6,
        rtol=0,
    )
    np.testing.assert_allclose(
        gae_tm(r, d, 0.95, values),
        vm(lambda r, d, v: rlax.truncated_generalized_advantage_estimation(r, d, 0.95, v))(
            r, d, values
        ),
        atol=1e-6,
        rtol=0,
    )
    np.testing.assert_allclose(
        discounted_returns_tm(r, d, v),
        vm(rlax.discounted_returns)(r, d, v),
        atol=1e-6,
        rtol=0,
    )


def test_episode_ends_cut_the_recursion():
    """Zero discounts everywhere: every step is its own episode (one-step targets / TD errors)."""
    rng = np.random.default_rng(2)
    r, _, v, _, values = _rollout(rng, (T, B))
    d = np.zeros_like(r)
    np.testing.assert_array_equal(lambda_returns_tm(r, d, v, 0.7), r)
    np.testing.assert_array_equal(discounted_returns_tm(r, d, v), r)
    adv = gae_tm(r, d, 0.7, values)
    np.testing.assert_allclose(adv, r - values[:-1], atol=1e-6)


def test_single_step_and_inputs_untouched():
    rng = np.random.default_rng(3)
    r, d, v, _, values = _rollout(rng, (1, B))
    g = lambda_returns_tm(r, d, v, 0.5)
    np.testing.assert_allclose(g, r + d * v, atol=1e-6)  # G_0 bootstraps fully from v_0
    a = gae_tm(r, d, 0.5, values)
    np.testing.assert_allclose(a, r + d * values[1:] - values[:-1], atol=1e-6)
    # the loop overwrites its own copy: the caller's arrays keep their values
    r, d, v, _, values = (jnp.asarray(x) for x in _rollout(rng, (T, B)))
    r_before = np.array(r)
    jax.block_until_ready(jax.jit(discounted_returns_tm)(r, d, v))
    jax.block_until_ready(lambda_returns_tm(r, d, v, 0.9))
    np.testing.assert_array_equal(r, r_before)


def test_jit_equals_eager_and_vmap_equals_loop():
    rng = np.random.default_rng(4)
    batch = [_rollout(rng, (T, B)) for _ in range(3)]
    r, d, v, lam, values = (np.stack(x) for x in zip(*batch, strict=True))

    def f(r, d, v, lam, values):
        return (
            lambda_returns_tm(r, d, v, lam),
            gae_tm(r, d, lam, values),
        )

    eager = [f(*x) for x in batch]
    jitted = [jax.jit(f)(*x) for x in batch]
    mapped = jax.vmap(f)(r, d, v, lam, values)
    for i in range(3):
        for k in range(2):
            np.testing.assert_allclose(jitted[i][k], eager[i][k], atol=1e-6, rtol=0)
            np.testing.assert_allclose(mapped[k][i], eager[i][k], atol=1e-6, rtol=0)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        r, d, v, lam, values = (jnp.asarray(x) for x in _rollout(rng, (6, 2), dtype=np.float64))
        w = jnp.asarray(rng.normal(size=(6, 2)))
        lam0 = jnp.float64(0.8)

        def returns(r, d, v, lam):
            return jnp.sum(w * lambda_returns_tm(r, d, v, lam))

        def advantages(r, d, lam, values):
            a = gae_tm(r, d, lam, values)
            return jnp.sum(w * a)

        def discounted(r, d, boot):
            return jnp.sum(w * discounted_returns_tm(r, d, boot))

        # second order once (the JVP rule is itself differentiable), first order elsewhere
        check_grads(jax.jit(returns), (r, d, v, lam), order=2, modes=("fwd", "rev"))
        check_grads(jax.jit(returns), (r, d, v, lam0), order=1, modes=("fwd", "rev"))
        check_grads(jax.jit(advantages), (r, d, lam0, values), order=1, modes=("fwd", "rev"))
        check_grads(jax.jit(advantages), (r, d, lam, values), order=1, modes=("rev",))
        check_grads(jax.jit(discounted), (r, d, values[-1]), order=1, modes=("fwd", "rev"))


def test_gradients_equal_scan_gradients():
    rng = np.random.default_rng(6)
    r, d, v, lam, values = _rollout(rng, (T, B))
    w = rng.normal(size=(T, B)).astype(np.float32)

    def loss(unroll):
        def f(r, d, v, lam, values):
            g = lambda_returns_tm(r, d, v, lam, unroll=unroll)
            a = gae_tm(r, d, 0.9, values, unroll=unroll)
            return jnp.sum(w * g) + jnp.sum(a * a)

        return jax.grad(f, argnums=(0, 1, 2, 3, 4))(r, d, v, lam, values)

    for ours, scan in zip(jax.jit(lambda: loss(1))(), jax.jit(lambda: loss(2))(), strict=True):
        np.testing.assert_allclose(ours, scan, atol=1e-4, rtol=1e-5)
    # forward mode agrees with reverse mode
    tangent = rng.normal(size=(T, B)).astype(np.float32)
    _, jvp = jax.jvp(lambda r: lambda_returns_tm(r, d, v, lam), (r,), (tangent,))
    _, vjp = jax.vjp(lambda r: lambda_returns_tm(r, d, v, lam), r)
    np.testing.assert_allclose(jnp.sum(jvp * w), jnp.sum(vjp(w)[0] * tangent), rtol=1e-5)


def test_stop_target_gradients_in_place():
    rng = np.random.default_rng(7)
    r, d, v, _, values = _rollout(rng, (T, B))
    grad = jax.grad(lambda v: lambda_returns_tm(r, d, v, 0.9, True).sum())(v)
    np.testing.assert_array_equal(grad, np.zeros_like(v))
    grad = jax.grad(lambda x: gae_tm(r, d, 0.9, x, stop_target_gradients=True).sum())(values)
    np.testing.assert_array_equal(grad, np.zeros_like(values))


def test_split_per_step_keeps_order():
    a, b = jnp.zeros((4, 2)), jnp.ones((4, 2))
    s = jnp.float32(0.5)
    rows, consts = _recursions.split_per_step((a, b, s))
    assert len(rows) == 2 and len(consts) == 1 and consts[0] is s
    rows, consts = _recursions.split_per_step((a, s, b))  # a scalar before an array stays a row
    assert len(rows) == 3 and consts == ()


@pytest.mark.parametrize("unroll", [1, 2])
def test_no_retrace(unroll):
    rng = np.random.default_rng(8)
    r, d, _, _, values = _rollout(rng, (T, B))
    traces = []

    @jax.jit
    def f(r, d, values):
        traces.append(1)
        return gae_tm(r, d, 0.9, values, unroll=unroll)

    f(r, d, values)
    f(r + 1.0, d, values)
    assert len(traces) == 1


def test_unroll_one_takes_the_in_place_path():
    """Guards the fast path: `unroll=1` builds the in-place loop, `unroll=2` the stacked scan."""
    z = jnp.zeros((T, B))
    values = jnp.zeros((T + 1, B))

    def primitives(unroll):
        jaxpr = jax.make_jaxpr(lambda r: gae_tm(r, z, 0.9, values, unroll=unroll))(z)
        return {str(eqn.primitive) for eqn in jaxpr.eqns}

    assert "custom_jvp_call" in primitives(1) and "scan" not in primitives(1)
    assert "scan" in primitives(2) and "custom_jvp_call" not in primitives(2)
