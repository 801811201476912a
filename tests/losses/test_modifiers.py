"""Tests of the pair-loss modifiers: f-divergence links, WPO, LD-DPO and multi-loss weights."""

import collections
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxpref.losses
from jaxpref.losses import (
    alpha_divergence_link,
    combine_losses,
    f_divergence_link,
    forward_kl_link,
    js_divergence_link,
    ld_sequence_logps,
    log_sum_squared_probs,
    reverse_kl_link,
    with_f_divergence,
    wpo_weights,
)


def _np_logsig(z):
    return -np.logaddexp(0.0, -np.asarray(z, np.float64))


def sigmoid_pair_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta):
    """DPO sigmoid loss written here so the modifiers are tested on their own."""
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -jax.nn.log_sigmoid(beta * h)


def hinge_pair_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta):
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return jax.nn.relu(1.0 - beta * h)


def _logratios(seed=0, n=8, scale=2.0):
    return np.random.default_rng(seed).normal(0.0, scale, size=n).astype(np.float32)


# ----------------------------------------------------------------------------------- the links


def test_link_hand_values():
    u = _logratios(1)
    u64 = u.astype(np.float64)
    np.testing.assert_array_equal(reverse_kl_link(u), u)
    np.testing.assert_allclose(forward_kl_link(u), 1.0 - np.exp(-u64), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        js_divergence_link(u), np.log(2 * np.exp(u64) / (1 + np.exp(u64))), rtol=1e-5, atol=1e-7
    )
    for coef in (0.5, 0.2, 1.5):
        want = (np.exp(u64) ** (coef - 1) - 1) / (coef - 1)
        np.testing.assert_allclose(alpha_divergence_link(u, coef=coef), want, rtol=1e-5, atol=1e-7)


def test_alpha_divergence_clamps_exponent_at_80():
    u = np.array([-200.0, -170.0, -150.0, 0.0], np.float32)
    got = alpha_divergence_link(u, coef=0.5)  # exponent (coef - 1) u = 100, 85, 75, 0
    want = np.array([math.expm1(80.0), math.expm1(80.0), math.expm1(75.0), 0.0]) / -0.5
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.isfinite(got))
    g = jax.grad(lambda x: jnp.sum(alpha_divergence_link(x, coef=0.5)))(u)
    np.testing.assert_array_equal(np.asarray(g)[:2], 0.0)
    np.testing.assert_allclose(g[2:], [np.exp(75.0), 1.0], rtol=1e-5)


def test_alpha_divergence_coef_one_is_reverse_kl():
    u = _logratios(2)
    np.testing.assert_array_equal(alpha_divergence_link(u, coef=1.0), u)
    np.testing.assert_array_equal(alpha_divergence_link(u, coef=1.0 + 5e-7), u)
    # (e^{eps u} - 1) / eps = u + eps u^2 / 2 + O(eps^2): the gap is bounded by eps u^2.
    for eps in (1e-3, -1e-3):
        gap = np.abs(np.asarray(alpha_divergence_link(u, coef=1.0 + eps)) - u)
        assert np.all(gap <= abs(eps) * u.astype(np.float64) ** 2 + 1e-6)
        assert np.max(gap) > 0


def test_f_divergence_link_lookup():
    u = _logratios(3)
    assert f_divergence_link("reverse_kl") is reverse_kl_link
    assert f_divergence_link("forward_kl") is forward_kl_link
    assert f_divergence_link("js_divergence") is js_divergence_link
    np.testing.assert_array_equal(
        f_divergence_link("alpha_divergence", alpha=0.3)(u), alpha_divergence_link(u, coef=0.3)
    )
    np.testing.assert_array_equal(
        f_divergence_link("alpha_divergence")(u), alpha_divergence_link(u, coef=0.5)
    )
    with pytest.raises(ValueError, match=r"f_divergence_link: unknown f-divergence 'kl'"):
        f_divergence_link("kl")


