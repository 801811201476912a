"""Timing, peak-memory and worker-process helpers shared by the benchmarks in `experiments/bench`.

* `time_calls` / `best_time`: repeated calls of one function, each timed with its result ready
  (`jax.block_until_ready`), after untimed warm-up calls.
* `time_interleaved`: several candidates timed in rounds (each round times every candidate once,
  in a fixed order or in orders cycled through, such as `balanced_orders`), so that slow phases
  of a shared machine hit all of them alike.
* `peak_rss_mib` / `baseline_peak_rss_mib`: this process's peak resident memory.
* `run_in_worker`: calls a function in a fresh Python process, so that a peak memory measured
  there is that measurement's alone.
* `cli`: parses a benchmark's frozen config dataclass with tyro, runs it, prints the JSON report.

JAX is imported lazily, so that a process that only spawns workers does not load it.
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def time_calls(fn: Callable, *args, repeats: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` calls of `fn(*args)`, and the last call's result.

    Every call, the `warmup` untimed ones first included, waits for its result
    (`jax.block_until_ready`); the timings are those of the timed calls only.
    """
    import jax

    out = None
    for _ in range(warmup):
        out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times, out


def best_time(fn: Callable, *args, repeats: int, warmup: int = 1) -> float:
    """Best seconds of `repeats` calls of `fn(*args)` (results ready), after `warmup` calls."""
    return min(time_calls(fn, *args, repeats=repeats, warmup=warmup)[0])


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 0,
    calls: int = 1,
    settle: int = 0,
    orders: Sequence[Sequence[str]] | None = None,
    min_time_s: float = 0.0,
    max_rounds: int | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument function in `fns`, timed in interleaved rounds.

    First `warmup` untimed calls of each function (all of the first function's, then the
    second's, ...). Then each round times every function once: `settle` untimed calls, then
    `calls` consecutive calls timed together (each waiting for its result), recorded as their
    mean. Round `r` follows `orders[r % len(orders)]` (default: the order of `fns`). There are
    `rounds` rounds, and more, up to `max_rounds` in all, until every function has been timed
    for at least `min_time_s` seconds (none when `rounds` is 0).

    Returns every function's list of samples (seconds per call), one a round.
    """
    import jax

    block = jax.block_until_ready
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    orders = orders or [list(fns)]
    samples: dict[str, list[float]] = {name: [] for name in fns}

    def short_of_time() -> bool:
        return min(sum(s) * calls for s in samples.values()) < min_time_s

    def more_rounds(r: int) -> bool:
        if r < rounds:
            return True
        return r > 0 and (max_rounds is None or r < max_rounds) and short_of_time()

    r = 0
    while more_rounds(r):
        for name in orders[r % len(orders)]:
            fn = fns[name]
            for _ in range(settle):
                block(fn())
            start = time.perf_counter()
            for _ in range(calls):
                block(fn())
            samples[name].append((time.perf_counter() - start) / calls)
        r += 1
    return samples


def balanced_orders(items: Sequence) -> list[list]:
    """Orders of `items` in which every item directly follows every other one equally often.

    A Williams design: row `r` is `r, r+1, r-1, r+2, r-2, ...` (mod `k`), then the same rows
    reversed, in reverse order (needed for odd `k`; for any `k` it also spreads the pairs formed
    across consecutive rows). Cycling through the rows balances first-order carry-over effects
    (one configuration slowing down whatever runs right after it), which rotating a single order
    does not: a rotation keeps every item's predecessor the same.
    """
    k = len(items)
    first, lo, hi = [0], 1, k - 1
    while len(first) < k:
        first.append(lo)
        lo += 1
        if len(first) < k:
            first.append(hi)
            hi -= 1
    rows = [[items[(r + i) % k] for i in first] for r in range(k)]
    return rows + [row[::-1] for row in reversed(rows)]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (`ru_maxrss`, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def baseline_peak_rss_mib() -> float:
    """`peak_rss_mib` after compiling and running a trivial jitted function.

    Measured in a worker that has built the same inputs as the measurement it stands for, this
    is the memory every such worker pays before its computation (interpreter, imports, JAX
    runtime, compiler, inputs); benchmarks subtract it.
    """
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jax.jit(lambda x: x + 1.0)(jnp.ones(3)))
    return peak_rss_mib()


def run_in_worker(fn: Callable[..., dict], /, **kwargs) -> dict:
    """`fn(**kwargs)` called in a fresh Python process; its result must be JSON-serialisable.

    `fn` must be a module-level function; the keyword arguments travel as JSON. The worker runs
    `python -m experiments.bench._timing MODULE:NAME KWARGS_JSON`, which imports only what
    `fn`'s module imports, so that its peak memory (`peak_rss_mib`) is the measurement's own.
    """
    module = _module_name(fn)
    cmd = [sys.executable, "-m", __spec__.name, f"{module}:{fn.__qualname__}", json.dumps(kwargs)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(
            f"benchmark worker {module}:{fn.__qualname__}({kwargs}) failed "
            f"(exit {out.returncode}):\n{out.stderr[-4000:]}"
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(
    main: Callable[[Any], dict], config_type: type, *, description: str | None = None, args=None
) -> dict:
    """Parses `config_type` with tyro (`args`, default `sys.argv`), prints `main(config)` as JSON.

    Returns the report. `description` (default: the config's docstring) heads `--help`.
    """
    import tyro

    prog = f"python -m {_module_name(main)}"
    report = main(tyro.cli(config_type, prog=prog, description=description, args=args))
    print(json.dumps(report, indent=2))
    return report


def _module_name(fn: Callable) -> str:
    """The importable name of `fn`'s module, also when it runs as `python -m <module>`."""
    if fn.__module__ == "__main__":
        return sys.modules["__main__"].__spec__.name
    return fn.__module__


def _worker_main(target: str, kwargs_json: str) -> None:
    module, name = target.split(":")
    fn = getattr(importlib.import_module(module), name)
    print(json.dumps(fn(**json.loads(kwargs_json))))


if __name__ == "__main__":
    _worker_main(*sys.argv[1:])
