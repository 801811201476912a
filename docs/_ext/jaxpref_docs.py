"""Sphinx glue for the jaxpref docs: the backtick role, autodoc tweaks, generated pages.

* Single backticks in docstrings (`[B]`, `beta`, `jaxpref.losses.call`) render as code; a dotted
  name links to its reference entry when there is one. A plural after the closing backtick
  (`PreferencePair`s) is accepted.
* Constants re-exported by a package take the docstring written after their assignment in the
  implementation module; the fields of NamedTuples and dataclasses are not repeated as members
  (their `Attributes:` section describes them).
* At `builder-inited`: `losses_guide.rst` is generated from the loss registry, and
  `notebooks/*.ipynb` of the repository are copied into `docs/notebooks/` (myst-nb executes
  them there, see `nb_execution_mode` in conf.py).
"""

from __future__ import annotations

import pathlib
import re
import shutil

import coverage_check
import losses_guide
from docutils import nodes
from sphinx.application import Sphinx

# `PreferencePair`s: reST ends inline markup only before whitespace or punctuation.
_PLURAL = re.compile(r"(?<!`)(`[^`\s][^`]*`)(?=[A-Za-z])")
_DOTTED = re.compile(r"^~?[A-Za-z_]\w*(\.[A-Za-z_]\w*)+(\(\))?$")


def code_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """The default role: inline code, a cross-reference when the text is a dotted name.

    Args:
      name: the role name used.
      rawtext: the whole markup.
      text: the text between the backticks.
      lineno: line number in the source.
      inliner: the docutils inliner.
      options: role options.
      content: role content.

    Returns:
      `(nodes, messages)` as docutils roles do.
    """
    if _DOTTED.match(text):
        env = inliner.document.settings.env
        return env.get_domain("py").role("obj")(
            "py:obj", rawtext, text, lineno, inliner, options or {}, content or []
        )
    return [nodes.literal(rawtext, text)], []


def _process_docstring(app, what, name, obj, options, lines) -> None:
    lines[:] = [
        line if line.lstrip().startswith((">>>", "...")) else _PLURAL.sub(r"\1\\ ", line)
        for line in lines
    ]
    if what != "data":
        return
    package, _, attr = name.rpartition(".")
    try:
        doc = coverage_check.constant_doc(package, attr)
    except ImportError:
        return
    lines[:] = [*doc.splitlines(), ""] if doc else []


def _skip_fields(app, what, name, obj, skip, options):
    """Skips NamedTuple and dataclass fields, which the class's `Attributes:` section covers."""
    if skip or what != "class":
        return None
    if type(obj).__name__ == "_tuplegetter":
        return True
    return None


def _generate(app: Sphinx) -> None:
    src = pathlib.Path(app.srcdir)
    losses_guide.write(src / "losses_guide.rst")
    notebooks = pathlib.Path(app.config.jaxpref_notebooks_dir)
    dest = src / "notebooks"
    dest.mkdir(exist_ok=True)
    wanted = {p.name: p for p in sorted(notebooks.glob("*.ipynb"))}
    for stale in dest.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for fname, path in wanted.items():
        target = dest / fname
        if not target.exists() or target.read_bytes() != path.read_bytes():
            shutil.copyfile(path, target)


def setup(app: Sphinx) -> dict:
    """Registers the role, the autodoc hooks and the page generation.

    Args:
      app: the Sphinx application.

    Returns:
      The extension metadata.
    """
    app.add_config_value("jaxpref_notebooks_dir", "", "env", types=[str])
    app.add_role("jaxpref-code", code_role)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("autodoc-skip-member", _skip_fields)
    app.connect("builder-inited", _generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
