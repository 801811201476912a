"""Tests for jaxpref.losses._cpl (Contrastive Preference Learning)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxpref.losses as jl

RNG = np.random.default_rng(0)


def _np_nls(z):
    """-log sigmoid(z) in float64."""
    return np.logaddexp(0.0, -np.asarray(z, np.float64))


def _np_scores(logps, mask, alpha, gamma):
    logps = np.asarray(logps, np.float64)
    mask = np.asarray(mask, np.float64)
    out = np.zeros(logps.shape[0])
    for b in range(logps.shape[0]):
        for t in range(logps.shape[1]):
            if mask[b, t]:
                out[b] += gamma**t * alpha * logps[b, t]
    return out


def _segments(b=3, t=5, seed=1):
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.1, 3.0, size=(b, t)).astype(np.float32)
    lengths = rng.integers(1, t + 1, size=b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    return logps, mask


# ---------------------------------------------------------------- segment scores


def test_segment_scores_hand_computed():
    logps = np.array([[-1.0, -2.0, -0.5, 4.0], [-0.2, -0.3, -0.4, -0.5]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
    s = jl.cpl_segment_scores(logps, mask, alpha=0.2, gamma=0.9)
    want0 = 0.2 * (-1.0 + 0.9 * -2.0 + 0.81 * -0.5)
    want1 = 0.2 * (-0.2 + 0.9 * -0.3 + 0.81 * -0.4 + 0.729 * -0.5)
    np.testing.assert_allclose(np.asarray(s), [want0, want1], rtol=1e-5, atol=1e-6)
    assert s.dtype == jnp.float32 and s.shape == (2,)


def test_segment_scores_gamma_one_is_masked_sum():
    logps, mask = _segments(4, 6)
    s = jl.cpl_segment_scores(logps, mask, alpha=0.3, gamma=1.0)
    np.testing.assert_allclose(np.asarray(s), 0.3 * (logps * mask).sum(-1), rtol=1e-5, atol=1e-6)


def test_segment_scores_discount_counts_positions():
    # A hole at position 1: position 2 is discounted by gamma**2 (positions), not gamma**1.
    logps = np.array([[-1.0, -5.0, -2.0]], np.float32)
    mask = np.array([[1, 0, 1]], np.float32)
    s = jl.cpl_segment_scores(logps, mask, alpha=1.0, gamma=0.5)
    np.testing.assert_allclose(np.asarray(s), [-1.0 + 0.25 * -2.0], rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(s), _np_scores(logps, mask, 1.0, 0.5), rtol=1e-6, atol=1e-7
    )


def test_segment_scores_random_against_numpy():
    logps, mask = _segments(5, 7, seed=3)
    s = jl.cpl_segment_scores(logps, mask, alpha=0.1, gamma=0.95)
    np.testing.assert_allclose(
        np.asarray(s), _np_scores(logps, mask, 0.1, 0.95), rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------- pairwise loss


def test_cpl_loss_hand_computed():
    pos = np.array([[-0.5, -1.0, 3.0], [-2.0, -0.1, -0.1]], np.float32)
    neg = np.array([[-1.5, -2.0], [-0.3, 7.0]], np.float32)
    pm = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    nm = np.array([[1, 1], [1, 0]], np.float32)
    alpha, lam = 0.5, 0.5
    sp = np.array([alpha * (-1.5), alpha * (-2.2)])
    sn = np.array([alpha * (-3.5), alpha * (-0.3)])
    want = _np_nls(sp - lam * sn)
    got = jl.cpl_loss(pos, neg, pm, nm, alpha=alpha, contrastive_bias=lam)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    # Literal check of the first pair: -log sigmoid(-0.75 + 0.875) = log(1 + exp(-0.125)).
    np.testing.assert_allclose(float(got[0]), np.log1p(np.exp(-0.125)), rtol=1e-5)


def test_cpl_loss_from_scores_matches_reference_stable_form():
    # The reference implementation writes -log sigmoid(x) via an explicit log-sum-exp trick.
    sp = RNG.normal(size=6).astype(np.float32) * 5
    sn = RNG.normal(size=6).astype(np.float32) * 5
    lam = 0.7
    x = sp.astype(np.float64) - lam * sn
    mx = np.clip(-x, 0, None)
    want = np.log(np.exp(-mx) + np.exp(-x - mx)) + mx
    got = jl.cpl_loss_from_scores(sp, sn, contrastive_bias=lam)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_length_one_cpl_is_reference_free_dpo():
    b = 6
    lw = -RNG.uniform(0.1, 4, size=(b, 1)).astype(np.float32)
    ll = -RNG.uniform(0.1, 4, size=(b, 1)).astype(np.float32)
    m = np.ones((b, 1), np.float32)
    beta = 0.3
    dpo = -np.log(1.0 / (1.0 + np.exp(-beta * (lw[:, 0] - ll[:, 0]).astype(np.float64))))
    got = jl.cpl_loss(lw, ll, m, m, alpha=beta, gamma=0.7, contrastive_bias=1.0)
    np.testing.assert_allclose(np.asarray(got), dpo, rtol=1e-5)


def test_length_one_cpl_kl_is_dpo():
    b = 6
    lw, ll, rw, rl = (-RNG.uniform(0.1, 4, size=(b, 1)).astype(np.float32) for _ in range(4))
    m = np.ones((b, 1), np.float32)
    beta = 0.1
    h = (lw[:, 0] - rw[:, 0]).astype(np.float64) - (ll[:, 0] - rl[:, 0])
    dpo = -np.log(1.0 / (1.0 + np.exp(-beta * h)))
    got = jl.cpl_kl_loss(lw, ll, rw, rl, m, m, alpha=beta, contrastive_bias=1.0)
    np.testing.assert_allclose(np.asarray(got), dpo, rtol=1e-5)


def test_full_segment_cpl_kl_gamma_one_is_sequence_dpo():
    pos, pm = _segments(4, 5, seed=5)
    neg, nm = _segments(4, 3, seed=6)
    rpos = pos - RNG.uniform(-1, 1, size=pos.shape).astype(np.float32)
    rneg = neg - RNG.uniform(-1, 1, size=neg.shape).astype(np.float32)
    beta = 0.2
    h = ((pos - rpos) * pm).sum(-1).astype(np.float64) - ((neg - rneg) * nm).sum(-1)
    got = jl.cpl_kl_loss(pos, neg, rpos, rneg, pm, nm, alpha=beta, contrastive_bias=1.0)
    np.testing.assert_allclose(np.asarray(got), _np_nls(beta * h), rtol=1e-5)


def test_contrastive_bias_below_one_is_asymmetric():
    m = np.ones((1, 1), np.float32)
    a = jl.cpl_loss(np.array([[-1.0]]), np.array([[-2.0]]), m, m, alpha=1.0, contrastive_bias=0.5)
    b = jl.cpl_loss(np.array([[-2.0]]), np.array([[-1.0]]), m, m, alpha=1.0, contrastive_bias=0.5)
    np.testing.assert_allclose(float(a[0]), _np_nls(-1.0 + 1.0), rtol=1e-6)
    np.testing.assert_allclose(float(b[0]), _np_nls(-2.0 + 0.5), rtol=1e-6)


def test_masked_equals_filtered_with_garbage_padding():
    pos, pm = _segments(4, 6, seed=7)
    neg, nm = _segments(4, 4, seed=8)
    pos_g = np.where(pm > 0, pos, np.nan).astype(np.float32)
    neg_g = np.where(nm > 0, neg, -np.inf).astype(np.float32)
    got = jl.cpl_loss(pos_g, neg_g, pm, nm, alpha=0.2, gamma=0.9, contrastive_bias=0.5)
    for b in range(4):
        lp, ln = int(pm[b].sum()), int(nm[b].sum())
        one = jl.cpl_loss(
            pos[b : b + 1, :lp],
            neg[b : b + 1, :ln],
            np.ones((1, lp)),
            np.ones((1, ln)),
            alpha=0.2,
            gamma=0.9,
            contrastive_bias=0.5,
        )
        np.testing.assert_allclose(float(got[b]), float(one[0]), rtol=1e-5)
    g = jax.grad(lambda p, n: jl.cpl_loss(p, n, pm, nm).sum(), argnums=(0, 1))(pos_g, neg_g)
    for gi, mi in zip(g, (pm, nm), strict=True):
        assert np.all(np.isfinite(np.asarray(gi)))
        assert np.all(np.asarray(gi)[mi == 0] == 0)


def test_fully_masked_rows_finite():
    pos, _ = _segments(2, 3)
    neg, _ = _segments(2, 3, seed=2)
    zero = np.zeros((2, 3), np.float32)
    loss = jl.cpl_loss(pos, neg, zero, zero)
    np.testing.assert_allclose(np.asarray(loss), [np.log(2.0)] * 2, rtol=1e-6)
    g = jax.grad(lambda p: jl.cpl_loss(p, neg, zero, zero).sum())(pos)
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    loss, aux = jl.cpl_objective(pos, neg, zero, zero, bc_coeff=1.0)
    assert np.isfinite(float(loss)) and float(aux.bc) == 0.0
    g = jax.grad(lambda p: jl.cpl_objective(p, neg, zero, zero, bc_coeff=1.0)[0])(pos)
    assert np.all(np.isfinite(np.asarray(g)))


def test_gradient_matches_closed_form():
    # d/dlogp_t of -log sigmoid(S+ - lam S-) = -sigmoid(-(S+ - lam S-)) * alpha * gamma^t.
    pos, pm = _segments(3, 4, seed=9)
    neg, nm = _segments(3, 4, seed=10)
    alpha, gamma, lam = 0.4, 0.8, 0.6
    sp, sn = _np_scores(pos, pm, alpha, gamma), _np_scores(neg, nm, alpha, gamma)
    w = 1.0 / (1.0 + np.exp(sp - lam * sn))  # sigmoid(-z)
    disc = gamma ** np.arange(4)
    want_pos = -w[:, None] * alpha * disc[None, :] * pm
    want_neg = lam * w[:, None] * alpha * disc[None, :] * nm
    g = jax.grad(
        lambda p, n: jl.cpl_loss(
            p, n, pm, nm, alpha=alpha, gamma=gamma, contrastive_bias=lam
        ).sum(),
        argnums=(0, 1),
    )(pos, neg)
    np.testing.assert_allclose(np.asarray(g[0]), want_pos, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g[1]), want_neg, rtol=1e-5, atol=1e-7)


def test_check_grads():
    pos, pm = _segments(2, 3, seed=11)
    neg, nm = _segments(2, 3, seed=12)
    ref = pos - 0.3
    with jax.enable_x64(True):
        p, n, r = (jnp.asarray(x, jnp.float64) for x in (pos, neg, ref))
        f = jax.jit(lambda p, n: jl.cpl_loss(p, n, pm, nm, alpha=0.5, gamma=0.9))
        check_grads(f, (p, n), order=1, modes=("fwd", "rev"))
        fk = jax.jit(lambda p, n: jl.cpl_kl_loss(p, n, r, r, pm, nm, alpha=0.5))
        check_grads(fk, (p, n), order=1, modes=("rev",))
        fo = jax.jit(lambda p, n: jl.cpl_objective(p, n, pm, nm, bc_coeff=0.5)[0])
        check_grads(fo, (p, n), order=1, modes=("rev",))
        s = jnp.asarray([0.3, -1.2, 0.5, 2.0])
        fr = jax.jit(lambda s: jl.cpl_rank_loss(s, jnp.asarray([1.0, 3.0, 2.0, 0.0])))
        check_grads(fr, (s,), order=1, modes=("rev",))


def test_jit_equals_eager():
    pos, pm = _segments(3, 5, seed=13)
    neg, nm = _segments(3, 5, seed=14)
    kw = dict(alpha=0.3, gamma=0.9, contrastive_bias=0.5)
    eager = jl.cpl_loss(pos, neg, pm, nm, **kw)
    jitted = jax.jit(lambda *a: jl.cpl_loss(*a, **kw))(pos, neg, pm, nm)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
    l0, a0 = jl.cpl_objective(pos, neg, pm, nm, bc_coeff=0.3)
    l1, a1 = jax.jit(lambda *a: jl.cpl_objective(*a, bc_coeff=0.3))(pos, neg, pm, nm)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for x, y in zip(a0, a1, strict=True):
        np.testing.assert_allclose(float(y), float(x), rtol=1e-6)


def test_vmap_equals_loop():
    k, b, t = 3, 2, 4
    pos = -RNG.uniform(0.1, 2, size=(k, b, t)).astype(np.float32)
    neg = -RNG.uniform(0.1, 2, size=(k, b, t)).astype(np.float32)
    pm = (RNG.uniform(size=(k, b, t)) > 0.3).astype(np.float32)
    nm = (RNG.uniform(size=(k, b, t)) > 0.3).astype(np.float32)
    f = lambda p, n, a, c: jl.cpl_loss(p, n, a, c, alpha=0.2, gamma=0.95)
    got = jax.vmap(f)(pos, neg, pm, nm)
    for i in range(k):
        np.testing.assert_allclose(
            np.asarray(got[i]), np.asarray(f(pos[i], neg[i], pm[i], nm[i])), rtol=1e-6
        )


def test_bf16_inputs_compute_in_float32():
    pos, pm = _segments(2, 4, seed=15)
    neg, nm = _segments(2, 4, seed=16)
    pos16, neg16 = jnp.asarray(pos, jnp.bfloat16), jnp.asarray(neg, jnp.bfloat16)
    got = jl.cpl_loss(pos16, neg16, pm, nm)
    assert got.dtype == jnp.float32
    want = jl.cpl_loss(
        np.asarray(pos16.astype(jnp.float32)), np.asarray(neg16.astype(jnp.float32)), pm, nm
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


def test_shape_errors():
    pos, pm = _segments(2, 4)
    neg, nm = _segments(2, 3)
    with pytest.raises(ValueError, match=r"cpl_loss: `pos_mask`.*\(2, 4\).*\(2, 3\)"):
        jl.cpl_loss(pos, neg, nm, nm)
    with pytest.raises(ValueError, match=r"cpl_loss: `neg_logps` must have the batch size"):
        jl.cpl_loss(pos, neg[:1], pm, nm[:1])
    with pytest.raises(ValueError, match=r"cpl_segment_scores: `logps` must have rank 2"):
        jl.cpl_segment_scores(pos[0], pm[0])
    with pytest.raises(ValueError, match=r"cpl_kl_loss: `ref_neg_logps`"):
        jl.cpl_kl_loss(pos, neg, pos, pos, pm, nm)
    with pytest.raises(ValueError, match=r"cpl_rank_loss: `preference_scores`"):
        jl.cpl_rank_loss(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"cpl_objective: pass both"):
        jl.cpl_objective(pos, neg, pm, nm, ref_pos_logps=pos)
    with pytest.raises(TypeError, match=r"cpl_loss: `pos_logps` must be a floating"):
        jl.cpl_loss(np.zeros((2, 4), np.int32), neg, pm, nm)


# ---------------------------------------------------------------- rank mode


def _np_rank_loss(s, p, lam, keep=None):
    n = len(s)
    keep = np.ones(n, bool) if keep is None else keep
    losses = []
    for i, j in itertools.product(range(n), range(n)):
        if keep[i] and keep[j] and p[j] > p[i]:
            losses.append(_np_nls(s[j] - lam * s[i]))
    return float(np.mean(losses)) if losses else 0.0


def test_rank_loss_against_pair_enumeration():
    s = RNG.normal(size=7).astype(np.float32)
    p = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0], np.float32)  # one tie (1.0)
    got = jl.cpl_rank_loss(s, p, contrastive_bias=0.5)
    np.testing.assert_allclose(float(got), _np_rank_loss(s, p, 0.5), rtol=1e-5)


def test_rank_loss_equals_sorted_upper_triangle_without_ties():
    # Reference-implementation form: sort by preference, average the strict upper triangle.
    s = RNG.normal(size=5).astype(np.float64)
    p = RNG.permutation(5).astype(np.float64)
    order = np.argsort(p)
    ss = s[order]
    logits = ss[None, :] - 0.5 * ss[:, None]
    iu = np.triu_indices(5, k=1)
    want = _np_nls(logits[iu]).mean()
    got = jl.cpl_rank_loss(s.astype(np.float32), p.astype(np.float32), contrastive_bias=0.5)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_rank_loss_two_segments_is_pairwise_cpl():
    s = np.array([-0.4, 0.9], np.float32)
    got = jl.cpl_rank_loss(s, np.array([2.0, 1.0], np.float32), contrastive_bias=0.7)
    pair = jl.cpl_loss_from_scores(s[:1], s[1:], contrastive_bias=0.7)
    np.testing.assert_allclose(float(got), float(pair[0]), rtol=1e-6)


def test_rank_loss_mask_equals_filter_and_no_pairs():
    s = RNG.normal(size=6).astype(np.float32)
    p = RNG.normal(size=6).astype(np.float32)
    keep = np.array([1, 0, 1, 1, 0, 1], np.float32)
    s_g = np.where(keep > 0, s, np.nan).astype(np.float32)
    got = jl.cpl_rank_loss(s_g, p, mask=keep)
    want = jl.cpl_rank_loss(s[keep > 0], p[keep > 0])
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    g = jax.grad(lambda x: jl.cpl_rank_loss(x, p, mask=keep))(s_g)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[keep == 0] == 0)
    # All ties: no pair, loss 0, zero gradient.
    ties = np.ones(6, np.float32)
    assert float(jl.cpl_rank_loss(s, ties)) == 0.0
    np.testing.assert_array_equal(np.asarray(jax.grad(jl.cpl_rank_loss)(s, ties)), 0.0)


# ---------------------------------------------------------------- BC and objective


def test_bc_regularizer_hand_computed():
    logps = np.array([[-1.0, -2.0, 50.0], [-4.0, np.nan, np.nan]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    got = jl.cpl_bc_regularizer(logps, mask)
    np.testing.assert_allclose(float(got), (1.0 + 2.0 + 4.0) / 3.0, rtol=1e-6)
    assert float(jl.cpl_bc_regularizer(logps, np.zeros_like(mask))) == 0.0


def test_objective_composition_and_metrics():
    pos, pm = _segments(4, 5, seed=20)
    neg, nm = _segments(4, 3, seed=21)
    alpha, gamma, lam, c = 0.3, 0.9, 0.5, 0.7
    loss, aux = jl.cpl_objective(
        pos, neg, pm, nm, alpha=alpha, gamma=gamma, contrastive_bias=lam, bc_coeff=c
    )
    sp, sn = _np_scores(pos, pm, alpha, gamma), _np_scores(neg, nm, alpha, gamma)
    cpl = _np_nls(sp - lam * sn).mean()
    bc = (-(pos * pm).sum() - (neg * nm).sum()) / (pm.sum() + nm.sum())
    np.testing.assert_allclose(float(aux.cpl), cpl, rtol=1e-5)
    np.testing.assert_allclose(float(aux.bc), bc, rtol=1e-5)
    np.testing.assert_allclose(float(loss), cpl + c * bc, rtol=1e-5)
    np.testing.assert_allclose(float(aux.loss), float(loss), rtol=1e-7)
    np.testing.assert_allclose(float(aux.accuracy), np.mean(sp > sn), rtol=1e-7)
    np.testing.assert_allclose(float(aux.score_pos), sp.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux.score_neg), sn.mean(), rtol=1e-5)
    _, aux_pos = jl.cpl_objective(pos, neg, pm, nm, bc_positive_only=True)
    np.testing.assert_allclose(float(aux_pos.bc), -(pos * pm).sum() / pm.sum(), rtol=1e-5)


def test_objective_with_reference_is_cpl_kl():
    pos, pm = _segments(3, 4, seed=22)
    neg, nm = _segments(3, 4, seed=23)
    rpos, rneg = pos + 0.2, neg - 0.1
    loss, aux = jl.cpl_objective(pos, neg, pm, nm, ref_pos_logps=rpos, ref_neg_logps=rneg)
    want = jl.cpl_kl_loss(pos, neg, rpos, rneg, pm, nm).mean()
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    np.testing.assert_allclose(float(aux.cpl), float(want), rtol=1e-6)
