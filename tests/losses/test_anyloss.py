"""Tests for jaxpref.losses._anyloss (confusion-matrix metric surrogates)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxpref.losses as jl


def _hard_counts(probs, labels):
    pred = np.asarray(probs) > 0.5
    y = np.asarray(labels).astype(bool)
    return (
        float(np.sum(pred & y)),
        float(np.sum(~pred & y)),
        float(np.sum(pred & ~y)),
        float(np.sum(~pred & ~y)),
    )


def _np_soft_counts(probs, labels, L):
    a = 1.0 / (1.0 + np.exp(-L * (np.asarray(probs, np.float64) - 0.5)))
    y = np.asarray(labels, np.float64)
    return (
        np.sum(y * a),
        np.sum(y * (1 - a)),
        np.sum((1 - y) * a),
        np.sum((1 - y) * (1 - a)),
    )


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.02, 0.98, size=n).astype(np.float32)
    labels = (rng.uniform(size=n) < 0.4).astype(np.float32)
    labels[:2] = [1.0, 0.0]  # both classes present
    return probs, labels


def test_amplify_values():
    p = np.array([0.1, 0.5, 0.6, 0.99], np.float32)
    got = jl.amplify(p, L=10.0)
    want = 1.0 / (1.0 + np.exp(-10.0 * (p.astype(np.float64) - 0.5)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    assert float(jl.amplify(np.float32(0.5))) == 0.5
    # Large L: no overflow, saturates.
    big = np.asarray(jl.amplify(np.array([0.0, 1.0], np.float32), L=1e4))
    np.testing.assert_array_equal(big, [0.0, 1.0])


def test_soft_confusion_matrix_against_numpy():
    probs, labels = _data()
    cm = jl.soft_confusion_matrix(probs, labels, L=7.0)
    np.testing.assert_allclose(
        np.asarray(cm), _np_soft_counts(probs, labels, 7.0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(float(cm.tp + cm.fn), labels.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(cm.fp + cm.tn), (1 - labels).sum(), rtol=1e-6)


@pytest.mark.parametrize("L", [73.0, 1000.0])
def test_large_L_approaches_hard_counts(L):
    rng = np.random.default_rng(1)
    n = 40
    # Probabilities at least 0.1 away from the threshold.
    probs = np.where(rng.uniform(size=n) < 0.5, rng.uniform(0.0, 0.4, n), rng.uniform(0.6, 1.0, n))
    labels = (rng.uniform(size=n) < 0.5).astype(np.float32)
    cm = jl.soft_confusion_matrix(probs.astype(np.float32), labels, L=L)
    # Each example is off by at most sigmoid(-0.1 L) (6.8e-4 at L=73).
    bound = n / (1.0 + np.exp(0.1 * L))
    np.testing.assert_allclose(
        np.asarray(cm), _hard_counts(probs, labels), rtol=0, atol=bound + 1e-5
    )


def test_losses_hand_computed():
    # L large: counts are the hard ones. TP=2 (0.9, 0.8), FN=1 (0.3), FP=1 (0.7), TN=2.
    probs = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], np.float32)
    labels = np.array([1, 1, 1, 0, 0, 0], np.float32)
    kw = dict(L=400.0, eps=0.0)
    np.testing.assert_allclose(float(jl.anyloss_accuracy(probs, labels, **kw)), 1 - 4 / 6, 1e-6)
    np.testing.assert_allclose(float(jl.anyloss_f_beta(probs, labels, **kw)), 1 - 4 / 6, 1e-6)
    # F2 = 5 TP / (5 TP + 4 FN + FP) = 10 / 15.
    np.testing.assert_allclose(
        float(jl.anyloss_f_beta(probs, labels, beta=2.0, **kw)), 1 - 10 / 15, rtol=1e-6
    )
    # TPR = TNR = 2/3.
    np.testing.assert_allclose(float(jl.anyloss_gmean(probs, labels, **kw)), 1 - 4 / 9, 1e-6)
    np.testing.assert_allclose(
        float(jl.anyloss_balanced_accuracy(probs, labels, **kw)), 1 - 2 / 3, rtol=1e-6
    )


def test_losses_soft_values_against_numpy_formulas():
    probs, labels = _data(seed=2)
    L, eps, beta = 5.0, 1e-5, 0.5
    tp, _fn, fp, tn = _np_soft_counts(probs, labels, L)
    n1, n0 = labels.sum(), (1 - labels).sum()
    a_sum = tp + fp
    want = {
        "acc": 1 - (tp + tn) / (len(probs) + eps),
        "f": 1 - (1 + beta**2) * tp / (beta**2 * n1 + a_sum + eps),
        "g": 1 - tp * tn / (n1 * n0 + eps),
        "ba": 1 - (n0 * tp + n1 * tn) / (2 * n1 * n0 + eps),
    }
    got = {
        "acc": jl.anyloss_accuracy(probs, labels, L=L, eps=eps),
        "f": jl.anyloss_f_beta(probs, labels, beta=beta, L=L, eps=eps),
        "g": jl.anyloss_gmean(probs, labels, L=L, eps=eps),
        "ba": jl.anyloss_balanced_accuracy(probs, labels, L=L, eps=eps),
    }
    for k in want:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, err_msg=k)
        assert got[k].shape == () and got[k].dtype == jnp.float32


LOSSES = [jl.anyloss_accuracy, jl.anyloss_f_beta, jl.anyloss_gmean, jl.anyloss_balanced_accuracy]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_mask_equals_filter(loss):
    probs, labels = _data(10, seed=3)
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 0, 1, 1], np.float32)
    probs_g = np.where(mask > 0, probs, np.nan).astype(np.float32)
    got = loss(probs_g, labels, L=9.0, mask=mask)
    want = loss(probs[mask > 0], labels[mask > 0], L=9.0)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    g = np.asarray(jax.grad(lambda p: loss(p, labels, L=9.0, mask=mask))(probs_g))
    assert np.all(np.isfinite(g)) and np.all(g[mask == 0] == 0)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_gradients_finite_and_check_grads(loss):
    probs, labels = _data(6, seed=4)
    g = np.asarray(jax.grad(lambda p: loss(p, labels))(probs))
    assert np.all(np.isfinite(g))
    with jax.enable_x64(True):
        p = jnp.asarray(probs, jnp.float64)
        check_grads(jax.jit(lambda p: loss(p, labels, L=4.0)), (p,), order=1, modes=("rev",))


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_single_class_and_empty_batches_are_finite(loss):
    probs, _ = _data(5, seed=5)
    for labels in (np.ones(5, np.float32), np.zeros(5, np.float32)):
        val = loss(probs, labels)
        g = jax.grad(lambda p, y=labels: loss(p, y))(probs)
        assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))
    empty = np.zeros(5, np.float32)
    np.testing.assert_allclose(float(loss(probs, np.ones(5), mask=empty)), 1.0, rtol=1e-7)


def test_loss_direction():
    # Better predictions give lower loss for every surrogate.
    labels = np.array([1, 0, 1, 0, 0, 0], np.float32)
    good = np.array([0.8, 0.3, 0.7, 0.2, 0.1, 0.4], np.float32)
    bad = np.array([0.4, 0.6, 0.3, 0.8, 0.1, 0.4], np.float32)
    for loss in LOSSES:
        assert float(loss(good, labels, L=20.0)) < float(loss(bad, labels, L=20.0))


def test_jit_vmap_and_bf16():
    probs, labels = _data(8, seed=6)
    f = lambda p, y: jl.anyloss_f_beta(p, y, beta=2.0, L=30.0)
    np.testing.assert_allclose(float(jax.jit(f)(probs, labels)), float(f(probs, labels)), 1e-6)
    stack = np.stack([probs, probs[::-1], np.sqrt(probs)])
    got = jax.vmap(f, in_axes=(0, None))(stack, labels)
    for i in range(3):
        np.testing.assert_allclose(float(got[i]), float(f(stack[i], labels)), rtol=1e-6)
    p16 = jnp.asarray(probs, jnp.bfloat16)
    out = jl.anyloss_gmean(p16, labels)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(
        float(out), float(jl.anyloss_gmean(np.asarray(p16, np.float32), labels)), rtol=1e-6
    )


def test_bool_and_int_labels():
    probs, labels = _data(seed=7)
    a = jl.soft_confusion_matrix(probs, labels.astype(bool))
    b = jl.soft_confusion_matrix(probs, labels.astype(np.int32))
    c = jl.soft_confusion_matrix(probs, labels)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))


def test_shape_errors():
    probs, labels = _data(6)
    with pytest.raises(ValueError, match=r"soft_confusion_matrix: `labels`.*\(6,\).*\(5,\)"):
        jl.soft_confusion_matrix(probs, labels[:5])
    with pytest.raises(ValueError, match=r"soft_confusion_matrix: `probs` must have rank 1"):
        jl.anyloss_accuracy(probs[None, :], labels[None, :])
    with pytest.raises(ValueError, match=r"soft_confusion_matrix: `mask`"):
        jl.anyloss_gmean(probs, labels, mask=np.ones(4))
    with pytest.raises(TypeError, match=r"`probs` must be a floating"):
        jl.anyloss_f_beta(np.ones(6, np.int32), labels)
