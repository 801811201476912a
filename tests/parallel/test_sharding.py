"""Sharding on 8 fake CPU devices: spec snapshots, sharded init, sharded step == one device."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpref.models import ScalarHeadModel, Transformer, from_hf, preset, to_hf
from jaxpref.parallel import (
    DP,
    FSDP,
    FSDP_TP,
    MeshConfig,
    ShardingRules,
    batch_sharding,
    global_batch,
    initialize_distributed,
    logical_axes,
    make_mesh,
    param_shardings,
    partition_specs,
    shard_batch,
    shard_model,
    sharded_init,
    sharding_rules,
)
from tests.models.helpers import random_model
from tests.parallel.common import data, loss_fn, make_model

MESHES = {
    "dp": MeshConfig(data=8, fsdp=1),
    "fsdp": MeshConfig(fsdp=8),
    "fsdp_tp": MeshConfig(fsdp=4, tensor=2),
}

# Expected PartitionSpecs of layer 0 (layer 1 is checked equal) and the top-level parameters.
N = None
SNAPSHOT = {
    "dp": {},  # everything replicated
    "fsdp": {
        "embed": (N, "fsdp"),
        "pos_embed": (N, "fsdp"),
        "lm_head": ("fsdp", N),
        "layers/0/attn/q/kernel": ("fsdp", N, N),
        "layers/0/attn/k/kernel": ("fsdp", N, N),
        "layers/0/attn/v/kernel": ("fsdp", N, N),
        "layers/0/attn/o/kernel": (N, N, "fsdp"),
        "layers/0/attn/o/bias": ("fsdp",),
        "layers/0/mlp/gate/kernel": ("fsdp", N),
        "layers/0/mlp/up/kernel": ("fsdp", N),
        "layers/0/mlp/down/kernel": (N, "fsdp"),
        "layers/0/mlp/down/bias": ("fsdp",),
    },
    "fsdp_tp": {
        "embed": ("tensor", "fsdp"),
        "pos_embed": (N, "fsdp"),
        "lm_head": ("fsdp", "tensor"),
        "layers/0/attn/q/kernel": ("fsdp", "tensor", N),
        "layers/0/attn/q/bias": ("tensor", N),
        "layers/0/attn/k/kernel": ("fsdp", "tensor", N),
        "layers/0/attn/k/bias": ("tensor", N),
        "layers/0/attn/v/kernel": ("fsdp", "tensor", N),
        "layers/0/attn/v/bias": ("tensor", N),
        "layers/0/attn/o/kernel": ("tensor", N, "fsdp"),
        "layers/0/attn/o/bias": ("fsdp",),
        "layers/0/mlp/gate/kernel": ("fsdp", "tensor"),
        "layers/0/mlp/up/kernel": ("fsdp", "tensor"),
        "layers/0/mlp/up/bias": ("tensor",),
        "layers/0/mlp/down/kernel": ("tensor", "fsdp"),
        "layers/0/mlp/down/bias": ("fsdp",),
    },
}


def abstract(name):
    return nnx.eval_shape(lambda: Transformer(preset(name), rngs=nnx.Rngs(0)))


def flat_specs(tree):
    return {"/".join(map(str, p)): tuple(v.get_value()) for p, v in nnx.to_flat_state(tree)}


@pytest.mark.parametrize("preset_name", ["dp", "fsdp", "fsdp_tp"])
@pytest.mark.parametrize("model_name", ["gpt2-tiny", "llama-tiny"])
def test_partition_spec_snapshot(preset_name, model_name):
    mesh = make_mesh(MESHES[preset_name])
    model = abstract(model_name)
    got = flat_specs(partition_specs(model, sharding_rules(preset_name), mesh))
    for path, var in nnx.to_flat_state(nnx.state(model)):
        key = "/".join(map(str, path))
        expected = SNAPSHOT[preset_name].get(key.replace("layers/1/", "layers/0/"))
        if expected is None:
            expected = (None,) * var.get_value().ndim
        assert got[key] == expected, key
    assert set(got) == {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "gpt2", "llama2-7b", "qwen2.5-0.5b"])
@pytest.mark.parametrize("preset_name", ["fsdp", "fsdp_tp"])
def test_no_large_parameter_is_replicated(name, preset_name):
    """No matrix of >= 1024 entries is fully replicated; on published shapes the replicated
    vectors (norm scales, biases) are < 1% of the parameters."""
    mesh = make_mesh(MESHES[preset_name])
    model = abstract(name)
    specs = dict(nnx.to_flat_state(partition_specs(model, sharding_rules(preset_name), mesh)))
    total = replicated_size = 0
    replicated_matrices = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        shape = var.get_value().shape
        size = int(np.prod(shape))
        total += size
        if all(a is None for a in specs[path].get_value()):
            replicated_size += size
            if len(shape) >= 2 and size >= 1024:
                replicated_matrices.append((path, shape))
    assert not replicated_matrices, replicated_matrices
    if "tiny" not in name:
        assert replicated_size / total < 0.01, replicated_size / total


def test_rules_resolution():
    mesh = make_mesh(MESHES["fsdp_tp"])
    # A dimension not divisible by its mesh axes stays whole; a mesh axis is used once.
    rules = ShardingRules(params=(("a", "tensor"), ("b", ("fsdp", "tensor"))))
    model = nnx.eval_shape(lambda: _Toy())
    specs = flat_specs(partition_specs(model, rules, mesh))
    assert specs == {"odd": (None, ("fsdp", "tensor")), "twice": ("tensor", "fsdp")}
    assert flat_specs(logical_axes(model)) == {"odd": ("a", "b"), "twice": ("a", "b")}
    with pytest.raises(ValueError, match="unknown preset"):
        sharding_rules("zero3")
    assert sharding_rules("dp") is DP


class _Toy(nnx.Module):
    def __init__(self):
        self.odd = nnx.Param(np.zeros((3, 8), np.float32), out_sharding=("a", "b"),
                             eager_sharding=False)  # fmt: skip
        self.twice = nnx.Param(np.zeros((2, 4), np.float32), out_sharding=("a", "b"),
                               eager_sharding=False)  # fmt: skip


def test_mesh_config():
    assert MeshConfig(data=2, tensor=2).shape(8) == (2, 2, 2)
    assert MeshConfig(data=-1, fsdp=2).shape(8) == (4, 2, 1)
    with pytest.raises(ValueError, match="do not match"):
        MeshConfig(data=3, fsdp=1).shape(8)
    with pytest.raises(ValueError, match="at most one"):
        MeshConfig(data=-1, fsdp=-1).shape(8)
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_sharded_init_is_sharded_and_equals_plain_init():
    rules, mesh = FSDP_TP, make_mesh(MESHES["fsdp_tp"])
    model = sharded_init(make_model(), jax.random.key(0), mesh=mesh, rules=rules)
    plain = jax.jit(lambda k: nnx.split(make_model()(nnx.Rngs(k)))[1])(jax.random.key(0))
    expected = dict(nnx.to_flat_state(partition_specs(model, rules, mesh)))
    plain_flat = dict(nnx.to_flat_state(plain))
    for path, var in nnx.to_flat_state(nnx.state(model)):
        value = var.get_value()
        spec = expected[path].get_value()
        assert value.sharding.spec == spec, path
        shard_shape = NamedSharding(mesh, spec).shard_shape(value.shape)
        assert all(s.data.shape == shard_shape for s in value.addressable_shards), path
        np.testing.assert_allclose(value, plain_flat[path].get_value(), atol=1e-7, err_msg=path)


@pytest.fixture(scope="module")
def reference():
    """Loss and gradients of the train step on one device, unsharded."""
    model = random_model(preset("llama-tiny"), seed=1)
    graphdef, state = nnx.split(model)
    ids, mask = data()
    loss, grads = jax.jit(jax.value_and_grad(functools.partial(loss_fn, graphdef)))(
        state, ids, mask
    )
    return model, loss, grads


@pytest.mark.parametrize("preset_name", ["dp", "fsdp", "fsdp_tp"])
def test_sharded_step_equals_single_device(reference, preset_name):
    model, ref_loss, ref_grads = reference
    rules, mesh = sharding_rules(preset_name), make_mesh(MESHES[preset_name])
    graphdef, state = nnx.split(shard_model(model, rules, mesh))
    shardings = param_shardings(state, rules, mesh)
    ids, mask = shard_batch(data(), mesh, rules)
    assert ids.sharding == batch_sharding(mesh, rules)
    step = jax.jit(
        jax.value_and_grad(functools.partial(loss_fn, graphdef)),
        in_shardings=(shardings, batch_sharding(mesh, rules), batch_sharding(mesh, rules)),
        out_shardings=(NamedSharding(mesh, P()), shardings),
    )
    loss, grads = step(state, ids, mask)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    ref = dict(nnx.to_flat_state(ref_grads))
    specs = dict(nnx.to_flat_state(partition_specs(state, rules, mesh)))
    for path, var in nnx.to_flat_state(grads):
        assert var.get_value().sharding.spec == specs[path].get_value()
        np.testing.assert_allclose(var.get_value(), ref[path].get_value(), atol=1e-5)


def test_scalar_head_is_sharded():
    mesh = make_mesh(MESHES["fsdp_tp"])
    rm = nnx.eval_shape(lambda: ScalarHeadModel(preset("gpt2-tiny"), rngs=nnx.Rngs(0)))
    specs = partition_specs(rm, FSDP_TP, mesh)
    assert specs["head"]["kernel"].get_value() == P("fsdp")
    assert specs["head"]["bias"].get_value() == P()
    assert "lm_head" not in specs["backbone"]


def test_from_hf_places_each_parameter_in_its_shard(tmp_path):
    mesh = make_mesh(MESHES["fsdp_tp"])
    model = random_model(preset("qwen2-tiny"))
    to_hf(model, tmp_path)
    loaded = from_hf(tmp_path, mesh=mesh, rules=FSDP_TP)
    specs = dict(nnx.to_flat_state(partition_specs(loaded, FSDP_TP, mesh)))
    original = dict(nnx.to_flat_state(nnx.state(model)))
    for path, var in nnx.to_flat_state(nnx.state(loaded)):
        assert var.get_value().sharding.spec == specs[path].get_value(), path
        np.testing.assert_array_equal(var.get_value(), original[path].get_value())


def test_batches():
    mesh = make_mesh(MESHES["fsdp_tp"])
    ids, mask = data()
    sharded = shard_batch({"ids": ids, "mask": mask}, mesh, FSDP_TP)
    assert sharded["ids"].sharding.spec == P(("data", "fsdp"), None)
    assert sharded["ids"].addressable_shards[0].data.shape == (2, 8)
    np.testing.assert_array_equal(sharded["ids"], ids)
    glob = global_batch({"ids": ids}, mesh, FSDP_TP)
    np.testing.assert_array_equal(glob["ids"], ids)
    assert glob["ids"].sharding.spec == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="divisible by 4"):
        shard_batch({"ids": ids[:6]}, mesh, FSDP_TP)
    assert batch_sharding(make_mesh(MESHES["dp"]), FSDP, ndim=3).spec == P(
        ("data", "fsdp", "tensor"), None, None
    )


def test_initialize_distributed_is_a_noop_on_one_process():
    assert initialize_distributed() == (0, 1)
    assert not jax.distributed.is_initialized()
