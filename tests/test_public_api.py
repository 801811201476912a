"""Every public name carries a docstring; the bottom layer stays free of heavy imports."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import jaxpref


def _modules():
    yield jaxpref
    for info in pkgutil.walk_packages(jaxpref.__path__, prefix="jaxpref."):
        yield importlib.import_module(info.name)


def _public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
        names = [
            n for n in names if getattr(vars(module)[n], "__module__", None) == module.__name__
        ]
    return names


def test_every_public_name_has_a_docstring():
    missing = []
    for module in _modules():
        if not (module.__doc__ or "").strip():
            missing.append(module.__name__)
        for name in _public(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            if not (inspect.getdoc(obj) or "").strip():
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj) and not issubclass(obj, tuple):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not callable(member):
                        continue
                    if not (inspect.getdoc(member) or "").strip():
                        missing.append(f"{module.__name__}.{name}.{attr}")
    assert not missing, "public names without a docstring: " + ", ".join(sorted(set(missing)))


def test_all_lists_only_existing_names():
    for module in _modules():
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


PURE_LAYER = [
    "jaxpref.losses",
    "jaxpref.logprobs",
    "jaxpref.bellman",
    "jaxpref.solvers",
    "jaxpref.envs",
]
HEAVY = ("flax", "orbax", "grain", "tensorflow_datasets", "torch", "tqdm", "tensorboardX")


@pytest.mark.parametrize("package", PURE_LAYER)
def test_bottom_layer_imports_no_framework(package):
    code = (
        f"import sys, {package}\n"
        "heavy = [m for m in ('flax', 'orbax', 'grain', 'tensorflow_datasets', 'torch') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} imported {out.stdout.strip()}"


def test_pure_layer_imports_and_runs_without_the_optional_packages():
    """`pip install jaxpref` (jax, optax, chex) is enough for the pure layer: with every optional
    package made unimportable, it imports and computes."""
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None  # import of a blocked module raises ImportError\n"
        f"import {', '.join(PURE_LAYER)}\n"
        "import jax.numpy as jnp\n"
        "import jaxpref.losses as jl\n"
        "print(float(jl.call('sigmoid', jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), "
        "beta=0.1).mean()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout) == pytest.approx(0.6931472, rel=1e-6)


def test_install_requirements_of_the_pure_layer():
    """The base install pins only the JAX stack of the pure layer; the rest are extras."""
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX string: no licence-table warning
    base = {dep.split("=")[0].split(">")[0].split("<")[0] for dep in project["dependencies"]}
    assert base == {"jax", "jaxlib", "optax", "chex", "numpy"}
    extras = project["optional-dependencies"]
    assert "jaxpref[train,data]" in extras["experiments"]
    assert not any(d.startswith(("torch", "trl", "transformers")) for d in extras["experiments"])
    assert any(d.startswith("flax") for d in extras["train"])
    assert set(extras["all"]) == {"jaxpref[experiments,dev,docs]"}
