"""Every public name of the data layer documents its arguments and results (house style)."""

import importlib
import inspect

import pytest

MODULES = ["_arrayrecord", "_cache", "_formats", "_packing", "_pipeline", "_records", "_tokenize"]


def _public():
    for module in MODULES:
        mod = importlib.import_module(f"jaxpref.data.{module}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module}.{name}", obj


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]


def _returns_value(fn) -> bool:
    return inspect.signature(fn).return_annotation not in ("None", None)


def _missing(fn, doc: str) -> list[str]:
    need = []
    if _params(fn):
        need.append("Args:")
    if _returns_value(fn):
        need.append("Returns:")
    return [s for s in need if s not in doc]


def _methods(cls):
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if inspect.isfunction(member):
            yield name, member


@pytest.mark.parametrize(
    "qualname,obj", list(_public()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_public_names_document_args_and_returns(qualname, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{qualname}: no docstring"
    if inspect.isfunction(obj):
        assert not _missing(obj, doc), f"{qualname}: missing {_missing(obj, doc)}"
        return
    if issubclass(obj, BaseException):
        return
    assert "Attributes:" in doc or "Args:" in doc, f"{qualname}: no Attributes or Args"
    for name, method in _methods(obj):
        mdoc = inspect.getdoc(method) or ""
        assert mdoc, f"{qualname}.{name}: no docstring"
        assert not _missing(method, mdoc), f"{qualname}.{name}: missing {_missing(method, mdoc)}"
