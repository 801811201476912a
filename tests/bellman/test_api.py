"""Public API of jaxpref.bellman and jaxpref.envs: documented, re-exported, framework-free."""

import importlib
import inspect
import subprocess
import sys

import pytest

PACKAGES = {
    "jaxpref.bellman": [
        "_multistep",
        "_value_learning",
        "_layouts",
        "_soft",
        "_tabular",
        "_token_mdp",
        "_ppo",
    ],
    "jaxpref.envs": ["_tabular", "_bandit", "_token", "_control", "_linear"],
}


def _public():
    for package, modules in PACKAGES.items():
        for module in modules:
            mod = importlib.import_module(f"{package}.{module}")
            for name in mod.__all__:
                yield package, mod, name


@pytest.mark.parametrize("package", list(PACKAGES))
def test_package_reexports_every_module_name(package):
    pkg = importlib.import_module(package)
    expected = set()
    for module in PACKAGES[package]:
        expected |= set(importlib.import_module(f"{package}.{module}").__all__)
    assert set(pkg.__all__) == expected
    for name in expected:
        assert getattr(pkg, name) is not None


def test_docstrings_have_the_house_sections():
    problems = []
    for _, mod, name in _public():
        obj = getattr(mod, name)
        doc = inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            if "Attributes:" not in doc:
                problems.append(f"{mod.__name__}.{name}: no Attributes")
            continue
        for section in ("Args:", "Returns:", "References:", "Example:", ">>>"):
            if section not in doc:
                problems.append(f"{mod.__name__}.{name}: no {section}")
        summary = doc.splitlines()[0] if doc else ""
        if not summary.endswith("."):
            problems.append(f"{mod.__name__}.{name}: summary line {summary!r}")
    assert not problems, "\n".join(problems)


def test_no_framework_imports():
    code = (
        "import sys, jaxpref.bellman, jaxpref.envs\n"
        "heavy = [m for m in ('flax', 'orbax', 'grain', 'tensorflow_datasets', 'torch', 'rlax', "
        "'jaxpref.losses') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
