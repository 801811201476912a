"""Benchmark: memory-lean chunked log-probs vs the naive `[B, T, V]` path.

Measures `value_and_grad` (w.r.t. hidden states and unembedding) of the masked sum of per-token
log-probs, for `B * T = 4 * 1024` positions, `V = 32768`, `D = 256`, float32:

* naive: `logits = hidden @ W` materialised, then `jaxpref.logprobs.token_logprobs`;
* chunked: `jaxpref.logprobs.chunked_token_logprobs` (custom VJP, logits recomputed per chunk).

Each variant runs in its own subprocess, so its peak resident memory (`ru_maxrss`) is its own. A
third subprocess builds the same inputs and compiles a trivial function; its peak is subtracted from
both, leaving the memory the computation itself needs. Times are medians of repeated runs after a
warm-up, measured in the same invocation, and reported with their ratio.

Usage: `python -m experiments.bench.logprobs [--batch 4 --seq 1024 --vocab 32768 --dim 256]`.
Prints one JSON object.
"""

from __future__ import annotations

import dataclasses
import statistics

from experiments.bench._timing import (
    baseline_peak_rss_mib,
    cli,
    peak_rss_mib,
    run_in_worker,
    time_calls,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Shape, chunk sizes and repeats of the log-prob benchmark."""

    batch: int = 4
    """Sequences B."""
    seq: int = 1024
    """Tokens per sequence T."""
    vocab: int = 32768
    """Vocabulary size V."""
    dim: int = 256
    """Hidden size D."""
    repeats: int = 5
    """Timed calls per variant after the first (compiling) one; the median is reported."""
    seq_chunk: int = 512
    """Positions per chunk of the chunked path."""
    vocab_chunk: int = 0
    """Vocabulary entries per chunk of the chunked path; 0: the whole vocabulary."""


def _inputs(batch, seq, vocab, dim):
    import jax
    import jax.numpy as jnp

    k = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(k[0], (batch, seq, dim), jnp.float32)
    w = jax.random.normal(k[1], (dim, vocab), jnp.float32) / jnp.sqrt(dim)
    targets = jax.random.randint(k[2], (batch, seq), 0, vocab)
    mask = (jax.random.uniform(k[3], (batch, seq)) > 0.1).astype(jnp.float32)
    return hidden, w, targets, mask


def make_step(variant: str, targets, mask, *, seq_chunk: int, vocab_chunk: int | None):
    """Returns the jitted `value_and_grad` step of one variant ('naive' or 'chunked')."""
    import jax
    import jax.numpy as jnp

    from jaxpref import logprobs

    if variant == "naive":

        def objective(hidden, w):
            logits = jnp.einsum("btd,dv->btv", hidden, w)
            return jnp.sum(logprobs.token_logprobs(logits, targets, mask))

    elif variant == "chunked":

        def objective(hidden, w):
            lp = logprobs.chunked_token_logprobs(
                hidden, w, targets, mask, seq_chunk=seq_chunk, vocab_chunk=vocab_chunk
            )
            return jnp.sum(lp)

    else:
        raise ValueError(f"unknown variant {variant!r}")
    return jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))


def run_worker(variant, *, batch, seq, vocab, dim, repeats, seq_chunk, vocab_chunk) -> dict:
    """Runs one variant in this process and returns its timings and peak memory."""
    import jax
    import jax.numpy as jnp

    hidden, w, targets, mask = _inputs(batch, seq, vocab, dim)
    jax.block_until_ready((hidden, w, targets, mask))
    if variant == "baseline":
        return {"variant": variant, "peak_rss_mib": baseline_peak_rss_mib()}
    step = make_step(variant, targets, mask, seq_chunk=seq_chunk, vocab_chunk=vocab_chunk)
    # The first call compiles; its time is reported apart from the `repeats` after it.
    times, (value, grads) = time_calls(step, hidden, w, repeats=1 + repeats, warmup=0)
    first, times = times[0], times[1:]
    return {
        "variant": variant,
        "value": float(value),
        "grad_norms": [float(jnp.linalg.norm(g)) for g in grads],
        "compile_and_first_run_s": first,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_mib": peak_rss_mib(),
    }


def main(config: Config) -> dict:
    """Runs the baseline, naive and chunked workers and returns the comparison."""
    vocab_chunk = config.vocab_chunk or None
    kw = dataclasses.asdict(config) | {"vocab_chunk": vocab_chunk}
    base = run_in_worker(run_worker, variant="baseline", **kw)
    naive = run_in_worker(run_worker, variant="naive", **kw)
    chunked = run_in_worker(run_worker, variant="chunked", **kw)
    naive_mem = naive["peak_rss_mib"] - base["peak_rss_mib"]
    chunked_mem = chunked["peak_rss_mib"] - base["peak_rss_mib"]
    # At small sizes the naive path's peak can be within the baseline's noise: no ratio then.
    memory_ratio = round(chunked_mem / naive_mem, 4) if naive_mem > 0 else None
    result = {
        "benchmark": "logprobs_value_and_grad",
        "shape": {"B": config.batch, "T": config.seq, "V": config.vocab, "D": config.dim},
        "seq_chunk": config.seq_chunk,
        "vocab_chunk": vocab_chunk,
        "baseline_peak_rss_mib": round(base["peak_rss_mib"], 1),
        "naive": {
            "median_s": round(naive["median_s"], 4),
            "net_peak_mib": round(naive_mem, 1),
        },
        "chunked": {
            "median_s": round(chunked["median_s"], 4),
            "net_peak_mib": round(chunked_mem, 1),
        },
        "memory_ratio_chunked_over_naive": memory_ratio,
        "time_ratio_chunked_over_naive": round(chunked["median_s"] / naive["median_s"], 4),
        "value_abs_diff": abs(naive["value"] - chunked["value"]),
        "targets": {"memory_ratio_max": 0.25, "time_ratio_max": 1.4},
    }
    result["meets_targets"] = (
        memory_ratio is not None
        and memory_ratio <= 0.25
        and result["time_ratio_chunked_over_naive"] <= 1.4
    )
    return result


if __name__ == "__main__":
    cli(main, Config, description=__doc__.splitlines()[0])
