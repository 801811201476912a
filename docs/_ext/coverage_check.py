"""Sphinx extension: the API reference covers every public name, each with a house docstring.

The public names of a package are its `__all__` (for a package without one, the union of the
`__all__` of its implementation modules, which it star-imports). After the documents are read
(`env-check-consistency`), every public name must be documented in the reference under the
package's own path (`jaxpref.losses.dpo_loss`, not `jaxpref.losses._pairwise.dpo_loss`), and its
docstring must follow the house style:

* a function (or a jitted one) with parameters has an `Args:` section;
* a class has an `Attributes:` or `Args:` section (exceptions, enums and protocols, which have
  no fields or constructor arguments to describe, are exempt), and each of its public methods
  and `__call__` with parameters has `Args:`;
* a constant has a docstring (the string literal after its assignment, or a `#:` comment).

Each problem is a warning of type `coverage` (so `-W` fails the build on it), and the build ends
with an error when any were found, with or without `-W`. Configure the packages to check with
`coverage_check_packages` in `conf.py`.

Known gaps, listed by name in the file named by `coverage_check_known_gaps` (one name per line,
`#` comments), are reported as a count instead; an entry whose problem is gone is itself a
problem, so the list only shrinks.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import pathlib
import pkgutil
from collections.abc import Iterable

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

logger = logging.getLogger(__name__)


def public_names(package: str) -> list[str]:
    """The public names of `package`: its `__all__`, else its submodules' `__all__` combined.

    Args:
      package: dotted module name.

    Returns:
      The names, in `__all__` order.
    """
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    out: list[str] = []
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        sub = importlib.import_module(f"{package}.{info.name}")
        out += [n for n in getattr(sub, "__all__", ()) if n not in out and hasattr(module, n)]
    return out


def home_module(package: str, name: str) -> str:
    """The module that defines public name `name` of `package` (where its source lives).

    Args:
      package: dotted module name.
      name: a public name of `package`.

    Returns:
      The implementation module whose `__all__` lists `name` (searched below `package`), or the
      module of the object, or `package` itself.
    """
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{package}."):
        sub = importlib.import_module(info.name)
        if name in getattr(sub, "__all__", ()) and getattr(sub, name, None) is getattr(
            module, name
        ):
            return info.name
    return getattr(getattr(module, name), "__module__", None) or package


def _is_constant(obj) -> bool:
    return not (inspect.isclass(obj) or callable(obj) or inspect.ismodule(obj))


def constant_doc(package: str, name: str) -> str:
    """The docstring of constant `name` of `package`, read from its defining module's source.

    Args:
      package: dotted module name.
      name: a public constant of `package`.

    Returns:
      The attribute docstring (`#:` comment or string after the assignment), or `""`.
    """
    for module in dict.fromkeys((home_module(package, name), package)):
        try:
            docs = ModuleAnalyzer.for_module(module).find_attr_docs()
        except Exception:  # a module without source
            continue
        lines = docs.get(("", name))
        if lines:
            return "\n".join(lines).strip()
    return ""


def _has_params(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return any(p not in ("self", "cls") for p in params)


def _methods(cls) -> Iterable[tuple[str, object]]:
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if inspect.isfunction(member):
            yield name, member


def docstring_problems(qualname: str, obj) -> list[str]:
    """What the docstring of a public class or function lacks under the house style.

    Args:
      qualname: the name to report (`jaxpref.losses.dpo_loss`).
      obj: the class or function.

    Returns:
      One message per problem; empty when the docstring is complete.
    """
    doc = inspect.getdoc(obj) or ""
    if not doc.strip():
        return [f"{qualname}: no docstring"]
    if not inspect.isclass(obj):
        return [f"{qualname}: no Args: section"] if _has_params(obj) and "Args:" not in doc else []
    if issubclass(obj, BaseException):
        return []
    out = []
    no_fields = issubclass(obj, enum.Enum) or getattr(obj, "_is_protocol", False)
    if not no_fields and "Attributes:" not in doc and "Args:" not in doc:
        out.append(f"{qualname}: class without an Attributes: or Args: section")
    for name, method in _methods(obj):
        mdoc = inspect.getdoc(method) or ""
        if not mdoc.strip():
            out.append(f"{qualname}.{name}: no docstring")
        elif _has_params(method) and "Args:" not in mdoc:
            out.append(f"{qualname}.{name}: no Args: section")
    return out


def problems(packages: Iterable[str], documented: set[str] | None) -> list[str]:
    """Every coverage problem of `packages` against the documented object names.

    Args:
      packages: dotted package or module names whose public names must be documented.
      documented: full names of the objects the reference documents (the Python domain's
        objects); None checks docstrings only.

    Returns:
      One message per problem, sorted by package then name.
    """
    out = []
    for package in packages:
        module = importlib.import_module(package)
        for name in public_names(package):
            qualname = f"{package}.{name}"
            obj = getattr(module, name)
            if documented is not None and qualname not in documented:
                out.append(f"{qualname}: public name missing from the API reference")
            if inspect.ismodule(obj):
                continue
            if _is_constant(obj):
                if not constant_doc(package, name):
                    out.append(f"{qualname}: constant without a docstring")
            else:
                out.extend(docstring_problems(qualname, obj))
    return out


def read_known_gaps(path: str | pathlib.Path) -> list[str]:
    """The names listed in a known-gaps file (one per line; blank lines and `#` comments skipped).

    Args:
      path: the file; `""` means no file.

    Returns:
      The names.
    """
    if not path:
        return []
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


def split_known(found: list[str], known: list[str]) -> tuple[list[str], list[str]]:
    """Separates problems of known-gap names from new ones; flags entries with no problem left.

    Args:
      found: messages from `problems`, each `"<name>: <what>"`.
      known: names listed as known gaps.

    Returns:
      `(new, n_known)`: the messages to report (new problems, then one per stale entry) and
      how many problems the list covers.
    """
    names = {message.split(":", 1)[0] for message in found}
    new = [m for m in found if m.split(":", 1)[0] not in known]
    stale = [f"{name}: listed as a known gap but has no problem now" for name in known]
    stale = [m for m in stale if m.split(":", 1)[0] not in names]
    return new + stale, len(found) - len([m for m in found if m.split(":", 1)[0] not in known])


def _check(app: Sphinx, env) -> None:
    documented = set(env.get_domain("py").objects)
    found = problems(app.config.coverage_check_packages, documented)
    report, n_known = split_known(found, read_known_gaps(app.config.coverage_check_known_gaps))
    for message in report:
        logger.warning(message, type="coverage", subtype="api")
    if n_known:
        logger.info(f"API coverage check: {n_known} known gap(s) left to fix.")
    env.coverage_check_problems = report


def _finish(app: Sphinx, exception) -> None:
    found = getattr(app.env, "coverage_check_problems", [])
    if exception is None and found:
        raise ExtensionError(
            f"API coverage check: {len(found)} problem(s), listed in the warnings above."
        )


def setup(app: Sphinx) -> dict:
    """Registers the `coverage_check_packages` setting and the check.

    Args:
      app: the Sphinx application.

    Returns:
      The extension metadata.
    """
    app.add_config_value("coverage_check_packages", [], "env", types=[list])
    app.add_config_value("coverage_check_known_gaps", "", "env", types=[str])
    app.connect("env-check-consistency", _check)
    app.connect("build-finished", _finish)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
