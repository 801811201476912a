"""Tests of the loss registry, including a table test over every registered loss."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import losses as jl
from jaxpref.losses import _registry

TRL_NAMES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
BUILTINS = {
    "sigmoid": jl.dpo_loss,
    "hinge": jl.hinge_loss,
    "ipo": jl.ipo_loss,
    "exo_pair": jl.exo_pair_loss,
    "nca_pair": jl.nca_pair_loss,
    "robust": jl.robust_dpo_loss,
    "bco_pair": jl.bco_pair_loss,
    "sppo_hard": jl.sppo_hard_loss,
    "aot": jl.aot_loss,
    "aot_unpaired": jl.aot_unpaired_loss,
    "apo_zero": jl.apo_zero_loss,
    "apo_down": jl.apo_down_loss,
    "discopop": jl.discopop_loss,
    "sft": jl.sft_loss,
    "sigmoid_norm": jl.sigmoid_norm_loss,
    "cdpo": jl.cdpo_loss,
}

C = jnp.array([-5.0, -12.5, -3.25, -19.75])
R = jnp.array([-7.0, -11.0, -4.5, -18.0])
RC = jnp.array([-6.0, -12.0, -3.0, -21.0])
RR = jnp.array([-6.5, -10.0, -5.0, -19.5])
LC = jnp.array([4, 10, 1, 16])
LR = jnp.array([5, 8, 3, 2])


@pytest.fixture
def scratch_registry():
    saved = dict(_registry._REGISTRY)
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(saved)


def test_builtin_names_in_order():
    assert jl.names()[:16] == (*TRL_NAMES, "cdpo")
    for name, fn in BUILTINS.items():
        assert jl.get(name) is fn
        assert jl.info(name).fn is fn
        assert jl.info(name).name == name


def test_info_records():
    assert {n for n in BUILTINS if jl.info(n).margin_based} == {
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "robust",
        "discopop",
        "sigmoid_norm",
        "cdpo",
    }
    assert {n for n in BUILTINS if jl.info(n).needs_lengths} == {"ipo", "sigmoid_norm", "sft"}
    assert {n for n in BUILTINS if not jl.info(n).needs_reference} == {"sft"}
    assert jl.info("sigmoid").hyperparameters == {"beta": 0.1}
    assert jl.info("ipo").hyperparameters == {"beta": 0.1}
    assert jl.info("exo_pair").hyperparameters == {"beta": 0.1, "label_smoothing": 1e-3}
    assert jl.info("robust").hyperparameters == {"beta": 0.1, "label_smoothing": 0.0}
    assert jl.info("discopop").hyperparameters == {"beta": 0.1, "discopop_tau": 0.05}
    assert jl.info("sft").hyperparameters == {}
    assert isinstance(jl.info("aot"), jl.LossInfo)


@pytest.mark.parametrize("lookup", [jl.info, jl.get, lambda n: jl.call(n, C, R, RC, RR)])
def test_unknown_name_suggests_close_match(lookup):
    with pytest.raises(KeyError, match=r"Unknown loss 'sigmod'\. Did you mean 'sigmoid'\?.*hinge"):
        lookup("sigmod")
    with pytest.raises(KeyError, match="Registered losses: sigmoid, hinge"):
        lookup("zzzz")


def test_call_equals_direct_function():
    np.testing.assert_allclose(
        jl.call("robust", C, R, RC, RR, beta=0.5, label_smoothing=0.2),
        jl.robust_dpo_loss(C, R, RC, RR, beta=0.5, label_smoothing=0.2),
    )
    np.testing.assert_allclose(
        jl.call("ipo", C, R, RC, RR, chosen_lengths=LC, rejected_lengths=LR),
        jl.ipo_loss(C, R, RC, RR, chosen_lengths=LC, rejected_lengths=LR),
    )
    # Lengths are dropped for losses that do not take them; references for reference-free ones.
    np.testing.assert_allclose(
        jl.call("sigmoid", C, R, RC, RR, chosen_lengths=LC, rejected_lengths=LR),
        jl.dpo_loss(C, R, RC, RR),
    )
    np.testing.assert_allclose(
        jl.call("sft", C, R, RC, RR, chosen_lengths=LC), jl.sft_loss(C, R, chosen_lengths=LC)
    )
    np.testing.assert_allclose(
        jl.call("sft", C, R, chosen_lengths=LC), jl.sft_loss(C, R, chosen_lengths=LC)
    )


def test_call_errors():
    with pytest.raises(TypeError, match=r"'sigmoid'.*label_smoothing.*valid hyperparameters: beta"):
        jl.call("sigmoid", C, R, RC, RR, label_smoothing=0.1)
    with pytest.raises(TypeError, match=r"'sft'.*beta.*valid hyperparameters: none"):
        jl.call("sft", C, R, chosen_lengths=LC, beta=0.1)
    with pytest.raises(ValueError, match=r"'hinge' needs reference.*ref_chosen_logps"):
        jl.call("hinge", C, R)
    with pytest.raises(ValueError, match=r"'robust' needs reference.*ref_rejected_logps"):
        jl.call("robust", C, R, RC)
    with pytest.raises(ValueError, match=r"'ipo' needs `chosen_lengths` and `rejected_lengths`"):
        jl.call("ipo", C, R, RC, RR)
    with pytest.raises(ValueError, match=r"'sigmoid_norm' needs `rejected_lengths`"):
        jl.call("sigmoid_norm", C, R, RC, RR, chosen_lengths=LC)
    with pytest.raises(ValueError, match=r"'sft' needs `chosen_lengths`"):
        jl.call("sft", C, R, rejected_lengths=LR)


def test_register_reference_free_loss(scratch_registry):
    def scaled_margin(chosen_logps, rejected_logps, *, scale=2.0, chosen_lengths=None):
        return -jax.nn.log_sigmoid(scale * (chosen_logps - rejected_logps) / chosen_lengths)

    record = jl.register(
        "test_scaled_margin", scaled_margin, needs_reference=False, needs_lengths=True
    )
    assert jl.names()[-1] == "test_scaled_margin"
    assert record == jl.info("test_scaled_margin")
    assert record.hyperparameters == {"scale": 2.0}
    assert not record.margin_based
    got = jl.call("test_scaled_margin", C, R, RC, RR, chosen_lengths=LC, rejected_lengths=LR)
    expected = np.logaddexp(0.0, -2.0 * (np.asarray(C) - np.asarray(R)) / np.asarray(LC))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="needs `chosen_lengths`"):
        jl.call("test_scaled_margin", C, R)
    with pytest.raises(ValueError, match="already registered"):
        jl.register("test_scaled_margin", scaled_margin, needs_reference=False)


def test_register_validates(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        jl.register("sigmoid", jl.dpo_loss)
    with pytest.raises(ValueError, match="must take 4 positional"):
        jl.register("test_two_args", lambda c, r, *, beta=0.1: c - r)
    with pytest.raises(ValueError, match="needs_lengths=True"):
        jl.register("test_no_lengths", jl.dpo_loss, needs_lengths=True)
    with pytest.raises(ValueError, match="non-empty string"):
        jl.register("", jl.dpo_loss)
    with pytest.raises(ValueError, match="callable"):
        jl.register("test_not_callable", 3.0)
    assert not any(n.startswith("test_") for n in jl.names())


# ---------------------------------------------------------------------------------------------
# Registry-wide table: the same properties for every registered loss, whoever registered it.


def _random_inputs(seed, shape):
    rng = np.random.default_rng(seed)
    lengths = [rng.integers(1, 9, size=shape) for _ in range(2)]
    logps = [-lengths[i % 2] * rng.uniform(0.3, 2.0, size=shape) for i in range(4)]
    return [jnp.asarray(x, jnp.float32) for x in logps], [jnp.asarray(x) for x in lengths]


# Values for hyperparameters that have no default (e.g. AlphaPO's reward-shape exponent).
_REQUIRED_HPARAMS = {"alpha": 0.25}


def _call(name, c, r, rc, rr, lc, lr):
    required = {
        k: _REQUIRED_HPARAMS[k]
        for k, v in jl.info(name).hyperparameters.items()
        if v is inspect.Parameter.empty
    }
    return jl.call(name, c, r, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **required)


def test_missing_required_hyperparameter_is_named():
    (c, r, _, _), (lc, lr) = _random_inputs(0, (5,))
    with pytest.raises(TypeError, match=r"alphapo.*alpha"):
        jl.call("alphapo", c, r, chosen_lengths=lc, rejected_lengths=lr)


@pytest.mark.parametrize("name", jl.names())
def test_every_registered_loss(name):
    (c, r, rc, rr), (lc, lr) = _random_inputs(0, (5,))
    eager = _call(name, c, r, rc, rr, lc, lr)
    assert eager.shape == (5,) and eager.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(eager)))

    jitted = jax.jit(_call, static_argnums=0)(name, c, r, rc, rr, lc, lr)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)

    grads = jax.grad(
        lambda *a: jnp.sum(_call(name, *a, lc, lr)), argnums=(0, 1, 2, 3)
    )(c, r, rc, rr)  # fmt: skip
    for g in grads:
        assert g.shape == (5,) and np.all(np.isfinite(np.asarray(g)))
    assert np.any(np.asarray(grads[0]) != 0.0)

    bf16 = _call(name, *(x.astype(jnp.bfloat16) for x in (c, r, rc, rr)), lc, lr)
    assert bf16.dtype == jnp.float32

    (sc, sr, src, srr), (slc, slr) = _random_inputs(1, (3, 5))
    batched = jax.vmap(lambda *a: _call(name, *a))(sc, sr, src, srr, slc, slr)
    looped = jnp.stack(
        [_call(name, sc[k], sr[k], src[k], srr[k], slc[k], slr[k]) for k in range(3)]
    )
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-7)


def test_loss_config_fields_are_the_registry_hyperparameters():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(jl.LossConfig)} - {"name"}
    union = set().union(*(jl.info(n).hyperparameters for n in jl.names()))
    # `chosen_nll` (CPO / ORPO) is a per-pair array input, not a configurable hyperparameter.
    assert fields == union - {"chosen_nll"}


@pytest.mark.parametrize("name", jl.names())
def test_loss_config_calls_each_loss_like_the_registry(name):
    c, r = jnp.array([-5.0, -4.0]), jnp.array([-7.0, -3.0])
    rc, rr = jnp.array([-6.0, -4.0]), jnp.array([-6.5, -3.5])
    lengths = {"chosen_lengths": jnp.array([3.0, 2.0]), "rejected_lengths": jnp.array([4.0, 2.0])}
    extra = {"alpha": 0.25} if name == "alphapo" else {}
    config = jl.LossConfig(name, beta=0.3, **extra)
    kwargs = config.hyperparameters()
    expected = {"beta": 0.3, **extra} if "beta" in jl.info(name).hyperparameters else extra
    assert kwargs == expected
    got = jl.call(name, c, r, rc, rr, **lengths, **kwargs)
    want = jl.call(name, c, r, rc, rr, **lengths, **expected)
    np.testing.assert_array_equal(got, want)


def test_loss_config_rejects_what_the_loss_does_not_take():
    with pytest.raises(ValueError, match="loss 'ipo' has no hyperparameter 'label_smoothing'"):
        jl.LossConfig("ipo", label_smoothing=0.1).hyperparameters()
    with pytest.raises(ValueError, match=r"requires \['alpha'\]"):
        jl.LossConfig("alphapo").hyperparameters()
    with pytest.raises(ValueError, match="beta must be positive"):
        jl.LossConfig(beta=-1.0).hyperparameters()
    with pytest.raises(KeyError, match="Did you mean 'sigmoid'"):
        jl.LossConfig("sigmoidd").hyperparameters()


def test_resolve_infers_unregistered_functions():
    assert jl.resolve("ipo") is jl.info("ipo")
    assert jl.resolve(jl.get("ipo")) is jl.info("ipo")
    record = jl.resolve(lambda c, r, rc, rr, *, beta=0.1, tau=1.0: (c - r) * tau)
    assert record.needs_reference and record.hyperparameters == {"beta": 0.1, "tau": 1.0}
    assert record.select(0.5, {"tau": 2.0, "other": 3}) == {"tau": 2.0, "beta": 0.5}
