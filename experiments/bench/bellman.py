"""Benchmark: Bellman scans (GAE, lambda-returns) and vmapped soft value iteration.

Three measurements, all in one process and one run, so every ratio compares numbers taken under
the same machine load:

1. **Memory bandwidth** of this machine: a jitted float32 sum over a large array (256 MiB by
   default); bandwidth = bytes read / median time, measured before and after the returns
   benchmarks (the bound below uses the first reading) and interleaved with the soft value
   iteration runs.
2. **GAE and lambda-returns** on a time-major `[T, B] = [1024, 256]` float32 rollout with episode
   ends: `jaxpref.bellman.time_major(fn)` (one reverse loop over `[T, B]`; on CPU it overwrites the
   TD errors, or a copy of the rewards, in place instead of stacking scan outputs) vs `rlax` (the
   `[T]` function `jax.vmap`-ed over B) vs a NumPy loop over time vectorised over B. Reported:
   median milliseconds, the speed ratios `rlax / jaxpref` and `numpy / jaxpref` (> 1 means
   jaxpref is faster), and a memory-bandwidth bound: the bytes the computation must move (every
   input read once, the output written once) divided by the measured bandwidth. `bound_ratio =
   time / bound` (1 would be bandwidth-bound). Also timed: the gradient of `sum(output ** 2)`
   with respect to the rewards and values (`grad_ms`, jaxpref vs the baseline), since the
   in-place loop differentiates through its own JVP rule rather than through the loop.
3. **Soft value iteration** on 64 random MDPs of 256 states x 8 actions with dense transitions,
   200 iterations, `jax.vmap`-ed over MDPs and jitted. Each iteration is a batched
   matrix-vector product reading the whole transition tensor, so the achieved read bandwidth is
   `iterations * bytes(transitions) / time`; reported against the measured bandwidth.

Timings: warm-up calls first (compilation excluded), `block_until_ready`, medians over repeats;
the implementations being compared are timed in interleaved rounds so slow phases of a shared
machine hit them alike. Run: `python -m experiments.bench.bellman [--help]`. Prints one JSON
object.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxpref.bellman as jb
from experiments.bench._timing import cli, time_interleaved
from jaxpref.envs import random_mdp


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark sizes and repeats."""

    steps: int = 1024
    """Rollout length T of the returns benchmarks."""
    batch: int = 256
    """Rollouts B of the returns benchmarks."""
    lambda_: float = 0.95
    """Lambda of GAE and of the lambda-returns."""
    unroll: int | None = None
    """Scan unroll of jaxpref's time-major loops; None: jaxpref's default (1 on CPU, 32 on GPU)."""
    repeats: int = 50
    """Timed rounds of the jaxpref and baseline returns functions (median reported)."""
    grad_repeats: int = 20
    """Timed rounds of their gradients (median reported)."""
    numpy_repeats: int = 5
    """Timed calls of the NumPy loops (median reported)."""
    warmup: int = 3
    """Untimed calls of each returns function before its timed rounds."""
    bandwidth_mib: int = 256
    """Size in MiB of the array summed by the memory-bandwidth probe."""
    num_mdps: int = 64
    """Random MDPs solved together (vmapped) by soft value iteration."""
    num_states: int = 256
    """States per MDP."""
    num_actions: int = 8
    """Actions per MDP."""
    vi_iterations: int = 200
    """Soft value iterations."""
    vi_repeats: int = 5
    """Timed rounds of soft value iteration and the bandwidth probe (median reported)."""
    seed: int = 0
    """Seed of the rollouts and the MDPs."""


def median_ms(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int) -> dict:
    """Median wall-clock milliseconds of each zero-argument function, timed in rounds."""
    samples = time_interleaved(fns, rounds=repeats, warmup=warmup)
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}


def bandwidth_probe(num_bytes: int):
    """`(fn, bytes)`: a jitted float32 sum over a fresh array of `num_bytes` bytes."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    return (lambda: total(x)), x.nbytes


def measure_bandwidth(num_bytes: int, *, repeats: int = 20, warmup: int = 2) -> float:
    """Read bandwidth in GB/s of a jitted float32 sum over an array of `num_bytes` bytes."""
    probe, nbytes = bandwidth_probe(num_bytes)
    ms = median_ms({"sum": probe}, repeats=repeats, warmup=warmup)["sum"]
    return nbytes / (ms * 1e-3) / 1e9


def rollout_inputs(steps: int, batch: int, seed: int):
    """Random time-major rewards, discounts (2% episode ends), `[T + 1, B]` values, float32."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(steps, batch)).astype(np.float32)
    d = np.where(rng.random((steps, batch)) < 0.02, 0.0, 0.99).astype(np.float32)
    values = rng.normal(size=(steps + 1, batch)).astype(np.float32)
    return r, d, values


