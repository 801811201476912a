"""The soft maximum and soft argmax over the last axis, shared by `_soft` and `_tabular`.

`soft_max(q, log_prior, tau) = tau * log sum_a prior(a) exp(q_a / tau)` and
`soft_argmax(q, log_prior, tau) ∝ prior(a) exp(q_a / tau)`, with their `tau -> 0` limits (the
maximum over the prior's support, and the greedy policy spreading its mass evenly over tied
maximisers) at `tau = 0`. `log_prior = None` is a uniform, unnormalised prior (log 1 = 0).
Arguments are checked and cast by the callers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__: list[str] = []


def _is_static_zero(tau) -> bool:
    return isinstance(tau, int | float) and tau == 0


def _shifted_logits(q, log_prior, tau):
    """`(y, m)`: `y = q + tau log_prior` (-inf off the prior's support), `m = max y` (finite)."""
    if log_prior is None:
        y = q
    else:
        support = log_prior > -jnp.inf
        y = jnp.where(support, q + tau * jnp.where(support, log_prior, 0.0), -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(y, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return y, m


def soft_max(q, log_prior, tau):
    """`tau * logsumexp(q / tau + log_prior)` over the last axis; its `tau -> 0` limit at 0."""
    if _is_static_zero(tau):
        y, _ = _shifted_logits(q, log_prior, 0.0)
        return jnp.max(y, axis=-1)
    tau = jnp.asarray(tau, q.dtype)
    positive = tau > 0
    safe_tau = jnp.where(positive, tau, 1.0)
    y, m = _shifted_logits(q, log_prior, jnp.where(positive, tau, 0.0))
    soft = m[..., 0] + safe_tau * jnp.log(jnp.sum(jnp.exp((y - m) / safe_tau), axis=-1))
    return jnp.where(positive, soft, jnp.max(y, axis=-1))


def soft_argmax(q, log_prior, tau):
    """`softmax(q / tau + log_prior)` over the last axis; uniform over maximisers at `tau = 0`."""

    def greedy(y):
        best = y >= jnp.max(y, axis=-1, keepdims=True)
        best = best.astype(q.dtype)
        return best / jnp.sum(best, axis=-1, keepdims=True)

    if _is_static_zero(tau):
        y, _ = _shifted_logits(q, log_prior, 0.0)
        return greedy(y)
    tau = jnp.asarray(tau, q.dtype)
    positive = tau > 0
    safe_tau = jnp.where(positive, tau, 1.0)
    y, _ = _shifted_logits(q, log_prior, jnp.where(positive, tau, 0.0))
    soft = jax.nn.softmax(y / safe_tau, axis=-1)
    return jnp.where(positive, soft, greedy(jax.lax.stop_gradient(y)))
