"""Tests for jaxpref.losses._token (token-level implicit rewards, credit maps, RTO rewards)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxpref.losses as jl


def _batch(b=4, t=6, seed=0):
    rng = np.random.default_rng(seed)
    pol = -rng.uniform(0.05, 4.0, size=(b, t)).astype(np.float32)
    ref = -rng.uniform(0.05, 4.0, size=(b, t)).astype(np.float32)
    # Prompt prefix masked out, right padding masked out.
    start = rng.integers(0, 2, size=b)
    stop = rng.integers(3, t + 1, size=b)
    pos = np.arange(t)[None, :]
    mask = ((pos >= start[:, None]) & (pos < stop[:, None])).astype(np.float32)
    return pol, ref, mask


def test_token_rewards_hand_computed():
    pol = np.array([[-1.0, -2.0, -0.5], [-3.0, -0.1, 8.0]], np.float32)
    ref = np.array([[-1.5, -1.0, -0.5], [-2.0, -0.4, np.nan]], np.float32)
    mask = np.array([[0, 1, 1], [1, 1, 0]], np.float32)
    got = jl.token_implicit_rewards(pol, ref, mask, beta=0.1)
    want = np.array([[0.0, -0.1, 0.0], [-0.1, 0.03, 0.0]])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    assert got.dtype == jnp.float32 and got.shape == (2, 3)


def test_sequence_rewards_are_masked_sums():
    pol, ref, mask = _batch()
    got = jl.sequence_implicit_rewards(pol, ref, mask, beta=0.2)
    want = 0.2 * ((pol.astype(np.float64) - ref) * mask).sum(-1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_summed_token_rewards_reproduce_dpo_margin_with_padding():
    b, t = 3, 7
    pol, ref, mask = _batch(2 * b, t, seed=1)
    # Garbage (including non-finite values) in every masked position.
    pol_g = np.where(mask > 0, pol, 1e30).astype(np.float32)
    ref_g = np.where(mask > 0, ref, -np.inf).astype(np.float32)
    beta = 0.1
    lw = (pol[:b] * mask[:b]).astype(np.float64).sum(-1)
    ll = (pol[b:] * mask[b:]).astype(np.float64).sum(-1)
    rw = (ref[:b] * mask[:b]).astype(np.float64).sum(-1)
    rl = (ref[b:] * mask[b:]).astype(np.float64).sum(-1)
    want = beta * ((lw - rw) - (ll - rl))

    tok = jl.token_implicit_rewards(pol_g, ref_g, mask, beta=beta)
    summed = np.asarray(tok[:b]).sum(-1) - np.asarray(tok[b:]).sum(-1)
    np.testing.assert_allclose(summed, want, rtol=1e-5, atol=1e-5)

    cat = jl.implicit_reward_margins(pol_g, ref_g, mask, beta=beta)
    np.testing.assert_allclose(np.asarray(cat), want, rtol=1e-5, atol=1e-5)

    paired = jl.paired_implicit_reward_margins(
        pol_g[:b], pol_g[b:], ref_g[:b], ref_g[b:], mask[:b], mask[b:], beta=beta
    )
    np.testing.assert_allclose(np.asarray(paired), want, rtol=1e-5, atol=1e-5)


def test_paired_margins_different_lengths_equal_filtered():
    rng = np.random.default_rng(2)
    cw = -rng.uniform(0.1, 3, size=(2, 5)).astype(np.float32)
    cl = -rng.uniform(0.1, 3, size=(2, 2)).astype(np.float32)
    rw = -rng.uniform(0.1, 3, size=(2, 5)).astype(np.float32)
    rl = -rng.uniform(0.1, 3, size=(2, 2)).astype(np.float32)
    mw = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    ml = np.array([[1, 1], [1, 0]], np.float32)
    got = jl.paired_implicit_reward_margins(cw, cl, rw, rl, mw, ml, beta=0.5)
    for i in range(2):
        nw, nl = int(mw[i].sum()), int(ml[i].sum())
        h = (cw[i, :nw].sum() - rw[i, :nw].sum()) - (cl[i, :nl].sum() - rl[i, :nl].sum())
        np.testing.assert_allclose(float(got[i]), 0.5 * h, rtol=1e-5)


def test_masked_gradients_zero_and_finite():
    pol, ref, mask = _batch(seed=3)
    pol_g = np.where(mask > 0, pol, np.nan).astype(np.float32)
    ref_g = np.where(mask > 0, ref, np.nan).astype(np.float32)
    for f in (
        lambda p: jl.sequence_implicit_rewards(p, ref_g, mask).sum(),
        lambda p: jl.rto_token_rewards(p, ref_g, mask, beta=1.0, clip=0.5).sum(),
        lambda p: jl.token_credit(jl.token_implicit_rewards(p, ref_g, mask), mask).sum(),
    ):
        g = np.asarray(jax.grad(f)(pol_g))
        assert np.all(np.isfinite(g))
        assert np.all(g[mask == 0] == 0)
    g = np.asarray(jax.grad(lambda p: jl.sequence_implicit_rewards(p, ref_g, mask).sum())(pol_g))
    np.testing.assert_allclose(g, 0.1 * mask, rtol=1e-6)


def test_fully_masked_rows_are_zero():
    pol, ref, _ = _batch(2, 4, seed=4)
    zero = np.zeros((2, 4), np.float32)
    assert np.all(np.asarray(jl.sequence_implicit_rewards(pol, ref, zero)) == 0)
    assert np.all(np.asarray(jl.token_credit(pol, zero)) == 0)
    assert np.all(np.asarray(jl.rto_token_rewards(pol, ref, zero)) == 0)
    g = jax.grad(lambda r: jl.token_credit(r, zero).sum())(pol)
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_bf16_inputs_give_float32():
    pol, ref, mask = _batch(seed=5)
    p16, r16 = jnp.asarray(pol, jnp.bfloat16), jnp.asarray(ref, jnp.bfloat16)
    p32, r32 = np.asarray(p16, np.float32), np.asarray(r16, np.float32)
    for f in (jl.token_implicit_rewards, jl.sequence_implicit_rewards, jl.rto_token_rewards):
        got = f(p16, r16, mask)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(f(p32, r32, mask)), rtol=1e-6)
    credit = jl.token_credit(p16, mask)
    assert credit.dtype == jnp.float32


def test_bool_mask_equals_float_mask():
    pol, ref, mask = _batch(seed=6)
    a = jl.token_implicit_rewards(pol, ref, mask.astype(bool))
    b = jl.token_implicit_rewards(pol, ref, mask)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- credit maps


def test_token_credit_hand_computed():
    r = np.array([[0.2, -0.8, 0.4, 5.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.1, -0.1, 0.0]], np.float32)
    m = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    got = jl.token_credit(r, m)
    want = np.array(
        [[0.25, -1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0 / 3.0, -1.0 / 3.0, 0.0]]
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)


def test_token_credit_properties():
    pol, ref, mask = _batch(seed=7)
    credit = np.asarray(jl.token_credit(jl.token_implicit_rewards(pol, ref, mask), mask))
    assert np.all(np.abs(credit) <= 1.0 + 1e-7)
    np.testing.assert_allclose(np.abs(credit).max(-1), 1.0, rtol=1e-6)
    tok = (pol - ref) * mask
    np.testing.assert_array_equal(np.sign(credit), np.sign(tok))
    # Scale invariance: beta does not change the map.
    c2 = jl.token_credit(jl.token_implicit_rewards(pol, ref, mask, beta=3.0), mask)
    np.testing.assert_allclose(np.asarray(c2), credit, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- RTO


def test_rto_rewards_hand_computed():
    dpo = np.array([[-1.0, -3.0, -2.0, -0.5]], np.float32)
    ref = np.array([[-2.0, -2.0, -2.1, -9.0]], np.float32)
    mask = np.array([[1, 1, 1, 0]], np.float32)
    got = jl.rto_token_rewards(dpo, ref, mask, beta=0.05, clip=0.02)
    np.testing.assert_allclose(np.asarray(got), [[0.02, -0.02, 0.005, 0.0]], rtol=1e-5, atol=1e-8)
    unclipped = jl.rto_token_rewards(dpo, ref, mask, beta=0.05, clip=None)
    np.testing.assert_allclose(
        np.asarray(unclipped), [[0.05, -0.05, 0.005, 0.0]], rtol=1e-5, atol=1e-8
    )


def test_rto_rewards_scale_then_clip_numpy():
    pol, ref, mask = _batch(seed=8)
    beta, clip = 0.05, 0.05
    want = np.clip(beta * (pol.astype(np.float64) - ref), -clip, clip) * mask
    got = jl.rto_token_rewards(pol, ref, mask, beta=beta, clip=clip)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-8)
    # Without clipping RTO rewards are the token implicit rewards.
    np.testing.assert_allclose(
        np.asarray(jl.rto_token_rewards(pol, ref, mask, beta=0.3, clip=None)),
        np.asarray(jl.token_implicit_rewards(pol, ref, mask, beta=0.3)),
        rtol=1e-6,
    )


def test_rto_rejects_nonpositive_clip():
    pol, ref, mask = _batch(seed=9)
    with pytest.raises(ValueError, match=r"rto_token_rewards: `clip` must be positive"):
        jl.rto_token_rewards(pol, ref, mask, clip=0.0)


# ---------------------------------------------------------------- transforms and shapes


def test_check_grads():
    pol, ref, mask = _batch(2, 3, seed=10)
    with jax.enable_x64(True):
        p, r = jnp.asarray(pol, jnp.float64), jnp.asarray(ref, jnp.float64)
        f = jax.jit(lambda p: jl.implicit_reward_margins(p, r, mask, beta=0.7))
        check_grads(f, (p,), order=1, modes=("fwd", "rev"))
        rewards = jnp.asarray([[0.3, -0.9, 0.5], [0.2, 0.1, -0.4]])
        # Away from ties of |r|, the credit map is smooth.
        fc = jax.jit(lambda x: jl.token_credit(x, mask))
        check_grads(fc, (rewards,), order=1, modes=("rev",), eps=1e-4)


def test_jit_and_vmap():
    pol, ref, mask = _batch(4, 5, seed=11)
    f = lambda p, r, m: jl.implicit_reward_margins(p, r, m, beta=0.2)
    np.testing.assert_allclose(
        np.asarray(jax.jit(f)(pol, ref, mask)), np.asarray(f(pol, ref, mask)), rtol=1e-6
    )
    stack = np.stack([pol, pol * 0.5, pol - 1.0])
    g = lambda p: jl.rto_token_rewards(p, ref, mask, beta=0.1, clip=0.1)
    got = jax.vmap(g)(stack)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(g(stack[i])), rtol=1e-6)


def test_shape_errors():
    pol, ref, mask = _batch(4, 5)
    with pytest.raises(ValueError, match=r"token_implicit_rewards: `ref_token_logps`.*\(4, 5\)"):
        jl.token_implicit_rewards(pol, ref[:, :4], mask)
    with pytest.raises(ValueError, match=r"token_implicit_rewards: `mask`"):
        jl.token_implicit_rewards(pol, ref, mask[:3])
    with pytest.raises(ValueError, match=r"sequence_implicit_rewards|token_implicit_rewards"):
        jl.sequence_implicit_rewards(pol[0], ref[0], mask[0])
    with pytest.raises(ValueError, match=r"implicit_reward_margins: .*even number of rows"):
        jl.implicit_reward_margins(pol[:3], ref[:3], mask[:3])
    with pytest.raises(ValueError, match=r"paired_implicit_reward_margins: `rejected_token_logps`"):
        jl.paired_implicit_reward_margins(pol, pol[:2], ref, ref[:2], mask, mask[:2])
    with pytest.raises(ValueError, match=r"token_credit: `token_rewards` must have rank 2"):
        jl.token_credit(pol[0], mask[0])
    with pytest.raises(TypeError, match=r"rto_token_rewards: `dpo_token_logps`"):
        jl.rto_token_rewards(np.zeros((4, 5), np.int32), ref, mask)
