"""The experiment kit: run directory, config refusal, report schema, tables, seeds, CLI."""

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import experiment as kit
from jaxpref.train import NonFiniteError


@dataclasses.dataclass(frozen=True)
class Inner:
    """Toy nested config.

    Args:
      num_pairs: a count.
      beta: a temperature.
    """

    num_pairs: int = 8
    beta: float = 0.1


@dataclasses.dataclass(frozen=True)
class Toy:
    """Toy experiment config.

    Args:
      out: run directory.
      force: resume despite a changed config.
      inner: nested settings.
      fail: what `toy_main` raises ("", "usage", "stopped", "nonfinite", "other").
    """

    out: str = "runs/toy"
    force: bool = False
    inner: Inner = Inner()
    fail: str = ""


def toy_main(config: Toy) -> kit.Report:
    if config.inner.beta <= 0:
        raise kit.ConfigError(f"--inner.beta must be positive, got {config.inner.beta}.")
    run = kit.open_run_dir(config.out, config, experiment="toy", force=config.force)
    if config.fail == "stopped":
        raise kit.RunStopped("train", 3, "preempted", config.out)
    if config.fail == "nonfinite":
        raise NonFiniteError(
            "loss is nan at step 4; last good checkpoint: step 3.",
            step=4,
            metrics={},
            last_checkpoint=3,
        )
    if config.fail == "other":
        raise RuntimeError("an unexpected failure")
    with run.phase("work"):
        value = float(config.inner.num_pairs) * 2
    md = kit.Markdown("Toy")
    md.table(["quantity", "value"], [["KL(p || q)", value]])
    return run.finish({"value": value}, md)


def test_config_diff_names_flags_and_skips_ignored_paths():
    saved = {"out": "a", "loss": {"name": "sigmoid", "beta": 0.1}, "task": {"num_pairs": 8}}
    new = {"out": "b", "loss": {"name": "ipo", "beta": 0.1}, "task": {"num_pairs": 16}}
    assert kit.config_diff(saved, new, ignore=("out",)) == [
        "--loss.name: saved 'sigmoid', now 'ipo'",
        "--task.num-pairs: saved 8, now 16",
    ]
    assert kit.config_diff({"a": {"b": 1}}, {"a": {}}) == ["--a.b: saved 1, now (absent)"]
    assert kit.config_diff(saved, saved) == []


def test_run_dir_saves_config_and_report_with_the_stable_schema(tmp_path):
    config = Toy(out=str(tmp_path / "run"))
    report = toy_main(config)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["inner"] == {"num_pairs": 8, "beta": 0.1}
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    assert list(data) == [
        "schema_version", "experiment", "config", "environment", "phases_s", "wall_s", "results"
    ]  # fmt: skip
    assert data == report.to_dict()
    assert data["results"] == {"value": 16.0} and data["experiment"] == "toy"
    env = data["environment"]
    assert env["versions"]["jax"] == jax.__version__
    assert env["device_count"] == jax.device_count() and env["platform"] == "cpu"
    assert set(data["phases_s"]) == {"work"} and data["wall_s"] >= data["phases_s"]["work"]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| KL(p \\|\\| q) | 16.0000 |" in md


def test_rerun_with_another_config_is_refused_with_a_diff(tmp_path):
    out = tmp_path / "run"
    toy_main(Toy(out=str(out)))
    before = {p: (out / p).read_text() for p in ("config.json", "report.json")}
    with pytest.raises(kit.InputError) as err:
        toy_main(Toy(out=str(out), inner=Inner(num_pairs=16, beta=0.5)))
    message = str(err.value)
    assert "--inner.num-pairs: saved 8, now 16" in message
    assert "--inner.beta: saved 0.1, now 0.5" in message and "--force" in message
    assert {p: (out / p).read_text() for p in before} == before  # nothing overwritten
    # The same config (another `out` spelling is ignored) resumes; force replaces the config.
    toy_main(Toy(out=str(out) + "/"))
    with pytest.warns(UserWarning, match="changed configuration"):
        toy_main(Toy(out=str(out), inner=Inner(num_pairs=16), force=True))
    assert json.loads((out / "config.json").read_text())["inner"]["num_pairs"] == 16


