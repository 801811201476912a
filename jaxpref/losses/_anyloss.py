"""AnyLoss: differentiable surrogates of confusion-matrix metrics.

A sigmoid output `p` is pushed toward {0, 1} by the approximation (amplifying) function
`A(p) = 1 / (1 + exp(-L (p - 1/2)))`; summing `A(p_i)` against the labels gives a soft confusion
matrix that approaches the hard counts of the 0.5-thresholded classifier as `L` grows, yet stays
differentiable. Any metric built from the four counts becomes a loss `1 - metric`.

Inputs are **probabilities** in (0, 1): callers apply `jax.nn.sigmoid` to logits first. The
losses are batch-level scalars (a metric over the batch is not a sum of per-example terms).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = [
    "SoftConfusionMatrix",
    "amplify",
    "anyloss_accuracy",
    "anyloss_balanced_accuracy",
    "anyloss_f_beta",
    "anyloss_gmean",
    "soft_confusion_matrix",
]


def amplify(p: ArrayLike, *, L: float = 73.0) -> jax.Array:
    r"""AnyLoss approximation function `A(p) = 1 / (1 + exp(-L (p - 1/2)))`.

    Maps a probability to a value near 0 or 1 (exactly 1/2 at `p = 1/2`), a smooth stand-in for
    the 0.5 threshold. Computed with `jax.nn.sigmoid`, so large `L` does not overflow.

    Args:
      p: `[...]` probabilities in (0, 1) (sigmoid outputs).
      L: amplifying scale; the paper's experiments use 73 (its guidance: roughly 2 to 70+).

    Returns:
      `[...]` float32 amplified values in (0, 1).

    References:
      Han, Moniz, Chawla, "AnyLoss: Transforming Classification Metrics into Loss Functions",
      KDD 2024, arXiv:2405.14745.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(amplify(jnp.array(0.6), L=10.0)), 4))  # sigmoid(1)
      0.7311
    """
    check_floating({"p": p}, fn="amplify")
    return jax.nn.sigmoid(L * (f32(p) - 0.5))


class SoftConfusionMatrix(NamedTuple):
    """Soft confusion-matrix counts from `soft_confusion_matrix` (float32 scalars).

    Attributes:
      tp: soft true positives `sum_i y_i A(p_i)`.
      fn: soft false negatives `sum_i y_i (1 - A(p_i))`.
      fp: soft false positives `sum_i (1 - y_i) A(p_i)`.
      tn: soft true negatives `sum_i (1 - y_i)(1 - A(p_i))`.

    Example:
      >>> import jax.numpy as jnp
      >>> cm = soft_confusion_matrix(jnp.array([0.9, 0.1]), jnp.array([1, 1]), L=200.0)
      >>> print(round(float(cm.tp), 4), round(float(cm.fn), 4))
      1.0 1.0
    """

    tp: jax.Array
    fn: jax.Array
    fp: jax.Array
    tn: jax.Array


def soft_confusion_matrix(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    L: float = 73.0,
    mask: ArrayLike | None = None,
) -> SoftConfusionMatrix:
    r"""Soft confusion matrix of amplified probabilities against binary labels.

        TP = sum_i m_i y_i A(p_i)              FN = sum_i m_i y_i (1 - A(p_i))
        FP = sum_i m_i (1 - y_i) A(p_i)        TN = sum_i m_i (1 - y_i)(1 - A(p_i))

    `TP + FN = N1` (positives) and `FP + TN = N0` (negatives) hold exactly. Masked entries
    (padding) contribute nothing, whatever `probs` holds there (NaN included, also in the
    gradient).

    Args:
      probs: `[N]` predicted probabilities of the positive class (apply sigmoid to logits first).
      labels: `[N]` binary labels (0/1, bool, int or float).
      L: amplifying scale of `amplify`.
      mask: optional `[N]` 1 for real examples, 0 for padding.

    Returns:
      `SoftConfusionMatrix(tp, fn, fp, tn)` of float32 scalars.

    References:
      Han, Moniz, Chawla, KDD 2024, arXiv:2405.14745.

    Example:
      >>> import jax.numpy as jnp
      >>> cm = soft_confusion_matrix(jnp.array([0.9, 0.2, 0.7]), jnp.array([1, 1, 0]), L=200.0)
      >>> print([round(float(v), 4) for v in cm])
      [1.0, 1.0, 1.0, 0.0]
    """
    fn = "soft_confusion_matrix"
    check_rank(probs, "probs", 1, fn=fn)
    check_floating({"probs": probs}, fn=fn)
    check_same_shape({"probs": probs, "labels": labels, "mask": mask}, "probs", fn=fn)
    probs = f32(probs)
    y = f32(labels)
    if mask is None:
        keep = jnp.ones(probs.shape, bool)
        weight = jnp.ones(probs.shape, jnp.float32)
    else:
        weight = f32(mask)
        keep = weight != 0
        weight = jnp.where(keep, weight, 0.0)
    a = amplify(jnp.where(keep, probs, 0.5), L=L)
    y = jnp.where(keep, y, 0.0)
    pos = weight * y
    neg = weight * (1.0 - y)
    return SoftConfusionMatrix(
        tp=jnp.sum(pos * a),
        fn=jnp.sum(pos * (1.0 - a)),
        fp=jnp.sum(neg * a),
        tn=jnp.sum(neg * (1.0 - a)),
    )


def anyloss_accuracy(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    L: float = 73.0,
    eps: float = 1e-5,
    mask: ArrayLike | None = None,
) -> jax.Array:
    r"""AnyLoss accuracy loss `1 - (TP + TN) / (N + eps)`.

    Args:
      probs: `[N]` predicted probabilities of the positive class (sigmoid outputs).
      labels: `[N]` binary labels.
      L: amplifying scale.
      eps: added to the denominator so an empty (fully masked) batch gives loss 1, not NaN.
      mask: optional `[N]` 1 for real examples, 0 for padding.

    Returns:
      Scalar float32 loss in [0, 1].

    References:
      Han, Moniz, Chawla, KDD 2024, arXiv:2405.14745.

    Example:
      >>> import jax.numpy as jnp
      >>> l = anyloss_accuracy(jnp.array([0.9, 0.2, 0.7, 0.1]), jnp.array([1, 1, 0, 0]),
      ...                      L=200.0, eps=0.0)
      >>> print(round(float(l), 4))  # 2 of 4 correct
      0.5
    """
    cm = soft_confusion_matrix(probs, labels, L=L, mask=mask)
    n = cm.tp + cm.fn + cm.fp + cm.tn
    return 1.0 - (cm.tp + cm.tn) / (n + eps)


def anyloss_f_beta(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    beta: float = 1.0,
    L: float = 73.0,
    eps: float = 1e-5,
    mask: ArrayLike | None = None,
) -> jax.Array:
    r"""AnyLoss F-beta loss.

        F_beta = (1 + beta^2) TP / ((1 + beta^2) TP + beta^2 FN + FP + eps)
               = (1 + beta^2) TP / (beta^2 N1 + sum_i A(p_i) + eps)

    `beta > 1` weights recall more, `beta < 1` precision. `eps` keeps the loss finite (equal to 1)
    when a batch has no positives and no predicted positives.

    Args:
      probs: `[N]` predicted probabilities of the positive class (sigmoid outputs).
      labels: `[N]` binary labels.
      beta: F-measure weight of recall relative to precision.
      L: amplifying scale.
      eps: added to the denominator.
      mask: optional `[N]` 1 for real examples, 0 for padding.

    Returns:
      Scalar float32 loss `1 - F_beta`.

    References:
      Han, Moniz, Chawla, KDD 2024, arXiv:2405.14745.

    Example:
      >>> import jax.numpy as jnp
      >>> l = anyloss_f_beta(jnp.array([0.9, 0.2, 0.7, 0.1]), jnp.array([1, 1, 0, 0]),
      ...                    L=200.0, eps=0.0)
      >>> print(round(float(l), 4))  # TP=1, FN=1, FP=1: 1 - 2/4
      0.5
    """
    cm = soft_confusion_matrix(probs, labels, L=L, mask=mask)
    b2 = beta * beta
    f = (1.0 + b2) * cm.tp / ((1.0 + b2) * cm.tp + b2 * cm.fn + cm.fp + eps)
    return 1.0 - f


def anyloss_gmean(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    L: float = 73.0,
    eps: float = 1e-5,
    mask: ArrayLike | None = None,
) -> jax.Array:
    r"""AnyLoss geometric-mean loss with the paper's surrogate `TP * TN / (N1 * N0)`.

        G^2 = TPR * TNR = TP * TN / (N1 * N0 + eps),     loss = 1 - G^2

    The surrogate is the square of the G-mean `sqrt(TPR * TNR)`; it has the same maximisers and
    avoids the infinite slope of the square root at 0. `eps` keeps the loss finite (equal to 1)
    when one class is absent from the batch.

    Args:
      probs: `[N]` predicted probabilities of the positive class (sigmoid outputs).
      labels: `[N]` binary labels.
      L: amplifying scale.
      eps: added to the denominator.
      mask: optional `[N]` 1 for real examples, 0 for padding.

    Returns:
      Scalar float32 loss in [0, 1].

    References:
      Han, Moniz, Chawla, KDD 2024, arXiv:2405.14745.

    Example:
      >>> import jax.numpy as jnp
      >>> l = anyloss_gmean(jnp.array([0.9, 0.2, 0.7, 0.1]), jnp.array([1, 1, 0, 0]),
      ...                   L=200.0, eps=0.0)
      >>> print(round(float(l), 4))  # TPR = TNR = 1/2
      0.75
    """
    cm = soft_confusion_matrix(probs, labels, L=L, mask=mask)
    n1 = cm.tp + cm.fn
    n0 = cm.fp + cm.tn
    return 1.0 - cm.tp * cm.tn / (n1 * n0 + eps)


def anyloss_balanced_accuracy(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    L: float = 73.0,
    eps: float = 1e-5,
    mask: ArrayLike | None = None,
) -> jax.Array:
    r"""AnyLoss balanced-accuracy loss.

        BA = (TPR + TNR) / 2 = (N0 TP + N1 TN) / (2 N1 N0 + eps),     loss = 1 - BA

    `eps` keeps the loss finite when one class is absent from the batch (then `BA = 0`, loss 1).

    Args:
      probs: `[N]` predicted probabilities of the positive class (sigmoid outputs).
      labels: `[N]` binary labels.
      L: amplifying scale.
      eps: added to the denominator.
      mask: optional `[N]` 1 for real examples, 0 for padding.

    Returns:
      Scalar float32 loss in [0, 1].

    References:
      Han, Moniz, Chawla, KDD 2024, arXiv:2405.14745.

    Example:
      >>> import jax.numpy as jnp
      >>> l = anyloss_balanced_accuracy(jnp.array([0.9, 0.8, 0.7, 0.1, 0.2]),
      ...                               jnp.array([1, 1, 0, 0, 0]), L=200.0, eps=0.0)
      >>> print(round(float(l), 4))  # TPR = 1, TNR = 2/3
      0.1667
    """
    cm = soft_confusion_matrix(probs, labels, L=L, mask=mask)
    n1 = cm.tp + cm.fn
    n0 = cm.fp + cm.tn
    return 1.0 - (n0 * cm.tp + n1 * cm.tn) / (2.0 * n1 * n0 + eps)
