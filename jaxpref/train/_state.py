"""The train state: a plain pytree of arrays built from `nnx.split`, and its sharding.

A Flax NNX model is split once into a static `ModelDef` (graph definition, non-trainable
variables, parameter metadata) and its trainable parameters as a nested dict of arrays. The
`TrainState` holds those parameters, the optimizer state, the step counter, the RNG key and,
optionally, frozen reference parameters; it is an ordinary pytree that `jax.jit`, optax and orbax
take as is. `ModelDef.merge(params)` rebuilds the module inside a traced function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "ModelDef",
    "TrainState",
    "create_train_state",
    "init_train_state",
    "split_model",
    "state_sharding",
    "sync_reference",
]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      step: `[]` int32 number of optimizer updates applied.
      params: trainable parameters, a nested dict of arrays (`nnx.to_pure_dict` layout).
      opt_state: the optax state of `params`.
      rng: typed PRNG key, split once per step.
      ref_params: frozen reference parameters with the structure of `params`, or None.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> s = init_train_state({"w": jnp.ones(2)}, optax.sgd(0.1), jax.random.key(0))
      >>> print(int(s.step), s.ref_params)
      0 None
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ref_params: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class ModelDef:
    """The static half of a split NNX model: enough to rebuild it from a params dict.

    Attributes:
      graphdef: the `nnx.GraphDef` of the module.
      rest: non-parameter variables (kept constant during training).
      param_metadata: abstract `nnx.State` of the parameters (shapes, dtypes, logical axes).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model_def, params = split_model(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
      >>> print(model_def.merge(params)(jnp.ones((1, 2))).shape, sorted(params))
      (1, 3) ['bias', 'kernel']
    """

    graphdef: Any
    rest: Any
    param_metadata: Any

    def merge(self, params) -> nnx.Module:
        """The module with `params` (a dict from `split_model` or a `TrainState`) in place.

        Args:
          params: parameters as a nested dict of arrays in the layout of `split_model`, e.g.
            `TrainState.params`.

        Returns:
          A new `nnx.Module` with those parameters and the stored non-parameter variables.
        """
        return nnx.merge(self.graphdef, params, self.rest)

    def abstract_params(self):
        """`jax.ShapeDtypeStruct`s of the parameters, in the params-dict layout."""
        return nnx.to_pure_dict(self.param_metadata)


def split_model(model: nnx.Module) -> tuple[ModelDef, dict]:
    """Splits an NNX module into a `ModelDef` and its parameters as a plain nested dict.

    Args:
      model: the module (its `nnx.Param` variables are the trainable parameters).

    Returns:
      `(model_def, params)`.

    Example:
      >>> from flax import nnx
      >>> model_def, params = split_model(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
      >>> print(params["kernel"].shape)
      (2, 3)
    """
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    metadata = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), param_state)
    return ModelDef(graphdef, rest, metadata), nnx.to_pure_dict(param_state)


def _as_key(rng) -> jax.Array:
    if isinstance(rng, int):
        return jax.random.key(rng)
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


def _commit(x):
    x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    return jax.device_put(x, x.sharding)


def init_train_state(
    params,
    optimizer: optax.GradientTransformation,
    rng,
    *,
    ref_params=None,
    sharding: TrainState | None = None,
) -> TrainState:
    """A fresh `TrainState` at step 0.

    The optimizer state (and the reference copy) are created under `jax.jit`, directly in the
    layout given by `sharding` when it is given.

    Args:
      params: trainable parameters (nested dict of arrays).
      optimizer: the optax transformation.
      rng: a typed PRNG key, raw key data, or an int seed.
      ref_params: reference parameters (copied, so they never alias `params`), or None.
      sharding: a `TrainState` of `NamedSharding`s (`state_sharding`), or None.

    Returns:
      The state.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> w = {"w": jnp.ones(2)}
      >>> s = init_train_state(w, optax.adam(0.1), 0, ref_params=w)
      >>> print(s.step.dtype, s.ref_params["w"])
      int32 [1. 1.]
    """
    rng = _as_key(rng)

    def init(p, ref):
        opt_state = optimizer.init(p)
        ref = None if ref is None else jax.tree.map(jnp.copy, ref)
        return jnp.zeros((), jnp.int32), opt_state, ref

    if sharding is None:
        step, opt_state, ref = jax.jit(init)(params, ref_params)
        # Commit every array to where it lives, as restored checkpoints are, so a resumed run
        # hits the same compiled step.
        params, rng, step, opt_state, ref = jax.tree.map(
            _commit, (params, rng, step, opt_state, ref)
        )
    else:
        params = jax.device_put(params, sharding.params)
        rng = jax.device_put(rng, sharding.rng)
        out = (sharding.step, sharding.opt_state, sharding.ref_params)
        step, opt_state, ref = jax.jit(init, out_shardings=out)(params, ref_params)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=rng, ref_params=ref)


def _path_shardings(params, shardings) -> dict:
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_s = jax.tree.leaves(shardings)
    return {path: (leaf.shape, s) for (path, leaf), s in zip(flat_p, flat_s, strict=True)}


def _match_params(tree, by_path: dict, default):
    """Gives each leaf of an optimizer state the sharding of the parameter it mirrors.

    A leaf mirrors a parameter when a suffix of its tree path is that parameter's path and the
    shapes agree (optax states such as `mu` / `nu` repeat the parameter tree); other leaves (step
    counts, scalars) get `default`.
    """

    def one(path, leaf):
        for start in range(len(path)):
            hit = by_path.get(tuple(path[start:]))
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(one, tree)


def state_sharding(
    model_def: ModelDef,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules,
    *,
    with_reference: bool = False,
) -> TrainState:
    """`NamedSharding`s of a `TrainState` under a logical-axis rules table.

    Parameters (and the reference copy) follow `jaxpref.parallel.param_shardings`; optimizer
    leaves that mirror a parameter (Adam moments, momentum) take that parameter's sharding;
    scalars (step, counts, the RNG key) are replicated.

    Args:
      model_def: from `split_model` (carries each parameter's logical axis names).
      optimizer: the optax transformation whose state is sharded.
      mesh: the device mesh.
      rules: a `jaxpref.parallel.ShardingRules` table (e.g. `sharding_rules("fsdp")`).
      with_reference: include shardings for `ref_params`.

    Returns:
      A `TrainState` whose leaves are `NamedSharding`s, for `jax.jit` in/out shardings and
      `init_train_state(..., sharding=...)`.

    Example:
      >>> import optax
      >>> from jaxpref.models import Transformer, preset
      >>> from jaxpref.parallel import MeshConfig, make_mesh, sharding_rules
      >>> abstract = nnx.eval_shape(lambda: Transformer(preset("gpt2-tiny"), rngs=nnx.Rngs(0)))
      >>> model_def, _ = split_model(abstract)
      >>> mesh = make_mesh(MeshConfig(fsdp=8))
      >>> sh = state_sharding(model_def, optax.adam(1e-3), mesh, sharding_rules("fsdp"))
      >>> print(sh.opt_state[0].mu["embed"].spec, sh.opt_state[0].count.spec)
      P(None, 'fsdp') P()
    """
    from jaxpref.parallel import param_shardings

    params_sh = nnx.to_pure_dict(param_shardings(model_def.param_metadata, rules, mesh))
    abstract = model_def.abstract_params()
    replicated = NamedSharding(mesh, P())
    opt_abstract = jax.eval_shape(optimizer.init, abstract)
    opt_sh = _match_params(opt_abstract, _path_shardings(abstract, params_sh), replicated)
    return TrainState(
        step=replicated,
        params=params_sh,
        opt_state=opt_sh,
        rng=replicated,
        ref_params=params_sh if with_reference else None,
    )


def create_train_state(
    model: nnx.Module,
    optimizer: optax.GradientTransformation,
    rng,
    *,
    with_reference: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
) -> tuple[ModelDef, TrainState, TrainState | None]:
    """Splits a model and builds its `TrainState`, sharded when a mesh is given.

    Args:
      model: the NNX module to train.
      optimizer: the optax transformation.
      rng: typed PRNG key or int seed of the training RNG.
      with_reference: keep a frozen copy of the initial parameters as the reference model.
      mesh: device mesh, or None for the default device.
      rules: `jaxpref.parallel.ShardingRules` (required with `mesh`).

    Returns:
      `(model_def, state, sharding)`; `sharding` (a `TrainState` of `NamedSharding`s) is None
      without a mesh.

    Example:
      >>> import optax
      >>> model_def, state, sh = create_train_state(
      ...     nnx.Linear(2, 3, rngs=nnx.Rngs(0)), optax.sgd(0.1), 0, with_reference=True)
      >>> print(state.ref_params["kernel"].shape, sh)
      (2, 3) None
    """
    model_def, params = split_model(model)
    sharding = None
    if mesh is not None:
        if rules is None:
            raise ValueError("create_train_state: `rules` is required when `mesh` is given.")
        sharding = state_sharding(model_def, optimizer, mesh, rules, with_reference=with_reference)
    state = init_train_state(
        params,
        optimizer,
        rng,
        ref_params=params if with_reference else None,
        sharding=sharding,
    )
    return model_def, state, sharding


def sync_reference(params, ref_params, *, alpha: float):
    """TR-DPO reference update: `ref <- alpha * params + (1 - alpha) * ref`.

    `alpha = 1` is the hard update (an exact copy of `params`); the soft update is computed in
    float32 and cast to the reference's dtype.

    Args:
      params: current policy parameters.
      ref_params: reference parameters (same structure).
      alpha: policy weight in [0, 1]; a Python float or a `[]` array.

    Returns:
      New reference parameters.

    References:
      Gorbatovski et al., "Learn Your Reference Model for Real Good Alignment", arXiv:2404.09656.

    Example:
      >>> import jax.numpy as jnp
      >>> new = sync_reference({"w": jnp.array([1.0])}, {"w": jnp.array([0.0])}, alpha=0.6)
      >>> print(round(float(new["w"][0]), 4))
      0.6
    """
    if isinstance(alpha, int | float) and float(alpha) == 1.0:
        return jax.tree.map(lambda p, r: p.astype(r.dtype), params, ref_params)

    def mix(p, r):
        a = jnp.asarray(alpha, jnp.float32)
        out = a * p.astype(jnp.float32) + (1.0 - a) * r.astype(jnp.float32)
        return out.astype(r.dtype)

    return jax.tree.map(mix, params, ref_params)