def test_with_f_divergence_hand_values():
    rng = np.random.default_rng(4)
    c, r, rc, rr = (rng.normal(-10, 2, size=6).astype(np.float32) for _ in range(4))
    loss = with_f_divergence(sigmoid_pair_loss, "js_divergence")
    uw = c.astype(np.float64) - rc
    ul = r.astype(np.float64) - rr
    js = lambda u: np.log(2.0) + _np_logsig(u)
    want = -_np_logsig(0.7 * (js(uw) - js(ul)))
    np.testing.assert_allclose(loss(c, r, rc, rr, beta=0.7), want, rtol=1e-5, atol=1e-7)
    # The reverse-KL link leaves the loss unchanged.
    np.testing.assert_allclose(
        with_f_divergence(sigmoid_pair_loss, reverse_kl_link)(c, r, rc, rr, beta=0.7),
        sigmoid_pair_loss(c, r, rc, rr, beta=0.7),
        rtol=1e-6,
    )
    assert loss.__name__ == "sigmoid_pair_loss_js_divergence"
    with pytest.raises(ValueError, match=r"with_f_divergence: `ref_rejected_logps` must have"):
        loss(c, r, rc, rr[:2], beta=0.7)
    with pytest.raises(TypeError, match=r"with_f_divergence: `link`"):
        with_f_divergence(sigmoid_pair_loss, 3)


def test_with_f_divergence_gradients():
    rng = np.random.default_rng(5)
    c, r, rc, rr = (jnp.asarray(rng.normal(-3, 0.5, size=4), jnp.float32) for _ in range(4))
    for name in ("forward_kl", "js_divergence", "alpha_divergence"):
        loss = with_f_divergence(sigmoid_pair_loss, name, alpha=0.4)
        check_grads(
            jax.jit(lambda a, b, loss=loss: jnp.sum(loss(a, b, rc, rr, beta=0.5))),
            (c, r),
            order=1,
            modes=("rev",),
        )


# --------------------------------------------------------------------------------------- WPO


def _token_data(seed=0, b=3, t=6, v=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(b, t, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, t))
    logp = jax.nn.log_softmax(logits, axis=-1)
    per_token = np.take_along_axis(np.asarray(logp), tokens[..., None], axis=-1)[..., 0]
    lens = rng.integers(1, t + 1, size=b)
    mask = (np.arange(t)[None, :] < lens[:, None]).astype(np.float32)
    return logits, per_token.astype(np.float32), mask


def test_log_sum_squared_probs_hand_values():
    logits, _, _ = _token_data(6)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    got = log_sum_squared_probs(logits)
    np.testing.assert_allclose(got, np.log((p**2).sum(-1)), rtol=1e-5, atol=1e-6)
    assert got.shape == logits.shape[:-1] and got.dtype == jnp.float32
    # Uniform distribution: log(1/V); one-hot limit: 0.
    np.testing.assert_allclose(log_sum_squared_probs(jnp.zeros((2, 5))), np.log(1 / 5), rtol=1e-6)
    big = jnp.array([1e4, 0.0, -1e4])
    np.testing.assert_allclose(log_sum_squared_probs(big), 0.0, atol=1e-6)
    bf = log_sum_squared_probs(jnp.asarray(logits, jnp.bfloat16))
    assert bf.dtype == jnp.float32
    np.testing.assert_allclose(
        bf,
        log_sum_squared_probs(jnp.asarray(jnp.asarray(logits, jnp.bfloat16), jnp.float32)),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match=r"log_sum_squared_probs: `logits` must have rank"):
        log_sum_squared_probs(jnp.float32(1.0))


def test_log_sum_squared_probs_matches_trl_kernel():
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    logits, _, _ = _token_data(7, b=2, t=5, v=9)
    flat = torch.tensor(logits.reshape(-1, 9))
    # hidden @ eye(V).T == logits, so the kernel sees exactly these logits.
    out = ChunkedLogProbFunction.apply(
        flat, torch.eye(9), None, torch.zeros(flat.shape[0], dtype=torch.long), 1.0, 4
    )
    np.testing.assert_allclose(
        log_sum_squared_probs(logits).reshape(-1), out[2].numpy(), rtol=1e-5, atol=1e-6
    )


