"""Tests of `preference_objective` and `multi_objective`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxpref import losses as jl

C = np.array([-5.0, -12.5, -3.25, -19.75])
R = np.array([-7.0, -11.0, -4.5, -18.0])
RC = np.array([-6.0, -12.0, -3.0, -21.0])
RR = np.array([-6.5, -10.0, -5.0, -19.5])
LC = np.array([4, 10, 1, 16])
LR = np.array([5, 8, 3, 2])
W = np.array([0.5, 2.0, 1.0, 0.25])
ARGS = [jnp.asarray(x, jnp.float32) for x in (C, R, RC, RR)]
LENGTHS = {"chosen_lengths": jnp.asarray(LC), "rejected_lengths": jnp.asarray(LR)}


def logsig(x):
    return -np.logaddexp(0.0, -x)


def expected_aux(beta, c, r, rc=None, rr=None):
    rw = beta * (c - (0.0 if rc is None else rc))
    rl = beta * (r - (0.0 if rr is None else rr))
    return {
        "rewards/chosen": rw.mean(),
        "rewards/rejected": rl.mean(),
        "rewards/margins": (rw - rl).mean(),
        "rewards/accuracies": (rw > rl).mean(),
        "logps/chosen": c.mean(),
        "logps/rejected": r.mean(),
    }


def assert_aux(aux, expected):
    got = aux.as_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].shape == () and got[key].dtype == jnp.float32
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7, err_msg=key)


def test_dpo_objective_hand_computed():
    beta = 0.5
    loss, aux = jl.preference_objective("sigmoid", *ARGS, beta=beta)
    h = (C - RC) - (R - RR)  # [1.5, 0.5, -0.75, -0.25]
    np.testing.assert_allclose(loss, np.mean(-logsig(beta * h)), rtol=1e-6)
    assert_aux(aux, expected_aux(beta, C, R, RC, RR))
    np.testing.assert_allclose(aux.accuracies, 0.5)
    assert isinstance(aux, jl.PreferenceAux)
    assert aux.margins is aux.as_dict()["rewards/margins"]


def test_name_and_function_agree_and_hparams_are_forwarded():
    by_name = jl.preference_objective("robust", *ARGS, beta=0.3, label_smoothing=0.2)
    by_fn = jl.preference_objective(jl.robust_dpo_loss, *ARGS, beta=0.3, label_smoothing=0.2)
    direct = jnp.mean(jl.robust_dpo_loss(*ARGS, beta=0.3, label_smoothing=0.2))
    np.testing.assert_allclose(by_name[0], direct, rtol=1e-6)
    np.testing.assert_allclose(by_fn[0], direct, rtol=1e-6)
    loss, _ = jl.preference_objective("ipo", *ARGS, beta=0.3, **LENGTHS)
    np.testing.assert_allclose(loss, jnp.mean(jl.ipo_loss(*ARGS, beta=0.3, **LENGTHS)), rtol=1e-6)


def test_weights_give_weighted_mean():
    loss, _ = jl.preference_objective("hinge", *ARGS, beta=0.5, weights=jnp.asarray(W))
    h = (C - RC) - (R - RR)
    np.testing.assert_allclose(loss, np.mean(W * np.maximum(0.0, 1.0 - 0.5 * h)), rtol=1e-6)


@pytest.mark.parametrize("multi", [False, True])
def test_mask_equals_dropping_the_pairs(multi):
    keep = np.array([0, 2])
    mask = np.zeros(len(C), np.float32)
    mask[keep] = 1.0

    def run(args, **kw):
        if multi:
            return jl.multi_objective([("hinge", 0.7), ("robust", 0.3)], *args, beta=0.5, **kw)
        return jl.preference_objective("hinge", *args, beta=0.5, **kw)

    loss_m, aux_m = run(ARGS, weights=jnp.asarray(W), mask=jnp.asarray(mask))
    loss_f, aux_f = run(tuple(a[keep] for a in ARGS), weights=jnp.asarray(W)[keep])
    np.testing.assert_allclose(loss_m, loss_f, rtol=1e-6)
    for a, b in zip(aux_m, aux_f, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # By hand for the single loss: weighted hinge over the kept pairs, accuracy over them.
    if not multi:
        h = (C - RC) - (R - RR)
        expected = np.sum((W * np.maximum(0.0, 1.0 - 0.5 * h))[keep]) / 2
        np.testing.assert_allclose(loss_m, expected, rtol=1e-6)
        np.testing.assert_allclose(aux_m.accuracies, np.mean((h > 0)[keep]), rtol=1e-6)


def test_empty_mask_gives_zero_and_finite_gradients():
    def f(c):
        loss, aux = jl.preference_objective(
            "sigmoid", c, *ARGS[1:], beta=0.5, mask=jnp.zeros(len(C))
        )
        return loss + aux.margins

    assert float(f(ARGS[0])) == 0.0
    assert np.all(np.isfinite(jax.grad(f)(ARGS[0])))
    with pytest.raises(ValueError, match="mask"):
        jl.preference_objective("sigmoid", *ARGS, mask=jnp.ones(len(C) + 1))


def test_sft_objective_uses_beta_only_for_rewards():
    beta = 0.2
    loss, aux = jl.preference_objective("sft", *ARGS, beta=beta, **LENGTHS)
    np.testing.assert_allclose(loss, -C.sum() / LC.sum(), rtol=1e-6)
    assert_aux(aux, expected_aux(beta, C, R, RC, RR))
    loss, aux = jl.preference_objective("sft", *ARGS[:2], beta=beta, **LENGTHS)
    assert_aux(aux, expected_aux(beta, C, R))


def test_unregistered_reference_free_function():
    def margin_logistic(chosen_logps, rejected_logps, *, beta=0.1, gamma=0.0):
        return -jax.nn.log_sigmoid(beta * (chosen_logps - rejected_logps) - gamma)

    loss, aux = jl.preference_objective(margin_logistic, *ARGS[:2], beta=0.5, gamma=0.25)
    np.testing.assert_allclose(loss, np.mean(-logsig(0.5 * (C - R) - 0.25)), rtol=1e-6)
    assert_aux(aux, expected_aux(0.5, C, R))
    with pytest.raises(TypeError, match="valid hyperparameters: beta, gamma"):
        jl.preference_objective(margin_logistic, *ARGS[:2], delta=1.0)


def test_metrics_carry_no_gradient():
    def parts(c):
        loss, aux = jl.preference_objective("sigmoid", c, *ARGS[1:], beta=0.5)
        return loss, aux.margins + aux.rewards_chosen + aux.logps_chosen

    grad_loss = jax.grad(lambda c: parts(c)[0])(ARGS[0])
    grad_aux = jax.grad(lambda c: parts(c)[1])(ARGS[0])
    assert np.all(np.asarray(grad_loss) != 0.0)
    np.testing.assert_array_equal(grad_aux, np.zeros(4))


def test_jit_equals_eager_and_bf16():
    f = lambda c, r, rc, rr, lc, lr: jl.preference_objective(
        "sigmoid_norm", c, r, rc, rr, beta=0.4, chosen_lengths=lc, rejected_lengths=lr
    )
    eager = f(*ARGS, LC, LR)
    jitted = jax.jit(f)(*ARGS, LC, LR)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    loss, aux = f(*(x.astype(jnp.bfloat16) for x in ARGS), LC, LR)
    assert loss.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in aux)


def test_objective_errors():
    with pytest.raises(TypeError, match=r"'sigmoid'.*discopop_tau"):
        jl.preference_objective("sigmoid", *ARGS, discopop_tau=0.1)
    with pytest.raises(ValueError, match="both `ref_chosen_logps` and `ref_rejected_logps`"):
        jl.preference_objective("sft", *ARGS[:3], **LENGTHS)
    with pytest.raises(ValueError, match=r"preference_objective.*`weights`.*\(4,\).*\(3,\)"):
        jl.preference_objective("sigmoid", *ARGS, weights=jnp.ones(3))
    with pytest.raises(ValueError, match=r"preference_objective.*`rejected_logps`"):
        jl.preference_objective("sigmoid", ARGS[0], ARGS[1][:2], *ARGS[2:])
    with pytest.raises(KeyError, match="Did you mean 'ipo'"):
        jl.preference_objective("ipoo", *ARGS)
    with pytest.raises(ValueError, match="needs reference"):
        jl.preference_objective("sigmoid", *ARGS[:2])


def test_mpo_hand_computed():
    beta = 0.5
    spec = [("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0)]
    loss, aux = jl.multi_objective(spec, *ARGS, beta=beta, **LENGTHS)
    rw, rl = C - RC, R - RR
    dpo = -logsig(beta * (rw - rl))
    bco = -logsig(beta * rw) - logsig(-beta * rl)
    sft = -C.sum() / LC.sum()
    np.testing.assert_allclose(loss, 0.8 * dpo.mean() + 0.2 * bco.mean() + sft, rtol=1e-6)
    assert_aux(aux, expected_aux(beta, C, R, RC, RR))


def test_multi_objective_shares_hparams_and_weights():
    spec = [("robust", 0.7), (jl.dpo_loss, 1.5), ("discopop", 0.2)]
    kw = {"beta": 0.3, "label_smoothing": 0.2, "discopop_tau": 0.5, "weights": jnp.asarray(W)}
    loss, _ = jl.multi_objective(spec, *ARGS, **kw)
    expected = (
        0.7 * jnp.mean(W * jl.robust_dpo_loss(*ARGS, beta=0.3, label_smoothing=0.2))
        + 1.5 * jnp.mean(W * jl.dpo_loss(*ARGS, beta=0.3))
        + 0.2 * jnp.mean(W * jl.discopop_loss(*ARGS, beta=0.3, discopop_tau=0.5))
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    single, single_aux = jl.multi_objective([("ipo", 2.0)], *ARGS, beta=0.3, **LENGTHS)
    pref, pref_aux = jl.preference_objective("ipo", *ARGS, beta=0.3, **LENGTHS)
    np.testing.assert_allclose(single, 2.0 * pref, rtol=1e-6)
    for a, b in zip(single_aux, pref_aux, strict=True):
        np.testing.assert_allclose(a, b)


def test_multi_objective_jit_and_grad():
    spec = [("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0)]
    f = lambda c, r, rc, rr: jl.multi_objective(spec, c, r, rc, rr, beta=0.5, **LENGTHS)[0]
    np.testing.assert_allclose(jax.jit(f)(*ARGS), f(*ARGS), rtol=1e-6)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(x, jnp.float64) for x in (C, R, RC, RR))
        check_grads(f, args, order=1, modes=["rev"])


def test_multi_objective_errors():
    with pytest.raises(ValueError, match="at least one loss"):
        jl.multi_objective([], *ARGS)
    with pytest.raises(ValueError, match=r"\(loss, weight\) pair"):
        jl.multi_objective(["sigmoid"], *ARGS)
    with pytest.raises(TypeError, match=r"no loss in `spec` takes hyperparameter\(s\) gamma"):
        jl.multi_objective([("sigmoid", 1.0), ("robust", 1.0)], *ARGS, gamma=1.0)
    with pytest.raises(KeyError, match="Unknown loss 'sigmoidd'"):
        jl.multi_objective([("sigmoidd", 1.0)], *ARGS)
