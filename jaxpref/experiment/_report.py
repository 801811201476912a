"""Reports: the `report.json` schema, markdown tables, `mean ± std` cells, the run environment."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import jax
import numpy as np

__all__ = ["SCHEMA_VERSION", "Markdown", "Report", "environment", "escape", "fmt", "mean_std"]

SCHEMA_VERSION = 1
"""Version of the `report.json` schema, written as its `schema_version` field."""

_PACKAGES = ("jaxpref", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


@dataclasses.dataclass(frozen=True)
class Report:
    """What an experiment's `main(config)` returns and writes to `report.json`.

    The JSON file holds exactly `to_dict()`: `schema_version`, `experiment`, `config`,
    `environment`, `phases_s`, `wall_s` and `results`; a module's own numbers live under
    `results` only.

    Attributes:
      experiment: the experiment's name.
      config: the configuration as saved in `config.json`.
      results: the module's results (JSON values).
      environment: package versions, git commit, devices (see `environment`).
      phases_s: wall seconds per phase of this session.
      wall_s: wall seconds of this session, from opening the run directory to the report.
      run_dir: where the report was written.
    """

    experiment: str
    config: dict
    results: dict
    environment: dict
    phases_s: dict
    wall_s: float
    run_dir: str | None = None

    def to_dict(self) -> dict:
        """The `report.json` content."""
        return {
            "schema_version": SCHEMA_VERSION,
            "experiment": self.experiment,
            "config": self.config,
            "environment": self.environment,
            "phases_s": self.phases_s,
            "wall_s": self.wall_s,
            "results": self.results,
        }


@functools.cache
def _git_commit() -> dict[str, Any] | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def environment() -> dict[str, Any]:
    """Package versions, the jaxpref git commit (if installed from a checkout) and the devices."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "versions": versions,
        "git": _git_commit(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
    }


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: `n/a` for None, yes/no for booleans, fixed or scientific floats.

    Args:
      value: None, a boolean, a number or anything with `str`.
      digits: decimals of fixed-point floats (significant digits minus one in scientific form).

    Example:
      >>> fmt(None), fmt(True), fmt(0.123456), fmt(1.5e-7), fmt(3)
      ('n/a', 'yes', '0.1235', '1.500e-07', '3')
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 10 ** -(digits - 1) or abs(v) >= 1e6):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}"
    return str(value)


def escape(text: str) -> str:
    """Markdown table cell text: `|` escaped, newlines as `<br>`.

    Args:
      text: the cell text.
    """
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def mean_std(values: Sequence[float] | np.ndarray, digits: int = 3) -> str:
    """`mean ± std (n seeds)` of per-seed values (sample standard deviation, ddof=1).

    Non-finite values are kept (they show as nan); one value prints without a spread.

    Args:
      values: `[S]` per-seed values (any shape; flattened).
      digits: decimals.

    Example:
      >>> mean_std([1.0, 2.0, 3.0])
      '2.000 ± 1.000 (3 seeds)'
      >>> mean_std([0.5])
      '0.500 (1 seed)'
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return "n/a"
    if x.size == 1:
        return f"{x[0]:.{digits}f} (1 seed)"
    return f"{x.mean():.{digits}f} ± {x.std(ddof=1):.{digits}f} ({x.size} seeds)"


class Markdown:
    """Builds `report.md`: headings, paragraphs, tables with escaped cells, images.

    Args:
      title: the document title (its `#` heading).

    Example:
      >>> md = Markdown("Run")
      >>> md.table(["quantity", "value"], [["KL(p || q)", 0.5]])
      >>> print(md.text())
      # Run
      <BLANKLINE>
      | quantity | value |
      |---|---|
      | KL(p \\|\\| q) | 0.5000 |
      <BLANKLINE>
    """

    def __init__(self, title: str):
        self._lines = [f"# {title}", ""]

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading.

        Args:
          text: the heading text.
          level: markdown heading level (2 is `##`).
        """
        self._lines += ["#" * level + " " + text, ""]

    def paragraph(self, text: str) -> None:
        """A paragraph of text (markdown allowed).

        Args:
          text: the paragraph.
        """
        self._lines += [text, ""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table; every cell goes through `fmt` (strings unchanged) and `escape`.

        Args:
          header: the column names.
          rows: the rows, each with one cell per column.

        Raises:
          ValueError: a row whose number of cells differs from the header's.
        """
        cells = [[escape(c if isinstance(c, str) else fmt(c)) for c in row] for row in rows]
        for row in cells:
            if len(row) != len(header):
                raise ValueError(f"table row {row} has {len(row)} cells for {len(header)} columns.")
        self._lines.append("| " + " | ".join(escape(h) for h in header) + " |")
        self._lines.append("|" + "|".join("---" for _ in header) + "|")
        self._lines += ["| " + " | ".join(row) + " |" for row in cells]
        self._lines.append("")

    def image(self, filename: str, alt: str) -> None:
        """An image (a PNG in the run directory).

        Args:
          filename: the image path, relative to `report.md`.
          alt: the alternative text.
        """
        self._lines += [f"![{alt}]({filename})", ""]

    def text(self) -> str:
        """The document."""
        return "\n".join(self._lines).rstrip("\n") + "\n"
