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


@pytest.mark.parametrize(
    "package", ["jaxpref.losses", "jaxpref.logprobs", "jaxpref.bellman", "jaxpref.envs"]
)
def test_bottom_layer_imports_no_framework(package):
    code = (
        f"import sys, {package}\n"
        "heavy = [m for m in ('flax', 'orbax', 'grain', 'tensorflow_datasets', 'torch') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} imported {out.stdout.strip()}"
