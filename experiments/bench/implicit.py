"""Benchmark: hypergradients through gradient descent, implicit vs unrolled vs jaxopt.

Inner problems (float32, `n` training and `n` validation rows, `d` features):

* ridge: `w*(lam) = argmin_w 0.5/n ||X w - y||^2 + 0.5 lam ||w||^2`;
* logistic: `w*(lam) = argmin_w mean softplus(-y Xw) + 0.5 lam ||w||^2`;

outer loss: the same data-fit term on the validation rows at `w*(lam)`; measured quantity: the
jitted `value_and_grad` of the outer loss with respect to `lam` (the hypergradient), with the inner
problem solved by exactly `N` fixed-step gradient-descent iterations (`tol = 0`), for
`N in {100, 1000, 10000}` and four methods:

* `implicit`: `jaxpref.solvers.GradientDescent` + `ImplicitAdjoint(solve=solve_cg)` (while loop
  forward, one conjugate-gradient solve backward);
* `unrolled`: the same solver with `UnrolledAdjoint()` (backpropagation through a scan);
* `jaxopt`: `jaxopt.GradientDescent(implicit_diff=True)` with jaxopt's CG (the reference library);
* `jaxopt_unrolled`: `jaxopt.GradientDescent(implicit_diff=False)`, jaxopt's unrolled mode (a scan
  over `lax.cond`, which stores loop-invariant data as a per-iteration residual).

The headline comparison is `implicit` vs `unrolled` (same solver, same forward loop body);
`jaxopt_unrolled` is context for users coming from jaxopt.

Times and memory are measured separately, so that each is as clean as a shared machine allows:

* timing: one subprocess per (problem, N) first builds every method once, untimed (process
  warm-up: the first compilation in a process pays one-time costs), then builds every method
  `--builds` times in rounds whose orders cycle through a Williams design (`balanced_orders`:
  every method directly follows every other one equally often, so that a heavy configuration
  slowing down whatever runs next, as `jaxopt_unrolled` does, penalises no method more than
  another; a mere rotation would not, since it keeps each method's predecessor), with a full
  garbage collection before each build (so that one build's garbage is not collected inside the
  next one's timing). Each build uses fresh closures (so it is really re-traced and recompiled;
  the workers also turn JAX's persistent compilation cache off) and times its first call stage
  by stage with JAX's ahead-of-time API: `trace` (Python tracing, including autodiff), `lower`
  (to StableHLO), `compile` (XLA) and the first run. `compile_and_first_run_s` is the median
  over the builds of the sum of the four stages (the work of a first `jax.jit` call);
  `stages_s` holds the median of each stage. Then `--repeats` calls per method are timed
  round-robin (at least `--repeats` rounds and at least `--min-time` seconds per method; each
  timed call follows an untimed call of the same method, and the rounds cycle through the same
  balanced orders: a call right after `jaxopt_unrolled` (hundreds of MiB of residuals) can take
  up to twice as long, even after one untimed call, so a fixed order would always penalise the
  method that follows it); `median_s` is the median steady-state call. Ratios therefore compare
  measurements taken in the same process, interleaved in time;
  `compile_and_first_run_implicit_over_jaxopt_paired` is the median over rounds of the ratio of
  the two builds of the same round (adjacent in time, so slow drifts of the machine's load
  cancel), next to the ratio of the medians.
* memory: one subprocess per (problem, method, N) compiles and runs that configuration once.
  `net_peak_rss_mib` is its peak resident memory (`ru_maxrss`) minus that of a baseline subprocess
  which imports the same modules, builds the same inputs and compiles a trivial function (it
  includes compiler memory, so it is noisy at small sizes). `temp_mib` is XLA's compiled memory
  analysis (`temp_size_in_bytes`, the scratch buffers the program allocates), a deterministic
  measure of the memory the computation itself needs.

Usage: `python -m experiments.bench.implicit [--n 500 --d 100 --steps 100 1000 10000 --builds 8]`.
Prints one JSON object.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
import warnings
from typing import Literal

from experiments.bench._timing import (
    balanced_orders,
    baseline_peak_rss_mib,
    cli,
    peak_rss_mib,
    run_in_worker,
    time_interleaved,
)

METHODS = ("implicit", "unrolled", "jaxopt", "jaxopt_unrolled")
PROBLEMS = ("ridge", "logistic")


@dataclasses.dataclass(frozen=True)
class Config:
    """Problem sizes, step counts and repeats of the hypergradient benchmark."""

    n: int = 500
    """Training rows (and as many validation rows)."""
    d: int = 100
    """Features."""
    steps: tuple[int, ...] = (100, 1000, 10000)
    """Inner gradient-descent steps N, one measurement each."""
    problems: tuple[Literal["ridge", "logistic"], ...] = PROBLEMS
    """Inner problems."""
    repeats: int = 7
    """Timed steady-state rounds per method, at least."""
    builds: int = 8
    """Timed fresh builds (trace, lower, compile, first run) per method."""
    min_time: float = 1.0
    """Seconds of timed steady-state calls per method, at least (up to 200 rounds)."""
    jaxopt_unrolled_max_steps: int = 1000
    """Skip jaxopt_unrolled above this many steps (it stores ~n*d floats per step)."""


def make_problem(problem: str, n: int, d: int, seed: int = 0):
    """Returns `(inner_fun, outer_fun, w0, lam, learning_rate)` for `problem`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d) / np.sqrt(d)
    x_tr = rng.normal(size=(n, d)).astype(np.float32)
    x_va = rng.normal(size=(n, d)).astype(np.float32)
    if problem == "ridge":
        y_tr = (x_tr @ w_true + 0.5 * rng.normal(size=n)).astype(np.float32)
        y_va = (x_va @ w_true + 0.5 * rng.normal(size=n)).astype(np.float32)
        curvature = np.linalg.eigvalsh(x_tr.T @ x_tr / n).max()

        def fit(w, x, y):
            return 0.5 * jnp.mean((x @ w - y) ** 2)

    elif problem == "logistic":
        y_tr = np.sign(x_tr @ w_true + 0.5 * rng.normal(size=n)).astype(np.float32)
        y_va = np.sign(x_va @ w_true + 0.5 * rng.normal(size=n)).astype(np.float32)
        curvature = 0.25 * np.linalg.eigvalsh(x_tr.T @ x_tr / n).max()

        def fit(w, x, y):
            return jnp.mean(jax.nn.softplus(-y * (x @ w)))

    else:
        raise ValueError(f"unknown problem {problem!r}")
    lam = 0.1
    x_tr, y_tr, x_va, y_va = map(jnp.asarray, (x_tr, y_tr, x_va, y_va))

    def inner(w, lam):
        return fit(w, x_tr, y_tr) + 0.5 * lam * jnp.sum(w**2)

    def outer(w):
        return fit(w, x_va, y_va)

    learning_rate = float(1.0 / (curvature + lam))
    return inner, outer, jnp.zeros(d, jnp.float32), jnp.float32(lam), learning_rate


