"""Plot helpers: a headless pyplot and one way to save figures."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["Panel", "plot_panels", "pyplot", "save_figure"]


def pyplot():
    """`matplotlib.pyplot` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> None:
    """Lays out, saves (PNG) and closes a figure; only process 0 writes.

    Args:
      fig: a matplotlib figure.
      path: the PNG file.
      dpi: resolution.
    """
    import jax

    plt = pyplot()
    if jax.process_index() == 0:
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    plt.close(fig)


class Panel(NamedTuple):
    """One line plot of `plot_panels`.

    Attributes:
      title: the panel's message.
      x: x values.
      y: y values (same length).
      ylabel: the quantity and its unit.
      xlabel: the x quantity.
      hlines: `(y, label, color)` reference lines (exact optima, baselines).
    """

    title: str
    x: Sequence[float]
    y: Sequence[float]
    ylabel: str
    xlabel: str = "step"
    hlines: tuple = ()


def plot_panels(path: str | os.PathLike, panels: Sequence[Panel], *, cols: int = 3) -> None:
    """Line plots in a grid, saved as one PNG; panels with no points are left out.

    Args:
      path: the PNG file.
      panels: the panels, in reading order.
      cols: panels per row.
    """
    panels = [p for p in panels if len(p.x)]
    if not panels:
        return
    plt = pyplot()
    cols = min(cols, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, panels, strict=False):
        ax.plot(p.x, p.y, marker="." if len(p.x) < 30 else None)
        for y, label, color in p.hlines:
            ax.axhline(y, color=color, ls=":", label=label)
        if p.hlines:
            ax.legend(fontsize=7)
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
    save_figure(fig, path)
