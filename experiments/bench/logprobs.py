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

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


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


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(variant, *, batch, seq, vocab, dim, repeats, seq_chunk, vocab_chunk) -> dict:
    """Runs one variant in this process and returns its timings and peak memory."""
    import jax
    import jax.numpy as jnp

    hidden, w, targets, mask = _inputs(batch, seq, vocab, dim)
    jax.block_until_ready((hidden, w, targets, mask))
    if variant == "baseline":
        jax.block_until_ready(jax.jit(lambda x: x + 1.0)(jnp.ones(3)))
        return {"variant": variant, "peak_rss_mib": _peak_rss_mib()}
    step = make_step(variant, targets, mask, seq_chunk=seq_chunk, vocab_chunk=vocab_chunk)
    t0 = time.perf_counter()
    value, grads = jax.block_until_ready(step(hidden, w))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(hidden, w))
        times.append(time.perf_counter() - t0)
    return {
        "variant": variant,
        "value": float(value),
        "grad_norms": [float(jnp.linalg.norm(g)) for g in grads],
        "compile_and_first_run_s": first,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _spawn(variant: str, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench.logprobs",
        "--worker",
        variant,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--vocab",
        str(args.vocab),
        "--dim",
        str(args.dim),
        "--repeats",
        str(args.repeats),
        "--seq-chunk",
        str(args.seq_chunk),
        "--vocab-chunk",
        str(args.vocab_chunk or 0),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    """Runs the baseline, naive and chunked workers and prints the comparison as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seq-chunk", type=int, default=512)
    p.add_argument("--vocab-chunk", type=int, default=0, help="0 = whole vocabulary")
    p.add_argument("--worker", choices=["baseline", "naive", "chunked"], default=None)
    args = p.parse_args(argv)
    vocab_chunk = args.vocab_chunk or None
    if args.worker:
        res = run_worker(
            args.worker,
            batch=args.batch,
            seq=args.seq,
            vocab=args.vocab,
            dim=args.dim,
            repeats=args.repeats,
            seq_chunk=args.seq_chunk,
            vocab_chunk=vocab_chunk,
        )
        print(json.dumps(res))
        return res
    base = _spawn("baseline", args)
    naive = _spawn("naive", args)
    chunked = _spawn("chunked", args)
    naive_mem = naive["peak_rss_mib"] - base["peak_rss_mib"]
    chunked_mem = chunked["peak_rss_mib"] - base["peak_rss_mib"]
    result = {
        "benchmark": "logprobs_value_and_grad",
        "shape": {"B": args.batch, "T": args.seq, "V": args.vocab, "D": args.dim},
        "seq_chunk": args.seq_chunk,
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
        "memory_ratio_chunked_over_naive": round(chunked_mem / naive_mem, 4),
        "time_ratio_chunked_over_naive": round(chunked["median_s"] / naive["median_s"], 4),
        "value_abs_diff": abs(naive["value"] - chunked["value"]),
        "targets": {"memory_ratio_max": 0.25, "time_ratio_max": 1.4},
    }
    result["meets_targets"] = (
        result["memory_ratio_chunked_over_naive"] <= 0.25
        and result["time_ratio_chunked_over_naive"] <= 1.4
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
