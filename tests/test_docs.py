"""The documentation builds warning-free, covers the public API, and lists every registered loss."""

import enum
import inspect
import pathlib
import subprocess
import sys
import types
from typing import NamedTuple

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")

import jaxpref.losses as jl

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import coverage_check  # noqa: E402
import losses_guide  # noqa: E402

API_PAGES = [
    "losses",
    "logprobs",
    "bellman",
    "solvers",
    "models",
    "parallel",
    "data",
    "envs",
    "train",
    "decode",
    "experiment",
]


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path):
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html"]
    cmd += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    for page in API_PAGES:
        assert (out / "api" / f"{page}.html").is_file(), page
    guide = (out / "losses_guide.html").read_text(encoding="utf-8")
    for name in jl.names():
        assert f'<span class="pre">{name}</span>' in guide, name
        assert jl.get(name).__name__ in guide, name
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (out / "notebooks" / f"{notebook.stem}.html").is_file(), notebook.name
    # Rendered with the outputs of a real execution: the experiment's own log lines.
    report_page = (out / "notebooks" / "report_to_figure.html").read_text(encoding="utf-8")
    assert 'class="output stream' in report_page and "[bandit_dpo]" in report_page


def _fake_module(monkeypatch, name="fake_pkg"):
    def documented(x, *, beta=0.1):
        """Documented.

        Args:
          x: input.
          beta: scale.
        """

    def undocumented_args(x):
        """Says what it does but not what `x` is."""

    def no_params():
        """Takes nothing, so needs no Args."""

    class Fields(NamedTuple):
        """A record.

        Attributes:
          a: a field.
        """

        a: int

    class Bare:
        """A class that describes neither fields nor constructor arguments."""

        def method(self, y):
            """Says nothing about `y`."""

    class Colour(enum.Enum):
        """An enum: its members are its interface."""

        RED = 1

    objects = {
        "documented": documented,
        "undocumented_args": undocumented_args,
        "no_params": no_params,
        "Fields": Fields,
        "Bare": Bare,
        "Colour": Colour,
        "CONSTANT": 3,
    }
    module = types.ModuleType(name)
    module.__all__ = list(objects)
    for key, value in objects.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_coverage_check_reports_missing_args_and_sections(monkeypatch):
    module = _fake_module(monkeypatch)
    found = coverage_check.problems(["fake_pkg"], documented=None)
    assert sorted(found) == [
        "fake_pkg.Bare.method: no Args: section",
        "fake_pkg.Bare: class without an Attributes: or Args: section",
        "fake_pkg.CONSTANT: constant without a docstring",
        "fake_pkg.undocumented_args: no Args: section",
    ]
    documented = {f"fake_pkg.{n}" for n in module.__all__ if n != "documented"}
    missing = coverage_check.problems(["fake_pkg"], documented=documented)
    assert "fake_pkg.documented: public name missing from the API reference" in missing


def test_coverage_check_known_gaps_only_shrink(monkeypatch, tmp_path):
    _fake_module(monkeypatch)
    found = coverage_check.problems(["fake_pkg"], documented=None)
    gaps = tmp_path / "gaps.txt"
    gaps.write_text("# known\nfake_pkg.undocumented_args\nfake_pkg.no_params  # fixed\n")
    new, n_known = coverage_check.split_known(found, coverage_check.read_known_gaps(gaps))
    assert n_known == 1
    assert "fake_pkg.no_params: listed as a known gap but has no problem now" in new
    assert not any(m.startswith("fake_pkg.undocumented_args:") for m in new)


def test_losses_guide_lists_every_registered_loss():
    text = losses_guide.render()
    for name in jl.names():
        info = jl.info(name)
        assert f".. _loss-{name}:" in text, name
        assert f"jaxpref.losses.{info.fn.__name__}" in text, name
        for hparam in info.hyperparameters:
            assert f"``{hparam}``" in text, (name, hparam)


def test_losses_guide_reads_trl_names_and_papers():
    doc = inspect.getdoc(jl.dpo_loss)
    assert losses_guide.trl_name("sigmoid", doc)[0]
    assert not losses_guide.trl_name("cdpo", inspect.getdoc(jl.cdpo_loss))[0]
    assert "https://arxiv.org/abs/2305.18290" in losses_guide.references(doc)
    assert "L = -log σ(β h)" in losses_guide.equation(doc)
    assert losses_guide.equation(inspect.getdoc(jl.simpo_loss)).startswith(".. math::")
