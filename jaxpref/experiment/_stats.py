"""Small statistics used by experiment reports."""

from __future__ import annotations

import numpy as np

__all__ = ["spearman"]


def spearman(a, b) -> float:
    """Spearman rank correlation of two arrays, flattened (average ranks for ties).

    Args:
      a: values of any shape.
      b: values with as many elements as `a`.

    Returns:
      The correlation in [-1, 1]; nan when either input is constant or has fewer than two
      elements.

    Example:
      >>> round(spearman([1, 2, 3, 4], [10, 20, 30, 25]), 3)
      0.8
    """
    from scipy.stats import spearmanr

    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    if a.size != b.size:
        raise ValueError(f"spearman: {a.size} values against {b.size}.")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)
