"""Tests of the reference-free pair losses: SimPO, AlphaPO, CPO, ORPO."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxpref.losses import (
    alphapo_loss,
    alphapo_reward,
    cpo_loss,
    orpo_log_odds_ratio,
    orpo_loss,
    orpo_sft_loss,
    simpo_loss,
)

B = 6


def _data(seed=0, b=B):
    rng = np.random.default_rng(seed)
    len_w = rng.integers(1, 9, size=b)
    len_l = rng.integers(1, 9, size=b)
    sum_w = (rng.uniform(-3.0, -0.05, size=b) * len_w).astype(np.float32)
    sum_l = (rng.uniform(-3.0, -0.05, size=b) * len_l).astype(np.float32)
    nll = rng.uniform(0.1, 3.0, size=b).astype(np.float32)
    return sum_w, sum_l, len_w.astype(np.int32), len_l.astype(np.int32), nll


def _np_logsig(z):
    z = np.asarray(z, np.float64)
    return -np.logaddexp(0.0, -z)


def _np_log1mexp(x):
    return np.log(-np.expm1(np.asarray(x, np.float64)))


def _np_alpha_reward(x, alpha):
    x = np.asarray(x, np.float64)
    return x if alpha == 0 else (1.0 - np.exp(-alpha * x)) / alpha


# --------------------------------------------------------------------------- hand-computed values


def test_simpo_hand_values():
    sw, sl, lw, ll, _ = _data(1)
    beta, gamma, eps = 2.5, 0.7, 0.1
    got = simpo_loss(
        sw,
        sl,
        chosen_lengths=lw,
        rejected_lengths=ll,
        beta=beta,
        simpo_gamma=gamma,
        label_smoothing=eps,
    )
    z = beta * (sw / lw - sl / ll) - gamma
    want = -(1 - eps) * _np_logsig(z) - eps * _np_logsig(-z)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.dtype == jnp.float32 and got.shape == (B,)


def test_simpo_literal_value():
    # 2 * (-4/2 - (-9/3)) - 0.5 = 1.5 ; -log sigma(1.5) = log(1 + e^-1.5)
    got = simpo_loss(
        jnp.array([-4.0]),
        jnp.array([-9.0]),
        chosen_lengths=jnp.array([2]),
        rejected_lengths=jnp.array([3]),
        beta=2.0,
        simpo_gamma=0.5,
    )
    np.testing.assert_allclose(got, [np.log1p(np.exp(-1.5))], rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.3, -0.2, 1.0])
def test_alphapo_hand_values(alpha):
    sw, sl, lw, ll, _ = _data(2)
    beta, gamma = 1.5, 0.4
    got = alphapo_loss(
        sw,
        sl,
        chosen_lengths=lw,
        rejected_lengths=ll,
        alpha=alpha,
        beta=beta,
        simpo_gamma=gamma,
    )
    z = beta * (_np_alpha_reward(sw / lw, alpha) - _np_alpha_reward(sl / ll, alpha)) - gamma
    np.testing.assert_allclose(got, -_np_logsig(z), rtol=1e-5, atol=1e-6)


def test_alphapo_reward_values_and_limit():
    x = np.linspace(-4.0, -0.1, 7).astype(np.float32)
    np.testing.assert_allclose(
        alphapo_reward(x, alpha=0.5), (1 - np.exp(-0.5 * x.astype(np.float64))) / 0.5, rtol=1e-6
    )
    np.testing.assert_array_equal(alphapo_reward(x, alpha=0.0), x)
    # Continuity at alpha = 0: r_alpha(x) = x - alpha x^2 / 2 + O(alpha^2).
    np.testing.assert_allclose(alphapo_reward(x, alpha=1e-4), x, rtol=3e-4)
    # Traced alpha goes through the same branches.
    f = jax.jit(lambda a: alphapo_reward(x, alpha=a))
    np.testing.assert_array_equal(f(0.0), x)
    np.testing.assert_allclose(f(0.5), alphapo_reward(x, alpha=0.5), rtol=1e-6)


def test_alphapo_alpha_to_zero_recovers_simpo():
    sw, sl, lw, ll, _ = _data(3)
    kw = dict(chosen_lengths=lw, rejected_lengths=ll, beta=2.0, simpo_gamma=0.5)
    simpo = simpo_loss(sw, sl, **kw)
    np.testing.assert_array_equal(alphapo_loss(sw, sl, alpha=0.0, **kw), simpo)
    np.testing.assert_allclose(alphapo_loss(sw, sl, alpha=1e-5, **kw), simpo, rtol=1e-4)
    # The gap shrinks linearly with alpha.
    gap_a = np.max(np.abs(alphapo_loss(sw, sl, alpha=1e-2, **kw) - simpo))
    gap_b = np.max(np.abs(alphapo_loss(sw, sl, alpha=1e-3, **kw) - simpo))
    assert gap_b < 0.2 * gap_a


@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_cpo_hand_values(alpha):
    sw, sl, _, _, nll = _data(4)
    beta, eps, cpo_alpha = 0.2, 0.05, 0.7
    got = cpo_loss(
        sw,
        sl,
        chosen_nll=nll,
        beta=beta,
        label_smoothing=eps,
        cpo_alpha=cpo_alpha,
        alpha=alpha,
    )
    z = beta * (_np_alpha_reward(sw, alpha) - _np_alpha_reward(sl, alpha))
    want = -(1 - eps) * _np_logsig(z) - eps * _np_logsig(-z) + cpo_alpha * nll
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cpo_without_nll():
    sw, sl, _, _, _ = _data(5)
    got = cpo_loss(sw, sl, beta=0.1, cpo_alpha=0.0)
    np.testing.assert_allclose(got, -_np_logsig(0.1 * (sw - sl)), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"cpo_loss: `chosen_nll` \(or `chosen_lengths`\) is"):
        cpo_loss(sw, sl, beta=0.1)


def test_cpo_default_nll_from_lengths():
    sw, sl, lw, _, _ = _data(5)
    got = cpo_loss(sw, sl, beta=0.1, cpo_alpha=0.5, chosen_lengths=lw)
    want = -_np_logsig(0.1 * (sw - sl)) + 0.5 * (-sw / lw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_orpo_hand_values():
    sw, sl, lw, ll, nll = _data(6)
    beta = 0.25
    mw, ml = sw / lw, sl / ll
    log_odds = (mw - ml) - (_np_log1mexp(mw) - _np_log1mexp(ml))
    kw = dict(chosen_lengths=lw, rejected_lengths=ll)
    np.testing.assert_allclose(orpo_log_odds_ratio(sw, sl, **kw), log_odds, rtol=1e-5, atol=1e-6)
    or_term = -beta * _np_logsig(log_odds)
    np.testing.assert_allclose(orpo_loss(sw, sl, beta=beta, **kw), or_term, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        orpo_sft_loss(sw, sl, beta=beta, **kw), -mw + or_term, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        orpo_sft_loss(sw, sl, beta=beta, chosen_nll=nll, **kw), nll + or_term, rtol=1e-5
    )


def test_orpo_log1mexp_branches_precise():
    # Means on both sides of -log 2, close to 0 and very negative.
    mean = np.array([-1e-4, -0.3, -0.69, -0.7, -5.0, -30.0], np.float32)
    ones = np.ones_like(mean, dtype=np.int32)
    ref = np.full_like(mean, -1.0)
    got = orpo_log_odds_ratio(mean, ref, chosen_lengths=ones, rejected_lengths=ones)
    want = (mean - ref) - (_np_log1mexp(mean) - _np_log1mexp(ref))
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ------------------------------------------------------------------------------------ TRL parity


def _trl_self(**kw):
    base = dict(
        beta=0.1,
        loss_type="sigmoid",
        label_smoothing=0.0,
        simpo_gamma=0.5,
        alpha=0.0,
        cpo_alpha=1.0,
        accelerator=types.SimpleNamespace(device="cpu"),
    )
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture(scope="module")
def trl_cpo():
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    return CPOTrainer


@pytest.fixture(scope="module")
def trl_orpo():
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer


@pytest.mark.parametrize(
    "alpha,eps,gamma,beta", [(0.0, 0.0, 0.5, 2.0), (0.0, 0.1, 1.0, 0.5), (0.3, 0.0, 0.5, 2.5)]
)
def test_simpo_alphapo_match_trl(trl_cpo, alpha, eps, gamma, beta):
    import torch

    sw, sl, lw, ll, _ = _data(7, b=16)
    trl_self = _trl_self(
        beta=beta, loss_type="simpo", label_smoothing=eps, simpo_gamma=gamma, alpha=alpha
    )
    # TRL's CPO averages log-probs over completion tokens when loss_type="simpo".
    want, _, _ = trl_cpo.cpo_loss(
        trl_self,
        torch.tensor(sw / lw.astype(np.float32)),
        torch.tensor(sl / ll.astype(np.float32)),
    )
    got = alphapo_loss(
        sw,
        sl,
        chosen_lengths=lw,
        rejected_lengths=ll,
        alpha=alpha,
        beta=beta,
        simpo_gamma=gamma,
        label_smoothing=eps,
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    if alpha == 0.0:
        got = simpo_loss(
            sw,
            sl,
            chosen_lengths=lw,
            rejected_lengths=ll,
            beta=beta,
            simpo_gamma=gamma,
            label_smoothing=eps,
        )
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha,eps", [(0.0, 0.0), (0.0, 0.2), (0.05, 0.1)])
def test_cpo_matches_trl(trl_cpo, alpha, eps):
    import torch

    sw, sl, _, _, _ = _data(8, b=16)
    # Chosen completions of equal length T: TRL's token-mean NLL over the batch then equals the
    # mean over pairs of the per-sequence mean NLL.
    t = 5
    rng = np.random.default_rng(0)
    tok = rng.uniform(-2.0, -0.01, size=(16, t)).astype(np.float32)
    sw = tok.sum(-1)
    per_seq_nll = -tok.mean(-1)
    trl_self = _trl_self(beta=0.2, loss_type="sigmoid", label_smoothing=eps, alpha=alpha)
    losses, _, _ = trl_cpo.cpo_loss(trl_self, torch.tensor(sw), torch.tensor(sl))
    trl_total = losses.mean() + trl_self.cpo_alpha * torch.tensor(-tok.mean())
    got = cpo_loss(
        sw,
        sl,
        chosen_nll=per_seq_nll,
        beta=0.2,
        label_smoothing=eps,
        cpo_alpha=1.0,
        alpha=alpha,
    )
    np.testing.assert_allclose(
        cpo_loss(sw, sl, beta=0.2, label_smoothing=eps, cpo_alpha=0.0, alpha=alpha),
        losses.numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(jnp.mean(got), trl_total.item(), rtol=1e-5)


def test_orpo_matches_trl(trl_orpo):
    import torch

    sw, sl, lw, ll, _ = _data(9, b=16)
    trl_self = _trl_self(beta=0.3)
    losses, _, _, _, mean_log_odds = trl_orpo.odds_ratio_loss(
        trl_self,
        torch.tensor(sw / lw.astype(np.float32)),
        torch.tensor(sl / ll.astype(np.float32)),
    )
    kw = dict(chosen_lengths=lw, rejected_lengths=ll)
    got = orpo_loss(sw, sl, beta=0.3, **kw)
    np.testing.assert_allclose(got, -losses.numpy(), rtol=1e-5, atol=1e-7)
    log_odds = orpo_log_odds_ratio(sw, sl, **kw)
    np.testing.assert_allclose(jnp.mean(log_odds), mean_log_odds.item(), rtol=1e-5, atol=1e-6)
    # ORPOTrainer's objective: nll - mean(losses); with the NLL passed through `chosen_nll`.
    nll = np.float32(1.234)
    total = orpo_sft_loss(sw, sl, beta=0.3, chosen_nll=np.full(16, nll), **kw)
    np.testing.assert_allclose(jnp.mean(total), nll - losses.mean().item(), rtol=1e-5)


# ------------------------------------------------------------------------- generic properties

_CASES = {
    "simpo": lambda sw, sl, lw, ll, nll: simpo_loss(
        sw, sl, chosen_lengths=lw, rejected_lengths=ll, beta=2.0, simpo_gamma=0.5
    ),
    "simpo_smooth": lambda sw, sl, lw, ll, nll: simpo_loss(
        sw, sl, chosen_lengths=lw, rejected_lengths=ll, beta=2.0, label_smoothing=0.1
    ),
    "alphapo": lambda sw, sl, lw, ll, nll: alphapo_loss(
        sw, sl, chosen_lengths=lw, rejected_lengths=ll, alpha=0.3, beta=2.0
    ),
    "cpo": lambda sw, sl, lw, ll, nll: cpo_loss(sw, sl, chosen_nll=nll, beta=0.3),
    "cpo_alpha": lambda sw, sl, lw, ll, nll: cpo_loss(
        sw, sl, chosen_nll=nll, beta=0.3, alpha=0.05, label_smoothing=0.1
    ),
    "orpo": lambda sw, sl, lw, ll, nll: orpo_loss(
        sw, sl, chosen_lengths=lw, rejected_lengths=ll, beta=0.5
    ),
    "orpo_sft": lambda sw, sl, lw, ll, nll: orpo_sft_loss(
        sw, sl, chosen_lengths=lw, rejected_lengths=ll, beta=0.5
    ),
    "orpo_log_odds": lambda sw, sl, lw, ll, nll: orpo_log_odds_ratio(
        sw, sl, chosen_lengths=lw, rejected_lengths=ll
    ),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_jit_equals_eager(name):
    fn = _CASES[name]
    args = _data(10)
    np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_vmap_equals_loop(name):
    fn = _CASES[name]
    stacked = [np.stack(z) for z in zip(*[_data(20 + i) for i in range(3)], strict=True)]
    got = jax.vmap(fn)(*stacked)
    jfn = jax.jit(fn)
    want = np.stack([jfn(*[a[i] for a in stacked]) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_gradients_match_finite_differences(name):
    fn = _CASES[name]
    sw, sl, lw, ll, nll = _data(11, b=3)
    f = lambda a, b, c: jnp.sum(fn(a, b, lw, ll, c))
    check_grads(
        jax.jit(f), (jnp.asarray(sw), jnp.asarray(sl), jnp.asarray(nll)), order=1, modes=("rev",)
    )


@pytest.mark.parametrize("name", sorted(_CASES))
def test_bf16_inputs_give_float32(name):
    fn = _CASES[name]
    sw, sl, lw, ll, nll = _data(12)
    bf = lambda x: jnp.asarray(x, jnp.bfloat16)
    got = fn(bf(sw), bf(sl), lw, ll, bf(nll))
    assert got.dtype == jnp.float32
    # Same as feeding the bf16-rounded values in float32.
    up = lambda x: jnp.asarray(bf(x), jnp.float32)
    np.testing.assert_allclose(got, fn(up(sw), up(sl), lw, ll, up(nll)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["simpo", "simpo_smooth", "alphapo", "orpo", "orpo_log_odds"])
def test_empty_completion_gives_zero_and_finite_grads(name):
    fn = _CASES[name]
    sw, sl, lw, ll, nll = _data(13, b=4)
    lw = lw.copy()
    ll = ll.copy()
    lw[1] = 0
    sw = sw.copy()
    sw[1] = 0.0  # an empty completion sums to 0
    ll[2] = 0
    sl = sl.copy()
    sl[2] = 0.0
    lw[3] = ll[3] = 0
    sw[3] = sl[3] = 0.0
    out = fn(sw, sl, lw, ll, nll)
    np.testing.assert_array_equal(np.asarray(out)[1:], 0.0)
    assert np.isfinite(out[0]) and out[0] != 0.0
    g = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b, lw, ll, nll)), argnums=(0, 1)))(sw, sl)
    for gi in g:
        assert np.all(np.isfinite(gi))
        np.testing.assert_array_equal(np.asarray(gi)[1:], 0.0)


def test_orpo_sft_empty_chosen_default_nll_zero():
    out = orpo_sft_loss(
        jnp.array([0.0]),
        jnp.array([-3.0]),
        chosen_lengths=jnp.array([0]),
        rejected_lengths=jnp.array([2]),
    )
    np.testing.assert_array_equal(out, [0.0])


# --------------------------------------------------------------------------------- shape errors


def test_shape_errors_name_function_and_argument():
    sw, sl, lw, ll, nll = _data(14)
    with pytest.raises(ValueError, match=r"simpo_loss: `rejected_logps` must have the shape"):
        simpo_loss(sw, sl[:3], chosen_lengths=lw, rejected_lengths=ll)
    with pytest.raises(ValueError, match=r"alphapo_loss: `chosen_logps` must have rank 1"):
        alphapo_loss(sw[None], sl[None], chosen_lengths=lw, rejected_lengths=ll, alpha=0.1)
    with pytest.raises(ValueError, match=r"orpo_loss: `chosen_lengths` must have the shape"):
        orpo_loss(sw, sl, chosen_lengths=lw[:2], rejected_lengths=ll)
    with pytest.raises(ValueError, match=r"orpo_sft_loss: `chosen_nll` must have the shape"):
        orpo_sft_loss(sw, sl, chosen_lengths=lw, rejected_lengths=ll, chosen_nll=nll[:2])
    with pytest.raises(ValueError, match=r"cpo_loss: `chosen_nll` must have the shape"):
        cpo_loss(sw, sl, chosen_nll=nll[:2])
    with pytest.raises(TypeError, match=r"cpo_loss: `chosen_logps` must be a floating"):
        cpo_loss(lw, sl, chosen_nll=nll)
