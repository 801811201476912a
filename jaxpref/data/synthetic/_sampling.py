"""Inverse-CDF categorical sampling from pre-drawn uniforms.

Every random draw of a sampler is taken from one block of uniforms drawn up front, so a jitted
sampler holds a single random-bit generator instead of one per draw (each one is a separate,
slow-to-compile program on CPU).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["categorical_from_uniform"]


def categorical_from_uniform(probs, u):
    """Index `k` with `cdf[k-1] <= u * total < cdf[k]`: a draw from `probs` given `u ~ U[0, 1)`.

    Zero-probability categories are never drawn.

    Args:
      probs: `[..., K]` non-negative weights (need not be normalised).
      u: `[...]` uniforms in `[0, 1)`.

    Returns:
      `[...]` int32 indices.

    Example:
      >>> import jax.numpy as jnp
      >>> p = jnp.array([0.0, 0.25, 0.75])
      >>> print(categorical_from_uniform(jnp.stack([p, p, p]), jnp.array([0.0, 0.3, 0.99])))
      [1 2 2]
    """
    cdf = jnp.cumsum(probs, axis=-1)
    x = u * cdf[..., -1]
    k = jnp.sum(cdf <= x[..., None], axis=-1)
    return jnp.minimum(k, probs.shape[-1] - 1).astype(jnp.int32)