def make_hypergradient(method: str, problem: str, steps: int, n: int, d: int):
    """Returns `(jitted value_and_grad of lam -> outer(w*(lam)), lam)` for one configuration."""
    import functools

    import jax

    inner, outer, w0, lam, lr = make_problem(problem, n, d)
    if method in ("implicit", "unrolled"):
        from jaxpref import solvers

        adjoint = (
            solvers.ImplicitAdjoint(solve=functools.partial(solvers.solve_cg, tol=1e-6))
            if method == "implicit"
            else solvers.UnrolledAdjoint()
        )
        solver = solvers.GradientDescent(
            inner, learning_rate=lr, max_steps=steps, tol=0.0, adjoint=adjoint
        )

        def total(lam):
            return outer(solver.run(w0, lam).value)

    elif method in ("jaxopt", "jaxopt_unrolled"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jaxopt

        solver = jaxopt.GradientDescent(
            inner,
            stepsize=lr,
            maxiter=steps,
            tol=0.0,
            acceleration=False,
            implicit_diff=method == "jaxopt",
            implicit_diff_solve=functools.partial(jaxopt.linear_solve.solve_cg, tol=1e-6),
        )

        def total(lam):
            return outer(solver.run(w0, lam).params)

    else:
        raise ValueError(f"unknown method {method!r}")
    return jax.jit(jax.value_and_grad(total)), lam


def _import_all():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import jaxopt  # noqa: F401

    import jaxpref.solvers  # noqa: F401


def _first_call(method, problem, steps, n, d):
    """Builds `method` afresh and times its first call by stage (trace, lower, compile, run)."""
    import jax

    fn, lam = make_hypergradient(method, problem, steps, n, d)
    gc.collect()
    t0 = time.perf_counter()
    traced = fn.trace(lam)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    value, grad = jax.block_until_ready(compiled(lam))
    t4 = time.perf_counter()
    stages = {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2, "first_run_s": t4 - t3}
    return compiled, lam, t4 - t0, stages, float(value), float(grad)


def run_timing(
    problem: str,
    steps: int,
    methods,
    *,
    n: int,
    d: int,
    repeats: int,
    builds: int,
    min_time_s: float = 0.0,
) -> dict:
    """Interleaved compile and run timings of `methods` in this process (module docstring)."""

    _import_all()
    methods = list(methods)
    orders = balanced_orders(methods)
    for m in methods:  # warm-up build, untimed
        _first_call(m, problem, steps, n, d)
    firsts = {m: [] for m in methods}
    stages = {m: [] for m in methods}
    fns = {}
    for r in range(builds):
        for m in orders[r % len(orders)]:
            fn, lam, first, stage, value, grad = _first_call(m, problem, steps, n, d)
            firsts[m].append(first)
            stages[m].append(stage)
            fns[m] = (fn, lam, value, grad)
    # Each timed call follows an untimed call of the same method, which absorbs the previous
    # method's after-effects.
    times = time_interleaved(
        {m: (lambda fn=fns[m][0], lam=fns[m][1]: fn(lam)) for m in methods},
        rounds=repeats,
        settle=1,
        orders=orders,
        min_time_s=min_time_s,
        max_rounds=200,
    )
    out = {}
    for m in methods:
        fn, lam, value, grad = fns[m]
        out[m] = {
            "value": value,
            "hypergradient": grad,
            "compile_and_first_run_s": statistics.median(firsts[m]),
            "compile_and_first_run_all_s": firsts[m],
            "stages_s": {
                key: statistics.median(stage[key] for stage in stages[m]) for key in stages[m][0]
            },
            "median_s": statistics.median(times[m]) if times[m] else min(firsts[m]),
        }
    return out


def run_memory(method: str, problem: str, steps: int, *, n: int, d: int) -> dict:
    """Peak RSS and compiled scratch memory of one configuration in this process."""
    import jax

    _import_all()
    if method == "baseline":
        make_problem(problem, n, d)
        return {"method": method, "peak_rss_mib": baseline_peak_rss_mib(), "temp_mib": None}
    fn, lam = make_hypergradient(method, problem, steps, n, d)
    compiled = fn.lower(lam).compile()
    jax.block_until_ready(compiled(lam))
    stats = compiled.memory_analysis()
    return {
        "method": method,
        "peak_rss_mib": peak_rss_mib(),
        "temp_mib": None if stats is None else stats.temp_size_in_bytes / 2**20,
    }


def _methods_for(steps: int, jaxopt_unrolled_max_steps: int) -> list[str]:
    return [m for m in METHODS if m != "jaxopt_unrolled" or steps <= jaxopt_unrolled_max_steps]


def run_worker(
    worker: str,
    problem: str,
    steps: int,
    *,
    n: int,
    d: int,
    repeats: int,
    builds: int,
    min_time_s: float,
    jaxopt_unrolled_max_steps: int,
) -> dict:
    """One worker process's measurement: 'timing', or the memory of 'baseline' or a method."""
    import jax

    # Every build must really compile: no persistent compilation cache (which an environment
    # variable could enable), since the fresh builds of one method produce identical programs.
    jax.config.update("jax_enable_compilation_cache", False)
    if worker == "timing":
        methods = _methods_for(steps, jaxopt_unrolled_max_steps)
        return run_timing(
            problem, steps, methods, n=n, d=d, repeats=repeats, builds=builds, min_time_s=min_time_s
        )
    return run_memory(worker, problem, steps, n=n, d=d)


def _spawn(worker: str, problem: str, steps: int, c: Config) -> dict:
    """`run_worker` in a fresh process (see `run_in_worker`)."""
    return run_in_worker(
        run_worker, worker=worker, problem=problem, steps=steps, n=c.n, d=c.d,
        repeats=c.repeats, builds=c.builds, min_time_s=c.min_time,
        jaxopt_unrolled_max_steps=c.jaxopt_unrolled_max_steps,
    )  # fmt: skip


def _ratio(a, b, digits=3):
    return None if a is None or b is None or b == 0 else round(a / b, digits)


def _paired_ratio(ours, theirs, digits=3):
    """Median over build rounds of ours/theirs `compile_and_first_run` (same-round builds)."""
    if ours is None or theirs is None:
        return None
    pairs = zip(
        ours["compile_and_first_run_all_s"], theirs["compile_and_first_run_all_s"], strict=True
    )
    return round(statistics.median(a / b for a, b in pairs), digits)


def summarise(timing: dict, memory: dict, baseline_mib: float, steps: list[int]) -> dict:
    """Per-method tables and target checks from `timing[steps][method]` and
    `memory[(method, steps)]`."""
    table = {}
    for m in METHODS:
        rows = {}
        for s in steps:
            if m not in timing[s]:
                continue
            t, mem = timing[s][m], memory.get((m, s), {})
            rows[str(s)] = {
                "median_s": round(t["median_s"], 5),
                "compile_and_first_run_s": round(t["compile_and_first_run_s"], 4),
                "stages_s": {key: round(v, 4) for key, v in t.get("stages_s", {}).items()},
                "temp_mib": None if mem.get("temp_mib") is None else round(mem["temp_mib"], 3),
                "net_peak_rss_mib": None
                if "peak_rss_mib" not in mem
                else round(mem["peak_rss_mib"] - baseline_mib, 1),
                "hypergradient": t["hypergradient"],
            }
        table[m] = rows
    lo, hi = min(steps), max(steps)
    mid = 1000 if 1000 in steps else sorted(steps)[len(steps) // 2]
    imp, unr, jo, jou = (table[m] for m in METHODS)

    def get(rows, s, key):
        return rows.get(str(s), {}).get(key)

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-12)

    checks = {
        f"speedup_implicit_vs_unrolled_at_{mid}": _ratio(
            get(unr, mid, "median_s"), get(imp, mid, "median_s"), 2
        ),
        f"speedup_implicit_vs_jaxopt_unrolled_at_{mid}": _ratio(
            get(jou, mid, "median_s"), get(imp, mid, "median_s"), 2
        ),
        f"implicit_temp_ratio_{hi}_vs_{lo}": _ratio(
            get(imp, hi, "temp_mib"), get(imp, lo, "temp_mib")
        ),
        f"implicit_net_rss_ratio_{hi}_vs_{lo}": _ratio(
            get(imp, hi, "net_peak_rss_mib"), get(imp, lo, "net_peak_rss_mib")
        ),
        f"unrolled_temp_ratio_{hi}_vs_{lo}": _ratio(
            get(unr, hi, "temp_mib"), get(unr, lo, "temp_mib")
        ),
        "compile_and_first_run_implicit_over_jaxopt": {
            str(s): _ratio(
                get(imp, s, "compile_and_first_run_s"), get(jo, s, "compile_and_first_run_s")
            )
            for s in steps
        },
        "compile_and_first_run_implicit_over_jaxopt_paired": {
            str(s): _paired_ratio(timing[s].get("implicit"), timing[s].get("jaxopt")) for s in steps
        },
        "stages_implicit_over_jaxopt": {
            str(s): {
                key: _ratio(get(imp, s, "stages_s").get(key), get(jo, s, "stages_s").get(key))
                for key in get(imp, s, "stages_s") or {}
            }
            for s in steps
        },
        "median_implicit_over_jaxopt": {
            str(s): _ratio(get(imp, s, "median_s"), get(jo, s, "median_s")) for s in steps
        },
        "max_rel_diff_hypergradient_implicit_vs_jaxopt": max(
            rel(imp[str(s)]["hypergradient"], jo[str(s)]["hypergradient"]) for s in steps
        ),
        "max_rel_diff_hypergradient_implicit_vs_unrolled": max(
            rel(imp[str(s)]["hypergradient"], unr[str(s)]["hypergradient"]) for s in steps
        ),
    }
    speedup = checks[f"speedup_implicit_vs_unrolled_at_{mid}"]
    temp_ratio = checks[f"implicit_temp_ratio_{hi}_vs_{lo}"]
    rss_ratio = checks[f"implicit_net_rss_ratio_{hi}_vs_{lo}"]
    compile_ratios = checks["compile_and_first_run_implicit_over_jaxopt"].values()
    meets = {
        "implicit_at_least_5x_faster_than_unrolled": speedup is not None and speedup >= 5.0,
        "implicit_memory_flat_within_1.5x": temp_ratio is not None
        and temp_ratio <= 1.5
        and (rss_ratio is None or rss_ratio <= 1.5),
        "compile_and_run_no_worse_than_jaxopt": all(
            r is not None and r <= 1.0 for r in compile_ratios
        ),
    }
    return {"by_method": table, "checks": checks, "meets_targets": meets}


def main(config: Config) -> dict:
    """Spawns the timing and memory workers and returns the comparison."""
    import jax

    steps = list(config.steps)
    result = {
        "benchmark": "implicit_vs_unrolled_hypergradient",
        "shape": {"n": config.n, "d": config.d},
        "steps": steps,
        "device": str(jax.devices()[0].platform),
        "memory_measures": {
            "temp_mib": "XLA compiled memory analysis, temp_size_in_bytes",
            "net_peak_rss_mib": "subprocess ru_maxrss minus a baseline subprocess's",
        },
        "problems": {},
    }
    for problem in config.problems:
        timing = {s: _spawn("timing", problem, s, config) for s in steps}
        base = _spawn("baseline", problem, steps[0], config)
        memory = {
            (m, s): _spawn(m, problem, s, config)
            for s in steps
            for m in _methods_for(s, config.jaxopt_unrolled_max_steps)
        }
        result["problems"][problem] = {
            "baseline_peak_rss_mib": round(base["peak_rss_mib"], 1),
            **summarise(timing, memory, base["peak_rss_mib"], steps),
        }
    return result


if __name__ == "__main__":
    cli(main, Config, description=__doc__.splitlines()[0])
