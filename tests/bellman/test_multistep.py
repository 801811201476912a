"""Single-trajectory returns and advantages: hand values, NumPy loops, rlax parity, grads."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from jax.test_util import check_grads

import jaxpref.bellman as jb
from tests.bellman._reference import (
    np_discounted_returns,
    np_gae,
    np_lambda_returns,
    np_n_step,
    trajectory,
)

T = 12


# ---------------------------------------------------------------- hand-computed cases


def test_lambda_returns_by_hand():
    # G_2 = 1 + 0.5 * 8 = 5
    # G_1 = 2 + 0.5 * ((1 - 0.5) * 6 + 0.5 * 5) = 2 + 0.5 * 5.5 = 4.75
    # G_0 = 3 + 0 * (...) = 3          (episode ends after step 0)
    g = jb.lambda_returns(
        jnp.array([3.0, 2.0, 1.0]), jnp.array([0.0, 0.5, 0.5]), jnp.array([4.0, 6.0, 8.0]), 0.5
    )
    np.testing.assert_allclose(g, [3.0, 4.75, 5.0], atol=1e-6)


def test_lambda_returns_limits():
    rng = np.random.default_rng(0)
    r, d, v, _ = trajectory(rng, T)
    one_step = jb.lambda_returns(r, d, v, 0.0)
    np.testing.assert_allclose(one_step, r + d * v, atol=1e-6)
    full = jb.lambda_returns(r, d, v, 1.0)
    np.testing.assert_allclose(full, np_discounted_returns(r, d, v[-1]), atol=1e-5)


def test_gae_by_hand():
    # deltas: 1 + 0.9 * 2 - 1 = 1.8 ; 0 + 0 * 3 - 2 = -2 (episode end)
    # A_1 = -2 ; A_0 = 1.8 + 0.9 * 0.5 * (-2) = 0.9
    a = jb.truncated_generalized_advantage_estimation(
        jnp.array([1.0, 0.0]), jnp.array([0.9, 0.0]), 0.5, jnp.array([1.0, 2.0, 3.0])
    )
    np.testing.assert_allclose(a, [0.9, -2.0], atol=1e-6)


def test_gae_equals_lambda_returns_minus_values():
    rng = np.random.default_rng(1)
    r, d, _, lam = trajectory(rng, T)
    values = rng.normal(size=T + 1).astype(np.float32)
    adv = jb.truncated_generalized_advantage_estimation(r, d, lam, values)
    returns = jb.lambda_returns(r, d, values[1:], lam)
    np.testing.assert_allclose(adv, returns - values[:-1], atol=1e-5)


def test_n_step_by_hand():
    # n = 2: G_0 = 1 + 0.5 * (2 + 0.5 * v_1) with v_1 = 4 -> 1 + 0.5 * 4 = 3
    g = jb.n_step_bootstrapped_returns(
        jnp.array([1.0, 2.0, 3.0]), jnp.full(3, 0.5), jnp.array([0.0, 4.0, 8.0]), 2
    )
    # G_1 = 2 + 0.5 * (3 + 0.5 * 8) = 5.5 ; G_2 = 3 + 0.5 * v_2 = 7 (window cut at the end)
    np.testing.assert_allclose(g, [3.0, 5.5, 7.0], atol=1e-6)


@pytest.mark.parametrize("n", [1, 3, T + 4])
def test_n_step_against_numpy(n):
    rng = np.random.default_rng(2)
    r, d, v, lam = trajectory(rng, T)
    np.testing.assert_allclose(
        jb.n_step_bootstrapped_returns(r, d, v, n, lam), np_n_step(r, d, v, n, lam), atol=1e-5
    )


def test_n_step_long_window_is_lambda_return():
    rng = np.random.default_rng(3)
    r, d, v, lam = trajectory(rng, T)
    np.testing.assert_allclose(
        jb.n_step_bootstrapped_returns(r, d, v, T, lam), jb.lambda_returns(r, d, v, lam), atol=1e-5
    )


def test_against_numpy_loops():
    rng = np.random.default_rng(4)
    r, d, v, lam = trajectory(rng, T)
    values = rng.normal(size=T + 1).astype(np.float32)
    np.testing.assert_allclose(
        jb.lambda_returns(r, d, v, lam), np_lambda_returns(r, d, v, lam), atol=1e-5
    )
    np.testing.assert_allclose(
        jb.discounted_returns(r, d, 2.5), np_discounted_returns(r, d, 2.5), atol=1e-5
    )
    np.testing.assert_allclose(
        jb.truncated_generalized_advantage_estimation(r, d, lam, values),
        np_gae(r, d, lam, values),
        atol=1e-5,
    )


# ---------------------------------------------------------------- rlax parity


def _parity_cases(rng, dtype):
    r, d, v, lam = trajectory(rng, T, dtype=dtype)
    values = rng.normal(size=T + 1).astype(dtype)
    return [
        ("lambda_returns", (r, d, v, 0.8)),
        ("lambda_returns", (r, d, v, lam)),
        ("lambda_returns", (r, d, v, lam, True)),
        ("discounted_returns", (r, d, v)),
        ("discounted_returns", (r, d, dtype(1.5))),
        ("n_step_bootstrapped_returns", (r, d, v, 3)),
        ("n_step_bootstrapped_returns", (r, d, v, 4, lam)),
        ("n_step_bootstrapped_returns", (r, d, v, T + 2, lam)),
        ("truncated_generalized_advantage_estimation", (r, d, 0.95, values)),
        ("truncated_generalized_advantage_estimation", (r, d, lam, values)),
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_rlax_parity_float32(seed):
    """Same recursions in the same op order: float32 results agree to 1e-6 (|G| < ~10)."""
    for name, args in _parity_cases(np.random.default_rng(seed), np.float32):
        ours = getattr(jb, name)(*args)
        theirs = getattr(rlax, name)(*args)
        assert ours.dtype == jnp.float32
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0, err_msg=name)


def test_rlax_parity_float64():
    with jax.enable_x64(True):
        for name, args in _parity_cases(np.random.default_rng(7), np.float64)[1::2]:
            ours = getattr(jb, name)(*args)
            theirs = getattr(rlax, name)(*args)
            assert ours.dtype == jnp.float64
            np.testing.assert_allclose(ours, theirs, atol=1e-12, rtol=0, err_msg=name)


# ---------------------------------------------------------------- transformations


def test_jit_equals_eager_and_no_retrace():
    rng = np.random.default_rng(5)
    r, d, v, lam = trajectory(rng, T)
    values = rng.normal(size=T + 1).astype(np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def all_returns(r, d, v, lam, values):
        return (
            jb.lambda_returns(r, d, v, lam),
            jb.discounted_returns(r, d, v),
            jb.n_step_bootstrapped_returns(r, d, v, 3, lam),
            jb.truncated_generalized_advantage_estimation(r, d, lam, values),
        )

    jitted = all_returns(r, d, v, lam, values)
    eager = (
        jb.lambda_returns(r, d, v, lam),
        jb.discounted_returns(r, d, v),
        jb.n_step_bootstrapped_returns(r, d, v, 3, lam),
        jb.truncated_generalized_advantage_estimation(r, d, lam, values),
    )
    for a, b in zip(jitted, eager, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    r2, d2, v2, lam2 = trajectory(np.random.default_rng(6), T)
    all_returns(r2, d2, v2, lam2, values)  # same shapes: no second trace
    chex.clear_trace_counter()


def test_vmap_equals_loop():
    rng = np.random.default_rng(8)
    batch = [trajectory(rng, T) for _ in range(3)]
    r, d, v, lam = (np.stack(x) for x in zip(*batch, strict=True))
    out = jax.vmap(jb.lambda_returns)(r, d, v, lam)
    for b in range(3):
        np.testing.assert_allclose(out[b], jb.lambda_returns(r[b], d[b], v[b], lam[b]), atol=1e-6)


def test_gradients_through_scans():
    rng = np.random.default_rng(9)
    with jax.enable_x64(True):
        r, d, v, lam = (jnp.asarray(x) for x in trajectory(rng, 6, dtype=np.float64))
        values = jnp.asarray(rng.normal(size=7))
        weights = jnp.arange(1.0, 7.0)
        check_grads(
            jax.jit(lambda r, d, v, lam: weights @ jb.lambda_returns(r, d, v, lam)),
            (r, d, v, lam),
            order=1,
            modes=("fwd", "rev"),
        )
        check_grads(
            jax.jit(
                lambda r, d, lam, values: (
                    weights @ jb.truncated_generalized_advantage_estimation(r, d, lam, values)
                )
            ),
            (r, d, lam, values),
            order=1,
            modes=("rev",),
        )
        check_grads(
            jax.jit(lambda r, d, v: weights @ jb.n_step_bootstrapped_returns(r, d, v, 3)),
            (r, d, v),
            order=1,
            modes=("rev",),
        )


def test_stop_target_gradients():
    rng = np.random.default_rng(10)
    r, d, v, lam = trajectory(rng, T)
    grad = jax.grad(lambda v: jb.lambda_returns(r, d, v, lam, True).sum())(v)
    np.testing.assert_array_equal(grad, np.zeros(T))
    grad = jax.grad(lambda v: jb.lambda_returns(r, d, v, lam, False).sum())(v)
    assert np.abs(grad).sum() > 0


def test_unroll_is_only_a_speed_knob():
    rng = np.random.default_rng(12)
    r, d, v, lam = trajectory(rng, T)
    values = rng.normal(size=T + 1).astype(np.float32)
    for unroll in (3, T + 5):
        # same arithmetic; XLA may fuse unrolled steps differently (1-ulp differences)
        np.testing.assert_allclose(
            jb.lambda_returns(r, d, v, lam, unroll=unroll),
            jb.lambda_returns(r, d, v, lam),
            atol=1e-6,
        )
        np.testing.assert_allclose(
            jb.truncated_generalized_advantage_estimation(r, d, lam, values, unroll=unroll),
            jb.truncated_generalized_advantage_estimation(r, d, lam, values),
            atol=1e-6,
        )
    with pytest.raises(ValueError, match=r"`unroll` must be a Python int >= 1"):
        jb.discounted_returns(r, d, v, unroll=0)


def test_bf16_inputs_compute_in_float32():
    rng = np.random.default_rng(11)
    r, d, v, _ = trajectory(rng, T)
    out = jb.lambda_returns(r.astype(jnp.bfloat16), d.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
    assert out.dtype == jnp.float32
    ref = jb.lambda_returns(
        *(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) for x in (r, d, v))
    )
    np.testing.assert_allclose(out, ref, atol=1e-6)


# ---------------------------------------------------------------- errors


def test_shape_mismatch_names_both_arguments():
    with pytest.raises(ValueError, match=r"lambda_returns.*`discount_t`.*`r_t`.*\(5,\).*\(4,\)"):
        jb.lambda_returns(jnp.zeros(5), jnp.zeros(4), jnp.zeros(5))
    with pytest.raises(ValueError, match=r"discounted_returns.*`discount_t`.*`r_t`"):
        jb.discounted_returns(jnp.zeros(5), jnp.zeros(4), 0.0)
    with pytest.raises(ValueError, match=r"`lambda_`.*`r_t`"):
        jb.lambda_returns(jnp.zeros(5), jnp.zeros(5), jnp.zeros(5), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"`values`.*\(6,\).*\(5,\)"):
        jb.truncated_generalized_advantage_estimation(jnp.zeros(5), jnp.zeros(5), 0.9, jnp.zeros(5))


def test_rank_and_dtype_errors():
    with pytest.raises(ValueError, match=r"lambda_returns: `r_t` must have rank 1"):
        jb.lambda_returns(jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2, 5)))
    with pytest.raises(TypeError, match=r"`r_t` must be a floating"):
        jb.lambda_returns(jnp.zeros(5, jnp.int32), jnp.zeros(5), jnp.zeros(5))
    with pytest.raises(ValueError, match=r"`n` must be"):
        jb.n_step_bootstrapped_returns(jnp.zeros(5), jnp.zeros(5), jnp.zeros(5), 0)
