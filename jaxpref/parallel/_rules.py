"""Logical-axis rules: one small table maps parameter axis names to mesh axes.

Parameters declare logical names (`'vocab'`, `'embed'`, `'mlp'`, `'heads'`, `'kv_heads'`,
`'head_dim'`, `'seq'`, `'norm'`) in their `out_sharding` metadata; a `ShardingRules` table maps
each name to mesh axes (`'data'`, `'fsdp'`, `'tensor'`) or to None (replicated). The parameter
layout (`params`) and the compute layout of batches (`batch`) are separate entries.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DP",
    "FSDP",
    "FSDP_TP",
    "ShardingRules",
    "logical_axes",
    "param_shardings",
    "partition_specs",
    "sharding_rules",
]

MeshAxes = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """A logical-axis rules table.

    Args:
      name: label of the table (presets: "dp", "fsdp", "fsdp_tp").
      params: `(logical_name, mesh_axes)` pairs for parameters; names not listed are replicated.
        `mesh_axes` is a mesh axis name, a tuple of names, or None.
      batch: mesh axes that shard the leading (batch) dimension of input batches.

    Example:
      >>> print(FSDP_TP.mesh_axes("mlp"), FSDP_TP.mesh_axes("head_dim"))
      tensor None
    """

    name: str = "custom"
    params: tuple[tuple[str, MeshAxes], ...] = ()
    batch: tuple[str, ...] = ("data", "fsdp")

    def mesh_axes(self, logical_name: str | None) -> MeshAxes:
        """Mesh axes of a logical name (None: replicated).

        Args:
          logical_name: a parameter's logical axis name (e.g. `"mlp"`), or None for an axis
            without one.

        Returns:
          The mesh axis name or tuple of names from `params`; None (replicated) for a name not
          listed there, or for None.
        """
        for name, axes in self.params:
            if name == logical_name:
                return axes
        return None


DP = ShardingRules(name="dp", params=(), batch=("data", "fsdp", "tensor"))
"""Preset "dp": every parameter replicated, batches split over all devices."""
FSDP = ShardingRules(name="fsdp", params=(("embed", "fsdp"),), batch=("data", "fsdp", "tensor"))
"""Preset "fsdp": parameters split along `embed` over `fsdp` (ZeRO-3 style), batches over all
devices."""
FSDP_TP = ShardingRules(
    name="fsdp_tp",
    params=(
        ("embed", "fsdp"),
        ("vocab", "tensor"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
    ),
    batch=("data", "fsdp"),
)
"""Preset "fsdp_tp": as `FSDP`, plus `vocab`, `mlp`, `heads`, `kv_heads` split over `tensor`
(Megatron-style), batches over `data` x `fsdp`."""
_PRESETS = {r.name: r for r in (DP, FSDP, FSDP_TP)}


def sharding_rules(name: str) -> ShardingRules:
    """The preset rules table "dp", "fsdp" or "fsdp_tp".

    dp: every parameter replicated, batches split over all devices. fsdp: parameters split along
    their `embed` dimension over `fsdp` (ZeRO-3 style), batches over all devices. fsdp_tp: as fsdp,
    plus `vocab`, `mlp`, `heads`, `kv_heads` split over `tensor` (Megatron-style), batches over
    `data` x `fsdp`.

    Args:
      name: preset name.

    Returns:
      The table.

    Example:
      >>> print(sharding_rules("fsdp").mesh_axes("embed"))
      fsdp
    """
    if name not in _PRESETS:
        raise ValueError(f"sharding_rules: unknown preset {name!r}; known: {sorted(_PRESETS)}.")
    return _PRESETS[name]


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _as_state(tree):
    return nnx.state(tree) if isinstance(tree, nnx.Module) else tree


def _names_of(var: nnx.Variable) -> tuple:
    names = var.get_metadata().get("out_sharding")
    ndim = len(var.get_value().shape)
    if names is None:
        return (None,) * ndim
    names = tuple(names)
    if len(names) != ndim:
        raise ValueError(f"parameter of shape {var.get_value().shape} has {len(names)} logical "
                         f"axis names {names}.")  # fmt: skip
    return names


def logical_axes(tree):
    """The logical axis names of every variable, as a tree of tuples.

    Args:
      tree: an `nnx.Module` or an `nnx.State` (concrete or abstract).

    Returns:
      An `nnx.State` of the same structure whose leaves are tuples of names (None where a
      dimension has no name).

    Example:
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> abstract = nnx.eval_shape(lambda: Transformer(preset("gpt2-tiny"), rngs=nnx.Rngs(0)))
      >>> print(logical_axes(abstract)["layers"][0]["attn"]["q"]["kernel"].get_value())
      ('embed', 'heads', 'head_dim')
    """
    return jax.tree.map(lambda v: v.replace(_names_of(v)), _as_state(tree), is_leaf=_is_var)


def _spec(names, shape, rules: ShardingRules, mesh) -> P:
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape, strict=True):
        axes = rules.mesh_axes(name)
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used and (mesh is None or a in mesh.shape))
        if mesh is not None and axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = ()  # not divisible: keep this dimension whole
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def partition_specs(tree, rules: ShardingRules, mesh: jax.sharding.Mesh | None = None):
    """`PartitionSpec` of every variable under a rules table.

    A mesh axis is used at most once per parameter (later dimensions give way). With a `mesh`,
    a dimension whose size is not divisible by its mesh axes is kept whole (replicated).

    Args:
      tree: an `nnx.Module` or `nnx.State` (concrete or abstract).
      rules: the rules table.
      mesh: optional mesh for the divisibility check.

    Returns:
      An `nnx.State` of the same structure whose leaves are `PartitionSpec`s.

    Example:
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> abstract = nnx.eval_shape(lambda: Transformer(preset("llama-tiny"), rngs=nnx.Rngs(0)))
      >>> specs = partition_specs(abstract, FSDP_TP)
      >>> print(specs["layers"][0]["mlp"]["down"]["kernel"].get_value())
      P('tensor', 'fsdp')
    """

    def one(v):
        return v.replace(_spec(_names_of(v), v.get_value().shape, rules, mesh))

    return jax.tree.map(one, _as_state(tree), is_leaf=_is_var)


def param_shardings(tree, rules: ShardingRules, mesh: jax.sharding.Mesh):
    """`NamedSharding` of every variable (`partition_specs` on `mesh`).

    Args:
      tree: an `nnx.Module` or `nnx.State` (concrete or abstract).
      rules: the rules table.
      mesh: the device mesh.

    Returns:
      An `nnx.State` of the same structure whose leaves are `NamedSharding`s; usable as
      `out_shardings` / `in_shardings` of `jax.jit` for the state.

    Example:
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> from jaxpref.parallel import MeshConfig, make_mesh
      >>> mesh = make_mesh(MeshConfig(fsdp=8))
      >>> abstract = nnx.eval_shape(lambda: Transformer(preset("gpt2-tiny"), rngs=nnx.Rngs(0)))
      >>> print(param_shardings(abstract, FSDP, mesh)["embed"].get_value().spec)
      P(None, 'fsdp')
    """
    specs = partition_specs(tree, rules, mesh)
    return jax.tree.map(
        lambda v: v.replace(NamedSharding(mesh, v.get_value())), specs, is_leaf=_is_var
    )
