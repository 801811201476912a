"""House docstring checks shared by the per-package docstring tests.

Every public function of a module's `__all__` documents its arguments (`Args:`) and, unless it
returns None, its result (`Returns:`); every public class documents its fields (`Attributes:`)
or constructor arguments (`Args:`), and its public methods (and `__call__`) follow the function
rule. Functions wrapped by `jax.jit` are checked through their wrapped signature.
"""

import importlib
import inspect
import pkgutil


def submodules(package: str) -> list[str]:
    """The implementation modules (those with an `__all__`) of `package` and its subpackages."""
    pkg = importlib.import_module(package)
    out = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if not info.ispkg and hasattr(importlib.import_module(info.name), "__all__"):
            out.append(info.name)
    return sorted(out)


def public_objects(modules):
    """Yields `(qualname, obj)` for every class or function in the `__all__` of `modules`."""
    for module in modules:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj) or callable(obj):
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
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if inspect.isfunction(member):
            yield name, member


def problems(qualname: str, obj) -> list[str]:
    """What the docstring of `obj` lacks; empty when it follows the house style."""
    doc = inspect.getdoc(obj) or ""
    if not doc:
        return [f"{qualname}: no docstring"]
    if not inspect.isclass(obj):
        missing = _missing(obj, doc)
        return [f"{qualname}: missing {missing}"] if missing else []
    if issubclass(obj, BaseException):
        return []
    out = []
    if "Attributes:" not in doc and "Args:" not in doc:
        out.append(f"{qualname}: no Attributes or Args")
    for name, method in _methods(obj):
        mdoc = inspect.getdoc(method) or ""
        if not mdoc:
            out.append(f"{qualname}.{name}: no docstring")
        elif _missing(method, mdoc):
            out.append(f"{qualname}.{name}: missing {_missing(method, mdoc)}")
    return out
