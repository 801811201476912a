"""Architecture configuration of the decoder-only transformer, with named presets."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

__all__ = ["PRESETS", "ModelConfig", "preset"]

_FAMILIES = ("gpt2", "llama")
_ACTIVATIONS = ("gelu_tanh", "gelu", "silu", "relu")
_REMAT = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Frozen architecture description of one decoder-only transformer.

    Two families share one implementation. `family="gpt2"`: learned absolute positions,
    LayerNorm, a two-matrix MLP. `family="llama"`: rotary positions (RoPE), RMSNorm, a gated
    (SwiGLU-style) MLP and grouped-query attention; Qwen2 is the llama family with `qkv_bias`,
    Mistral the llama family with `sliding_window`. Each block computes
    `x = x + attn(norm(x)); x = x + mlp(norm(x))`, and a final norm precedes the unembedding.

    Args:
      vocab_size: `V`, number of token ids.
      d_model: `D`, width of the residual stream.
      num_layers: number of transformer blocks.
      num_heads: `N`, query heads.
      mlp_dim: `F`, hidden width of the MLP.
      num_kv_heads: `K`, key/value heads (grouped-query attention); None means `N`.
      head_dim: `H`, width of each head; None means `D // N`.
      max_seq_len: length of the learned position table (gpt2) and documented context length.
      family: "gpt2" or "llama" (see above).
      activation: MLP nonlinearity: "gelu_tanh" (GPT-2's `gelu_new`), "gelu" (exact erf),
        "silu", "relu". In the llama family it is applied to the gate branch.
      qkv_bias: biases on the query/key/value projections.
      out_bias: bias on the attention output projection.
      mlp_bias: biases on the MLP projections.
      norm_eps: epsilon of LayerNorm / RMSNorm.
      rope_theta: RoPE base frequency (llama family).
      sliding_window: if set, a query attends only to the previous `sliding_window` tokens
        (itself included), as in Mistral.
      tie_embeddings: the unembedding is the transposed token embedding.
      param_dtype: storage dtype of parameters ("float32", "bfloat16", ...).
      dtype: compute dtype of activations and matmuls; attention softmax, norms statistics and
        logits are always float32.
      remat: gradient-checkpointing policy per block: "none", "full" (save nothing),
        "dots" (save matmul outputs), "dots_no_batch" (save matmuls without batch dims).

    Example:
      >>> cfg = preset("llama-tiny")
      >>> print(cfg.family, cfg.num_kv_heads, cfg.head_size, cfg.num_groups)
      llama 2 8 2
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    max_seq_len: int = 2048
    family: Literal["gpt2", "llama"] = "llama"
    activation: str = "silu"
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    sliding_window: int | None = None
    tie_embeddings: bool = False
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"ModelConfig: `{field}` {why}.")

        if self.family not in _FAMILIES:
            bad("family", f"must be one of {_FAMILIES}, got {self.family!r}")
        if self.activation not in _ACTIVATIONS:
            bad("activation", f"must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if self.remat not in _REMAT:
            bad("remat", f"must be one of {_REMAT}, got {self.remat!r}")
        for field in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_seq_len"):
            if getattr(self, field) <= 0:
                bad(field, f"must be positive, got {getattr(self, field)}")
        if self.head_dim is None and self.d_model % self.num_heads:
            bad("d_model", f"({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.kv_heads:
            bad(
                "num_heads",
                f"({self.num_heads}) must be divisible by num_kv_heads ({self.kv_heads})",
            )
        if self.family == "llama" and self.head_size % 2:
            bad("head_dim", f"must be even for rotary positions, got {self.head_size}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            bad("sliding_window", f"must be positive or None, got {self.sliding_window}")
        for field in ("param_dtype", "dtype"):
            try:
                jnp.dtype(getattr(self, field))
            except TypeError:
                bad(field, f"is not a dtype name: {getattr(self, field)!r}")

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads `K` (`num_kv_heads`, or `num_heads` when unset)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_size(self) -> int:
        """Width `H` of one attention head."""
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head, `N // K`."""
        return self.num_heads // self.kv_heads

    @property
    def param_jnp_dtype(self):
        """`param_dtype` as a `jnp.dtype`."""
        return jnp.dtype(self.param_dtype)

    @property
    def compute_jnp_dtype(self):
        """`dtype` (the compute dtype) as a `jnp.dtype`."""
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> ModelConfig:
        """Returns a copy with the given fields changed (validated again).

        Args:
          **changes: field name -> new value.

        Returns:
          The new config.
        """
        return dataclasses.replace(self, **changes)


