"""Tests of the unpaired losses: KTO (with its KL reference point) and unpaired APO-zero."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxpref.losses import apo_zero_unpaired_loss, kto_kl_estimate, kto_loss

N = 8


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    policy = rng.uniform(-20.0, -2.0, size=n).astype(np.float32)
    ref = (policy + rng.normal(0.0, 2.0, size=n)).astype(np.float32)
    desirable = rng.random(n) < 0.5
    desirable[0], desirable[1] = True, False
    return policy, ref, desirable


def _np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


# --------------------------------------------------------------------------- hand-computed values


def test_kto_hand_values():
    p, r, d = _data(1)
    beta, z0, wd, wu = 0.5, 0.8, 1.3, 0.7
    got = kto_loss(p, r, d, kl=z0, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    lr = p.astype(np.float64) - r
    want = np.where(
        d, wd * (1 - _np_sigmoid(beta * (lr - z0))), wu * (1 - _np_sigmoid(beta * (z0 - lr)))
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got.dtype == jnp.float32 and got.shape == (N,)


def test_kto_literal_values():
    # r = +1 desirable, z0 = 0.5: 1 - sigma(0.5); r = -1 undesirable: 1 - sigma(1.5).
    got = kto_loss(
        jnp.array([-3.0, -5.0]), jnp.array([-4.0, -4.0]), jnp.array([True, False]), kl=0.5, beta=1.0
    )
    np.testing.assert_allclose(got, [1 - _np_sigmoid(0.5), 1 - _np_sigmoid(1.5)], rtol=1e-6)


def test_apo_zero_unpaired_hand_values():
    p, r, d = _data(2)
    beta, wd, wu = 0.3, 2.0, 0.5
    got = apo_zero_unpaired_loss(p, r, d, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    lr = p.astype(np.float64) - r
    want = np.where(d, wd * (1 - _np_sigmoid(beta * lr)), wu * _np_sigmoid(beta * lr))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_kto_with_zero_kl_differs_from_apo_only_in_undesirable_form():
    # With z0 = 0: desirable terms coincide; undesirable 1 - sigma(-beta r) = sigma(beta r) too.
    p, r, d = _data(3)
    np.testing.assert_allclose(
        kto_loss(p, r, d, kl=0.0, beta=0.2), apo_zero_unpaired_loss(p, r, d, beta=0.2), rtol=1e-6
    )


def test_kl_estimate_mean_clamp_and_mask():
    p, r, _ = _data(4)
    lr = p.astype(np.float64) - r
    np.testing.assert_allclose(kto_kl_estimate(p, r), max(lr.mean(), 0.0), rtol=1e-5, atol=1e-7)
    # Negative mean is clamped to 0.
    np.testing.assert_array_equal(kto_kl_estimate(r - 1.0, r), 0.0)
    np.testing.assert_allclose(kto_kl_estimate(r + 0.25, r), 0.25, rtol=1e-5)
    # Masked == filtered.
    mask = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
    np.testing.assert_allclose(
        kto_kl_estimate(p, r, mask), kto_kl_estimate(p[mask], r[mask]), rtol=1e-6
    )
    # Fully masked: 0, finite (and zero) gradient.
    none = np.zeros(N, bool)
    assert float(kto_kl_estimate(p, r, none)) == 0.0
    g = jax.grad(lambda a: kto_kl_estimate(a, r, none))(p)
    np.testing.assert_array_equal(g, 0.0)


def test_kl_estimate_has_no_gradient_and_kto_stops_kl_gradient():
    p, r, d = _data(5)
    g = jax.grad(lambda a, b: kto_kl_estimate(a + 5.0, b))(p, r)
    np.testing.assert_array_equal(g, 0.0)
    g_kl = jax.grad(lambda z: jnp.sum(kto_loss(p, r, d, kl=z, beta=0.5)))(jnp.float32(0.3))
    assert float(g_kl) == 0.0
    # Gradient with respect to the policy log-probs is the hand derivative.
    z0, beta = 0.3, 0.5
    g = jax.grad(lambda a: jnp.sum(kto_loss(a, r, d, kl=z0, beta=beta)))(p)
    lr = p.astype(np.float64) - r
    s_d = _np_sigmoid(beta * (lr - z0))
    s_u = _np_sigmoid(beta * (z0 - lr))
    want = np.where(d, -beta * s_d * (1 - s_d), beta * s_u * (1 - s_u))
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)


def test_kl_estimate_axis_name_averages_shard_means_before_clamp():
    rng = np.random.default_rng(6)
    pol = rng.normal(size=(4, 3)).astype(np.float32)
    ref = np.zeros((4, 3), np.float32)
    pol[0] += 3.0  # one shard strongly positive, others around zero or negative
    pol[1:] -= 0.5
    got = jax.vmap(lambda a, b: kto_kl_estimate(a, b, axis_name="data"), axis_name="data")(pol, ref)
    want = max(np.mean(pol.astype(np.float64).mean(axis=1)), 0.0)
    np.testing.assert_allclose(got, np.full(4, want), rtol=1e-5)
    # Without the axis each shard clamps its own mean.
    local = jax.vmap(kto_kl_estimate)(pol, ref)
    np.testing.assert_allclose(
        local, np.maximum(pol.astype(np.float64).mean(axis=1), 0.0), rtol=1e-5
    )


@pytest.mark.parametrize("which", ["kto", "apo"])
def test_mask_zeroes_and_matches_filtered(which):
    p, r, d = _data(7)
    fn = (
        (lambda a, b, c, mask=None: kto_loss(a, b, c, kl=0.4, beta=0.3, mask=mask))
        if which == "kto"
        else (lambda a, b, c, mask=None: apo_zero_unpaired_loss(a, b, c, beta=0.3, mask=mask))
    )
    mask = np.array([1, 1, 0, 1, 0, 1, 1, 0], bool)
    out = fn(p, r, d, mask)
    np.testing.assert_array_equal(np.asarray(out)[~mask], 0.0)
    np.testing.assert_allclose(np.asarray(out)[mask], fn(p[mask], r[mask], d[mask]), rtol=1e-6)
    none = np.zeros(N, bool)
    np.testing.assert_array_equal(fn(p, r, d, none), 0.0)
    g = jax.grad(lambda a: jnp.sum(fn(a, r, d, none)))(p)
    np.testing.assert_array_equal(g, 0.0)


def test_per_example_kl_and_int_labels():
    p, r, d = _data(8)
    z = np.linspace(0.0, 1.0, N).astype(np.float32)
    got = kto_loss(p, r, d.astype(np.int32), kl=z, beta=0.5)
    want = np.stack(
        [kto_loss(p[i : i + 1], r[i : i + 1], d[i : i + 1], kl=z[i], beta=0.5)[0] for i in range(N)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ------------------------------------------------------------------------------------ TRL parity


def _trl_kto(loss_type, *, beta, dw, uw, labels, ids, cmask, kl_ids, kl_cmask, table, ref, ref_kl):
    """Runs TRL's real `KTOTrainer._compute_loss` on a unigram "model": logp(token) = table[id]."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.trainer.kto_trainer import KTOTrainer

    table_t = torch.tensor(table)

    def model(input_ids, labels, **_):
        tgt = input_ids[:, 1:]
        keep = labels[:, 1:] != -100
        lp = torch.where(keep, table_t[tgt], torch.zeros(()))
        zeros = torch.zeros_like(lp)
        return types.SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros)

    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x),
        loss_type=loss_type,
        beta=beta,
        desirable_weight=dw,
        undesirable_weight=uw,
        precompute_ref_logps=True,
        calculate_KL=loss_type == "kto",
        aux_loss_enabled=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    trainer._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(trainer, m, b)
    batch = {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.ones(ids.shape, dtype=torch.long),
        "completion_mask": torch.tensor(cmask),
        "label": torch.tensor(labels),
        "ref_logps": torch.tensor(ref),
    }
    if loss_type == "kto":
        batch.update(
            KL_input_ids=torch.tensor(kl_ids),
            KL_attention_mask=torch.ones(kl_ids.shape, dtype=torch.long),
            KL_completion_mask=torch.tensor(kl_cmask),
            ref_KL_logps=torch.tensor(ref_kl),
        )
    loss = KTOTrainer._compute_loss(trainer, model, batch, return_outputs=False)
    return float(loss), trainer._metrics["train"]["kl"]