def test_wpo_weights_hand_values_mask_and_no_grad():
    logits, per_token, mask = _token_data(8)
    lssp = np.asarray(log_sum_squared_probs(logits))
    got = wpo_weights(per_token, lssp, mask)
    aligned = (per_token.astype(np.float64) - lssp) * mask
    want = np.exp(aligned.sum(-1) / np.maximum(mask.sum(-1), 1))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Values at masked positions never matter, even inf/nan.
    garbage = np.where(mask > 0, lssp, np.inf).astype(np.float32)
    np.testing.assert_allclose(wpo_weights(per_token, garbage, mask), got, rtol=1e-6)
    # Fully masked row: weight 1, finite zero gradient.
    zero = np.zeros_like(mask)
    np.testing.assert_array_equal(wpo_weights(per_token, lssp, zero), 1.0)
    g = jax.grad(lambda a, b: jnp.sum(wpo_weights(a, b, mask)), argnums=(0, 1))(per_token, lssp)
    for gi in g:
        np.testing.assert_array_equal(gi, 0.0)
    with pytest.raises(ValueError, match=r"wpo_weights: `mask` must have the shape"):
        wpo_weights(per_token, lssp, mask[:, :2])


# ------------------------------------------------------------------------------------ LD-DPO


def _ld_data(seed=0, b=4, t=7):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-3, -0.1, size=(b, t)).astype(np.float32)
    r = rng.uniform(-3, -0.1, size=(b, t)).astype(np.float32)
    lc = rng.integers(0, t + 1, size=b)
    lr = rng.integers(0, t + 1, size=b)
    lc[0], lr[0] = 5, 2
    mc = np.arange(t)[None] < lc[:, None]
    mr = np.arange(t)[None] < lr[:, None]
    return c, r, mc, mr


def test_ld_hand_values():
    c, r, mc, mr = _ld_data(9)
    alpha = 0.3
    got_c, got_r = ld_sequence_logps(c, r, mc, mr, ld_alpha=alpha)
    shared = np.minimum(mc.sum(1), mr.sum(1))
    for b in range(c.shape[0]):
        for seq, m, got in ((c, mc, got_c), (r, mr, got_r)):
            vals = seq[b][m[b]].astype(np.float64)
            want = vals[: shared[b]].sum() + alpha * vals[shared[b] :].sum()
            np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)
    c1, r1 = ld_sequence_logps(
        jnp.array([[-1.0, -1.0, -1.0]]),
        jnp.array([[-2.0, 0.0, 0.0]]),
        jnp.array([[1, 1, 1]]),
        jnp.array([[1, 0, 0]]),
        ld_alpha=0.5,
    )
    np.testing.assert_allclose([c1[0], r1[0]], [-1.0 - 0.5 * 2.0, -2.0], rtol=1e-6)


def test_ld_alpha_one_is_plain_sum_and_zero_truncates():
    c, r, mc, mr = _ld_data(10)
    got_c, got_r = ld_sequence_logps(c, r, mc, mr, ld_alpha=1.0)
    np.testing.assert_allclose(got_c, (c * mc).sum(1), rtol=1e-6)
    np.testing.assert_allclose(got_r, (r * mr).sum(1), rtol=1e-6)
    z_c, z_r = ld_sequence_logps(c, r, mc, mr, ld_alpha=0.0)
    shared = np.minimum(mc.sum(1), mr.sum(1))
    trunc = np.arange(c.shape[1])[None] < shared[:, None]
    np.testing.assert_allclose(z_c, (c * (mc & trunc)).sum(1), rtol=1e-6)
    np.testing.assert_allclose(z_r, (r * (mr & trunc)).sum(1), rtol=1e-6)


def test_ld_left_padding_equals_right_padding():
    c, r, mc, mr = _ld_data(11)
    right = ld_sequence_logps(c, r, mc, mr, ld_alpha=0.4)

    def left_pad(x, m):
        out_x, out_m = np.zeros_like(x), np.zeros_like(m)
        for b in range(x.shape[0]):
            n = int(m[b].sum())
            if n:
                out_x[b, -n:] = x[b, :n]
                out_m[b, -n:] = True
        return out_x, out_m

    lc, lmc = left_pad(c, mc)
    lr, lmr = left_pad(r, mr)
    left = ld_sequence_logps(lc, lr, lmc, lmr, ld_alpha=0.4)
    np.testing.assert_allclose(left[0], right[0], rtol=1e-6)
    np.testing.assert_allclose(left[1], right[1], rtol=1e-6)


