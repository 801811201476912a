"""Layout transforms `time_major(fn)` and `batch_major(fn)`: vmap, rlax, masked == filtered."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

import jaxpref.bellman as jb
from tests.bellman._reference import np_discounted_returns, np_gae, np_lambda_returns, np_n_step

T, B = 9, 4

lambda_returns_tm = jb.time_major(jb.lambda_returns)
gae_tm = jb.time_major(jb.truncated_generalized_advantage_estimation)
discounted_returns_tm = jb.time_major(jb.discounted_returns)
n_step_tm = jb.time_major(jb.n_step_bootstrapped_returns)
lambda_returns_bm = jb.batch_major(jb.lambda_returns)
gae_bm = jb.batch_major(jb.truncated_generalized_advantage_estimation)
discounted_returns_bm = jb.batch_major(jb.discounted_returns)
n_step_bm = jb.batch_major(jb.n_step_bootstrapped_returns)


def _rollout(rng, shape):
    r = rng.normal(size=shape).astype(np.float32)
    d = np.where(rng.random(shape) < 0.15, 0.0, 0.95).astype(np.float32)
    v = rng.normal(size=shape).astype(np.float32)
    lam = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    return r, d, v, lam


# ---------------------------------------------------------------- time-major


def test_time_major_equals_vmapped_single_and_rlax():
    rng = np.random.default_rng(0)
    r, d, v, lam = _rollout(rng, (T, B))
    values = rng.normal(size=(T + 1, B)).astype(np.float32)
    vm = lambda f, **kw: jax.vmap(f, in_axes=1, out_axes=1, **kw)
    cases = [
        (
            lambda_returns_tm(r, d, v, lam),
            vm(jb.lambda_returns)(r, d, v, lam),
            vm(rlax.lambda_returns)(r, d, v, lam),
        ),
        (
            lambda_returns_tm(r, d, v, 0.9, unroll=4),
            vm(lambda r, d, v: jb.lambda_returns(r, d, v, 0.9))(r, d, v),
            vm(lambda r, d, v: rlax.lambda_returns(r, d, v, 0.9))(r, d, v),
        ),
        (
            gae_tm(r, d, lam, values),
            vm(jb.truncated_generalized_advantage_estimation)(r, d, lam, values),
            vm(rlax.truncated_generalized_advantage_estimation)(r, d, lam, values),
        ),
        (
            discounted_returns_tm(r, d, v),
            vm(jb.discounted_returns)(r, d, v),
            vm(rlax.discounted_returns)(r, d, v),
        ),
        (
            n_step_tm(r, d, v, 3, lam),
            vm(lambda r, d, v, lam: jb.n_step_bootstrapped_returns(r, d, v, 3, lam))(r, d, v, lam),
            vm(lambda r, d, v, lam: rlax.n_step_bootstrapped_returns(r, d, v, 3, lam))(
                r, d, v, lam
            ),
        ),
    ]
    for ours, single, theirs in cases:
        np.testing.assert_allclose(ours, single, atol=1e-6, rtol=0)
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_time_major_bootstrap_vector():
    rng = np.random.default_rng(1)
    r, d, _, _ = _rollout(rng, (T, B))
    boot = rng.normal(size=B).astype(np.float32)
    out = discounted_returns_tm(r, d, boot)
    for b in range(B):
        np.testing.assert_allclose(
            out[:, b], np_discounted_returns(r[:, b], d[:, b], boot[b]), atol=1e-5
        )


def test_time_major_no_retrace_and_jit():
    rng = np.random.default_rng(2)
    r, d, _, _ = _rollout(rng, (T, B))
    values = rng.normal(size=(T + 1, B)).astype(np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def gae(r, d, values):
        return gae_tm(r, d, 0.95, values)

    out = gae(r, d, values)
    np.testing.assert_allclose(out, gae_tm(r, d, 0.95, values), atol=1e-6)
    gae(r + 1.0, d, values)
    chex.clear_trace_counter()


def test_time_major_errors():
    z = jnp.zeros((T, B))
    with pytest.raises(
        ValueError, match=r"`discount_t` must be a scalar or have the shape of `r_t`"
    ):
        lambda_returns_tm(z, jnp.zeros((T - 1, B)), z)
    with pytest.raises(ValueError, match=r"`values` must have shape \(10, 4\)"):
        gae_tm(z, z, 0.9, z)
    with pytest.raises(ValueError, match=r"`r_t` must have rank 2"):
        lambda_returns_tm(jnp.zeros(T), jnp.zeros(T), jnp.zeros(T))


# ---------------------------------------------------------------- batch-major with a mask


def _masks():
    m = np.ones((5, T), np.float32)
    m[1, 6:] = 0  # right padding
    m[2, :3] = 0  # left padding
    m[3, [1, 4, 5]] = 0  # gaps in the middle
    m[4] = 0  # fully masked row
    return m


def _filtered(fn, mask, *rows_and_extra):
    """Applies `fn` to each row compacted to its valid steps and scatters back (0 elsewhere)."""
    out = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        keep = mask[b] != 0
        if keep.any():
            out[b, keep] = fn(b, keep)
    return out


def test_lambda_returns_masked_equals_filtered():
    rng = np.random.default_rng(3)
    mask = _masks()
    r, d, v, lam = _rollout(rng, mask.shape)
    out = lambda_returns_bm(r, d, v, lam, mask=mask)
    ref = _filtered(lambda b, k: np_lambda_returns(r[b, k], d[b, k], v[b, k], lam[b, k]), mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # all valid: rows == single-trajectory function
    full = lambda_returns_bm(r, d, v, 0.9, mask=np.ones_like(mask))
    np.testing.assert_allclose(
        full, jax.vmap(lambda *a: jb.lambda_returns(*a, 0.9))(r, d, v), atol=1e-6
    )


def test_gae_masked_equals_filtered():
    rng = np.random.default_rng(4)
    mask = _masks()
    r, d, _, lam = _rollout(rng, mask.shape)
    values = rng.normal(size=(mask.shape[0], T + 1)).astype(np.float32)
    out = gae_bm(r, d, lam, values, mask=mask)

    def row(b, keep):
        vals = np.concatenate([values[b, :T][keep], values[b, T:]])
        return np_gae(r[b, keep], d[b, keep], lam[b, keep], vals)

    np.testing.assert_allclose(out, _filtered(row, mask), atol=1e-5)
    full = gae_bm(r, d, 0.95, values, mask=np.ones_like(mask))
    np.testing.assert_allclose(
        full,
        jax.vmap(lambda r, d, v: rlax.truncated_generalized_advantage_estimation(r, d, 0.95, v))(
            r, d, values
        ),
        atol=1e-6,
    )


def test_discounted_returns_masked_equals_filtered():
    rng = np.random.default_rng(5)
    mask = _masks()
    r, d, _, _ = _rollout(rng, mask.shape)
    boot = rng.normal(size=mask.shape[0]).astype(np.float32)
    out = discounted_returns_bm(r, d, boot, mask=mask)
    ref = _filtered(lambda b, k: np_discounted_returns(r[b, k], d[b, k], boot[b]), mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    scalar = discounted_returns_bm(r, 0.5, 0.0, mask=mask)
    ref = _filtered(lambda b, k: np_discounted_returns(r[b, k], np.full(k.sum(), 0.5), 0.0), mask)
    np.testing.assert_allclose(scalar, ref, atol=1e-5)


def test_masked_garbage_and_gradients():
    """NaN at masked steps reaches neither outputs nor gradients; fully masked rows are 0."""
    rng = np.random.default_rng(6)
    mask = _masks()
    r, d, v, _ = _rollout(rng, mask.shape)
    values = rng.normal(size=(mask.shape[0], T + 1)).astype(np.float32)
    r_bad = np.where(mask != 0, r, np.nan).astype(np.float32)
    v_bad = np.where(mask != 0, v, np.nan).astype(np.float32)
    vals_bad = values.copy()
    vals_bad[:, :T] = np.where(mask != 0, values[:, :T], np.nan)

    def loss(r, v, vals):
        g = lambda_returns_bm(r, d, v, 0.8, mask=mask)
        a = gae_bm(r, d, 0.8, vals, mask=mask)
        return jnp.sum(g) + jnp.sum(a * a), (g, a)

    (value, (g, a)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        r_bad, v_bad, vals_bad
    )
    (clean, _), _ = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(r, v, values)
    assert np.isfinite(value) and value == pytest.approx(float(clean), rel=1e-6)
    for grad in grads:
        assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grads[0][mask == 0], 0.0)
    np.testing.assert_array_equal(g[4], 0.0)
    np.testing.assert_array_equal(a[4], 0.0)


def test_batch_major_jit_no_retrace():
    rng = np.random.default_rng(7)
    mask = _masks()
    r, _, v, _ = _rollout(rng, mask.shape)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(r, v, mask):
        return lambda_returns_bm(r, 0.9, v, 0.5, mask=mask)

    np.testing.assert_allclose(
        f(r, v, mask), lambda_returns_bm(r, 0.9, v, 0.5, mask=mask), atol=1e-6
    )
    f(r, v, np.roll(mask, 1, axis=1))  # different mask, same shapes
    chex.clear_trace_counter()


def test_batch_major_errors():
    z = jnp.zeros((B, T))
    with pytest.raises(ValueError, match=r"`mask` must have the shape of `r_t`"):
        lambda_returns_bm(z, z, z, mask=jnp.ones((B, T - 1)))
    with pytest.raises(ValueError, match=r"`values` must have shape \(4, 10\)"):
        gae_bm(z, z, 0.9, z, mask=z)
    with pytest.raises(ValueError, match=r"`discount_t` must have rank 0 or 2"):
        discounted_returns_bm(z, jnp.zeros(T), 0.0, mask=z)
    with pytest.raises(ValueError, match=r"`discount_t` must be a scalar or have the shape"):
        discounted_returns_bm(z, jnp.zeros((B, T + 1)), 0.0, mask=z)


def test_n_step_masked_equals_filtered():
    rng = np.random.default_rng(8)
    mask = _masks()
    r, d, v, lam = _rollout(rng, mask.shape)
    for n in (1, 3, T + 2):
        out = n_step_bm(r, d, v, n, lam, mask=mask)
        ref = _filtered(lambda b, k: np_n_step(r[b, k], d[b, k], v[b, k], n, lam[b, k]), mask)
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_discounted_returns_batch_major_bootstraps_from_the_last_valid_step():
    rng = np.random.default_rng(9)
    mask = _masks()
    r, d, v, _ = _rollout(rng, mask.shape)
    out = discounted_returns_bm(r, d, v, mask=mask)
    ref = _filtered(lambda b, k: np_discounted_returns(r[b, k], d[b, k], v[b, k][-1]), mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_batch_major_without_mask_equals_vmap_over_rows():
    rng = np.random.default_rng(10)
    r, d, v, lam = _rollout(rng, (B, T))
    values = rng.normal(size=(B, T + 1)).astype(np.float32)
    cases = [
        (lambda_returns_bm(r, d, v, lam), jax.vmap(jb.lambda_returns)(r, d, v, lam)),
        (
            gae_bm(r, d, lam, values),
            jax.vmap(jb.truncated_generalized_advantage_estimation)(r, d, lam, values),
        ),
        (discounted_returns_bm(r, d, v), jax.vmap(jb.discounted_returns)(r, d, v)),
        (
            n_step_bm(r, d, v, 3, lam),
            jax.vmap(lambda *a: jb.n_step_bootstrapped_returns(*a[:3], 3, a[3]))(r, d, v, lam),
        ),
    ]
    for ours, ref in cases:
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


def test_masked_garbage_discounted_and_n_step():
    """NaN at masked steps stays out of the n-step and discounted returns and their gradients."""
    rng = np.random.default_rng(11)
    mask = _masks()
    r, d, v, lam = _rollout(rng, mask.shape)
    nan = lambda x: np.where(mask != 0, x, np.nan).astype(np.float32)

    def loss(r, v):
        g = n_step_bm(r, d, v, 2, lam, mask=mask) + discounted_returns_bm(r, d, v, mask=mask)
        return jnp.sum(g * g)

    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(nan(r), nan(v))
    assert value == pytest.approx(float(loss(r, v)), rel=1e-6)
    for grad in grads:
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[mask == 0], 0.0)


def test_scalar_discount_equals_broadcast_discount():
    rng = np.random.default_rng(12)
    r, _, v, _ = _rollout(rng, (T, B))
    values = rng.normal(size=(T + 1, B)).astype(np.float32)
    full = np.full((T, B), 0.9, np.float32)
    np.testing.assert_array_equal(
        lambda_returns_tm(r, 0.9, v, 0.5), lambda_returns_tm(r, full, v, 0.5)
    )
    np.testing.assert_array_equal(gae_tm(r, 0.9, 0.5, values), gae_tm(r, full, 0.5, values))
    np.testing.assert_array_equal(
        jb.lambda_returns(r[:, 0], 0.9, v[:, 0]), jb.lambda_returns(r[:, 0], full[:, 0], v[:, 0])
    )


def test_transforms_keep_the_signature_and_name_the_function():
    for fn in (
        jb.lambda_returns,
        jb.discounted_returns,
        jb.n_step_bootstrapped_returns,
        jb.truncated_generalized_advantage_estimation,
    ):
        params = list(inspect.signature(fn).parameters)
        assert list(inspect.signature(jb.time_major(fn)).parameters) == params
        assert list(inspect.signature(jb.batch_major(fn)).parameters) == [*params, "mask"]
        assert jb.time_major(fn).__name__ == f"time_major({fn.__name__})"
    with pytest.raises(ValueError, match=r"time_major\(lambda_returns\): `r_t` must have rank 2"):
        lambda_returns_tm(jnp.zeros(T), jnp.zeros(T), jnp.zeros(T))
    with pytest.raises(TypeError, match=r"missing a required argument: 'values'"):
        gae_bm(jnp.zeros((B, T)), 0.9, 0.9, mask=jnp.ones((B, T)))


def test_transforms_reject_other_functions():
    for fn in (jb.td_lambda, rlax.lambda_returns, jb.time_major(jb.lambda_returns)):
        with pytest.raises(TypeError, match=r"time_major: expected one of .*lambda_returns"):
            jb.time_major(fn)
        with pytest.raises(TypeError, match=r"batch_major: expected one of"):
            jb.batch_major(fn)
