"""Import and export of Hugging Face checkpoints (safetensors + config.json), without torch.

Supported architectures: `GPT2LMHeadModel`, `LlamaForCausalLM`, `Qwen2ForCausalLM`,
`MistralForCausalLM`. Weights are read with `safetensors` into numpy (memory-mapped, never pickle),
converted to this package's layout (GPT-2's `Conv1D` weights are `[in, out]`, `nn.Linear`
weights are `[out, in]`; attention weights are stored here per head as `[D, N, H]`), cast to the
parameter dtype and placed on devices (optionally directly into a sharded layout).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from jaxpref.models._config import ModelConfig
from jaxpref.models._transformer import Transformer

__all__ = ["SUPPORTED_ARCHITECTURES", "config_from_hf", "config_to_hf", "from_hf", "to_hf"]

SUPPORTED_ARCHITECTURES = (
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
)
"""The Hugging Face `architectures` (in `config.json`) that `config_from_hf` and `from_hf` read."""

_HF_ACT = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}

# Buffers some checkpoints carry that are not parameters (causal-mask and rotary caches).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _unsupported(what: str, path: str | None = None) -> ValueError:
    where = f" ({path})" if path else ""
    return ValueError(f"from_hf{where}: unsupported checkpoint: {what}.")


def _rope_theta(hf: dict, path: str | None) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type not in ("default", None):
        raise _unsupported(f"rope type {rope_type!r} (only the default RoPE is implemented)", path)
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, *, path: str | None = None, **overrides) -> ModelConfig:
    """Builds a `ModelConfig` from a Hugging Face `config.json` dictionary.

    Args:
      hf: the parsed `config.json`.
      path: directory it came from (used in error messages only).
      **overrides: `ModelConfig` fields to set (e.g. `dtype`, `param_dtype`, `remat`).

    Returns:
      The config.

    Raises:
      ValueError: unsupported architecture or option, naming it.

    Example:
      >>> hf = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 100, "hidden_size": 32,
      ...       "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      ...       "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6}
      >>> cfg = config_from_hf(hf)
      >>> print(cfg.family, cfg.qkv_bias, cfg.out_bias, cfg.kv_heads)
      llama True False 2
    """
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise _unsupported(
            f"architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}", path
        )
    if arch == "GPT2LMHeadModel":
        if hf.get("add_cross_attention"):
            raise _unsupported("GPT-2 with cross-attention", path)
        if hf.get("scale_attn_by_inverse_layer_idx"):
            raise _unsupported("scale_attn_by_inverse_layer_idx=True", path)
        if hf.get("scale_attn_weights") is False:
            raise _unsupported("scale_attn_weights=False", path)
        act = hf.get("activation_function", "gelu_new")
        d = hf["n_embd"]
        kw = dict(
            vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layer"],
            num_heads=hf["n_head"], mlp_dim=hf.get("n_inner") or 4 * d,
            max_seq_len=hf.get("n_positions", 1024), family="gpt2", qkv_bias=True,
            out_bias=True, mlp_bias=True, norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )  # fmt: skip
    else:
        act = hf.get("hidden_act", "silu")
        if arch == "Qwen2ForCausalLM":
            if hf.get("use_sliding_window"):
                raise _unsupported("Qwen2 use_sliding_window=True", path)
            qkv_bias, out_bias, mlp_bias, window = True, False, False, None
        else:
            qkv_bias = out_bias = bool(hf.get("attention_bias", False))
            mlp_bias = bool(hf.get("mlp_bias", False))
            window = hf.get("sliding_window") if arch == "MistralForCausalLM" else None
        heads = hf["num_attention_heads"]
        kw = dict(
            vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"], num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            mlp_dim=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048), family="llama",
            qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias,
            norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(hf, path),
            sliding_window=window, tie_embeddings=hf.get("tie_word_embeddings", False),
        )  # fmt: skip
    if act not in _HF_ACT:
        raise _unsupported(f"activation {act!r}; supported: {sorted(_HF_ACT)}", path)
    kw["activation"] = _HF_ACT[act]
    kw.update(overrides)
    return ModelConfig(**kw)


def _architecture(c: ModelConfig) -> str:
    if c.family == "gpt2":
        if not (c.qkv_bias and c.out_bias and c.mlp_bias):
            raise ValueError("to_hf: GPT-2 checkpoints need qkv_bias, out_bias and mlp_bias.")
        if c.kv_heads != c.num_heads or c.head_size * c.num_heads != c.d_model:
            raise ValueError("to_hf: GPT-2 checkpoints need num_kv_heads == num_heads and "
                             "head_dim * num_heads == d_model.")  # fmt: skip
        return "GPT2LMHeadModel"
    if c.qkv_bias and not c.out_bias and not c.mlp_bias and c.sliding_window is None:
        return "Qwen2ForCausalLM"
    if c.qkv_bias != c.out_bias:
        raise ValueError("to_hf: llama checkpoints need qkv_bias == out_bias (attention_bias).")
    return "MistralForCausalLM" if c.sliding_window is not None else "LlamaForCausalLM"


def config_to_hf(config: ModelConfig) -> dict:
    """The Hugging Face `config.json` dictionary describing `config`.

    Args:
      config: the architecture.

    Returns:
      A JSON-serialisable dict with `architectures` and `model_type`.

    Example:
      >>> from jaxpref.models import preset
      >>> hf = config_to_hf(preset("gpt2-tiny"))
      >>> print(hf["architectures"], hf["n_embd"], hf["activation_function"])
      ['GPT2LMHeadModel'] 32 gelu_new
    """
    c = config
    arch = _architecture(c)
    dtype = str(c.param_jnp_dtype)
    if arch == "GPT2LMHeadModel":
        act = {"gelu_tanh": "gelu_new"}.get(c.activation, c.activation)
        return {
            "architectures": [arch], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_embd": c.d_model, "n_layer": c.num_layers, "n_head": c.num_heads,
            "n_inner": c.mlp_dim, "n_positions": c.max_seq_len, "activation_function": act,
            "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
            "dtype": dtype,
        }  # fmt: skip
    act = {"gelu_tanh": "gelu_pytorch_tanh"}.get(c.activation, c.activation)
    hf = {
        "architectures": [arch], "vocab_size": c.vocab_size, "hidden_size": c.d_model,
        "intermediate_size": c.mlp_dim, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_size, "hidden_act": act, "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "tie_word_embeddings": c.tie_embeddings, "dtype": dtype,
    }  # fmt: skip
    if arch == "Qwen2ForCausalLM":
        hf.update(model_type="qwen2", use_sliding_window=False, sliding_window=None)
    elif arch == "MistralForCausalLM":
        hf.update(model_type="mistral", sliding_window=c.sliding_window)
    else:
        hf.update(model_type="llama", attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
    return hf


# ------------------------------------------------------------------------------------------------
# Tensor mapping: each rule converts a group of HF tensors to a group of parameters and back.


@dataclasses.dataclass(frozen=True)
class _Rule:
    hf: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    ours: tuple[tuple, ...]
    load: Callable[[list[np.ndarray]], list[np.ndarray]]
    save: Callable[[list[np.ndarray]], list[np.ndarray]]


def _same(xs):
    return list(xs)


def _transpose(xs):
    return [xs[0].T]


def _rules(c: ModelConfig, gpt2_prefix: str = "transformer.") -> list[_Rule]:
    d, n, k, h, f, v = c.d_model, c.num_heads, c.kv_heads, c.head_size, c.mlp_dim, c.vocab_size
    rules: list[_Rule] = []

    def add(hf, shapes, ours, load=_same, save=_same):
        rules.append(_Rule(tuple(hf), tuple(shapes), tuple(ours), load, save))

    if c.family == "gpt2":
        p = gpt2_prefix
        add([p + "wte.weight"], [(v, d)], [("embed",)])
        add([p + "wpe.weight"], [(c.max_seq_len, d)], [("pos_embed",)])
        for i in range(c.num_layers):
            hp, lp = f"{p}h.{i}.", ("layers", i)
            for hf_norm, our_norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                add([hp + hf_norm + ".weight"], [(d,)], [(*lp, our_norm, "scale")])
                add([hp + hf_norm + ".bias"], [(d,)], [(*lp, our_norm, "bias")])
            qkv = [(*lp, "attn", name) for name in ("q", "k", "v")]
            add(
                [hp + "attn.c_attn.weight"], [(d, 3 * d)], [(*x, "kernel") for x in qkv],
                lambda xs: [a.reshape(d, n, h) for a in np.split(xs[0], 3, axis=1)],
                lambda xs: [np.concatenate([a.reshape(d, d) for a in xs], axis=1)],
            )  # fmt: skip
            add(
                [hp + "attn.c_attn.bias"], [(3 * d,)], [(*x, "bias") for x in qkv],
                lambda xs: [a.reshape(n, h) for a in np.split(xs[0], 3)],
                lambda xs: [np.concatenate([a.reshape(d) for a in xs])],
            )  # fmt: skip
            add(
                [hp + "attn.c_proj.weight"], [(d, d)], [(*lp, "attn", "o", "kernel")],
                lambda xs: [xs[0].reshape(n, h, d)], lambda xs: [xs[0].reshape(n * h, d)],
            )  # fmt: skip
            add([hp + "attn.c_proj.bias"], [(d,)], [(*lp, "attn", "o", "bias")])
            for hf_name, ours, shape in (("c_fc", "up", (d, f)), ("c_proj", "down", (f, d))):
                add([f"{hp}mlp.{hf_name}.weight"], [shape], [(*lp, "mlp", ours, "kernel")])
                add([f"{hp}mlp.{hf_name}.bias"], [shape[1:]], [(*lp, "mlp", ours, "bias")])
        add([p + "ln_f.weight"], [(d,)], [("final_norm", "scale")])
        add([p + "ln_f.bias"], [(d,)], [("final_norm", "bias")])
        if not c.tie_embeddings:
            add(["lm_head.weight"], [(v, d)], [("lm_head",)], _transpose, _transpose)
        return rules

    add(["model.embed_tokens.weight"], [(v, d)], [("embed",)])
    for i in range(c.num_layers):
        hp, lp = f"model.layers.{i}.", ("layers", i)
        add([hp + "input_layernorm.weight"], [(d,)], [(*lp, "attn_norm", "scale")])
        add([hp + "post_attention_layernorm.weight"], [(d,)], [(*lp, "mlp_norm", "scale")])
        for name, heads in (("q", n), ("k", k), ("v", k)):
            add(
                [f"{hp}self_attn.{name}_proj.weight"], [(heads * h, d)],
                [(*lp, "attn", name, "kernel")],
                lambda xs, heads=heads: [xs[0].T.reshape(d, heads, h)],
                lambda xs, heads=heads: [xs[0].reshape(d, heads * h).T],
            )  # fmt: skip
            if c.qkv_bias:
                add(
                    [f"{hp}self_attn.{name}_proj.bias"], [(heads * h,)],
                    [(*lp, "attn", name, "bias")],
                    lambda xs, heads=heads: [xs[0].reshape(heads, h)],
                    lambda xs, heads=heads: [xs[0].reshape(heads * h)],
                )  # fmt: skip
        add(
            [hp + "self_attn.o_proj.weight"], [(d, n * h)], [(*lp, "attn", "o", "kernel")],
            lambda xs: [xs[0].T.reshape(n, h, d)], lambda xs: [xs[0].reshape(n * h, d).T],
        )  # fmt: skip
        if c.out_bias:
            add([hp + "self_attn.o_proj.bias"], [(d,)], [(*lp, "attn", "o", "bias")])
        for name, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
            key = f"{hp}mlp.{name}_proj."
            ours = (*lp, "mlp", name)
            add([key + "weight"], [shape], [(*ours, "kernel")], _transpose, _transpose)
            if c.mlp_bias:
                add([key + "bias"], [shape[:1]], [(*ours, "bias")])
    add(["model.norm.weight"], [(d,)], [("final_norm", "scale")])
    if not c.tie_embeddings:
        add(["lm_head.weight"], [(v, d)], [("lm_head",)], _transpose, _transpose)
    return rules


# ------------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Lazy access to the tensors of a (possibly sharded) safetensors checkpoint."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.exists(single):
            weight_map, files = None, ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"from_hf: {path} has neither model.safetensors nor model.safetensors.index.json "
                "(only safetensors checkpoints are read)."
            )
        self.handles = {}
        for name in files:
            file = os.path.join(path, name)
            if not os.path.exists(file):
                raise FileNotFoundError(f"from_hf: shard {file} listed in the index is missing.")
            self.handles[name] = safe_open(file, framework="np")
        self.where = {}
        for name, handle in self.handles.items():
            for key in handle.keys():
                self.where[key] = name
        if weight_map is not None:
            for key, name in weight_map.items():
                if self.where.get(key) != name:
                    raise ValueError(
                        f"from_hf: tensor {key!r} is listed in the index under {name} but is not "
                        f"in that file ({path})."
                    )

    def names(self) -> set[str]:
        return set(self.where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handles[self.where[key]].get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self.handles[self.where[key]].get_tensor(key)


def _load_hf_json(path: str) -> dict:
    file = os.path.join(path, "config.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"from_hf: {file} does not exist.")
    with open(file) as fh:
        return json.load(fh)


def from_hf(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    **overrides,
) -> Transformer:
    """Loads a local Hugging Face causal-LM directory into a `Transformer`.

    Reads `config.json` and `model.safetensors` (or the shards named by
    `model.safetensors.index.json`). Every tensor is checked: a missing tensor, a tensor of the
    wrong shape, or a tensor the model does not use raises `ValueError` naming it.

    Args:
      path: directory written by `save_pretrained` (or `to_hf`).
      dtype: compute dtype.
      param_dtype: parameter dtype (default: `dtype`).
      mesh: optional device mesh; with `rules`, each parameter is placed directly in its sharded
        layout (each device receives only its shard).
      rules: `jaxpref.parallel.ShardingRules` used with `mesh`.
      **overrides: other `ModelConfig` fields (e.g. `remat="full"`).

    Returns:
      The model; `model(input_ids, attention_mask)` gives `[B, T, V]` float32 logits.

    Example:
      >>> import tempfile, jax
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> model = Transformer(preset("gpt2-tiny"), rngs=nnx.Rngs(0))
      >>> d = tempfile.mkdtemp()
      >>> to_hf(model, d)
      >>> again = from_hf(d)
      >>> pairs = zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again)))
      >>> print(all(bool((a == b).all()) for a, b in pairs))
      True
    """
    path = os.fspath(path)
    hf = _load_hf_json(path)
    overrides.setdefault("dtype", dtype)
    overrides.setdefault("param_dtype", param_dtype or dtype)
    config = config_from_hf(hf, path=path, **overrides)
    reader = _Reader(path)
    names = reader.names()
    prefix = "" if "wte.weight" in names else "transformer."
    rules_list = _rules(config, gpt2_prefix=prefix)

    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(abs_state))
    if mesh is not None:
        from jaxpref.parallel import param_shardings

        if rules is None:
            raise ValueError("from_hf: `mesh` given without sharding `rules`.")
        flat_shardings = dict(nnx.to_flat_state(param_shardings(abs_state, rules, mesh)))
    pd = config.param_jnp_dtype

    values = {}
    used = set()
    for rule in rules_list:
        arrays = []
        for key, shape in zip(rule.hf, rule.hf_shapes, strict=True):
            if key not in names:
                raise ValueError(f"from_hf: tensor {key!r} is missing from the checkpoint {path}.")
            got = reader.shape(key)
            if got != shape:
                raise ValueError(
                    f"from_hf: tensor {key!r} has shape {got}, expected {shape} for the config "
                    f"in {path}."
                )
            arrays.append(reader.get(key))
            used.add(key)
        for our_path, array in zip(rule.ours, rule.load(arrays), strict=True):
            want = flat[our_path]
            host = np.ascontiguousarray(array).astype(pd)
            if tuple(host.shape) != tuple(want.shape):
                raise ValueError(f"from_hf: converted {rule.hf} to shape {host.shape}, expected "
                                 f"{tuple(want.shape)} at {our_path}.")  # fmt: skip
            if mesh is None:
                values[our_path] = jax.numpy.asarray(host)
            else:
                values[our_path] = jax.make_array_from_callback(
                    host.shape, flat_shardings[our_path].get_value(), lambda idx, a=host: a[idx]
                )

    leftover = sorted(
        key
        for key in names - used
        if not key.endswith(_IGNORED_SUFFIXES) and not (key == "lm_head.weight" and
                                                        config.tie_embeddings)
    )  # fmt: skip
    if leftover:
        shown = ", ".join(repr(k) for k in leftover[:8])
        more = f" and {len(leftover) - 8} more" if len(leftover) > 8 else ""
        raise ValueError(f"from_hf: tensors not used by the model: {shown}{more} ({path}).")
    missing = sorted(set(flat) - set(values))
    if missing:
        raise ValueError(f"from_hf: no checkpoint tensor for parameters {missing} ({path}).")
    state = nnx.from_flat_state([(p, flat[p].replace(values[p])) for p in flat])
    return nnx.merge(graphdef, state)


def to_hf(
    model: Transformer,
    path: str | os.PathLike,
    *,
    max_shard_size: int | None = None,
    extra_config: dict | None = None,
) -> None:
    """Writes `model` as a Hugging Face checkpoint directory (config.json + safetensors).

    The result loads with `transformers.AutoModelForCausalLM.from_pretrained(path)` and with
    `from_hf(path)`. Tensors are written in the parameter dtype.

    Args:
      model: a `Transformer` whose parameters are addressable from this process.
      path: output directory (created if needed).
      max_shard_size: if set, split tensors into files of at most this many bytes (a tensor larger
        than the limit gets its own file) with a `model.safetensors.index.json`.
      extra_config: extra `config.json` entries (e.g. `{"eos_token_id": 2}`).

    Returns:
      None.

    Example:
      >>> import os, tempfile
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> d = tempfile.mkdtemp()
      >>> to_hf(Transformer(preset("llama-tiny"), rngs=nnx.Rngs(0)), d, max_shard_size=20_000)
      >>> print(sorted(os.listdir(d))[-2:])
      ['model-00007-of-00007.safetensors', 'model.safetensors.index.json']
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    config = model.config
    os.makedirs(path, exist_ok=True)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors: dict[str, np.ndarray] = {}
    for rule in _rules(config):
        ours = []
        for our_path in rule.ours:
            value = flat[our_path].get_value()
            if not getattr(value, "is_fully_addressable", True):
                raise ValueError(f"to_hf: parameter {our_path} is not addressable from this "
                                 "process; gather it first.")  # fmt: skip
            ours.append(np.asarray(jax.device_get(value)))
        for key, array in zip(rule.hf, rule.save(ours), strict=True):
            tensors[key] = np.ascontiguousarray(array)
    hf = config_to_hf(config)
    hf.update(extra_config or {})
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(hf, fh, indent=2, sort_keys=True)
    metadata = {"format": "pt"}
    if max_shard_size is None:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata=metadata)
        return
    groups: list[list[str]] = [[]]
    size = 0
    for key in tensors:
        nbytes = tensors[key].nbytes
        if groups[-1] and size + nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    weight_map = {}
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, os.path.join(path, name), metadata=metadata)
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(a.nbytes for a in tensors.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