def numpy_gae(r, d, lam, values):
    """GAE by a loop over time, vectorised over the batch."""
    out = np.empty_like(r)
    acc = np.zeros(r.shape[1], r.dtype)
    delta = r + d * values[1:] - values[:-1]
    coef = d * np.float32(lam)
    for t in range(r.shape[0] - 1, -1, -1):
        acc = delta[t] + coef[t] * acc
        out[t] = acc
    return out


def numpy_lambda_returns(r, d, v, lam):
    """Lambda-returns by a loop over time, vectorised over the batch."""
    out = np.empty_like(r)
    acc = v[-1].copy()
    lam = np.float32(lam)
    for t in range(r.shape[0] - 1, -1, -1):
        acc = r[t] + d[t] * ((1 - lam) * v[t] + lam * acc)
        out[t] = acc
    return out


def returns_functions(lam: float, unroll: int | None = None):
    """Jitted GAE and lambda-return functions: jaxpref (`time_major`) and the baseline.

    The baseline is rlax's `[T]` function `jax.vmap`-ed over B. Where rlax is not installed it is
    jaxpref's own single-trajectory function vmapped the same way (labelled `vmapped_single`).
    """
    try:
        import rlax

        baseline, gae, lambda_returns = (
            "rlax",
            rlax.truncated_generalized_advantage_estimation,
            rlax.lambda_returns,
        )
    except ImportError:
        baseline, gae, lambda_returns = (
            "vmapped_single",
            jb.truncated_generalized_advantage_estimation,
            jb.lambda_returns,
        )
    over_b = dict(in_axes=1, out_axes=1)
    gae_tm = jb.time_major(jb.truncated_generalized_advantage_estimation)
    lambda_returns_tm = jb.time_major(jb.lambda_returns)
    return {
        "gae": {
            "jaxpref": jax.jit(lambda r, d, v: gae_tm(r, d, lam, v, unroll=unroll)),
            baseline: jax.jit(jax.vmap(lambda r, d, v: gae(r, d, lam, v), **over_b)),
        },
        "lambda_returns": {
            "jaxpref": jax.jit(lambda r, d, v: lambda_returns_tm(r, d, v, lam, unroll=unroll)),
            baseline: jax.jit(jax.vmap(lambda r, d, v: lambda_returns(r, d, v, lam), **over_b)),
        },
    }


def gradient_functions(fns: dict) -> dict:
    """Jitted gradients of `sum(f(r, d, v) ** 2)` w.r.t. `r` and `v` for each function in `fns`."""

    def grad_of(f):
        return jax.jit(jax.grad(lambda r, d, v: jnp.sum(f(r, d, v) ** 2), argnums=(0, 2)))

    return {name: grad_of(f) for name, f in fns.items()}