def _gpt2(vocab, d, layers, heads, seq, **kw):
    return ModelConfig(
        vocab_size=vocab, d_model=d, num_layers=layers, num_heads=heads, mlp_dim=4 * d,
        max_seq_len=seq, family="gpt2", activation="gelu_tanh", qkv_bias=True, out_bias=True,
        mlp_bias=True, norm_eps=1e-5, tie_embeddings=True, **kw,
    )  # fmt: skip


def _llama(vocab, d, layers, heads, kv, mlp, seq, **kw):
    return ModelConfig(
        vocab_size=vocab, d_model=d, num_layers=layers, num_heads=heads, num_kv_heads=kv,
        mlp_dim=mlp, max_seq_len=seq, family="llama", activation="silu", **kw,
    )  # fmt: skip


PRESETS: dict[str, ModelConfig] = {
    # Tiny shapes for tests and notebooks.
    "gpt2-tiny": _gpt2(96, 32, 2, 4, 64),
    "llama-tiny": _llama(96, 32, 2, 4, 2, 64, 64, norm_eps=1e-5),
    "qwen2-tiny": _llama(96, 32, 2, 4, 2, 64, 64, qkv_bias=True),
    "mistral-tiny": _llama(96, 32, 2, 4, 2, 64, 64, sliding_window=8),
    # Published shapes.
    "gpt2": _gpt2(50257, 768, 12, 12, 1024),
    "gpt2-medium": _gpt2(50257, 1024, 24, 16, 1024),
    "gpt2-large": _gpt2(50257, 1280, 36, 20, 1024),
    "llama2-7b": _llama(32000, 4096, 32, 32, 32, 11008, 4096, norm_eps=1e-5),
    "mistral-7b": _llama(32000, 4096, 32, 32, 8, 14336, 32768, norm_eps=1e-5, rope_theta=1e6),
    "qwen2.5-0.5b": _llama(
        151936, 896, 24, 14, 2, 4864, 32768, qkv_bias=True, rope_theta=1e6, tie_embeddings=True
    ),
    "qwen2.5-1.5b": _llama(
        151936, 1536, 28, 12, 2, 8960, 32768, qkv_bias=True, rope_theta=1e6, tie_embeddings=True
    ),
}
"""Named model shapes for `preset`: tiny GPT-2, Llama, Qwen2 and Mistral configurations for
tests and notebooks, and published shapes (GPT-2 small to large, Llama 2 7B, Mistral 7B,
Qwen2.5 0.5B and 1.5B)."""


def preset(name: str, **overrides) -> ModelConfig:
    """Returns the named preset `ModelConfig`, with optional field overrides.

    Presets: "gpt2-tiny", "llama-tiny", "qwen2-tiny", "mistral-tiny" (2 layers, width 32, vocab 96,
    for tests), and the published shapes "gpt2", "gpt2-medium", "gpt2-large", "llama2-7b",
    "mistral-7b", "qwen2.5-0.5b", "qwen2.5-1.5b".

    Args:
      name: preset name (a key of `PRESETS`).
      **overrides: fields to change, e.g. `dtype="bfloat16"`, `remat="full"`.

    Returns:
      The frozen config.

    Example:
      >>> cfg = preset("gpt2-tiny", num_layers=3)
      >>> print(cfg.num_layers, cfg.tie_embeddings, cfg.mlp_dim)
      3 True 128
    """
    if name not in PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; known: {sorted(PRESETS)}.")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
