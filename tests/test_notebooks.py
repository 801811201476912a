"""Executes every notebook under `notebooks/` end to end on its tiny setting."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Text each notebook must print, beyond running without an error.
EXPECTED_OUTPUT = {
    "implicit_irl": (
        "'TINY': True",
        "relative difference",
        "status: CONVERGED",
        "implicit scratch is constant in K; unrolled scratch grows with K",
        "hypergradient descent: lambda =",
        "(grid step 0.2)",
    ),
    "losses_tour": (
        "bounded_sigmoid passes the registry-wide checks",
        "'TINY': True",
        "gold win rate vs reference:",
        "gold-reward gap closed:",
    ),
    "token_q_view": (
        "'TINY': True",
        "Spearman(implicit reward, gold credit): policy",
        "sampled  beam search",
        "exact optimum, sampled (expected)",
    ),
    "report_to_figure": (
        "'TINY': True",
        "report.json holds the schema's seven keys and equals the returned Report",
        "sigmoid: curve ends at KL(pi* || pi) =",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("JAXPREF_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # The kernel is a separate process: share the suite's persistent compilation cache with it.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    outputs = [out for c in nb.cells if c.cell_type == "code" for out in c.get("outputs", [])]
    errors = [out for out in outputs if out.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(out.get("text", "") for out in outputs)
    for expected in EXPECTED_OUTPUT.get(path.stem, ()):
        assert expected in text, f"{path.name} did not print {expected!r}"
