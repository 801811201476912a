"""Running a whole jitted `train(key)` over many seeds with `vmap`, in chunks when needed."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SeedRuns", "fit_chunk_size", "run_seeds"]


class SeedRuns(NamedTuple):
    """Per-seed outputs of `run_seeds` and their summaries over seeds.

    Attributes:
      per_seed: the outputs of `train`, each leaf with a leading `[S]` seed axis (NumPy).
      mean: the mean over seeds of each leaf.
      std: the sample standard deviation over seeds (ddof=1; 0 for one seed).
      num_seeds: `S`.
      chunk_size: seeds run together in one `vmap`.
    """

    per_seed: Any
    mean: Any
    std: Any
    num_seeds: int
    chunk_size: int


def _memory_budget(fraction: float) -> float:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        import psutil

        return fraction * psutil.virtual_memory().available
    except ImportError:  # pragma: no cover - psutil comes with orbax
        return math.inf


def _needed_bytes(compiled) -> float:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return 0.0
    return float(
        analysis.temp_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.argument_size_in_bytes
    )


def _fit(batched: Callable, keys: jax.Array, memory_fraction: float):
    budget = _memory_budget(memory_fraction)
    size = keys.shape[0]
    compiled = batched.lower(keys[:size]).compile()
    while size > 1 and _needed_bytes(compiled) > budget:
        size = -(-size // 2)
        compiled = batched.lower(keys[:size]).compile()
    return size, compiled


def fit_chunk_size(batched: Callable, keys: jax.Array, *, memory_fraction: float = 0.5) -> int:
    """The largest number of seeds (halving from all of them) whose program fits in memory.

    The estimate is XLA's own memory analysis of the compiled program (arguments, outputs and
    temporaries) against `memory_fraction` of the free device memory (host memory on CPU).

    Args:
      batched: `jax.jit(jax.vmap(train))`.
      keys: `[S]` the seeds' keys.
      memory_fraction: share of the free memory one chunk may use.

    Returns:
      A chunk size in `[1, S]`.
    """
    return _fit(batched, keys, memory_fraction)[0]


def run_seeds(
    train: Callable[[jax.Array], Any],
    keys: jax.Array,
    *,
    chunk_size: int | None = None,
    memory_fraction: float = 0.5,
    progress: bool = False,
) -> SeedRuns:
    """Runs `train(key)` for every key as `jax.jit(jax.vmap(train))`, purejaxrl style.

    All seeds run in one program when it fits in memory (see `fit_chunk_size`), otherwise in
    chunks of equal size (the last one padded by repeating its final key and trimmed), so the
    program is compiled once. Per-seed results do not depend on the chunking beyond
    floating-point reassociation.

    Args:
      train: a pure function of one PRNG key returning a pytree of arrays (a whole training
        run, e.g. one `lax.scan`).
      keys: `[S]` PRNG keys, one per seed (e.g. `jax.random.split(key, S)`).
      chunk_size: seeds per `vmap`; default: the largest that fits.
      memory_fraction: share of the free memory a chunk may use when `chunk_size` is None.
      progress: show a progress bar over chunks (process 0).

    Returns:
      `SeedRuns` with the per-seed outputs and their mean and std over seeds.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> runs = run_seeds(lambda k: jax.random.normal(k, ()), jax.random.split(
      ...     jax.random.key(0), 4), chunk_size=3)
      >>> runs.per_seed.shape, runs.chunk_size
      ((4,), 3)
    """
    num = int(keys.shape[0])
    if num < 1:
        raise ValueError(f"run_seeds: keys must hold at least one key, got shape {keys.shape}.")
    batched = jax.jit(jax.vmap(train))
    if chunk_size is None:
        chunk_size, compiled = _fit(batched, keys, memory_fraction)
    elif chunk_size < 1:
        raise ValueError(f"run_seeds: chunk_size must be positive, got {chunk_size}.")
    else:
        chunk_size = min(chunk_size, num)
        compiled = batched.lower(keys[:chunk_size]).compile()
    starts = range(0, num, chunk_size)
    bar = None
    if progress and len(starts) > 1 and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=num, desc="seeds", unit="seed", dynamic_ncols=True, file=sys.stderr)
    outs = []
    for start in starts:
        chunk = keys[start : start + chunk_size]
        real = chunk.shape[0]
        if real < chunk_size:
            pad = jnp.repeat(chunk[-1:], chunk_size - real, axis=0)
            chunk = jnp.concatenate([chunk, pad], axis=0)
        out = jax.device_get(compiled(chunk))
        outs.append(jax.tree.map(lambda x, r=real: np.asarray(x)[:r], out))
        if bar is not None:
            bar.update(real)
    if bar is not None:
        bar.close()
    per_seed = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)

    def std(x):
        return np.std(x, axis=0, ddof=1) if x.shape[0] > 1 else np.zeros_like(x[0])

    return SeedRuns(
        per_seed=per_seed,
        mean=jax.tree.map(lambda x: np.mean(x, axis=0), per_seed),
        std=jax.tree.map(std, per_seed),
        num_seeds=num,
        chunk_size=chunk_size,
    )
