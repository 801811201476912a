"""Hugging Face import/export: logits parity with `transformers` (PyTorch CPU) and clear errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpref.models import config_from_hf, config_to_hf, from_hf, preset, to_hf
from tests.models.helpers import random_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TOL = 1e-4
# Right-padded batch: row lengths 8, 5, 2 (compare only real positions).
IDS = np.random.RandomState(0).randint(0, 100, (3, 8))
MASK = np.asarray([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])


@jax.jit
def apply(model, ids, mask):
    return model(ids, mask)


def _tiny(arch):
    common = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    if arch == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg)
    if arch == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    if arch == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    if arch == "mistral":
        # A window of 3 < sequence length 8, so the sliding-window mask matters.
        cfg = transformers.MistralConfig(**{**common, "num_key_value_heads": 1}, sliding_window=3)
        return transformers.MistralForCausalLM(cfg)
    raise AssertionError(arch)


def _randomize_torch(model, seed):
    """Redraws every weight (HF initialises biases to 0 and norms to 1, hiding layout bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or "ln_" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.3 * noise)
    return model.eval()


def _torch_logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


def _max_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b))[MASK.astype(bool)].max())


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2", "mistral"])
def saved(request, tmp_path_factory):
    torch.manual_seed(0)
    model = _randomize_torch(_tiny(request.param), seed=1)
    path = tmp_path_factory.mktemp(request.param)
    # Llama is also saved in several files with an index, to exercise the sharded reader.
    shard = {"max_shard_size": "20KB"} if request.param == "llama" else {}
    model.save_pretrained(path, **shard)
    return request.param, model, path


def test_logits_match_transformers(saved):
    arch, hf_model, path = saved
    if arch == "llama":
        assert os.path.exists(path / "model.safetensors.index.json")
        assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 1
    model = from_hf(path)
    ref = _torch_logits(hf_model)
    assert np.abs(ref[MASK.astype(bool)]).max() > 1.0  # logits are far from uniform
    assert _max_diff(apply(model, jnp.asarray(IDS), jnp.asarray(MASK)), ref) <= TOL


def test_export_reloads_in_transformers(saved, tmp_path):
    _arch, hf_model, path = saved
    model = from_hf(path)
    to_hf(model, tmp_path / "single")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "single")
    assert type(again).__name__ == type(hf_model).__name__
    np.testing.assert_allclose(_torch_logits(again), _torch_logits(hf_model), atol=1e-6)
    # Sharded export round-trips through from_hf too.
    to_hf(model, tmp_path / "sharded", max_shard_size=10_000)
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    back = from_hf(tmp_path / "sharded")
    for (p, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(back)), strict=True
    ):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(p))


def test_bf16_checkpoint_loads_in_bf16(tmp_path):
    torch.manual_seed(0)
    hf_model = _randomize_torch(_tiny("qwen2"), seed=2)
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path)
    model = from_hf(tmp_path, dtype="bfloat16")
    assert model.embed.get_value().dtype == jnp.bfloat16
    ref = hf_model.model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(model.embed.get_value(), np.float32), ref)


def _write(path, config, tensors):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh)
    safetensors_numpy.save_file(tensors, os.path.join(path, "model.safetensors"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_src")
    _tiny("llama").save_pretrained(path)
    with open(path / "config.json") as fh:
        config = json.load(fh)
    return config, safetensors_numpy.load_file(path / "model.safetensors")


def test_unsupported_architecture_is_named(tmp_path, llama_dir):
    config, tensors = llama_dir
    _write(tmp_path, {**config, "architectures": ["BertForMaskedLM"]}, tensors)
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        from_hf(tmp_path)


def test_missing_tensor_is_named(tmp_path, llama_dir):
    config, tensors = llama_dir
    key = "model.layers.1.self_attn.k_proj.weight"
    _write(tmp_path, config, {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*missing"):
        from_hf(tmp_path)


def test_wrong_shape_is_named(tmp_path, llama_dir):
    config, tensors = llama_dir
    key = "model.layers.0.mlp.up_proj.weight"
    _write(tmp_path, config, {**tensors, key: tensors[key][:-1]})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*shape"):
        from_hf(tmp_path)


def test_unused_tensor_is_named(tmp_path, llama_dir):
    config, tensors = llama_dir
    _write(tmp_path, config, {**tensors, "model.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"model\.extra\.weight"):
        from_hf(tmp_path)


def test_unsupported_rope_is_named():
    hf = {"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 8,
          "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
          "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}  # fmt: skip
    with pytest.raises(ValueError, match="yarn"):
        config_from_hf(hf)


def test_export_rejects_shapes_the_format_cannot_hold():
    with pytest.raises(ValueError, match="num_kv_heads"):
        config_to_hf(preset("gpt2-tiny", num_kv_heads=2))
    with pytest.raises(ValueError, match="attention_bias"):
        config_to_hf(preset("llama-tiny", out_bias=True))
    assert config_to_hf(preset("qwen2-tiny"))["architectures"] == ["Qwen2ForCausalLM"]
    assert config_to_hf(preset("mistral-tiny"))["sliding_window"] == 8


def test_gpt2_without_prefix_and_untied_head(tmp_path):
    model = random_model(preset("gpt2-tiny", tie_embeddings=False), seed=3)
    to_hf(model, tmp_path / "a")
    tensors = safetensors_numpy.load_file(tmp_path / "a" / "model.safetensors")
    assert "lm_head.weight" in tensors
    # Older GPT-2 checkpoints name tensors without the "transformer." prefix and carry the causal
    # mask buffers ("h.0.attn.bias"); both load.
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    renamed["h.0.attn.bias"] = np.ones((1, 1, 16, 16), np.float32)
    with open(tmp_path / "a" / "config.json") as fh:
        _write(tmp_path / "b", json.load(fh), renamed)
    back = from_hf(tmp_path / "b")
    ids, mask = jnp.asarray(IDS % 96), jnp.asarray(MASK)
    np.testing.assert_array_equal(apply(back, ids, mask), apply(model, ids, mask))
    ref = _torch_logits(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "a").eval(),
                        np.asarray(ids))  # fmt: skip
    assert _max_diff(apply(model, ids, mask), ref) <= TOL
