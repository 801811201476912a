"""Placing models and batches on a mesh: sharded initialisation, batch shardings, global arrays."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpref.parallel._rules import ShardingRules, param_shardings

__all__ = [
    "batch_sharding",
    "global_batch",
    "shard_batch",
    "shard_model",
    "sharded_init",
]

M = TypeVar("M", bound=nnx.Module)


def sharded_init(
    make_model: Callable[[nnx.Rngs], M],
    key: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
    rules: ShardingRules,
) -> M:
    """Builds a model whose parameters are created directly in their sharded layout.

    The model is first traced abstractly (`nnx.eval_shape`) to read shapes and logical axes;
    initialisation then runs under `jax.jit` with `out_shardings`, so each device computes only
    its own shard and no parameter is ever materialised whole on one device or host.

    Args:
      make_model: `rngs -> module`, e.g. `lambda rngs: Transformer(config, rngs=rngs)`.
      key: PRNG key of the initialisation (the values do not depend on the mesh).
      mesh: device mesh.
      rules: logical-axis rules.

    Returns:
      The module, with every parameter a global sharded `jax.Array`.

    Example:
      >>> import jax
      >>> from jaxpref.models import Transformer, preset
      >>> from jaxpref.parallel import FSDP_TP, MeshConfig, make_mesh
      >>> mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
      >>> model = sharded_init(lambda r: Transformer(preset("llama-tiny"), rngs=r),
      ...                      jax.random.key(0), mesh=mesh, rules=FSDP_TP)
      >>> print(model.embed.get_value().sharding.spec)
      P('tensor', 'fsdp')
    """
    abstract = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(abstract_state, rules, mesh)

    def init(k):
        return nnx.split(make_model(nnx.Rngs(k)))[1]

    state = jax.jit(init, out_shardings=shardings)(key)
    return nnx.merge(graphdef, state)


def shard_model(model: M, rules: ShardingRules, mesh: jax.sharding.Mesh) -> M:
    """Moves an existing model's variables to their sharded layout (returns a new module).

    Args:
      model: the module (e.g. from `from_hf` on one device).
      rules: logical-axis rules.
      mesh: device mesh.

    Returns:
      A module with the same values, sharded by `rules` on `mesh`.

    Example:
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> from jaxpref.parallel import FSDP_TP, MeshConfig, make_mesh
      >>> mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
      >>> model = shard_model(Transformer(preset("llama-tiny"), rngs=nnx.Rngs(0)), FSDP_TP, mesh)
      >>> print(model.layers[0].mlp.up.kernel.get_value().sharding.spec)
      P('fsdp', 'tensor')
    """
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, param_shardings(state, rules, mesh))
    return nnx.merge(graphdef, state)


def _batch_axes(mesh, rules: ShardingRules) -> tuple[str, ...]:
    return tuple(a for a in rules.batch if a in mesh.shape)


def batch_sharding(mesh: jax.sharding.Mesh, rules: ShardingRules, ndim: int = 2) -> NamedSharding:
    """`NamedSharding` that splits the leading (batch) dimension over `rules.batch`.

    Args:
      mesh: device mesh.
      rules: logical-axis rules (their `batch` entry).
      ndim: rank of the arrays (the other dimensions are replicated).

    Returns:
      The sharding.

    Example:
      >>> from jaxpref.parallel import FSDP_TP, MeshConfig, make_mesh
      >>> mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
      >>> print(batch_sharding(mesh, FSDP_TP).spec)
      P(('data', 'fsdp'), None)
    """
    axes = _batch_axes(mesh, rules)
    lead = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def _check_batch(name, x, mesh, rules):
    axes = _batch_axes(mesh, rules)
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    if x.ndim == 0 or x.shape[0] % size:
        raise ValueError(f"shard_batch: `{name}` has shape {x.shape}; its leading dimension must "
                         f"be divisible by {size} (mesh axes {axes}).")  # fmt: skip


def shard_batch(batch, mesh: jax.sharding.Mesh, rules: ShardingRules):
    """Places a batch (a pytree of whole, global arrays) with its leading dimension sharded.

    For a single process. With several processes, each holding part of the batch, use
    `global_batch`.

    Args:
      batch: pytree of `[B, ...]` arrays (numpy or jax), identical on every process.
      mesh: device mesh.
      rules: logical-axis rules (their `batch` entry).

    Returns:
      The same pytree of sharded `jax.Array`s.

    Example:
      >>> import numpy as np
      >>> from jaxpref.parallel import DP, MeshConfig, make_mesh
      >>> mesh = make_mesh(MeshConfig(data=8, fsdp=1))
      >>> x = shard_batch({"ids": np.zeros((16, 4), np.int32)}, mesh, DP)["ids"]
      >>> print(x.shape, x.addressable_shards[0].data.shape)
      (16, 4) (2, 4)
    """
    paths, tree = jax.tree_util.tree_flatten_with_path(batch)
    out = []
    for path, x in paths:
        _check_batch(jax.tree_util.keystr(path), x, mesh, rules)
        out.append(jax.device_put(x, batch_sharding(mesh, rules, x.ndim)))
    return jax.tree_util.tree_unflatten(tree, out)


def global_batch(local_batch, mesh: jax.sharding.Mesh, rules: ShardingRules):
    """Assembles global arrays from the rows each process holds.

    Each process passes its own `[B_local, ...]` rows (process `i` holds the `i`-th block of the
    global batch, in process order); the result is a global `[B_local * P, ...]` array sharded
    over `rules.batch`, built with `jax.make_array_from_process_local_data` (no data moves
    between hosts).

    Args:
      local_batch: pytree of this process's `[B_local, ...]` host arrays.
      mesh: device mesh spanning every process.
      rules: logical-axis rules (their `batch` entry).

    Returns:
      The pytree of global sharded `jax.Array`s.

    Example:
      >>> import numpy as np
      >>> from jaxpref.parallel import FSDP, MeshConfig, make_mesh
      >>> mesh = make_mesh(MeshConfig(fsdp=8))
      >>> x = global_batch(np.ones((8, 3), np.float32), mesh, FSDP)
      >>> print(x.shape, len(x.addressable_shards))
      (8, 3) 8
    """

    def one(x):
        return jax.make_array_from_process_local_data(batch_sharding(mesh, rules, x.ndim), x)

    return jax.tree.map(one, local_batch)
