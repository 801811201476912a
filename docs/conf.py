"""Sphinx configuration of the jaxpref documentation.

Build: `.venv/bin/python -m sphinx -W -b html docs docs/_build/html`, then open
`docs/_build/html/index.html`. The API reference is autodoc over the packages' docstrings
(Google style, read by napoleon); `coverage_check` fails the build when a public name is missing
from the reference or its docstring lacks `Args:` / `Attributes:`; the "Choosing a loss" page is
generated from the loss registry; notebooks are executed during the build (their tiny settings)
and rendered with their outputs (`JAXPREF_DOCS_NOTEBOOKS=off` renders them as stored).
"""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
# Autodoc imports the package; JAX needs no accelerator for that.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "jaxpref"
author = "jaxpref authors"
copyright = "jaxpref authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "jaxpref_docs",
    "coverage_check",
]

root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
default_role = "jaxpref-code"
html_theme = "furo"
html_title = "jaxpref"
pygments_style = "sphinx"

# Google-style docstrings; `Attributes:` render as a field list of the class.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

autodoc_default_options = {"members": True, "special-members": "__call__"}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True

# Notebooks run during the build, on their tiny settings (the kernels inherit the environment),
# so the pages show real outputs; an error in a notebook fails the build.
os.environ.setdefault("JAXPREF_NOTEBOOK_TINY", "1")
nb_execution_mode = os.environ.get("JAXPREF_DOCS_NOTEBOOKS", "force")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
jaxpref_notebooks_dir = str(ROOT / "notebooks")

coverage_check_packages = [
    "jaxpref.losses",
    "jaxpref.logprobs",
    "jaxpref.bellman",
    "jaxpref.solvers",
    "jaxpref.models",
    "jaxpref.parallel",
    "jaxpref.data",
    "jaxpref.data.synthetic",
    "jaxpref.envs",
    "jaxpref.train",
    "jaxpref.decode",
    "jaxpref.experiment",
    "jaxpref.experiment.lm",
]
coverage_check_known_gaps = str(ROOT / "docs" / "coverage_known_gaps.txt")