def test_ld_masked_values_ignored_and_gradients():
    c, r, mc, mr = _ld_data(12)
    garbage_c = np.where(mc, c, np.nan).astype(np.float32)
    out = ld_sequence_logps(garbage_c, r, mc, mr, ld_alpha=0.4)
    np.testing.assert_allclose(out[0], ld_sequence_logps(c, r, mc, mr, ld_alpha=0.4)[0], rtol=1e-6)
    g = jax.grad(lambda a: jnp.sum(ld_sequence_logps(a, r, mc, mr, ld_alpha=0.4)[0]))(garbage_c)
    shared = np.minimum(mc.sum(1), mr.sum(1))
    pos = np.cumsum(mc, axis=1)
    want = np.where(mc, np.where(pos <= shared[:, None], 1.0, 0.4), 0.0)
    np.testing.assert_allclose(g, want, rtol=1e-6)


def test_ld_shape_errors():
    c, r, mc, mr = _ld_data(13)
    with pytest.raises(ValueError, match=r"ld_sequence_logps: `chosen_mask` must have the shape"):
        ld_sequence_logps(c, r, mc[:, :2], mr, ld_alpha=0.5)
    with pytest.raises(ValueError, match=r"ld_sequence_logps: `rejected_token_logps` must have"):
        ld_sequence_logps(c, r[:2], mc, mr[:2], ld_alpha=0.5)
    with pytest.raises(ValueError, match=r"ld_sequence_logps: `chosen_token_logps` must have rank"):
        ld_sequence_logps(c[0], r, mc[0], mr, ld_alpha=0.5)


# -------------------------------------------------------------------------------- multi-loss


def test_combine_losses_hand_values():
    rng = np.random.default_rng(14)
    c, r, rc, rr = (rng.normal(-5, 1, size=5).astype(np.float32) for _ in range(4))
    combined = combine_losses(
        (functools.partial(sigmoid_pair_loss, beta=0.5), 0.8),
        (functools.partial(hinge_pair_loss, beta=0.5), 0.2),
    )
    h = (c.astype(np.float64) - rc) - (r - rr)
    want = 0.8 * -_np_logsig(0.5 * h) + 0.2 * np.maximum(0.0, 1 - 0.5 * h)
    got = combined(c, r, rc, rr)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jit(combined)(c, r, rc, rr), got, rtol=1e-6)
    # Shared keyword arguments reach every loss.
    shared = combine_losses((sigmoid_pair_loss, 1.0), (hinge_pair_loss, 3.0))
    np.testing.assert_allclose(
        shared(c, r, rc, rr, beta=0.2),
        sigmoid_pair_loss(c, r, rc, rr, beta=0.2) + 3.0 * hinge_pair_loss(c, r, rc, rr, beta=0.2),
        rtol=1e-6,
    )


def test_combine_losses_errors():
    with pytest.raises(ValueError, match=r"combine_losses: at least one"):
        combine_losses()
    with pytest.raises(TypeError, match=r"combine_losses: term 0 must be a"):
        combine_losses(sigmoid_pair_loss)
    with pytest.raises(TypeError, match=r"combine_losses: term 1 loss_fn must be callable"):
        combine_losses((sigmoid_pair_loss, 1.0), ("sigmoid", 1.0))
    with pytest.raises(TypeError, match=r"combine_losses: term 0 weight must be a real"):
        combine_losses((sigmoid_pair_loss, "1"))


# ------------------------------------------------------------------------------------ TRL parity


