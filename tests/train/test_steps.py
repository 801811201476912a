"""Step builders: objectives against hand computations, accumulation, reference paths, sharding."""

import inspect
from types import SimpleNamespace
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jaxpref.losses as jl
from jaxpref.models import ScalarHeadModel
from jaxpref.train import (
    RefSyncConfig,
    add_cached_reference,
    create_train_state,
    init_train_state,
    jit_step,
    make_pair_logps_fn,
    make_preference_objective,
    make_reward_objective,
    make_sft_objective,
    make_step,
    split_microbatches,
    split_model,
    state_sharding,
    sync_reference,
)
from tests.train._helpers import Bigram, pair_batch, sft_batch, tiny_model, tiny_transformer

_logits = jax.jit(lambda model, ids, mask: model(ids, mask))


def _log_softmax_np(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _seq_logps_np(model, batch):
    """Summed next-token log-probs of the loss-mask tokens, from the model's logits in numpy."""
    logits = np.asarray(
        model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    )
    logp = _log_softmax_np(logits)[:, :-1]
    ids = batch["input_ids"]
    picked = np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    mask = batch["loss_mask"][:, 1:].astype(np.float64)
    return (picked * mask).sum(-1)


def _log_sigmoid_np(x):
    return -np.logaddexp(0.0, -x)


def _max_abs_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


SGD = optax.sgd(1.0)  # parameter differences then equal gradient differences
BETA = 0.5


class _Setup(NamedTuple):
    policy: nnx.Module
    reference: nnx.Module
    model_def: object
    params: dict
    ref_params: dict
    objective: object
    step: object  # jitted DPO step with SGD, shared by tests so that it compiles once


@pytest.fixture(scope="module")
def dpo():
    policy, reference = tiny_transformer(0), tiny_transformer(1)
    model_def, params = split_model(policy)
    _, ref_params = split_model(reference)
    objective = make_preference_objective(model_def, "sigmoid", beta=BETA)
    step = jax.jit(make_step(objective, SGD))
    return _Setup(policy, reference, model_def, params, ref_params, objective, step)


def test_preference_objective_matches_hand_computed_dpo(dpo):
    batch = pair_batch(3, num_pairs=8)
    loss, metrics = jax.jit(lambda p, r, b: dpo.objective.fn(p, b, ref_params=r, rng=None))(
        dpo.params, dpo.ref_params, batch
    )
    pol = _seq_logps_np(dpo.policy, batch)
    ref = _seq_logps_np(dpo.reference, batch)
    b = len(pol) // 2
    ratio_c, ratio_r = pol[:b] - ref[:b], pol[b:] - ref[b:]
    expected = -_log_sigmoid_np(BETA * (ratio_c - ratio_r)).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), BETA * ratio_c.mean(), atol=1e-5)
    np.testing.assert_allclose(float(metrics["logps/rejected"]), pol[b:].mean(), rtol=1e-5)


def test_filler_pairs_are_ignored():
    model_def, params = split_model(Bigram(rngs=nnx.Rngs(0)))
    _, ref_params = split_model(Bigram(rngs=nnx.Rngs(1)))
    objective = make_preference_objective(model_def, "ipo", beta=0.5)
    full = pair_batch(5, num_pairs=4, fillers=(1,))
    keep = np.array([0, 2, 3])
    rows = np.concatenate([keep, keep + 4])
    filtered = {k: (v[keep] if v.shape[0] == 4 else v[rows]) for k, v in full.items()}
    filtered["pair_mask"] = np.ones(3, np.int32)
    grad_fn = jax.jit(
        jax.value_and_grad(lambda p, b: objective.fn(p, b, ref_params=ref_params), has_aux=True)
    )
    (loss_full, m_full), g_full = grad_fn(params, full)
    (loss_filt, m_filt), g_filt = grad_fn(params, filtered)
    np.testing.assert_allclose(float(loss_full), float(loss_filt), rtol=1e-6, atol=1e-7)
    assert _max_abs_diff(g_full, g_filt) < 1e-6
    # The logged metrics are means over the real pairs too (a filler has 0 log-probs and rewards).
    assert set(m_full) == set(m_filt)
    for k in m_full:
        np.testing.assert_allclose(float(m_full[k]), float(m_filt[k]), rtol=1e-6, atol=1e-7)