def _trl_inputs(seed, n=6, t=7, v=11):
    rng = np.random.default_rng(seed)
    table = rng.uniform(-4.0, -0.1, size=v).astype(np.float32)
    ids = rng.integers(0, v, size=(n, t))
    # Prompt of 2 tokens, completion lengths 2..5 (right padded).
    lens = rng.integers(2, 6, size=n)
    cmask = np.zeros((n, t), np.int64)
    for i, ln in enumerate(lens):
        cmask[i, 2 : 2 + ln] = 1
    # Mismatched (x_i, y_{i-1}) sequences, as TRL's collator shifts the completions.
    kl_ids = np.concatenate([ids[:, :2], np.roll(ids[:, 2:], 1, axis=0)], axis=1)
    kl_cmask = np.concatenate([cmask[:, :2], np.roll(cmask[:, 2:], 1, axis=0)], axis=1)
    labels = rng.random(n) < 0.5
    labels[0], labels[1] = True, False
    return table, ids, cmask, kl_ids, kl_cmask, labels, rng


def _seq_logps(table, ids, cmask):
    return (table[ids[:, 1:]] * cmask[:, 1:]).sum(-1).astype(np.float32)


@pytest.mark.parametrize("kl_shift", [0.0, -3.0])
def test_kto_matches_trl(kl_shift):
    table, ids, cmask, kl_ids, kl_cmask, labels, rng = _trl_inputs(9)
    policy = _seq_logps(table, ids, cmask)
    kl_policy = _seq_logps(table, kl_ids, kl_cmask)
    ref = (policy + rng.normal(0, 1.0, size=policy.shape)).astype(np.float32)
    # kl_shift < 0 makes the KL estimate negative, exercising the clamp at 0.
    ref_kl = (kl_policy - 0.5 - kl_shift + rng.normal(0, 0.3, size=policy.shape)).astype(np.float32)
    want, trl_kl = _trl_kto(
        "kto",
        beta=0.4,
        dw=1.5,
        uw=0.8,
        labels=labels,
        ids=ids,
        cmask=cmask,
        kl_ids=kl_ids,
        kl_cmask=kl_cmask,
        table=table,
        ref=ref,
        ref_kl=ref_kl,
    )
    z0 = kto_kl_estimate(kl_policy, ref_kl)
    np.testing.assert_allclose(float(z0), trl_kl[-1], rtol=1e-5, atol=1e-7)
    if kl_shift < 0:
        assert float(z0) == 0.0
    got = kto_loss(
        policy, ref, labels, kl=z0, beta=0.4, desirable_weight=1.5, undesirable_weight=0.8
    )
    np.testing.assert_allclose(float(jnp.mean(got)), want, rtol=1e-5)


