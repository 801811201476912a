"""Time-major [T, B] and masked batch-major [B, T] helpers: vmap, rlax, masked == filtered."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

import jaxpref.bellman as jb
from tests.bellman._reference import np_discounted_returns, np_gae, np_lambda_returns

T, B = 9, 4


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
            jb.lambda_returns_time_major(r, d, v, lam),
            vm(jb.lambda_returns)(r, d, v, lam),
            vm(rlax.lambda_returns)(r, d, v, lam),
        ),
        (
            jb.lambda_returns_time_major(r, d, v, 0.9, unroll=4),
            vm(lambda r, d, v: jb.lambda_returns(r, d, v, 0.9))(r, d, v),
            vm(lambda r, d, v: rlax.lambda_returns(r, d, v, 0.9))(r, d, v),
        ),
        (
            jb.truncated_generalized_advantage_estimation_time_major(r, d, lam, values),
            vm(jb.truncated_generalized_advantage_estimation)(r, d, lam, values),
            vm(rlax.truncated_generalized_advantage_estimation)(r, d, lam, values),
        ),
        (
            jb.discounted_returns_time_major(r, d, v),
            vm(jb.discounted_returns)(r, d, v),
            vm(rlax.discounted_returns)(r, d, v),
        ),
        (
            jb.n_step_bootstrapped_returns_time_major(r, d, v, 3, lam),
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
    out = jb.discounted_returns_time_major(r, d, boot)
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
        return jb.truncated_generalized_advantage_estimation_time_major(r, d, 0.95, values)

    out = gae(r, d, values)
    np.testing.assert_allclose(
        out, jb.truncated_generalized_advantage_estimation_time_major(r, d, 0.95, values), atol=1e-6
    )
    gae(r + 1.0, d, values)
    chex.clear_trace_counter()


def test_time_major_errors():
    z = jnp.zeros((T, B))
    with pytest.raises(ValueError, match=r"`discount_t` must have the shape of `r_t`"):
        jb.lambda_returns_time_major(z, jnp.zeros((T - 1, B)), z)
    with pytest.raises(ValueError, match=r"`values` must have shape \(10, 4\)"):
        jb.truncated_generalized_advantage_estimation_time_major(z, z, 0.9, z)
    with pytest.raises(ValueError, match=r"`r_t` must have rank 2"):
        jb.lambda_returns_time_major(jnp.zeros(T), jnp.zeros(T), jnp.zeros(T))


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
    out = jb.lambda_returns_batch_major(r, d, v, mask, lambda_=lam)
    ref = _filtered(lambda b, k: np_lambda_returns(r[b, k], d[b, k], v[b, k], lam[b, k]), mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # all valid: rows == single-trajectory function
    full = jb.lambda_returns_batch_major(r, d, v, np.ones_like(mask), lambda_=0.9)
    np.testing.assert_allclose(
        full, jax.vmap(lambda *a: jb.lambda_returns(*a, 0.9))(r, d, v), atol=1e-6
    )


def test_gae_masked_equals_filtered():
    rng = np.random.default_rng(4)
    mask = _masks()
    r, d, _, lam = _rollout(rng, mask.shape)
    values = rng.normal(size=(mask.shape[0], T + 1)).astype(np.float32)
    out = jb.truncated_generalized_advantage_estimation_batch_major(r, d, values, mask, lambda_=lam)

    def row(b, keep):
        vals = np.concatenate([values[b, :T][keep], values[b, T:]])
        return np_gae(r[b, keep], d[b, keep], lam[b, keep], vals)

    np.testing.assert_allclose(out, _filtered(row, mask), atol=1e-5)
    full = jb.truncated_generalized_advantage_estimation_batch_major(
        r, d, values, np.ones_like(mask), lambda_=0.95
    )
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
    out = jb.discounted_returns_batch_major(r, d, boot, mask)
    ref = _filtered(lambda b, k: np_discounted_returns(r[b, k], d[b, k], boot[b]), mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    scalar = jb.discounted_returns_batch_major(r, 0.5, 0.0, mask)
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
        g = jb.lambda_returns_batch_major(r, d, v, mask, lambda_=0.8)
        a = jb.truncated_generalized_advantage_estimation_batch_major(r, d, vals, mask, lambda_=0.8)
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
        return jb.lambda_returns_batch_major(r, 0.9, v, mask, lambda_=0.5)

    np.testing.assert_allclose(
        f(r, v, mask), jb.lambda_returns_batch_major(r, 0.9, v, mask, lambda_=0.5), atol=1e-6
    )
    f(r, v, np.roll(mask, 1, axis=1))  # different mask, same shapes
    chex.clear_trace_counter()


def test_batch_major_errors():
    z = jnp.zeros((B, T))
    with pytest.raises(ValueError, match=r"`mask` must have the shape of `r_t`"):
        jb.lambda_returns_batch_major(z, z, z, jnp.ones((B, T - 1)))
    with pytest.raises(ValueError, match=r"`values` must have shape \(4, 10\)"):
        jb.truncated_generalized_advantage_estimation_batch_major(z, z, z, z, lambda_=0.9)
    with pytest.raises(ValueError, match=r"`discount_t` must have rank 0 or 2"):
        jb.discounted_returns_batch_major(z, jnp.zeros(T), 0.0, z)
    with pytest.raises(ValueError, match=r"`discount_t` must be a scalar or have the shape"):
        jb.discounted_returns_batch_major(z, jnp.zeros((B, T + 1)), 0.0, z)
