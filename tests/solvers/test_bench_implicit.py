"""The implicit-differentiation benchmark's functions at tiny sizes (no timing assertions)."""

import numpy as np
import pytest

from experiments.bench import implicit as bench


def test_benchmark_configurations_agree_at_tiny_sizes():
    steps = [300]
    timing = {300: bench.run_timing("ridge", 300, bench.METHODS, n=24, d=4, repeats=1, builds=1)}
    grads = {m: timing[300][m]["hypergradient"] for m in bench.METHODS}
    # Same algorithm and linear solver as jaxopt: the same hypergradient.
    np.testing.assert_allclose(grads["implicit"], grads["jaxopt"], rtol=1e-5)
    # 300 steps converge this small problem, so unrolled derivatives match the implicit ones.
    np.testing.assert_allclose(grads["unrolled"], grads["implicit"], rtol=1e-4)
    np.testing.assert_allclose(grads["jaxopt_unrolled"], grads["implicit"], rtol=1e-4)
    for row in timing[300].values():
        assert np.isfinite(row["value"]) and row["compile_and_first_run_s"] > 0.0

    memory = {("implicit", 300): bench.run_memory("implicit", "ridge", 300, n=24, d=4)}
    assert memory["implicit", 300]["temp_mib"] >= 0.0
    assert memory["implicit", 300]["peak_rss_mib"] > 0.0
    summary = bench.summarise(timing, memory, baseline_mib=0.0, steps=steps)
    assert set(summary["by_method"]) == set(bench.METHODS)
    assert summary["checks"]["max_rel_diff_hypergradient_implicit_vs_jaxopt"] <= 1e-5
    assert set(summary["meets_targets"]) == {
        "implicit_at_least_5x_faster_than_unrolled",
        "implicit_memory_flat_within_1.5x",
        "compile_and_run_no_worse_than_jaxopt",
    }


def test_logistic_problem_implicit_matches_jaxopt():
    timing = bench.run_timing(
        "logistic", 300, ["implicit", "jaxopt"], n=24, d=4, repeats=0, builds=1
    )
    ours, theirs = timing["implicit"], timing["jaxopt"]
    np.testing.assert_allclose(ours["hypergradient"], theirs["hypergradient"], rtol=1e-5)
    np.testing.assert_allclose(ours["value"], theirs["value"], rtol=1e-6)


def test_jaxopt_unrolled_is_skipped_above_its_step_limit():
    assert "jaxopt_unrolled" in bench._methods_for(1000, 1000)
    assert "jaxopt_unrolled" not in bench._methods_for(10000, 1000)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown problem"):
        bench.make_problem("lasso", 4, 2)
    with pytest.raises(ValueError, match="unknown method"):
        bench.make_hypergradient("adjoint", "ridge", 10, 4, 2)