def bench_returns(config: Config, bandwidth_gbs: float) -> dict:
    """GAE and lambda-returns: jaxpref vs rlax vs NumPy, with the bandwidth bound."""
    r, d, values = rollout_inputs(config.steps, config.batch, config.seed)
    fns = returns_functions(config.lambda_, config.unroll)
    baseline = next(name for name in fns["gae"] if name != "jaxpref")
    rj, dj, vj = (jax.device_put(x) for x in (r, d, values))
    v_next = jax.device_put(values[1:])
    args = {"gae": (rj, dj, vj), "lambda_returns": (rj, dj, v_next)}
    np_fns = {
        "gae": lambda: numpy_gae(r, d, config.lambda_, values),
        "lambda_returns": lambda: numpy_lambda_returns(r, d, values[1:], config.lambda_),
    }
    item = 4
    bytes_moved = {
        # r, d, values (T + 1 rows) read; advantages written
        "gae": (3 * config.steps + 1 + config.steps) * config.batch * item,
        # r, d, v read; returns written
        "lambda_returns": 4 * config.steps * config.batch * item,
    }
    out = {}
    for name in ("gae", "lambda_returns"):
        a = args[name]
        timed = median_ms(
            {impl: (lambda f=f: f(*a)) for impl, f in fns[name].items()},
            repeats=config.repeats,
            warmup=config.warmup,
        )
        numpy_ms = median_ms({"numpy": np_fns[name]}, repeats=config.numpy_repeats, warmup=1)
        timed["numpy"] = numpy_ms["numpy"]
        grads = gradient_functions(fns[name])
        grad_ms = median_ms(
            {impl: (lambda g=g: g(*a)) for impl, g in grads.items()},
            repeats=config.grad_repeats,
            warmup=1,
        )
        ours = np.asarray(fns[name]["jaxpref"](*a))
        diff_base = float(np.max(np.abs(ours - np.asarray(fns[name][baseline](*a)))))
        diff_numpy = float(np.max(np.abs(ours - np_fns[name]())))
        bound_ms = bytes_moved[name] / (bandwidth_gbs * 1e9) * 1e3
        out[name] = {
            "ms": {k: round(v, 4) for k, v in timed.items()},
            f"speedup_vs_{baseline}": round(timed[baseline] / timed["jaxpref"], 3),
            "speedup_vs_numpy": round(timed["numpy"] / timed["jaxpref"], 2),
            f"{baseline}_speedup_vs_numpy": round(timed["numpy"] / timed[baseline], 2),
            "bytes_moved": bytes_moved[name],
            "bandwidth_bound_ms": round(bound_ms, 4),
            "bound_ratio": round(timed["jaxpref"] / bound_ms, 3),
            f"max_abs_diff_vs_{baseline}": diff_base,
            "max_abs_diff_vs_numpy": diff_numpy,
            "grad_ms": {k: round(v, 4) for k, v in grad_ms.items()},
            f"grad_speedup_vs_{baseline}": round(grad_ms[baseline] / grad_ms["jaxpref"], 3),
        }
    return out


def make_soft_vi(iterations: int, discount: float = 0.9, tau: float = 0.5):
    """Jitted soft value iteration vmapped over a batch of MDPs."""

    def solve(reward, transitions):
        res = jb.soft_value_iteration(
            reward, transitions, discount=discount, tau=tau, num_iterations=iterations
        )
        return res.v

    return jax.jit(jax.vmap(solve))


def bench_soft_value_iteration(config: Config) -> dict:
    """Soft value iteration on a batch of random dense MDPs: time and read bandwidth.

    The bandwidth probe (a large array sum) and the solver are timed in interleaved rounds, so
    the reported fraction compares two medians taken under the same load.
    """
    keys = jax.random.split(jax.random.key(config.seed), config.num_mdps)
    mdps = jax.jit(jax.vmap(lambda k: random_mdp(k, config.num_states, config.num_actions)))(keys)
    reward, transitions = jax.block_until_ready((mdps.reward, mdps.transitions))
    solve = make_soft_vi(config.vi_iterations)
    probe, probe_bytes = bandwidth_probe(config.bandwidth_mib * 2**20)
    ms = median_ms(
        {"soft_vi": lambda: solve(reward, transitions), "probe": probe},
        repeats=config.vi_repeats,
        warmup=1,
    )
    bandwidth = probe_bytes / (ms["probe"] * 1e-3) / 1e9
    bytes_read = config.vi_iterations * transitions.nbytes
    achieved = bytes_read / (ms["soft_vi"] * 1e-3) / 1e9
    return {
        "ms": round(ms["soft_vi"], 3),
        "transitions_bytes": int(transitions.nbytes),
        "iterations": config.vi_iterations,
        "achieved_read_gbs": round(achieved, 3),
        "bandwidth_gbs_interleaved": round(bandwidth, 3),
        "fraction_of_bandwidth": round(achieved / bandwidth, 3),
    }


def main(config: Config) -> dict:
    """Runs all measurements and returns the report (also printed as JSON by the CLI)."""
    start = measure_bandwidth(config.bandwidth_mib * 2**20)
    returns = bench_returns(config, start)
    end = measure_bandwidth(config.bandwidth_mib * 2**20)
    return {
        "device": str(jax.devices()[0]),
        "config": dataclasses.asdict(config),
        # measured before and after the returns benchmarks; a gap means the load changed
        "bandwidth_gbs": {"start": round(start, 3), "end": round(end, 3)},
        "returns": returns,
        "soft_value_iteration": bench_soft_value_iteration(config),
    }


if __name__ == "__main__":
    cli(main, Config, description=__doc__.splitlines()[0])