def test_cached_reference_equals_live_reference(dpo, tmp_path):
    from jaxpref.data import build_ref_cache

    batch = {**pair_batch(7, num_pairs=8), "index": np.arange(8, dtype=np.int32)[::-1].copy()}
    ref_fn = jax.jit(make_pair_logps_fn(dpo.model_def))
    cache = build_ref_cache(
        tmp_path,
        [SimpleNamespace(**batch)],
        lambda b: ref_fn(dpo.ref_params, {k: v for k, v in vars(b).items()}),
        num_records=8,
        dataset_fingerprint="data",
        model_fingerprint="ref",
    )
    live = init_train_state(dpo.params, SGD, 0, ref_params=dpo.ref_params)
    cached = init_train_state(dpo.params, SGD, 0)
    s_live, m_live = dpo.step(live, batch)
    s_cached, m_cached = dpo.step(cached, add_cached_reference(batch, cache))
    for key in ("loss", "grad_norm", "rewards/margins", "rewards/accuracies"):
        np.testing.assert_allclose(float(m_live[key]), float(m_cached[key]), rtol=1e-6, atol=1e-6)
    assert _max_abs_diff(s_live.params, s_cached.params) < 1e-6
    assert s_cached.ref_params is None


def test_missing_reference_is_a_clear_error(dpo):
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        jax.eval_shape(lambda p: dpo.objective.fn(p, pair_batch(0), ref_params=None), dpo.params)
    with pytest.raises(KeyError, match="sigmoid"):
        make_preference_objective(dpo.model_def, "sigmoidd")


def test_grad_accumulation_matches_full_batch_preference(dpo):
    batch = pair_batch(11, num_pairs=8, fillers=(2, 5))  # fillers and varied lengths
    state = init_train_state(dpo.params, SGD, 0, ref_params=dpo.ref_params)
    s1, m1 = dpo.step(state, batch)
    s4, m4 = jax.jit(make_step(dpo.objective, SGD, accum_steps=4))(state, batch)
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    assert _max_abs_diff(s4.params, s1.params) < 1e-5


def test_grad_accumulation_matches_full_batch_sft():
    model_def, params = split_model(Bigram(rngs=nnx.Rngs(0)))
    tx = optax.sgd(1.0)
    step1 = jax.jit(make_step(make_sft_objective(model_def), tx))
    step2 = jax.jit(make_step(make_sft_objective(model_def), tx, accum_steps=2))
    batch = sft_batch(4, rows=4)  # rows of different lengths: token-weighted microbatches
    s1, m1 = step1(init_train_state(params, tx, 0), batch)
    s2, m2 = step2(init_train_state(params, tx, 0), batch)
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
    assert _max_abs_diff(s2.params, s1.params) < 1e-6


def test_split_microbatches_keeps_pairs_and_strides():
    ids = np.arange(8)[:, None] * np.ones((1, 3), np.int32)  # rows 0-3 chosen, 4-7 rejected
    batch = {"input_ids": ids, "pair_mask": np.arange(4)}
    mb = split_microbatches(batch, 2, paired=True)
    assert mb["input_ids"].shape == (2, 4, 3)
    np.testing.assert_array_equal(mb["input_ids"][0, :, 0], [0, 2, 4, 6])
    np.testing.assert_array_equal(mb["input_ids"][1, :, 0], [1, 3, 5, 7])
    np.testing.assert_array_equal(mb["pair_mask"][1], [1, 3])
    flat = split_microbatches({"input_ids": np.arange(6)}, 3, paired=False)
    np.testing.assert_array_equal(flat["input_ids"], [[0, 3], [1, 4], [2, 5]])
    with pytest.raises(ValueError, match="not divisible into 3 microbatches"):
        split_microbatches(batch, 3, paired=True)
    with pytest.raises(ValueError, match=r"\['lengths'\]"):
        split_microbatches({**batch, "lengths": np.zeros(5)}, 2, paired=True)


def _train_steps(step, state, batches):
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


def test_sft_step_decreases_loss():
    tx = optax.adam(1e-2)
    model_def, state, _ = create_train_state(tiny_transformer(), tx, 0)
    step = jit_step(make_step(make_sft_objective(model_def), tx))
    batch = sft_batch(0, rows=4)
    _, losses = _train_steps(step, state, [batch] * 25)
    assert np.log(64) - 0.2 < losses[0] < np.log(64) + 0.2
    assert losses[-1] < 0.5 * losses[0]


