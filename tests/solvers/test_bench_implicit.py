"""The implicit-differentiation benchmark's functions at tiny sizes (no timing assertions)."""

import collections

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
        # One build: the first call is exactly the sum of its timed stages.
        stages = row["stages_s"]
        assert set(stages) == {"trace_s", "lower_s", "compile_s", "first_run_s"}
        assert all(v > 0.0 for v in stages.values())
        np.testing.assert_allclose(sum(stages.values()), row["compile_and_first_run_s"], rtol=1e-9)

    memory = {("implicit", 300): bench.run_memory("implicit", "ridge", 300, n=24, d=4)}
    assert memory["implicit", 300]["temp_mib"] >= 0.0
    assert memory["implicit", 300]["peak_rss_mib"] > 0.0
    summary = bench.summarise(timing, memory, baseline_mib=0.0, steps=steps)
    assert set(summary["by_method"]) == set(bench.METHODS)
    assert summary["checks"]["max_rel_diff_hypergradient_implicit_vs_jaxopt"] <= 1e-5
    checks = summary["checks"]
    imp, jo = timing[300]["implicit"], timing[300]["jaxopt"]
    first_ratio = imp["compile_and_first_run_s"] / jo["compile_and_first_run_s"]
    # With one build per method the paired ratio is the ratio of the two single builds.
    assert checks["compile_and_first_run_implicit_over_jaxopt_paired"]["300"] == round(
        first_ratio, 3
    )
    table = summary["by_method"]  # stage times rounded to 0.1 ms, then divided
    trace_ratio = (
        table["implicit"]["300"]["stages_s"]["trace_s"]
        / (table["jaxopt"]["300"]["stages_s"]["trace_s"])
    )
    assert checks["stages_implicit_over_jaxopt"]["300"]["trace_s"] == round(trace_ratio, 3)
    np.testing.assert_allclose(
        trace_ratio, imp["stages_s"]["trace_s"] / jo["stages_s"]["trace_s"], rtol=0.01
    )
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


def test_paired_ratio_is_the_median_of_same_round_ratios():
    ours = {"compile_and_first_run_all_s": [1.0, 3.0, 2.0]}
    theirs = {"compile_and_first_run_all_s": [2.0, 2.0, 1.0]}
    # Round ratios 0.5, 1.5, 2.0 -> median 1.5 (the ratio of the medians would be 1.0).
    assert bench._paired_ratio(ours, theirs) == 1.5
    assert bench._paired_ratio(None, theirs) is None


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_balanced_orders_let_every_method_follow_every_other_equally_often(k):
    rows = bench.balanced_orders(list(range(k)))
    assert all(sorted(row) == list(range(k)) for row in rows)
    pairs = collections.Counter((row[i], row[i + 1]) for row in rows for i in range(k - 1))
    assert set(pairs) == {(a, b) for a in range(k) for b in range(k) if a != b}
    assert len(set(pairs.values())) == 1
    # A rotation of one order would not do: each method would keep its predecessor.
    assert bench.balanced_orders(["a", "b", "c", "d"])[:4] == [
        ["a", "b", "d", "c"],
        ["b", "c", "a", "d"],
        ["c", "d", "b", "a"],
        ["d", "a", "c", "b"],
    ]


def test_jaxopt_unrolled_is_skipped_above_its_step_limit():
    assert "jaxopt_unrolled" in bench._methods_for(1000, 1000)
    assert "jaxopt_unrolled" not in bench._methods_for(10000, 1000)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown problem"):
        bench.make_problem("lasso", 4, 2)
    with pytest.raises(ValueError, match="unknown method"):
        bench.make_hypergradient("adjoint", "ridge", 10, 4, 2)
