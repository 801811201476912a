"""Plot helpers: off-screen figures (no pyplot state) and one way to save them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["Panel", "figure", "plot_panels", "save_figure"]


def figure(*, figsize: tuple[float, float] = (6.4, 4.8)):
    """A new matplotlib `Figure`, drawn off screen without pyplot.

    Reports draw on their own figures: no global backend is switched and no pyplot state is
    touched, so inline figures in a notebook keep working after an experiment runs. Add axes
    with `fig.subplots(...)`; save with `save_figure`.

    Args:
      figsize: width and height in inches.

    Returns:
      A `matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> None:
    """Lays out and saves a figure as PNG; only process 0 writes.

    Args:
      fig: a matplotlib figure (e.g. from `figure`).
      path: the PNG file.
      dpi: resolution.
    """
    import jax

    if jax.process_index() == 0:
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)


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
    cols = min(cols, len(panels))
    rows = -(-len(panels) // cols)
    fig = figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
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
