"""Argument handling shared by the `jaxpref.bellman` functions (rlax conventions).

Shape and dtype checks of trajectories and transitions, the common float dtype of the inputs,
target-gradient stopping and action selection. Every check raises naming the calling function
and the argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpref._checks import check_floating, check_nonnegative, check_rank, check_same_shape, f32

__all__: list[str] = []


def floats(*arrays):
    """Upcasts to >= float32 and to one common floating dtype (float64 stays float64)."""
    arrays = [f32(a) for a in arrays]
    dtype = jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]


def maybe_stop(x, stop_target_gradients: bool):
    """`stop_gradient(x)` if `stop_target_gradients`, else `x`."""
    return jax.lax.stop_gradient(x) if stop_target_gradients else x


def select(q, a):
    """`q[..., a]` for integer actions `a` of shape `q.shape[:-1]`."""
    return jnp.take_along_axis(q, a[..., None], axis=-1)[..., 0]


def check_per_step(value, name: str, shape: tuple[int, ...], *, reference: str = "r_t", fn: str):
    """Raises `ValueError` unless `value` is a scalar or has the `shape` of `reference`."""
    got = tuple(jnp.shape(value))
    if got and got != tuple(shape):
        raise ValueError(
            f"{fn}: `{name}` must be a scalar or have the shape of `{reference}` "
            f"{tuple(shape)}, got {got}."
        )


def check_sequences(arrays: dict, rank: int, *, fn: str) -> tuple[int, ...]:
    """Checks that `arrays` are floating, of rank `rank` and of one shape; returns the shape."""
    first = next(iter(arrays))
    for name, value in arrays.items():
        check_rank(value, name, rank, fn=fn)
    check_floating(arrays, fn=fn)
    return check_same_shape(arrays, first, fn=fn)


def check_actions(actions, name: str, batch_shape: tuple[int, ...], *, q_name: str, fn: str):
    """Raises unless `actions` are integers of shape `batch_shape` (leading axes of `q_name`)."""
    if not jnp.issubdtype(jnp.result_type(actions), jnp.integer):
        raise TypeError(
            f"{fn}: `{name}` must be an integer array of action indices, got dtype "
            f"{jnp.result_type(actions)}."
        )
    if tuple(jnp.shape(actions)) != tuple(batch_shape):
        raise ValueError(
            f"{fn}: `{name}` must have shape {tuple(batch_shape)} (the leading axes of "
            f"`{q_name}`), got {tuple(jnp.shape(actions))}."
        )


def check_transition(q_tm1, a_tm1, r_t, discount_t, q_t, *, extra: dict | None = None, fn: str):
    """Checks one (batched) transition `q_tm1 [..., A], a_tm1 [...], r_t, discount_t, q_t`."""
    check_rank(q_tm1, "q_tm1", range(1, 8), fn=fn)
    check_floating({"q_tm1": q_tm1, "r_t": r_t, "discount_t": discount_t, "q_t": q_t}, fn=fn)
    check_same_shape({"q_tm1": q_tm1, "q_t": q_t, **(extra or {})}, "q_tm1", fn=fn)
    batch = tuple(jnp.shape(q_tm1))[:-1]
    check_actions(a_tm1, "a_tm1", batch, q_name="q_tm1", fn=fn)
    for name, value in (("r_t", r_t), ("discount_t", discount_t)):
        if tuple(jnp.shape(value)) != batch:
            raise ValueError(
                f"{fn}: `{name}` must have shape {batch} (the leading axes of `q_tm1` "
                f"{tuple(jnp.shape(q_tm1))}), got {tuple(jnp.shape(value))}."
            )


def check_tau(tau, *, fn: str) -> None:
    """Raises unless the temperature `tau` is a scalar, and `>= 0` when it is a Python number."""
    check_rank(tau, "tau", 0, fn=fn)
    check_nonnegative(tau, "tau", fn=fn)
