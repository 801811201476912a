"""The public surface of `jaxpref.solvers`: a flat, complete, documented re-export list."""

import importlib
import inspect
import pkgutil

import jaxpref.solvers as js


def _private_modules():
    for info in pkgutil.iter_modules(js.__path__):
        assert info.name.startswith("_"), f"public module {info.name} in jaxpref.solvers"
        yield importlib.import_module(f"jaxpref.solvers.{info.name}")


def test_init_reexports_exactly_the_private_modules_public_names():
    exported = set()
    for module in _private_modules():
        assert hasattr(module, "__all__"), module.__name__
        exported |= set(module.__all__)
    assert set(js.__all__) == exported
    assert len(js.__all__) == len(set(js.__all__))
    for name in js.__all__:
        assert getattr(js, name) is not None


def test_every_public_name_has_a_docstring_with_an_example():
    for name in js.__all__:
        doc = inspect.getdoc(getattr(js, name)) or ""
        assert doc.strip(), f"{name} has no docstring"
        assert "Example:" in doc and ">>>" in doc, f"{name} has no doctest example"


def test_no_runtime_dependency_on_jaxopt():
    for module in _private_modules():
        source = inspect.getsource(module)
        assert "import jaxopt" not in source and "from jaxopt" not in source, module.__name__
