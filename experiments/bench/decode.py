"""Benchmark: KV-cache decoding vs recomputing the whole prefix every step.

Greedy decoding of `new_tokens` tokens for a batch of prompts with a small GPT-2-style model, both
ways in the same run (each compiled and warmed up first, then timed as the best of `repeats`).
Prints one JSON object: timings, the speedup of the cache, and whether both produced the same
tokens.

    python -m experiments.bench.decode [--new-tokens 256 --batch 8 ...]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.bench._timing import cli, time_calls
from jaxpref import decode
from jaxpref.models import Transformer, preset


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark settings."""

    batch: int = 8
    """Prompts decoded together."""
    prompt_len: int = 16
    """Tokens per prompt."""
    new_tokens: int = 256
    """Tokens generated per prompt."""
    d_model: int = 128
    """Model width."""
    num_layers: int = 2
    """Transformer layers."""
    num_heads: int = 4
    """Attention heads."""
    vocab_size: int = 512
    """Vocabulary size."""
    repeats: int = 3
    """Timed runs of cached decoding (best reported); recomputation gets max(1, repeats // 3)."""
    seed: int = 0
    """Seed of the model's parameters and of the prompts."""


def main(config: Config) -> dict:
    """Runs the benchmark and returns the JSON-ready result."""
    c = config
    cfg = preset(
        "gpt2-tiny", vocab_size=c.vocab_size, d_model=c.d_model, num_layers=c.num_layers,
        num_heads=c.num_heads, mlp_dim=4 * c.d_model, max_seq_len=c.prompt_len + c.new_tokens,
    )  # fmt: skip
    model = Transformer(cfg, rngs=nnx.Rngs(c.seed))
    prompts = jax.random.randint(jax.random.key(c.seed), (c.batch, c.prompt_len), 0, c.vocab_size)

    def run(use_cache):
        return lambda: decode.greedy(
            model, prompts, max_new_tokens=c.new_tokens, use_cache=use_cache
        )

    # Each compiled and warmed up by one untimed call, then the best of the timed calls.
    cached_times, cached = time_calls(run(True), repeats=c.repeats)
    recompute_times, recomputed = time_calls(run(False), repeats=max(1, c.repeats // 3))
    cached_s, recompute_s = min(cached_times), min(recompute_times)
    return {
        "benchmark": "decode_kv_cache_vs_recompute",
        "config": dataclasses.asdict(c),
        "device": str(jax.devices()[0].device_kind),
        "cached_s": round(cached_s, 4),
        "recompute_s": round(recompute_s, 4),
        "speedup": round(recompute_s / cached_s, 2),
        "cached_tokens_per_s": round(c.batch * c.new_tokens / cached_s, 1),
        "same_tokens": bool(jnp.all(cached.tokens == recomputed.tokens)),
        "target_speedup": 10.0,
    }


if __name__ == "__main__":
    cli(main, Config, description=__doc__.splitlines()[0])