def test_reward_model_step_decreases_loss():
    model = tiny_model(ScalarHeadModel)
    tx = optax.adam(1e-2)
    model_def, state, _ = create_train_state(model, tx, 0)
    objective = make_reward_objective(model_def)
    batch = pair_batch(2, num_pairs=8)
    scores = np.asarray(
        jax.jit(lambda m, b: m.score(b["input_ids"], b["attention_mask"]))(model, batch)
    )
    expected = -_log_sigmoid_np(scores[:8].astype(np.float64) - scores[8:]).mean()
    loss0, _ = jax.jit(lambda p: objective.fn(p, batch, ref_params=None, rng=None))(state.params)
    np.testing.assert_allclose(float(loss0), expected, rtol=1e-5)
    step = jit_step(make_step(objective, tx))
    state, losses = _train_steps(step, state, [batch] * 25)
    assert losses[-1] < 0.5 * losses[0]
    _, metrics = step(state, batch)
    assert float(metrics["rewards/accuracies"]) == 1.0


def test_dpo_step_decreases_loss():
    tx = optax.adam(5e-3)
    model_def, state, _ = create_train_state(tiny_transformer(), tx, 0, with_reference=True)
    step = jit_step(make_step(make_preference_objective(model_def, "sigmoid", beta=0.5), tx))
    batch = pair_batch(1, num_pairs=8)
    state, losses = _train_steps(step, state, [batch] * 25)
    np.testing.assert_allclose(losses[0], np.log(2.0), rtol=1e-5)  # policy == reference
    assert losses[-1] < 0.5 * losses[0]
    _, metrics = step(state, batch)
    assert float(metrics["rewards/margins"]) > 0
    assert float(metrics["rewards/accuracies"]) == 1.0


def _required_hparams(name):
    info = jl.info(name)
    return {k: 0.25 for k, v in info.hyperparameters.items() if v is inspect.Parameter.empty}


@pytest.mark.parametrize("name", jl.names())
def test_every_registered_loss_trains_without_nan(name):
    tx = optax.adam(1e-2)
    model_def, state, _ = create_train_state(
        Bigram(rngs=nnx.Rngs(0)), tx, 0, with_reference=jl.info(name).needs_reference
    )
    objective = make_preference_objective(model_def, name, beta=0.1, **_required_hparams(name))
    step = jax.jit(make_step(objective, tx))
    start = state.params["table"]
    for i in range(3):
        state, metrics = step(state, pair_batch(i))
        assert all(np.isfinite(float(v)) for v in metrics.values()), (name, metrics)
    assert np.all(np.isfinite(state.params["table"]))
    assert not np.array_equal(state.params["table"], start)


def _quadratic(params, batch, *, ref_params=None, rng=None):
    return jnp.sum((params["w"] - batch["target"]) ** 2), {}


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_tr_dpo_reference_sync(mode):
    lr, alpha, tau = 0.1, 0.25, 2
    tx = optax.sgd(lr)
    w0 = np.array([1.0, -2.0], np.float32)
    target = np.array([3.0, 0.5], np.float32)
    sync = RefSyncConfig(mode=mode, alpha=alpha, every_steps=tau)
    step = jax.jit(make_step(_quadratic, tx, ref_sync=sync))
    state = init_train_state({"w": jnp.asarray(w0)}, tx, 0, ref_params={"w": jnp.asarray(w0)})
    w, ref = w0.astype(np.float64), w0.astype(np.float64)
    a = 1.0 if mode == "hard" else alpha
    for t in range(1, 6):
        state, _ = step(state, {"target": target})
        w = w - lr * 2.0 * (w - target)
        if t % tau == 0:
            ref = a * w + (1.0 - a) * ref
        np.testing.assert_allclose(state.params["w"], w, rtol=1e-6)
        np.testing.assert_allclose(state.ref_params["w"], ref, rtol=1e-6, atol=1e-7)
        if mode == "hard" and t % tau == 0:
            np.testing.assert_array_equal(state.ref_params["w"], state.params["w"])


def test_sync_reference_math_and_dtype():
    params = {"a": jnp.array([2.0, 4.0]), "b": jnp.array([1.0], jnp.bfloat16)}
    ref = {"a": jnp.array([0.0, 1.0]), "b": jnp.array([3.0], jnp.bfloat16)}
    soft = sync_reference(params, ref, alpha=0.6)
    np.testing.assert_allclose(soft["a"], [0.6 * 2.0, 0.6 * 4.0 + 0.4 * 1.0], rtol=1e-6)
    assert soft["b"].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(soft["b"][0]), 0.6 * 1.0 + 0.4 * 3.0, rtol=1e-2)
    hard = sync_reference(params, ref, alpha=1.0)
    np.testing.assert_array_equal(hard["a"], params["a"])