def _dpo_batch(seed, b=4, t=8):
    rng = np.random.default_rng(seed)
    n = 2 * b
    cmask = np.zeros((n, t), np.int64)
    for i in range(n):
        start = rng.integers(1, 3)
        length = rng.integers(1, t - start + 1)
        cmask[i, start : start + length] = 1
    shift = cmask[:, 1:].astype(bool)
    logits = rng.normal(0, 2.0, size=(n, t - 1, 6)).astype(np.float32)
    tokens = rng.integers(0, 6, size=(n, t - 1))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    per_token = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    per_token = np.where(shift, per_token, 0.0).astype(np.float32)
    lssp = np.where(shift, np.asarray(log_sum_squared_probs(logits)), 0.0).astype(np.float32)
    ref_per_token = np.where(shift, per_token + rng.normal(0, 0.5, size=per_token.shape), 0.0)
    return cmask, shift, per_token, lssp, ref_per_token.astype(np.float32)


def _trl_dpo_loss(
    cmask,
    per_token,
    lssp,
    ref_per_token,
    *,
    loss_types,
    loss_weights,
    f_div="reverse_kl",
    f_alpha=0.5,
    use_weighting=False,
    ld_alpha=None,
    beta=0.1,
):
    """Runs TRL's real `DPOTrainer._compute_loss` with models that return given log-probs."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer

    def fake_model(log_probs, lssp_values):
        def model(**_):
            zeros = torch.zeros(log_probs.shape)
            return types.SimpleNamespace(
                log_probs=torch.tensor(log_probs),
                log_sum_sq_probs=None if lssp_values is None else torch.tensor(lssp_values),
                entropy=zeros,
                mean_logits=zeros,
                is_top1=torch.zeros(log_probs.shape, dtype=torch.bool),
            )

        return model

    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True, is_gradient_checkpointing=False),
        ref_model=fake_model(ref_per_token, None),
        accelerator=types.SimpleNamespace(
            device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x
        ),
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05),
        aux_loss_enabled=False,
        precompute_ref_logps=False,
        ld_alpha=ld_alpha,
        f_divergence_type=f_div,
        f_alpha_divergence_coef=f_alpha,
        loss_types=loss_types,
        loss_weights=loss_weights,
        beta=beta,
        label_smoothing=0.0,
        use_weighting=use_weighting,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(cmask.shape, dtype=torch.long),
        "attention_mask": torch.ones(cmask.shape, dtype=torch.long),
        "completion_mask": torch.tensor(cmask),
    }
    model = fake_model(per_token, lssp)
    return float(DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False))


def _halves(x):
    b = x.shape[0] // 2
    return x[:b], x[b:]


@pytest.mark.parametrize(
    "f_div,f_alpha",
    [
        ("reverse_kl", 0.5),
        ("forward_kl", 0.5),
        ("js_divergence", 0.5),
        ("alpha_divergence", 0.5),
        ("alpha_divergence", 0.2),
    ],
)
def test_f_divergence_matches_trl(f_div, f_alpha):
    cmask, _, per_token, lssp, ref_per_token = _dpo_batch(15)
    want = _trl_dpo_loss(
        cmask,
        per_token,
        lssp,
        ref_per_token,
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        f_div=f_div,
        f_alpha=f_alpha,
        beta=0.5,
    )
    c, r = _halves(per_token.sum(1))
    rc, rr = _halves(ref_per_token.sum(1))
    loss = with_f_divergence(sigmoid_pair_loss, f_div, alpha=f_alpha)
    np.testing.assert_allclose(float(jnp.mean(loss(c, r, rc, rr, beta=0.5))), want, rtol=1e-5)
    # The package's own DPO loss composes the same way.
    dpo_loss = getattr(jaxpref.losses, "dpo_loss", None)
    if dpo_loss is not None:
        loss = with_f_divergence(dpo_loss, f_div, alpha=f_alpha)
        np.testing.assert_allclose(float(jnp.mean(loss(c, r, rc, rr, beta=0.5))), want, rtol=1e-5)


def test_wpo_ld_multiloss_match_trl():
    cmask, shift, per_token, lssp, ref_per_token = _dpo_batch(16)
    kwargs = dict(loss_types=["sigmoid", "hinge"], loss_weights=[0.8, 0.3], beta=0.4)
    cm, rm = _halves(shift)
    pc, pr = _halves(per_token)
    qc, qr = _halves(ref_per_token)
    sc, sr = _halves(lssp)
    combined = combine_losses(
        (functools.partial(sigmoid_pair_loss, beta=0.4), 0.8),
        (functools.partial(hinge_pair_loss, beta=0.4), 0.3),
    )

    # Multi-loss alone.
    want = _trl_dpo_loss(cmask, per_token, lssp, ref_per_token, **kwargs)
    got = combined(pc.sum(1), pr.sum(1), qc.sum(1), qr.sum(1))
    np.testing.assert_allclose(float(jnp.mean(got)), want, rtol=1e-5)

    # LD-DPO on policy and reference alike.
    want = _trl_dpo_loss(cmask, per_token, lssp, ref_per_token, ld_alpha=0.3, **kwargs)
    c, r = ld_sequence_logps(pc, pr, cm, rm, ld_alpha=0.3)
    rc, rr = ld_sequence_logps(qc, qr, cm, rm, ld_alpha=0.3)
    np.testing.assert_allclose(float(jnp.mean(combined(c, r, rc, rr))), want, rtol=1e-5)

    # WPO weights, with LD-DPO and a JS link on top.
    want = _trl_dpo_loss(
        cmask,
        per_token,
        lssp,
        ref_per_token,
        ld_alpha=0.3,
        use_weighting=True,
        f_div="js_divergence",
        **kwargs,
    )
    weights = wpo_weights(pc, sc, cm) * wpo_weights(pr, sr, rm)
    loss = with_f_divergence(combined, "js_divergence")
    np.testing.assert_allclose(float(jnp.mean(loss(c, r, rc, rr) * weights)), want, rtol=1e-5)


# ------------------------------------------------------------------------- generic properties

_CASES = {
    "reverse_kl": lambda u, m: reverse_kl_link(u),
    "forward_kl": lambda u, m: forward_kl_link(u),
    "js": lambda u, m: js_divergence_link(u),
    "alpha": lambda u, m: alpha_divergence_link(u, coef=0.3),
    "wpo": lambda u, m: wpo_weights(u, 0.5 * u, m),
    "ld": lambda u, m: jnp.stack(ld_sequence_logps(u, 2.0 * u, m, m[::-1], ld_alpha=0.25)),
    "lssp": lambda u, m: log_sum_squared_probs(u),
    "f_div_sigmoid": lambda u, m: with_f_divergence(sigmoid_pair_loss, "forward_kl")(
        u[0], u[1], u[2], u[3], beta=0.3
    ),
}


def _case_args(seed):
    rng = np.random.default_rng(seed)
    u = rng.normal(-0.5, 1.0, size=(4, 5)).astype(np.float32)
    m = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 1, 0, 0]], np.float32)
    return u, m


@pytest.mark.parametrize("name", sorted(_CASES))
def test_jit_equals_eager(name):
    fn = _CASES[name]
    args = _case_args(17)
    np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_vmap_equals_loop(name):
    fn = _CASES[name]
    stacked = [np.stack(z) for z in zip(*[_case_args(30 + i) for i in range(3)], strict=True)]
    got = jax.vmap(fn)(*stacked)
    jfn = jax.jit(fn)
    want = np.stack([jfn(*[x[i] for x in stacked]) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(set(_CASES) - {"wpo"}))
def test_gradients_match_finite_differences(name):
    fn = _CASES[name]
    u, m = _case_args(18)
    check_grads(jax.jit(lambda x: jnp.sum(fn(x, m))), (jnp.asarray(u),), order=1, modes=("rev",))


@pytest.mark.parametrize("name", sorted(_CASES))
def test_bf16_inputs_give_float32(name):
    fn = _CASES[name]
    u, m = _case_args(19)
    got = fn(jnp.asarray(u, jnp.bfloat16), m)
    assert got.dtype == jnp.float32
    up = jnp.asarray(jnp.asarray(u, jnp.bfloat16), jnp.float32)
    np.testing.assert_allclose(got, fn(up, m), rtol=1e-6, atol=1e-7)
