"""The Bellman benchmark's functions run end to end at tiny sizes (no timing assertions)."""

import numpy as np

from experiments.bench import bellman as bench


def test_benchmark_runs_at_tiny_sizes():
    config = bench.Config(
        steps=16,
        batch=4,
        repeats=2,
        numpy_repeats=1,
        warmup=1,
        bandwidth_mib=1,
        num_mdps=2,
        num_states=4,
        num_actions=2,
        vi_iterations=3,
        vi_repeats=1,
    )
    report = bench.main(config)
    for name in ("gae", "lambda_returns"):
        entry = report["returns"][name]
        assert set(entry["ms"]) == {"jaxpref", "rlax", "numpy"}
        assert entry["max_abs_diff_vs_rlax"] < 1e-5
        assert entry["max_abs_diff_vs_numpy"] < 1e-4
        assert entry["bandwidth_bound_ms"] > 0
    vi = report["soft_value_iteration"]
    assert vi["transitions_bytes"] == 2 * 4 * 2 * 4 * 4
    assert vi["fraction_of_bandwidth"] > 0


def test_numpy_baselines_match_jaxpref():
    r, d, values = bench.rollout_inputs(20, 3, seed=1)
    fns = bench.returns_functions(0.9)
    np.testing.assert_allclose(
        bench.numpy_gae(r, d, 0.9, values), fns["gae"]["jaxpref"](r, d, values), atol=1e-5
    )
    np.testing.assert_allclose(
        bench.numpy_lambda_returns(r, d, values[1:], 0.9),
        fns["lambda_returns"]["jaxpref"](r, d, values[1:]),
        atol=1e-5,
    )
