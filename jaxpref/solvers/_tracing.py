"""Tracing the user's functions once per implicitly differentiated solve.

`IterativeSolver.run` with an `ImplicitAdjoint` hands `custom_root` a shallow copy of the solver
carrying a per-call memo (`with_trace_memo`); solver methods decorated with `traced_once` then
trace the user's function(s) to a jaxpr on their first call for given argument types and
evaluate that jaxpr on every later call (loop body, optimality function).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import jax

__all__: list[str] = []


def trace_memo(solver) -> dict | None:
    """The per-call trace memo of a solver copy made by `run` (None outside such a call)."""
    return getattr(solver, "__dict__", {}).get("_trace_memo")


def with_trace_memo(solver):
    """A shallow copy of `solver` carrying an empty trace memo (`solver` itself if impossible)."""
    if not hasattr(solver, "__dict__"):
        return solver
    memo_copy = copy.copy(solver)
    object.__setattr__(memo_copy, "_trace_memo", {})
    return memo_copy


def traced_once(method: Callable) -> Callable:
    """Decorates a solver method that evaluates the user's function(s) on arrays.

    Inside `run` with an `ImplicitAdjoint`, the whole solve is traced abstractly; the decorated
    method is then traced to a jaxpr on its first call for given argument types and every later
    call (the loop body, the optimality function) evaluates that jaxpr, so the user's Python code
    and its derivatives are traced once per solve instead of once per call site. Elsewhere (direct
    calls, `UnrolledAdjoint`) the method runs as written.
    """
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args):
        memo = trace_memo(self)
        if memo is None:
            return method(self, *args)
        leaves, tree = jax.tree.flatten(args)
        key = (name, tree, tuple(jax.typeof(leaf) for leaf in leaves))
        entry = memo.get(key)
        if entry is None:
            closed, out_shape = jax.make_jaxpr(lambda *a: method(self, *a), return_shape=True)(
                *args
            )
            entry = memo[key] = (closed, jax.tree.structure(out_shape))
        closed, out_tree = entry
        return jax.tree.unflatten(
            out_tree, jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *leaves)
        )

    return wrapper
