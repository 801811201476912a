"""Every benchmark in `experiments/bench` end to end at a tiny size, through its tyro CLI.

Each runs `_timing.cli` in this process with command-line flags (tyro parses them into the
benchmark's `Config`, `main(config)` runs, the report is printed as JSON); the printed JSON is
checked for its keys and for sane values (positive times, finite ratios). No timing targets are
asserted. The shared timing helpers are checked on counting stand-ins.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import tyro

from experiments.bench import _timing, bellman, decode, dpo_step, implicit, logprobs

MODULES = {
    "logprobs": logprobs,
    "implicit": implicit,
    "bellman": bellman,
    "decode": decode,
    "dpo_step": dpo_step,
}


def _run_cli(capsys, module, args: list[str]) -> dict:
    returned = _timing.cli(module.main, module.Config, args=args)
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(returned))
    return printed


def _finite_positive(*values):
    for v in values:
        assert isinstance(v, int | float) and math.isfinite(v) and v > 0, v


def _finite_nonnegative(*values):
    """For rates and fractions rounded in the report: tiny workloads may round them to zero."""
    for v in values:
        assert isinstance(v, int | float) and math.isfinite(v) and v >= 0, v


@pytest.mark.slow  # three worker processes, each importing JAX
def test_logprobs(capsys):
    # The naive path's 16 MiB of logits (and as much gradient) usually stand above the noise of
    # the workers' peak memory; the compute is still tiny.
    args = "--batch 1 --seq 128 --vocab 32768 --dim 8 --repeats 2 --seq-chunk 32 --vocab-chunk 4096"
    report = _run_cli(capsys, logprobs, args.split())
    assert set(report) == {
        "benchmark", "shape", "seq_chunk", "vocab_chunk", "baseline_peak_rss_mib", "naive",
        "chunked", "memory_ratio_chunked_over_naive", "time_ratio_chunked_over_naive",
        "value_abs_diff", "targets", "meets_targets",
    }  # fmt: skip
    assert report["shape"] == {"B": 1, "T": 128, "V": 32768, "D": 8}
    assert (report["seq_chunk"], report["vocab_chunk"]) == (32, 4096)
    _finite_positive(report["baseline_peak_rss_mib"])
    for variant in ("naive", "chunked"):
        assert set(report[variant]) == {"median_s", "net_peak_mib"}
        assert math.isfinite(report[variant]["net_peak_mib"])
        _finite_nonnegative(report[variant]["median_s"])  # rounded to 0.1 ms
    # Peak RSS of separate worker processes is noisy on a shared machine: the naive path's net
    # peak may come out at the baseline's (0). The report must then say so instead of a ratio.
    naive, ratio = report["naive"]["net_peak_mib"], report["memory_ratio_chunked_over_naive"]
    assert naive >= 0
    if naive > 0:
        assert math.isfinite(ratio)
    else:
        assert ratio is None and report["meets_targets"] is False
    _finite_positive(report["time_ratio_chunked_over_naive"])
    assert report["value_abs_diff"] < 1e-4


@pytest.mark.slow  # five worker processes, each importing JAX and jaxopt
def test_implicit(capsys):
    args = "--n 12 --d 3 --steps 100 --problems ridge --repeats 1 --builds 1 --min-time 0"
    # jaxopt_unrolled skipped above 0 steps: one worker fewer.
    report = _run_cli(capsys, implicit, [*args.split(), "--jaxopt-unrolled-max-steps", "0"])
    assert set(report) == {
        "benchmark", "shape", "steps", "device", "memory_measures", "problems"
    }  # fmt: skip
    assert report["steps"] == [100] and report["shape"] == {"n": 12, "d": 3}
    ridge = report["problems"]["ridge"]
    assert set(ridge) == {"baseline_peak_rss_mib", "by_method", "checks", "meets_targets"}
    _finite_positive(ridge["baseline_peak_rss_mib"])
    assert ridge["by_method"]["jaxopt_unrolled"] == {}
    for method in ("implicit", "unrolled", "jaxopt"):
        row = ridge["by_method"][method]["100"]
        _finite_positive(row["median_s"], row["compile_and_first_run_s"])
        assert set(row["stages_s"]) == {"trace_s", "lower_s", "compile_s", "first_run_s"}
        _finite_nonnegative(*row["stages_s"].values())  # rounded to 0.1 ms
        assert row["temp_mib"] >= 0 and math.isfinite(row["net_peak_rss_mib"])
        assert math.isfinite(row["hypergradient"])
    checks = ridge["checks"]
    _finite_positive(
        checks["speedup_implicit_vs_unrolled_at_100"],
        checks["compile_and_first_run_implicit_over_jaxopt"]["100"],
        checks["compile_and_first_run_implicit_over_jaxopt_paired"]["100"],
        checks["median_implicit_over_jaxopt"]["100"],
    )
    assert checks["speedup_implicit_vs_jaxopt_unrolled_at_100"] is None
    assert checks["max_rel_diff_hypergradient_implicit_vs_jaxopt"] <= 1e-5


def test_bellman(capsys):
    args = (
        "--steps 16 --batch 4 --repeats 2 --grad-repeats 1 --numpy-repeats 1 --warmup 1 "
        "--bandwidth-mib 1 --num-mdps 2 --num-states 4 --num-actions 2 --vi-iterations 3 "
        "--vi-repeats 1"
    )
    report = _run_cli(capsys, bellman, args.split())
    assert set(report) == {"device", "config", "bandwidth_gbs", "returns", "soft_value_iteration"}
    _finite_positive(*report["bandwidth_gbs"].values())
    for name in ("gae", "lambda_returns"):
        entry = report["returns"][name]
        assert set(entry["ms"]) == {"jaxpref", "rlax", "numpy"}
        assert set(entry["grad_ms"]) == {"jaxpref", "rlax"}
        _finite_positive(
            *entry["ms"].values(),
            *entry["grad_ms"].values(),
            entry["speedup_vs_rlax"],
            entry["speedup_vs_numpy"],
            entry["rlax_speedup_vs_numpy"],
            entry["bandwidth_bound_ms"],
            entry["bound_ratio"],
            entry["grad_speedup_vs_rlax"],
        )
        assert entry["max_abs_diff_vs_rlax"] < 1e-5
    vi = report["soft_value_iteration"]
    _finite_positive(vi["ms"], vi["bandwidth_gbs_interleaved"])
    _finite_nonnegative(vi["achieved_read_gbs"], vi["fraction_of_bandwidth"])


def test_decode(capsys):
    args = (
        "--batch 1 --prompt-len 2 --new-tokens 4 --d-model 16 --num-layers 1 --num-heads 2 "
        "--vocab-size 32 --repeats 1"
    )
    report = _run_cli(capsys, decode, args.split())
    assert set(report) == {
        "benchmark", "config", "device", "cached_s", "recompute_s", "speedup",
        "cached_tokens_per_s", "same_tokens", "target_speedup",
    }  # fmt: skip
    assert report["config"]["new_tokens"] == 4
    _finite_positive(report["cached_s"], report["recompute_s"], report["speedup"])
    _finite_positive(report["cached_tokens_per_s"])
    assert report["same_tokens"] is True


def test_dpo_step(capsys):
    shape = "--shape.num-layers 1 --shape.d-model 32 --shape.num-heads 2 --shape.vocab-size 64"
    shape += " --shape.pairs 2 --shape.prompt-len 4 --shape.completion-len 4"
    args = (
        "--windows 2 --steps-per-window 1 --warmup-steps 1 --matmul-sizes 32 "
        "--matmul-repeats 1 --gemm-repeats 1 --no-torch"
    )
    report = _run_cli(capsys, dpo_step, [*shape.split(), *args.split()])
    assert report["tokens_per_step"] == 32
    assert report["torch_trl_error"] == "disabled (--no-torch)"
    _finite_positive(report["matmul_peak_gflops"]["peak"])
    for name in ("jaxpref_live", "jaxpref_cached"):
        r = report[name]
        assert set(r) == {
            "step_ms", "step_ms_min", "tokens_per_s", "model_gflops_per_s", "mfu",
            "mfu_best_window",
        }  # fmt: skip
        _finite_positive(r["step_ms"], r["step_ms_min"], r["tokens_per_s"])
        _finite_nonnegative(r["model_gflops_per_s"], r["mfu"], r["mfu_best_window"])
        assert r["step_ms_min"] <= r["step_ms"]
    for kind in ("live", "cached"):
        g = report["gemm_only"][kind]
        _finite_positive(g["step_ms"])
        _finite_nonnegative(g["mfu_bound"])
        assert math.isfinite(g["jaxpref_non_gemm_ms"])
    assert set(report["meets_targets"]) == {"mfu", "ratio", "all"}


# ------------------------------------------------------------------------------------------------
# The CLIs


def _flags(config_type, prefix="") -> list[str]:
    out = []
    for f in dataclasses.fields(config_type):
        stem = f.name.rstrip("_")  # tyro keeps a trailing underscore: `--lambda_`
        name = prefix + stem.replace("_", "-") + f.name[len(stem) :]
        if dataclasses.is_dataclass(f.default):
            out += _flags(type(f.default), name + ".")
        else:
            out.append("--" + name)
    return out


@pytest.mark.parametrize("name", MODULES)
def test_help_lists_every_knob_with_its_default(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    config_type = MODULES[name].Config
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(config_type, args=["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    flags = _flags(config_type)
    for flag in flags:
        assert flag in help_text, flag
    assert help_text.count("(default:") >= len(flags)
    # Every knob is documented: a documented flag's help holds more than its default.
    assert "  (default:" not in help_text


def test_module_entry_point_parses_its_flags():
    # `python -m experiments.bench.<name>` runs `_timing.cli` (logprobs imports no JAX at the top,
    # so this is quick); a bad flag fails before any work.
    cmd = [sys.executable, "-m", "experiments.bench.logprobs"]
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=env, check=True)
    assert "python -m experiments.bench.logprobs" in out.stdout and "--vocab-chunk" in out.stdout
    bad = subprocess.run([*cmd, "--worker", "naive"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0


# ------------------------------------------------------------------------------------------------
# The shared timing helpers


def _counting(log, name, result=None):
    def fn():
        log.append(name)
        return result

    return fn


def test_time_interleaved_warms_up_settles_and_follows_the_orders():
    log = []
    fns = {k: _counting(log, k) for k in "abc"}
    orders = _timing.balanced_orders(list("abc"))
    samples = _timing.time_interleaved(fns, rounds=2, warmup=2, calls=3, settle=1, orders=orders)
    assert log[:6] == list("aabbcc")  # warm-up: each function's calls in turn
    # Round r follows orders[r]; per function one settling call, then three timed ones.
    expected = [k for order in orders[:2] for k in order for _ in range(4)]
    assert log[6:] == expected
    assert {k: len(s) for k, s in samples.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(t >= 0 for s in samples.values() for t in s)


def test_time_interleaved_extends_rounds_to_the_minimum_time():
    log = []
    samples = _timing.time_interleaved(
        {"a": _counting(log, "a")}, rounds=2, min_time_s=10.0, max_rounds=5
    )
    assert len(samples["a"]) == 5  # 10 s is never reached: capped at max_rounds
    assert _timing.time_interleaved({"a": _counting(log, "a")}, rounds=0, min_time_s=1.0) == {
        "a": []
    }


def test_time_calls_and_best_time():
    log = []
    times, out = _timing.time_calls(_counting(log, "f", result=7), repeats=3, warmup=2)
    assert (len(log), len(times), out) == (5, 3, 7)
    assert all(t >= 0 for t in times)
    assert 0 <= _timing.best_time(lambda x: x + 1, 1, repeats=2) < 1.0


def test_run_in_worker_returns_the_json_result_or_raises_with_stderr():
    rss = _timing.run_in_worker(_timing.peak_rss_mib)
    assert isinstance(rss, float) and rss > 0
    with pytest.raises(RuntimeError, match="TypeError"):
        _timing.run_in_worker(_timing.time_calls)  # missing arguments: fails in the worker