def test_sync_requires_live_reference():
    tx = optax.sgd(0.1)
    step = make_step(_quadratic, tx, ref_sync=RefSyncConfig(mode="hard", every_steps=1))
    state = init_train_state({"w": jnp.zeros(2)}, tx, 0)
    with pytest.raises(ValueError, match="ref_params"):
        jax.eval_shape(step, state, {"target": jnp.zeros(2)})


def test_sharded_fsdp_step_matches_unsharded(dpo):
    from jaxpref.parallel import MeshConfig, batch_sharding, make_mesh, sharding_rules

    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(fsdp=8))
    rules = sharding_rules("fsdp")
    batch = pair_batch(9, num_pairs=8)
    plain = init_train_state(dpo.params, SGD, 0, ref_params=dpo.ref_params)
    s_plain, m_plain = dpo.step(plain, batch)

    sharding = state_sharding(dpo.model_def, SGD, mesh, rules, with_reference=True)
    sharded = init_train_state(
        split_model(tiny_transformer(0))[1],
        SGD,
        0,
        ref_params=split_model(tiny_transformer(1))[1],
        sharding=sharding,
    )
    assert sharded.params["embed"].sharding.spec == P(None, "fsdp")
    assert sharded.ref_params["layers"][0]["mlp"]["up"]["kernel"].sharding.spec[0] == "fsdp"
    step = jit_step(
        make_step(dpo.objective, SGD),
        state_sharding=sharding,
        batch_sharding=batch_sharding(mesh, rules, ndim=1),
    )
    s_sharded, m_sharded = step(sharded, batch)
    for key in ("loss", "grad_norm", "rewards/margins"):
        np.testing.assert_allclose(float(m_sharded[key]), float(m_plain[key]), rtol=1e-5, atol=1e-6)
    assert _max_abs_diff(s_sharded.params, s_plain.params) < 1e-5
    assert s_sharded.params["embed"].sharding.spec == P(None, "fsdp")


def test_state_sharding_mirrors_parameters_in_optimizer_state():
    from jaxpref.parallel import MeshConfig, make_mesh, sharding_rules

    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    model_def, _ = split_model(nnx.eval_shape(lambda: tiny_transformer()))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    sh = state_sharding(model_def, tx, mesh, sharding_rules("fsdp_tp"), with_reference=True)
    adam = sh.opt_state[1][0]
    for moment in (adam.mu, adam.nu):
        assert jax.tree.leaves(moment) == jax.tree.leaves(sh.params)
    assert adam.count.spec == jax.sharding.PartitionSpec()
    assert sh.ref_params is sh.params


def test_step_compiles_once():
    tx = optax.adam(1e-2)
    model_def, state, _ = create_train_state(Bigram(rngs=nnx.Rngs(0)), tx, 0, with_reference=True)
    traced = chex.assert_max_traces(
        make_step(make_preference_objective(model_def, "sigmoid"), tx, accum_steps=2), n=1
    )
    step = jit_step(traced)
    for i in range(4):
        state, _ = step(state, pair_batch(i))
    assert step._cache_size() == 1
    chex.clear_trace_counter()


def test_loss_config_builds_the_same_objective_as_name_and_hyperparameters():
    import jaxpref.losses as jl

    model_def, params = split_model(Bigram(rngs=nnx.Rngs(0)))
    _, ref_params = split_model(Bigram(rngs=nnx.Rngs(1)))
    batch = pair_batch(5, num_pairs=4)
    typed = make_preference_objective(model_def, jl.LossConfig("robust", 0.5, label_smoothing=0.2))
    loose = make_preference_objective(model_def, "robust", beta=0.5, label_smoothing=0.2)
    a, ma = typed.fn(params, batch, ref_params=ref_params)
    b, mb = loose.fn(params, batch, ref_params=ref_params)
    assert float(a) == float(b) and typed.name == "robust"
    assert {k: float(v) for k, v in ma.items()} == {k: float(v) for k, v in mb.items()}
    with pytest.raises(ValueError, match="in the LossConfig"):
        make_preference_objective(model_def, jl.LossConfig("ipo"), beta=0.3)
    with pytest.raises(ValueError, match="has no hyperparameter 'alpha'"):
        make_preference_objective(model_def, jl.LossConfig("ipo", alpha=1.0))
