"""Tests of the reference-based pair losses in `jaxpref.losses._pairwise`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxpref import losses as jl

# Fixed inputs: log-ratios r_w = [1, -0.5, -0.25, 1.25], r_l = [-0.5, -1, 0.5, 1.5],
# margins h = [1.5, 0.5, -0.75, -0.25]; no ties inside any quantity AOT sorts.
C = np.array([-5.0, -12.5, -3.25, -19.75])
R = np.array([-7.0, -11.0, -4.5, -18.0])
RC = np.array([-6.0, -12.0, -3.0, -21.0])
RR = np.array([-6.5, -10.0, -5.0, -19.5])
LC = np.array([4, 10, 1, 16])
LR = np.array([5, 8, 3, 0])


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


# numpy references, written from the papers' formulas.
def ref_dpo(c, r, rc, rr, lc, lr, beta=0.1):
    return -logsig(beta * ((c - rc) - (r - rr)))


def ref_cdpo(c, r, rc, rr, lc, lr, beta=0.1, label_smoothing=0.0):
    z = beta * ((c - rc) - (r - rr))
    return -(1 - label_smoothing) * logsig(z) - label_smoothing * logsig(-z)


def ref_robust(c, r, rc, rr, lc, lr, beta=0.1, label_smoothing=0.0):
    z = beta * ((c - rc) - (r - rr))
    eps = label_smoothing
    return (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps)


def ref_hinge(c, r, rc, rr, lc, lr, beta=0.1):
    return np.maximum(0.0, 1.0 - beta * ((c - rc) - (r - rr)))


def ref_ipo(c, r, rc, rr, lc, lr, beta=0.1):
    h = (c - rc) / np.maximum(lc, 1) - (r - rr) / np.maximum(lr, 1)
    return (h - 1.0 / (2.0 * beta)) ** 2


def ref_exo(c, r, rc, rr, lc, lr, beta=0.1, label_smoothing=1e-3):
    q_w = sig(beta * ((c - rc) - (r - rr)))
    q_l = 1.0 - q_w
    eps = label_smoothing
    return q_w * np.log(q_w / (1 - eps)) + q_l * np.log(q_l / eps)


def ref_nca(c, r, rc, rr, lc, lr, beta=0.1):
    rw, rl = beta * (c - rc), beta * (r - rr)
    return -logsig(rw) - 0.5 * logsig(-rw) - 0.5 * logsig(-rl)


def ref_bco(c, r, rc, rr, lc, lr, beta=0.1):
    return -logsig(beta * (c - rc)) - logsig(-beta * (r - rr))


def ref_sppo(c, r, rc, rr, lc, lr, beta=0.1):
    return ((c - rc) - 1 / (2 * beta)) ** 2 + ((r - rr) + 1 / (2 * beta)) ** 2


def ref_aot(c, r, rc, rr, lc, lr, beta=0.1, label_smoothing=0.0):
    d = np.sort(c - r) - np.sort(rc - rr)
    return -(1 - label_smoothing) * logsig(beta * d) - label_smoothing * logsig(-beta * d)


def ref_aot_unpaired(c, r, rc, rr, lc, lr, beta=0.1, label_smoothing=0.0):
    d = np.sort(c - rc) - np.sort(r - rr)
    return -(1 - label_smoothing) * logsig(beta * d) - label_smoothing * logsig(-beta * d)


def ref_apo_zero(c, r, rc, rr, lc, lr, beta=0.1):
    return (1 - sig(beta * (c - rc))) + sig(beta * (r - rr))


def ref_apo_down(c, r, rc, rr, lc, lr, beta=0.1):
    return sig(beta * (c - rc)) + (1 - sig(beta * ((c - rc) - (r - rr))))


def ref_discopop(c, r, rc, rr, lc, lr, beta=0.1, discopop_tau=0.05):
    z = beta * ((c - rc) - (r - rr))
    m = sig(z / discopop_tau)
    return (1 - m) * -logsig(z) + m * np.exp(-z)


def ref_sigmoid_norm(c, r, rc, rr, lc, lr, beta=0.1):
    h = (c - rc) / np.maximum(lc, 1) - (r - rr) / np.maximum(lr, 1)
    return -logsig(beta * h)


def ref_sft(c, r, rc, rr, lc, lr):
    return np.full(c.shape, -c.sum() / lc.sum())


# (function, numpy reference, hyperparameter sets, needs lengths)
TABLE = [
    (jl.dpo_loss, ref_dpo, [{}, {"beta": 0.5}, {"beta": 2.0}], False),
    (jl.cdpo_loss, ref_cdpo, [{}, {"beta": 0.5, "label_smoothing": 0.2}], False),
    (
        jl.robust_dpo_loss,
        ref_robust,
        [{"label_smoothing": 0.1}, {"beta": 2.0, "label_smoothing": 0.4}],
        False,
    ),
    (jl.hinge_loss, ref_hinge, [{}, {"beta": 0.5}, {"beta": 1.0}], False),
    (jl.ipo_loss, ref_ipo, [{}, {"beta": 0.5}], True),
    (jl.exo_pair_loss, ref_exo, [{}, {"beta": 0.5, "label_smoothing": 0.3}], False),
    (jl.nca_pair_loss, ref_nca, [{}, {"beta": 2.0}], False),
    (jl.bco_pair_loss, ref_bco, [{}, {"beta": 2.0}], False),
    (jl.sppo_hard_loss, ref_sppo, [{}, {"beta": 0.5}], False),
    (jl.aot_loss, ref_aot, [{}, {"beta": 2.0, "label_smoothing": 0.2}], False),
    (jl.aot_unpaired_loss, ref_aot_unpaired, [{}, {"beta": 2.0, "label_smoothing": 0.2}], False),
    (jl.apo_zero_loss, ref_apo_zero, [{}, {"beta": 2.0}], False),
    (jl.apo_down_loss, ref_apo_down, [{}, {"beta": 2.0}], False),
    (jl.discopop_loss, ref_discopop, [{}, {"beta": 2.0, "discopop_tau": 0.5}], False),
    (jl.sigmoid_norm_loss, ref_sigmoid_norm, [{}, {"beta": 2.0}], True),
]
CASES = [(fn, ref, hp, lens) for fn, ref, hps, lens in TABLE for hp in hps]
ALL_FNS = [(fn, lens) for fn, _, _, lens in TABLE]


def _apply(fn, needs_lengths, c, r, rc, rr, lc=LC, lr=LR, **hp):
    if needs_lengths:
        hp = {**hp, "chosen_lengths": lc, "rejected_lengths": lr}
    return fn(c, r, rc, rr, **hp)


def _id(case):
    return getattr(case, "__name__", None) or str(case)


@pytest.mark.parametrize(("fn", "ref", "hparams", "needs_lengths"), CASES, ids=_id)
def test_matches_hand_computed_values(fn, ref, hparams, needs_lengths):
    f32 = [jnp.asarray(x, jnp.float32) for x in (C, R, RC, RR)]
    got = _apply(fn, needs_lengths, *f32, **hparams)
    assert got.shape == (4,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref(C, R, RC, RR, LC, LR, **hparams), rtol=1e-5, atol=1e-6)


def test_sft_matches_hand_computed_values():
    got = jl.sft_loss(jnp.asarray(C, jnp.float32), jnp.asarray(R), chosen_lengths=LC)
    # -(-5 - 12.5 - 3.25 - 19.75) / (4 + 10 + 1 + 16) = 40.5 / 31
    np.testing.assert_allclose(got, np.full(4, 40.5 / 31), rtol=1e-6)
    np.testing.assert_allclose(got, ref_sft(C, R, RC, RR, LC, LR), rtol=1e-6)


def test_literal_values():
    one = lambda v: jnp.array([v])
    # h = 2, beta = 0.5: -log sigmoid(1) = log(1 + e^-1).
    loss = jl.dpo_loss(one(-5.0), one(-7.0), one(-6.0), one(-6.0), beta=0.5)
    np.testing.assert_allclose(loss, [0.31326169], rtol=1e-6)
    # r_w = 1, r_l = -1, beta = 0.25: (1 - 2)^2 + (-1 + 2)^2 = 2.
    loss = jl.sppo_hard_loss(one(-5.0), one(-7.0), one(-6.0), one(-6.0), beta=0.25)
    np.testing.assert_allclose(loss, [2.0], rtol=1e-6)
    # h = 2, beta = 0.2: 1 - 0.4.
    loss = jl.hinge_loss(one(-5.0), one(-7.0), one(-6.0), one(-6.0), beta=0.2)
    np.testing.assert_allclose(loss, [0.6], rtol=1e-6)


@pytest.mark.parametrize(("fn", "ref", "hparams", "needs_lengths"), CASES[::2], ids=_id)
def test_gradients_match_finite_differences(fn, ref, hparams, needs_lengths):
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(x, jnp.float64) for x in (C, R, RC, RR))
        f = lambda c, r, rc, rr: _apply(fn, needs_lengths, c, r, rc, rr, **hparams)
        assert f(*args).dtype == jnp.float64
        check_grads(f, args, order=1, modes=["rev"])


def test_sft_gradient():
    with jax.enable_x64(True):
        c, r = jnp.asarray(C), jnp.asarray(R)
        f = lambda c: jl.sft_loss(c, r, chosen_lengths=LC)
        check_grads(f, (c,), order=1, modes=["rev"])
        grad = jax.grad(lambda c: jnp.mean(f(c)))(c)
        np.testing.assert_allclose(grad, np.full(4, -1.0 / LC.sum()), rtol=1e-12)


@pytest.mark.parametrize(("fn", "needs_lengths"), ALL_FNS, ids=_id)
def test_jit_equals_eager(fn, needs_lengths):
    args = [jnp.asarray(x, jnp.float32) for x in (C, R, RC, RR)]
    eager = _apply(fn, needs_lengths, *args, beta=0.7)
    jitted = jax.jit(functools.partial(_apply, fn, needs_lengths, beta=0.7))(*args)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("fn", "needs_lengths"), ALL_FNS, ids=_id)
def test_vmap_equals_loop(fn, needs_lengths):
    rng = np.random.default_rng(0)
    stacked = [jnp.asarray(rng.normal(-8.0, 3.0, size=(3, 4)), jnp.float32) for _ in range(4)]
    lengths = [jnp.asarray(rng.integers(0, 9, size=(3, 4))) for _ in range(2)]
    f = lambda c, r, rc, rr, lc, lr: _apply(fn, needs_lengths, c, r, rc, rr, lc, lr, beta=0.3)
    batched = jax.vmap(f)(*stacked, *lengths)
    looped = jnp.stack([f(*(x[k] for x in stacked + lengths)) for k in range(3)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("fn", "needs_lengths"), [*ALL_FNS, (jl.cdpo_loss, False)], ids=_id)
def test_bf16_inputs_give_f32_outputs(fn, needs_lengths):
    bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (C, R, RC, RR)]
    got = _apply(fn, needs_lengths, *bf16)
    assert got.dtype == jnp.float32
    upcast = _apply(fn, needs_lengths, *(x.astype(jnp.float32) for x in bf16))
    np.testing.assert_allclose(got, upcast, rtol=1e-6)


def test_sft_bf16_inputs_give_f32_outputs():
    got = jl.sft_loss(jnp.asarray(C, jnp.bfloat16), jnp.asarray(R, jnp.bfloat16), chosen_lengths=LC)
    assert got.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Limit cases and identities.

ARGS = [jnp.asarray(x, jnp.float32) for x in (C, R, RC, RR)]


def test_robust_and_cdpo_at_zero_smoothing_are_dpo():
    dpo = jl.dpo_loss(*ARGS, beta=0.5)
    np.testing.assert_allclose(jl.robust_dpo_loss(*ARGS, beta=0.5, label_smoothing=0.0), dpo)
    np.testing.assert_allclose(jl.cdpo_loss(*ARGS, beta=0.5, label_smoothing=0.0), dpo)
    np.testing.assert_allclose(jl.cdpo_loss(*ARGS, beta=0.5), dpo)


def test_robust_is_unbiased_under_label_flips():
    # E over a flip with prob. eps of the robust loss equals the clean DPO loss.
    eps = 0.2
    flipped = [ARGS[1], ARGS[0], ARGS[3], ARGS[2]]
    expected = (1 - eps) * jl.robust_dpo_loss(
        *ARGS, label_smoothing=eps
    ) + eps * jl.robust_dpo_loss(*flipped, label_smoothing=eps)
    np.testing.assert_allclose(expected, jl.dpo_loss(*ARGS), rtol=1e-5)


@pytest.mark.parametrize("fn", [jl.aot_loss, jl.aot_unpaired_loss], ids=_id)
def test_aot_with_one_pair_is_dpo(fn):
    for i in range(4):
        one = [x[i : i + 1] for x in ARGS]
        np.testing.assert_allclose(fn(*one, beta=0.7), jl.dpo_loss(*one, beta=0.7), rtol=1e-6)
        np.testing.assert_allclose(
            fn(*one, beta=0.7, label_smoothing=0.3),
            jl.cdpo_loss(*one, beta=0.7, label_smoothing=0.3),
            rtol=1e-6,
        )


def test_aot_is_permutation_invariant_and_sorts():
    perm = np.array([2, 0, 3, 1])
    for fn in (jl.aot_loss, jl.aot_unpaired_loss):
        np.testing.assert_allclose(fn(*ARGS), fn(*(x[perm] for x in ARGS)), rtol=1e-6)
    # Same quantiles for policy and reference log-ratio gaps -> every d_i = 0 -> log 2.
    c, r = ARGS[0], ARGS[1]
    gaps = c - r
    ref_r = jnp.zeros(4)
    ref_c = gaps[::-1]
    np.testing.assert_allclose(jl.aot_loss(c, r, ref_c, ref_r), np.full(4, np.log(2.0)), rtol=1e-6)


def test_unit_lengths_give_unnormalised_forms():
    ones = jnp.ones(4, jnp.int32)
    np.testing.assert_allclose(
        jl.sigmoid_norm_loss(*ARGS, beta=0.5, chosen_lengths=ones, rejected_lengths=ones),
        jl.dpo_loss(*ARGS, beta=0.5),
        rtol=1e-6,
    )
    h = (C - RC) - (R - RR)
    np.testing.assert_allclose(
        jl.ipo_loss(*ARGS, beta=0.5, chosen_lengths=ones, rejected_lengths=ones),
        (h - 1.0) ** 2,
        rtol=1e-6,
    )
    # Zero lengths are clamped to one token, as in TRL.
    zeros = jnp.zeros(4, jnp.int32)
    np.testing.assert_allclose(
        jl.ipo_loss(*ARGS, chosen_lengths=zeros, rejected_lengths=zeros),
        jl.ipo_loss(*ARGS, chosen_lengths=ones, rejected_lengths=ones),
    )


def test_exo_is_zero_at_the_smoothed_label():
    # q_w = sigmoid(beta h) = 1 - eps makes q equal to the target distribution: KL = 0.
    eps, beta = 0.1, 0.5
    h = np.log((1 - eps) / eps) / beta
    loss = jl.exo_pair_loss(
        jnp.array([h]), jnp.array([0.0]), jnp.array([0.0]), jnp.array([0.0]),
        beta=beta, label_smoothing=eps,
    )  # fmt: skip
    np.testing.assert_allclose(loss, [0.0], atol=1e-6)
    assert np.all(np.asarray(jl.exo_pair_loss(*ARGS, label_smoothing=eps)) >= 0.0)


def test_discopop_small_tau_switches_between_logistic_and_exponential():
    beta = 1.0
    h = (C - RC) - (R - RR)  # [1.5, 0.5, -0.75, -0.25]
    got = jl.discopop_loss(*ARGS, beta=beta, discopop_tau=1e-4)
    expected = np.where(h > 0, np.exp(-beta * h), -logsig(beta * h))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sppo_hard_and_hinge_minima():
    beta = 0.25
    zero = jnp.zeros(1)
    loss = jl.sppo_hard_loss(zero + 2.0, zero - 2.0, zero, zero, beta=beta)
    np.testing.assert_allclose(loss, [0.0], atol=1e-7)
    loss = jl.hinge_loss(zero + 2.0, zero - 2.0, zero, zero, beta=beta)
    np.testing.assert_allclose(loss, [0.0], atol=1e-7)


def test_apo_anchors():
    zero = jnp.zeros(4)
    # At the reference: APO-zero = (1 - 1/2) + 1/2, APO-down = 1/2 + (1 - 1/2).
    np.testing.assert_allclose(jl.apo_zero_loss(zero, zero, zero, zero), np.ones(4), rtol=1e-6)
    np.testing.assert_allclose(jl.apo_down_loss(zero, zero, zero, zero), np.ones(4), rtol=1e-6)


def test_large_margins_give_finite_values_and_gradients():
    big = jnp.array([-3000.0, -1.0, 0.0, 2500.0])
    zero = jnp.zeros(4)
    lengths = {"chosen_lengths": jnp.ones(4), "rejected_lengths": jnp.ones(4)}
    for fn, needs_lengths in [*ALL_FNS, (jl.cdpo_loss, False)]:
        kw = lengths if needs_lengths else {}
        f = lambda c, fn=fn, kw=kw: jnp.sum(fn(c, -c, zero, zero, **kw))
        assert np.all(np.isfinite(np.asarray(fn(big, -big, zero, zero, **kw)))), fn.__name__
        assert np.all(np.isfinite(np.asarray(jax.grad(f)(big)))), fn.__name__


def test_sft_without_tokens_is_zero_with_finite_gradient():
    zero = jnp.zeros(3)
    lengths = jnp.zeros(3, jnp.int32)
    np.testing.assert_allclose(jl.sft_loss(zero, zero, chosen_lengths=lengths), np.zeros(3))
    grad = jax.grad(lambda c: jnp.sum(jl.sft_loss(c, zero, chosen_lengths=lengths)))(zero)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_traced_hyperparameters_are_accepted():
    f = jax.jit(lambda beta, eps: jl.robust_dpo_loss(*ARGS, beta=beta, label_smoothing=eps))
    np.testing.assert_allclose(
        f(0.5, 0.1), jl.robust_dpo_loss(*ARGS, beta=0.5, label_smoothing=0.1), rtol=1e-6
    )
    # d/dbeta of -log sigmoid(beta h) = -h sigmoid(-beta h).
    h = (C - RC) - (R - RR)
    grad = jax.grad(lambda b: jnp.sum(jl.dpo_loss(*ARGS, beta=b)))(0.5)
    np.testing.assert_allclose(grad, np.sum(-h * sig(-0.5 * h)), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Argument errors.


def test_shape_mismatch_names_argument_and_shapes():
    with pytest.raises(ValueError, match=r"dpo_loss.*`rejected_logps`.*\(4,\).*\(3,\)"):
        jl.dpo_loss(ARGS[0], ARGS[1][:3], ARGS[2], ARGS[3])
    with pytest.raises(ValueError, match=r"ipo_loss.*`rejected_lengths`.*\(4,\).*\(2,\)"):
        jl.ipo_loss(*ARGS, chosen_lengths=LC, rejected_lengths=LR[:2])
    with pytest.raises(ValueError, match=r"aot_loss.*`ref_rejected_logps`"):
        jl.aot_loss(*ARGS[:3], ARGS[3][None])
    with pytest.raises(ValueError, match=r"hinge_loss.*`chosen_logps`.*rank 1"):
        jl.hinge_loss(ARGS[0][None], ARGS[1][None], ARGS[2][None], ARGS[3][None])
    with pytest.raises(TypeError, match=r"nca_pair_loss.*`chosen_logps`.*floating"):
        jl.nca_pair_loss(jnp.arange(4), *ARGS[1:])


@pytest.mark.parametrize("fn", [jl.ipo_loss, jl.sigmoid_norm_loss], ids=_id)
def test_missing_lengths_raise(fn):
    with pytest.raises(ValueError, match="`chosen_lengths` and `rejected_lengths`"):
        fn(*ARGS)
    with pytest.raises(ValueError, match="`rejected_lengths`"):
        fn(*ARGS, chosen_lengths=LC)
    with pytest.raises(ValueError, match=r"sft_loss.*`chosen_lengths`"):
        jl.sft_loss(ARGS[0], ARGS[1])


@pytest.mark.parametrize(
    ("fn", "hparams", "message"),
    [
        (jl.dpo_loss, {"beta": 0.0}, "`beta` must be > 0"),
        (jl.ipo_loss, {"beta": -1.0, "chosen_lengths": LC, "rejected_lengths": LR}, "`beta`"),
        (
            jl.robust_dpo_loss,
            {"label_smoothing": 0.5},
            r"`label_smoothing` must lie in \[0.0, 0.5\)",
        ),
        (jl.robust_dpo_loss, {"label_smoothing": -0.1}, "`label_smoothing`"),
        (jl.exo_pair_loss, {"label_smoothing": 0.0}, r"\(0.0, 1.0\)"),
        (jl.exo_pair_loss, {"label_smoothing": 1.0}, r"\(0.0, 1.0\)"),
        (jl.cdpo_loss, {"label_smoothing": 1.5}, r"\[0.0, 1.0\]"),
        (jl.aot_loss, {"label_smoothing": -0.5}, r"\[0.0, 1.0\]"),
        (jl.aot_unpaired_loss, {"beta": 0}, "`beta`"),
        (jl.discopop_loss, {"discopop_tau": 0.0}, "`discopop_tau` must be > 0"),
    ],
)
def test_hyperparameter_ranges_are_checked(fn, hparams, message):
    with pytest.raises(ValueError, match=message):
        fn(*ARGS, **hparams)
