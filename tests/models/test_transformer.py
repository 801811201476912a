"""The decoder LM: padding / packing / causality invariances, GQA layout, cache, remat, heads.

Calls go through a few shared jitted functions with the same shapes, so each model variant is
compiled once for the whole module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpref.models import (
    ModelConfig,
    ScalarHeadModel,
    default_positions,
    last_valid,
    preset,
)
from tests.models.helpers import random_model

FAMILIES = ["gpt2-tiny", "llama-tiny"]


@jax.jit
def apply(model, ids, mask):
    return model(ids, mask)


@jax.jit
def apply_packed(model, ids, mask, segment_ids):
    return model(ids, mask, segment_ids=segment_ids)


def make(name, seed=0, **overrides):
    return random_model(preset(name, **overrides), seed)


@pytest.fixture(scope="module")
def models():
    return {name: make(name) for name in [*FAMILIES, "qwen2-tiny", "mistral-tiny"]}


def batch(*rows, t=8):
    """`[B, t]` ids and mask from `(tokens, offset)` rows: real tokens start at `offset`."""
    ids = np.zeros((len(rows), t), np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for i, (toks, offset) in enumerate(rows):
        ids[i, offset : offset + len(toks)] = toks
        mask[i, offset : offset + len(toks)] = 1
    return jnp.asarray(ids), jnp.asarray(mask)


ROW = [5, 17, 3, 44, 9]


def test_config_validation():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=4, num_kv_heads=3, mlp_dim=8)
    with pytest.raises(ValueError, match="family"):
        ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, mlp_dim=8, family="bert")
    with pytest.raises(ValueError, match="unknown name"):
        preset("gpt5")
    cfg = preset("llama-tiny")
    assert (cfg.head_size, cfg.kv_heads, cfg.num_groups) == (8, 2, 2)
    assert hash(cfg) == hash(preset("llama-tiny"))


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "qwen2-tiny", "mistral-tiny"])
def test_padding_on_either_side_matches_unpadded(models, name):
    # Row 0 is unpadded (the 3 trailing real tokens cannot affect the first 5 logits: causal);
    # row 1 is right-padded, row 2 left-padded.
    ids, mask = batch(([*ROW, 60, 61, 62], 0), (ROW, 0), (ROW, 3))
    out = apply(models[name], ids, mask)
    np.testing.assert_allclose(out[1, :5], out[0, :5], atol=1e-5)
    np.testing.assert_allclose(out[2, 3:], out[0, :5], atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_packed_segments_match_separate_rows(models, name):
    a, b = [5, 17, 3], [44, 9, 60, 2]
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]] * 3)
    ids, mask = batch((a + b, 0), (a + b, 0), (a + b, 0))
    packed = apply_packed(models[name], ids, seg != 0, seg)[0]
    ids, mask = batch((a, 0), (b, 0), (b, 1))
    alone = apply(models[name], ids, mask)
    np.testing.assert_allclose(packed[:3], alone[0, :3], atol=1e-5)
    np.testing.assert_allclose(packed[3:7], alone[1, :4], atol=1e-5)
    np.testing.assert_array_equal(
        default_positions(segment_ids=seg[:1]), [[0, 1, 2, 0, 1, 2, 3, 0]]
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_causal(models, name):
    ids, mask = batch((ROW, 0), ([*ROW[:3], 70, *ROW[4:]], 0), (ROW, 3))
    out = apply(models[name], ids, mask)
    np.testing.assert_array_equal(out[0, :3], out[1, :3])
    assert not np.allclose(out[0, 3], out[1, 3])


def test_sliding_window_reads_only_the_window(models):
    model = models["mistral-tiny"]  # window 8, 2 layers
    x = np.asarray(jax.random.randint(jax.random.key(1), (20,), 1, 96))
    # Each layer looks 7 tokens back, so the last token sees the last 15 tokens. RoPE scores
    # depend only on relative positions, so those 15 tokens alone (left-padded) give the same
    # last-token logits, and 14 do not.
    ids, mask = batch((x, 0), (x[-15:], 5), (x[-14:], 6), t=20)
    out = apply(model, ids, mask)[:, -1]
    np.testing.assert_allclose(out[1], out[0], atol=1e-5)
    assert not np.allclose(out[2], out[0], atol=1e-3)
    wide = nnx.merge(nnx.graphdef(make("mistral-tiny", sliding_window=None)), nnx.state(model))
    assert not np.allclose(apply(wide, ids, mask)[0, -1], out[0], atol=1e-3)


def test_gqa_equals_mha_with_repeated_kv_heads(models):
    gqa = models["llama-tiny"]  # 4 query heads read 2 kv heads: query head n reads kv head n // 2
    flat = dict(nnx.to_flat_state(nnx.state(gqa)))
    graphdef, state = nnx.split(make("llama-tiny", num_kv_heads=4))
    copied = []
    for path, var in nnx.to_flat_state(state):
        value = np.asarray(flat[path].get_value())
        if len(path) > 1 and path[-2] in ("k", "v"):
            value = np.repeat(value, 2, axis=1)  # [D, 2, H] -> [D, 4, H]
        copied.append((path, var.replace(jnp.asarray(value))))
    mha = nnx.merge(graphdef, nnx.from_flat_state(copied))
    ids, mask = batch((ROW, 0), (ROW, 2), (ROW[:2], 0))
    np.testing.assert_allclose(apply(mha, ids, mask), apply(gqa, ids, mask), atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_hidden_and_unembedding_give_logits(models, name):
    model = models[name]
    ids, mask = batch((ROW, 0), (ROW, 2), (ROW[:2], 0))
    h, w = jax.jit(lambda m, a, b: m.hidden_and_unembedding(a, b))(model, ids, mask)
    assert h.shape == (3, 8, 32) and w.shape == (32, 96)
    np.testing.assert_allclose(np.asarray(h) @ np.asarray(w), apply(model, ids, mask), atol=1e-5)
    if model.config.tie_embeddings:
        np.testing.assert_array_equal(w, model.embed.get_value().T)


@pytest.mark.parametrize("name", FAMILIES)
def test_cache_in_chunks_equals_full_forward(models, name):
    model = models[name]
    ids, mask = batch(([*ROW, 60, 61, 62], 0), (ROW, 0), (ROW, 3))
    full = apply(model, ids, mask)
    step = jax.jit(lambda m, x, c, a: m.forward_cached(x, c, attention_mask=a))
    cache = model.init_cache(3, 10)
    chunks = []
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 8)):
        logits, cache = step(model, ids[:, lo:hi], cache, mask[:, lo:hi])
        chunks.append(logits)
    got = jnp.concatenate(chunks, axis=1)
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(full)[valid], atol=1e-5)
    assert int(cache.index) == 8


def test_remat_gives_the_same_finite_gradients(models):
    """Gradients with remat == without, and finite although one row is fully masked."""
    base = models["llama-tiny"]
    remat = nnx.merge(nnx.graphdef(make("llama-tiny", remat="full")), nnx.state(base))
    ids, mask = batch((ROW, 0), (ROW, 2), ([], 0))

    @jax.jit
    @jax.value_and_grad
    def loss(mdl):
        return jnp.sum(jax.nn.log_softmax(mdl(ids, mask))[..., 7] * mask)

    (v0, g0), (v1, g1) = loss(base), loss(remat)
    np.testing.assert_allclose(v1, v0, atol=1e-5)
    assert np.isfinite(float(v0))
    for a, b in zip(jax.tree.leaves(nnx.state(g0)), jax.tree.leaves(nnx.state(g1)), strict=True):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert bool(jnp.isfinite(apply(base, ids, mask)).all())


def test_dtypes():
    ids, mask = batch((ROW, 0), (ROW, 2), (ROW[:2], 0))
    # Weights of the initialiser's scale (std 0.02): logits are O(0.1).
    bf16 = random_model(preset("llama-tiny", dtype="bfloat16", param_dtype="bfloat16"), scale=0.02)
    assert bf16.embed.get_value().dtype == jnp.bfloat16
    assert apply(bf16, ids, mask).dtype == jnp.float32
    mixed = random_model(preset("llama-tiny", dtype="bfloat16"), scale=0.02)
    assert mixed.embed.get_value().dtype == jnp.float32
    h, w = jax.eval_shape(lambda m, a, b: m.hidden_and_unembedding(a, b), mixed, ids, mask)
    assert h.dtype == jnp.bfloat16 and w.dtype == jnp.bfloat16
    f32 = random_model(preset("llama-tiny"), scale=0.02)
    # bf16 keeps ~3 significant digits; these logits are O(0.1), so 2e-2 is the bf16 resolution.
    np.testing.assert_allclose(apply(mixed, ids, mask), apply(f32, ids, mask), atol=2e-2)


def test_every_parameter_has_logical_axes(models):
    for name, model in models.items():
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            names = var.get_metadata().get("out_sharding")
            assert names is not None and len(names) == var.get_value().ndim, (name, path)


def test_scalar_head_model():
    cfg = preset("gpt2-tiny", tie_embeddings=False)
    rm = random_model(cfg, cls=ScalarHeadModel)
    assert rm.backbone.lm_head is None
    ids, mask = batch((ROW, 0), (ROW, 2), (ROW[:2], 0))
    values, hidden, score = jax.jit(
        lambda m, a, b: (m(a, b), m.backbone.hidden_states(a, b), m.score(a, b))
    )(rm, ids, mask)
    w = np.asarray(rm.head.kernel.get_value())
    expected = np.asarray(hidden) @ w + float(rm.head.bias.get_value())
    np.testing.assert_allclose(values, expected, atol=1e-5)
    np.testing.assert_allclose(score, [expected[0, 4], expected[1, 6], expected[2, 1]], atol=1e-5)
    lm = make("gpt2-tiny", seed=1)
    shared = ScalarHeadModel.from_backbone(lm, rngs=nnx.Rngs(2))
    assert shared.backbone is lm
    with pytest.raises(ValueError, match="backbone"):
        ScalarHeadModel(preset("llama-tiny"), rngs=nnx.Rngs(0), backbone=lm)


def test_last_valid_hand_values():
    x = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    m = jnp.asarray([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(last_valid(x, m), [1.0, 6.0, 0.0])
    with pytest.raises(ValueError, match="mask"):
        last_valid(x, m[:, :2])


def test_shape_errors_name_the_argument(models):
    model = models["gpt2-tiny"]
    with pytest.raises(ValueError, match="input_ids"):
        model(jnp.asarray([1, 2, 3]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(jnp.asarray([[1, 2, 3]]), jnp.asarray([[1, 1]]))


@pytest.mark.parametrize(
    "equation, split",
    [
        ("btd,df->btf", (2, 1)),
        ("btd,dnh->btnh", (2, 1)),
        ("btnh,nhd->btd", (2, 2)),
        ("b t d , d f -> b t f", (2, 1)),
        ("btd,fd->btf", None),  # kernel contracted on its trailing dim
        ("btd,df->bft", None),  # output dims reordered
        ("btd,dd->btd", None),  # repeated letter
        ("bd,d->b", None),  # no kernel output dims
        ("btd,dt->bt", None),  # contracted letter reappears
    ],
)
def test_matmul_split_recognises_only_plain_matmuls(equation, split):
    from jaxpref.models._layers import _matmul_split

    assert _matmul_split(equation) == split


@pytest.mark.parametrize(
    "equation, x_shape, w_shape",
    [
        ("btd,df->btf", (2, 3, 4), (4, 5)),
        ("btd,dnh->btnh", (2, 3, 4), (4, 2, 3)),
        ("btnh,nhd->btd", (2, 3, 2, 3), (2, 3, 4)),
        ("btd,fd->btf", (2, 3, 4), (5, 4)),
    ],
)
def test_dense_equals_einsum_with_gradients(equation, x_shape, w_shape):
    from jaxpref.models._layers import Dense

    key = jax.random.key(0)
    x = jax.random.normal(key, x_shape)
    w = jax.random.normal(jax.random.fold_in(key, 1), w_shape)
    graphdef, _ = nnx.split(Dense(w_shape, (None,) * len(w_shape), rngs=nnx.Rngs(0)))

    def f(x, w):
        layer = nnx.merge(graphdef, nnx.State({"kernel": nnx.Param(w)}))
        return jnp.sum(jnp.sin(layer(equation, x)))

    def g(x, w):
        return jnp.sum(jnp.sin(jnp.einsum(equation, x, w)))

    np.testing.assert_allclose(f(x, w), g(x, w), rtol=1e-5)
    for a, b in zip(jax.grad(f, (0, 1))(x, w), jax.grad(g, (0, 1))(x, w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