def test_apo_zero_unpaired_matches_trl():
    table, ids, cmask, _, _, labels, rng = _trl_inputs(10)
    policy = _seq_logps(table, ids, cmask)
    ref = (policy + rng.normal(0, 2.0, size=policy.shape)).astype(np.float32)
    want, _ = _trl_kto(
        "apo_zero_unpaired",
        beta=0.3,
        dw=1.0,
        uw=2.0,
        labels=labels,
        ids=ids,
        cmask=cmask,
        kl_ids=None,
        kl_cmask=None,
        table=table,
        ref=ref,
        ref_kl=None,
    )
    got = apo_zero_unpaired_loss(policy, ref, labels, beta=0.3, undesirable_weight=2.0)
    np.testing.assert_allclose(float(jnp.mean(got)), want, rtol=1e-5)


# ------------------------------------------------------------------------- generic properties

_CASES = {
    "kto": lambda p, r, d: kto_loss(p, r, d, kl=0.3, beta=0.2, desirable_weight=1.2),
    "apo": lambda p, r, d: apo_zero_unpaired_loss(p, r, d, beta=0.2, undesirable_weight=0.6),
    "kl": lambda p, r, d: kto_kl_estimate(p, r, d),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_jit_equals_eager(name):
    fn = _CASES[name]
    args = _data(11)
    np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_vmap_equals_loop(name):
    fn = _CASES[name]
    stacked = [np.stack(z) for z in zip(*[_data(20 + i) for i in range(3)], strict=True)]
    got = jax.vmap(fn)(*stacked)
    jfn = jax.jit(fn)
    want = np.stack([jfn(*[a[i] for a in stacked]) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["kto", "apo"])
def test_gradients_match_finite_differences(name):
    fn = _CASES[name]
    p, r, d = _data(12, n=4)
    p = p / 10.0
    r = r / 10.0
    check_grads(
        jax.jit(lambda a, b: jnp.sum(fn(a, b, d))),
        (jnp.asarray(p), jnp.asarray(r)),
        order=2,
        modes=("rev",),
    )


@pytest.mark.parametrize("name", sorted(_CASES))
def test_bf16_inputs_give_float32(name):
    fn = _CASES[name]
    p, r, d = _data(13)
    p, r = p / 4, r / 4
    got = fn(jnp.asarray(p, jnp.bfloat16), jnp.asarray(r, jnp.bfloat16), d)
    assert got.dtype == jnp.float32
    up = lambda x: jnp.asarray(jnp.asarray(x, jnp.bfloat16), jnp.float32)
    np.testing.assert_allclose(got, fn(up(p), up(r), d), rtol=1e-6, atol=1e-7)


def test_shape_errors():
    p, r, d = _data(14)
    with pytest.raises(ValueError, match=r"kto_loss: `desirable` must have the shape"):
        kto_loss(p, r, d[:3], kl=0.0)
    with pytest.raises(ValueError, match=r"kto_loss: `kl` must have the shape"):
        kto_loss(p, r, d, kl=np.zeros(N + 1, np.float32))
    with pytest.raises(ValueError, match=r"kto_loss: `policy_logps` must have rank 1"):
        kto_loss(p[None], r[None], d[None], kl=0.0)
    with pytest.raises(ValueError, match=r"apo_zero_unpaired_loss: `mask` must have the shape"):
        apo_zero_unpaired_loss(p, r, d, mask=np.ones(2, bool))
    with pytest.raises(ValueError, match=r"kto_kl_estimate: `mismatched_ref_logps` must have"):
        kto_kl_estimate(p, r[:2])
    with pytest.raises(TypeError, match=r"kto_loss: `ref_logps` must be a floating"):
        kto_loss(p, d, d, kl=0.0)