def test_invalid_config_writes_nothing(tmp_path):
    with pytest.raises(kit.ConfigError, match=r"--inner\.beta"):
        toy_main(Toy(out=str(tmp_path / "run"), inner=Inner(beta=0.0)))
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file_or_unwritable_is_an_input_error(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(kit.InputError, match="is a file, not a directory"):
        kit.open_run_dir(file, Toy(), experiment="toy")
    with pytest.raises(kit.InputError, match="cannot write there"):
        kit.open_run_dir(file / "below", Toy(), experiment="toy")
    with pytest.raises(kit.InputError, match="--out /sys/jaxpref-run: cannot write there"):
        kit.open_run_dir("/sys/jaxpref-run", Toy(), experiment="toy")


@pytest.mark.parametrize(
    "args,status,expected",
    [
        (["--inner.beta", "0"], 2, "toy: error: --inner.beta must be positive, got 0.0."),
        (["--fail", "stopped"], 75, "toy: the train stage stopped at step 3 (preempted)"),
        (["--fail", "nonfinite"], 1, "toy: stopped: loss is nan at step 4"),
    ],
)
def test_cli_reports_expected_errors_in_one_line(tmp_path, capsys, args, status, expected):
    code = kit.cli(Toy, toy_main, prog="toy", args=["--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == status
    assert err.startswith(expected) and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_keeps_tracebacks_of_unexpected_errors(tmp_path):
    with pytest.raises(RuntimeError, match="unexpected"):
        kit.cli(Toy, toy_main, prog="toy", args=["--out", str(tmp_path / "r"), "--fail", "other"])


def test_cli_help_shows_the_program_and_every_knob(capsys):
    with pytest.raises(SystemExit) as done:
        kit.cli(Toy, toy_main, prog="python -m experiments.toy", args=["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "python -m experiments.toy" in out
    for flag, doc in (("--inner.num-pairs", "a count"), ("--force", "resume despite")):
        assert flag in out and doc in out


def test_fmt_escape_and_mean_std():
    assert (
        kit.fmt(None) == "n/a" and kit.fmt(False) == "no" and kit.fmt(np.float32(0.5)) == "0.5000"
    )
    assert kit.fmt(float("nan")) == "nan" and kit.fmt(2.5e-9) == "2.500e-09"
    assert kit.escape("KL(a || b)\nnext") == "KL(a \\|\\| b)<br>next"
    assert kit.mean_std([1.0, 2.0, 3.0, 4.0], digits=2) == "2.50 ± 1.29 (4 seeds)"
    assert kit.mean_std(np.array([[0.25]])) == "0.250 (1 seed)"
    assert kit.mean_std([]) == "n/a"
    md = kit.Markdown("t")
    with pytest.raises(ValueError, match="2 columns"):
        md.table(["a", "b"], [[1]])


def _train(key):
    """A whole tiny training run: 50 steps of SGD on a random quadratic, as one scan."""
    target = jax.random.normal(key, (3,))

    def step(w, _):
        w = w - 0.1 * (w - target)
        return w, jnp.sum((w - target) ** 2)

    w, losses = jax.lax.scan(step, jnp.zeros(3), None, length=50)
    return {"w": w, "loss": losses}


def test_run_seeds_matches_a_python_loop_whatever_the_chunking():
    keys = jax.random.split(jax.random.key(0), 5)
    loop = [jax.jit(_train)(k) for k in keys]
    for chunk in (None, 1, 2, 5, 8):
        runs = kit.run_seeds(_train, keys, chunk_size=chunk)
        assert runs.num_seeds == 5 and runs.per_seed["loss"].shape == (5, 50)
        for i, ref in enumerate(loop):
            np.testing.assert_allclose(runs.per_seed["w"][i], ref["w"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(runs.mean["w"], np.mean(runs.per_seed["w"], 0), rtol=1e-6)
        np.testing.assert_allclose(runs.std["w"], np.std(runs.per_seed["w"], 0, ddof=1), rtol=1e-6)
    assert kit.run_seeds(_train, keys).chunk_size == 5  # fits in memory: one program
    assert kit.run_seeds(_train, keys, chunk_size=8).chunk_size == 5


def test_run_seeds_chunks_when_memory_is_short():
    keys = jax.random.split(jax.random.key(1), 6)
    runs = kit.run_seeds(_train, keys, memory_fraction=1e-12)
    assert runs.chunk_size == 1
    full = kit.run_seeds(_train, keys)
    np.testing.assert_allclose(runs.per_seed["w"], full.per_seed["w"], rtol=1e-6, atol=1e-7)
    single = kit.run_seeds(_train, keys[:1])
    assert np.all(single.std["w"] == 0)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        kit.run_seeds(_train, keys, chunk_size=0)


def test_guard_inputs_and_cached_arrays(tmp_path):
    stage, ckpt = tmp_path / "stage", tmp_path / "stage" / "checkpoints"
    kit.guard_inputs(stage, ckpt, {"reference": "a"})
    (ckpt / "1").mkdir(parents=True)
    kit.guard_inputs(stage, ckpt, {"reference": "a"})  # same inputs: resumes
    with pytest.raises(kit.InputError, match="another reference"):
        kit.guard_inputs(stage, ckpt, {"reference": "b"})
    calls = []

    def make():
        calls.append(1)
        return {"x": np.arange(3)}

    path = tmp_path / "cache.npz"
    first = kit.cached_arrays(path, {"k": "1"}, make)
    again = kit.cached_arrays(path, {"k": "1"}, make)
    np.testing.assert_array_equal(first["x"], again["x"])
    assert len(calls) == 1 and set(again) == {"x"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kit.cached_arrays(path, {"k": "2"}, make)
    assert len(calls) == 2 and "made with another k" in str(caught[0].message)


def test_readme_example_experiment_runs(tmp_path, monkeypatch):
    import importlib.util
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Writing an experiment", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "mine.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("mine", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "mine", module)
    spec.loader.exec_module(module)
    report = module.main(module.Config(out=str(tmp_path / "run"), seeds=3))
    assert len(report.results["score"]) == 3
    assert "(3 seeds)" in (tmp_path / "run" / "report.md").read_text()
    code = kit.cli(module.Config, module.main, prog="mine", args=["--seeds", "0"])
    assert code == kit.EXIT_USAGE


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    out = tmp_path / "run"
    report = toy_main(Toy(out=str(out)))
    assert report.results == {"value": 16.0}  # every process computes the report
    assert not out.exists()  # but only process 0 writes
    kit.cached_arrays(tmp_path / "c.npz", {"k": "1"}, lambda: {"x": np.ones(2)})
    kit.guard_inputs(tmp_path / "stage", tmp_path / "ckpt", {"a": "b"})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_report_figures_leave_matplotlib_state_alone(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from jaxpref import experiment as kit\n"
        f"kit.plot_panels({str(tmp_path / 'p.png')!r}, [kit.Panel('t', [1, 2], [3, 4], 'y')])\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["svg", "False"]  # no backend switch, no pyplot state
    assert (tmp_path / "p.png").stat().st_size > 0
