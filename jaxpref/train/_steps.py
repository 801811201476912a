"""Pure train-step builders: SFT, reward modelling and every preference loss of `jaxpref.losses`.

An `Objective` maps `(params, batch)` to `(loss, metrics)`; `make_step(objective, optimizer)`
turns it into `step(state, batch) -> (state, metrics)`: gradients (optionally accumulated over
microbatches with `lax.scan`), the optax update, the optional TR-DPO reference update, and the
step counter and RNG key carried forward. `jit_step` compiles it with `jax.jit`, with state and
batch shardings from `jaxpref.parallel` and the state buffers donated.

Batches are dicts of arrays (`as_batch` converts the data layer's `PairBatch` / `SequenceBatch`).
A preference batch is `[2B, T]`: rows `0..B-1` chosen, rows `B..2B-1` rejected, with
`input_ids`, `attention_mask`, `loss_mask` (over `input_ids`), optional `positions`,
`segment_ids`, `pair_mask` `[B]`, and optional cached reference log-probs `ref_chosen_logps` /
`ref_rejected_logps` `[B]`. When the cached values are present the reference model is not run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxpref.losses as jl
from jaxpref._checks import f32
from jaxpref.logprobs import (
    chunked_token_logprobs,
    lengths,
    masked_mean,
    masked_sum,
    shift_targets,
    split_pairs,
    token_logprobs,
)
from jaxpref.train._config import RefSyncConfig
from jaxpref.train._state import ModelDef, TrainState, sync_reference

__all__ = [
    "Objective",
    "add_cached_reference",
    "as_batch",
    "jit_step",
    "make_pair_logps_fn",
    "make_preference_objective",
    "make_reward_objective",
    "make_sft_objective",
    "make_step",
    "make_token_logps_fn",
    "split_microbatches",
]

_MODEL_KWARGS = ("positions", "segment_ids")
_REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


class Objective(NamedTuple):
    """A training objective and how its batches split into microbatches.

    Attributes:
      fn: `fn(params, batch, *, ref_params, rng) -> (loss [], metrics dict of [] arrays)`.
      paired: batches are `[2B, ...]` chosen-then-rejected rows (microbatches keep pairs whole).
      weight_fn: `batch -> []` weight of a microbatch in gradient accumulation (the count the
        loss averages over: loss tokens, real pairs); None weighs microbatches equally. With it,
        accumulated gradients equal the full-batch gradient exactly.
      name: label used in error messages.

    Example:
      >>> import jax.numpy as jnp
      >>> obj = Objective(lambda p, b, *, ref_params, rng: (jnp.sum(p["w"] ** 2), {}))
      >>> print(obj.paired, obj.name)
      False objective
    """

    fn: Callable
    paired: bool = False
    weight_fn: Callable | None = None
    name: str = "objective"


def as_batch(batch, **extra) -> dict:
    """A batch as a dict of arrays, with extra entries (e.g. cached reference log-probs).

    Args:
      batch: a mapping, or a NamedTuple such as `jaxpref.data.PairBatch`.
      **extra: arrays to add (`ref_chosen_logps=..., ref_rejected_logps=...`).

    Returns:
      A new dict.

    Example:
      >>> import numpy as np
      >>> b = as_batch({"input_ids": np.zeros((4, 3))}, ref_chosen_logps=np.zeros(2))
      >>> print(sorted(b))
      ['input_ids', 'ref_chosen_logps']
    """
    if hasattr(batch, "_asdict"):
        out = dict(batch._asdict())
    elif isinstance(batch, Mapping):
        out = dict(batch)
    else:
        raise TypeError(f"as_batch: expected a mapping or a NamedTuple, got {type(batch)}.")
    out.update(extra)
    return out


def add_cached_reference(batch, cache) -> dict:
    """A batch as a dict with the reference log-probs of its pairs read from a cache.

    Adds `ref_chosen_logps` and `ref_rejected_logps` (`[B]` float32) from
    `cache.lookup(batch["index"])` (a `jaxpref.data.RefLogprobCache`, or anything with that
    method); a preference objective then uses them instead of running the reference model.
    Use as the loop's `prepare_batch` (`functools.partial(add_cached_reference, cache=cache)`).

    Args:
      batch: a `PairBatch` or dict with an `index` `[B]` of dataset positions.
      cache: object with `lookup(index) -> (chosen [B], rejected [B])`.

    Returns:
      The batch as a new dict with the two entries added.

    Example:
      >>> import numpy as np
      >>> class Cache:
      ...     def lookup(self, index):
      ...         return -1.0 * np.asarray(index), -2.0 * np.asarray(index)
      >>> b = add_cached_reference({"index": np.array([3, 4])}, Cache())
      >>> print(b["ref_rejected_logps"])
      [-6. -8.]
    """
    out = as_batch(batch)
    if "index" not in out:
        raise KeyError("add_cached_reference: the batch has no `index` of dataset positions.")
    chosen, rejected = cache.lookup(np.asarray(out["index"]))
    out["ref_chosen_logps"] = np.asarray(chosen, np.float32)
    out["ref_rejected_logps"] = np.asarray(rejected, np.float32)
    return out


def _loss_mask(batch):
    mask = batch.get("loss_mask")
    return batch.get("attention_mask") if mask is None else mask


def _targets(batch):
    return shift_targets(batch["input_ids"], _loss_mask(batch))


def make_token_logps_fn(
    model_def: ModelDef,
    *,
    chunked: bool = True,
    seq_chunk: int = 1024,
    vocab_chunk: int | None = None,
) -> Callable:
    """`(params, batch) -> (token_logps [R, T], mask [R, T])` of next-token log-probs.

    `token_logps[r, t] = log pi(input_ids[r, t + 1] | input_ids[r, :t + 1])` where the shifted
    `loss_mask` (or `attention_mask` when there is none) is set, 0 elsewhere. Models with
    `hidden_and_unembedding` (the `jaxpref.models.Transformer`) use the memory-lean
    `chunked_token_logprobs`; others are called as `model(input_ids, attention_mask)` for logits.
    `positions` and `segment_ids` are passed to the model when the batch has them.

    Args:
      model_def: from `split_model`.
      chunked: use the chunked path when the model supports it.
      seq_chunk: positions per chunk of the chunked path.
      vocab_chunk: vocabulary columns per block of the chunked path (None: all).

    Returns:
      The function.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> from jaxpref.train import split_model
      >>> md, params = split_model(Transformer(preset("gpt2-tiny"), rngs=nnx.Rngs(0)))
      >>> batch = {"input_ids": jnp.array([[1, 2, 3]]), "attention_mask": jnp.ones((1, 3))}
      >>> logps, mask = make_token_logps_fn(md)(params, batch)
      >>> print(logps.shape, mask)
      (1, 3) [[1. 1. 0.]]
    """

    def fn(params, batch):
        model = model_def.merge(params)
        ids = batch["input_ids"]
        attention = batch.get("attention_mask")
        targets, mask = _targets(batch)
        kwargs = {k: batch[k] for k in _MODEL_KWARGS if k in batch}
        if chunked and hasattr(model, "hidden_and_unembedding"):
            hidden, w = model.hidden_and_unembedding(ids, attention, **kwargs)
            logps = chunked_token_logprobs(
                hidden, w, targets, mask, seq_chunk=seq_chunk, vocab_chunk=vocab_chunk
            )
        else:
            logps = token_logprobs(model(ids, attention, **kwargs), targets, mask)
        return logps, mask

    return fn


def make_pair_logps_fn(model_def: ModelDef, **logps_kwargs) -> Callable:
    """`(params, batch) -> (chosen [B], rejected [B])` summed completion log-probs of pairs.

    `log pi(y | x) = sum_t mask_t log pi(y_t | x, y_<t)` over the completion tokens of each row
    of a `[2B, T]` preference batch. This is the function a reference log-prob cache is built
    with (`jaxpref.data.build_ref_cache`, after binding and jitting the reference parameters).

    Args:
      model_def: from `split_model`.
      **logps_kwargs: options of `make_token_logps_fn`.

    Returns:
      The function.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> from jaxpref.train import split_model
      >>> md, params = split_model(Transformer(preset("gpt2-tiny"), rngs=nnx.Rngs(0)))
      >>> ids = jnp.array([[1, 2, 3], [1, 2, 4]])
      >>> batch = {"input_ids": ids, "attention_mask": jnp.ones((2, 3)),
      ...          "loss_mask": jnp.array([[0, 0, 1], [0, 0, 1]])}
      >>> chosen, rejected = make_pair_logps_fn(md)(params, batch)
      >>> print(chosen.shape, bool(chosen[0] < 0))
      (1,) True
    """
    token_fn = make_token_logps_fn(model_def, **logps_kwargs)

    def fn(params, batch):
        logps, mask = token_fn(params, batch)
        return split_pairs(masked_sum(logps, mask))

    return fn


def _pair_mask(batch):
    pm = batch.get("pair_mask")
    return None if pm is None else jnp.asarray(pm).astype(jnp.float32)


def _pair_count(batch):
    pm = batch.get("pair_mask")
    if pm is None:
        return jnp.asarray(batch["input_ids"].shape[0] // 2, jnp.float32)
    return jnp.sum(jnp.asarray(pm).astype(jnp.float32))


def make_preference_objective(
    model_def: ModelDef,
    loss: str | Callable | jl.LossConfig = "sigmoid",
    *,
    beta: float = 0.1,
    logps_fn: Callable | None = None,
    **hparams,
) -> Objective:
    """Objective of any pairwise preference loss from `jaxpref.losses`, on a policy model.

    `L = sum_i m_i l(log pi(y_w^i), log pi(y_l^i), log pi_ref(y_w^i), log pi_ref(y_l^i)) /
    sum_i m_i`, with the loss `l` given by registry name (`"sigmoid"` is DPO, `"ipo"`, `"simpo"`,
    ...) or as a function with the registry's calling convention, and `m` the batch's
    `pair_mask` (fillers 0; all 1 when absent). The metrics are means over the same pairs.
    Reference log-probs come from the batch (`ref_chosen_logps`, `ref_rejected_logps`, a
    precomputed cache) when present, otherwise from a forward pass of the frozen
    `state.ref_params` (no gradient). Reference-free losses need neither; when a reference is
    available anyway it is used for the implicit-reward metrics.

    Args:
      model_def: the policy from `split_model`.
      loss: a `jaxpref.losses.LossConfig` (the loss and its hyperparameters, as configs hold
        them), or a registry name or loss function with `beta` and `hparams` given here.
      beta: inverse temperature (passed to losses that take it; scales the reward metrics);
        with a `LossConfig`, its own `beta` is used and this must be left at its default.
      logps_fn: `(params, batch) -> (token_logps, mask)`; default `make_token_logps_fn`.
      **hparams: further loss hyperparameters (`label_smoothing`, `alpha`, ...).

    Returns:
      A paired `Objective` whose metrics are `rewards/{chosen,rejected,margins,accuracies}` and
      `logps/{chosen,rejected}` (TRL's names).

    References:
      Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290.

    Example:
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> from jaxpref.train import split_model
      >>> md, _ = split_model(Transformer(preset("gpt2-tiny"), rngs=nnx.Rngs(0)))
      >>> obj = make_preference_objective(md, "ipo", beta=0.1)
      >>> print(obj.paired, obj.name)
      True ipo
    """
    token_fn = make_token_logps_fn(model_def) if logps_fn is None else logps_fn
    if isinstance(loss, jl.LossConfig):
        if hparams or beta != 0.1:
            raise ValueError(
                "make_preference_objective: give beta and hyperparameters in the LossConfig, "
                f"not as arguments (got beta={beta}, {sorted(hparams)})."
            )
        kwargs = loss.hyperparameters()
        kwargs.pop("beta", None)
        beta, hparams, loss = loss.beta, kwargs, loss.name
    needs_ref = jl.resolve(loss).needs_reference  # unknown names fail here, with a suggestion
    name = loss if isinstance(loss, str) else getattr(loss, "__name__", "preference")

    def fn(params, batch, *, ref_params=None, rng=None):
        del rng
        logps, mask = token_fn(params, batch)
        seq = split_pairs(masked_sum(logps, mask))
        lens = split_pairs(lengths(mask))
        if all(k in batch for k in _REF_KEYS):
            ref = tuple(jax.lax.stop_gradient(f32(batch[k])) for k in _REF_KEYS)
        elif ref_params is not None:
            ref_logps, ref_mask = token_fn(jax.lax.stop_gradient(ref_params), batch)
            ref = split_pairs(jax.lax.stop_gradient(masked_sum(ref_logps, ref_mask)))
        elif needs_ref:
            raise ValueError(
                f"preference objective {name!r}: the loss needs reference log-probs; give the "
                "batch `ref_chosen_logps` and `ref_rejected_logps` (a cache) or the state "
                "`ref_params`."
            )
        else:
            ref = (None, None)
        value, aux = jl.preference_objective(
            loss,
            seq[0],
            seq[1],
            ref[0],
            ref[1],
            beta=beta,
            chosen_lengths=lens[0],
            rejected_lengths=lens[1],
            mask=_pair_mask(batch),
            **hparams,
        )
        return value, aux.as_dict()

    return Objective(fn=fn, paired=True, weight_fn=_pair_count, name=name)


def make_sft_objective(model_def: ModelDef, *, logps_fn: Callable | None = None) -> Objective:
    """Supervised fine-tuning: mean negative log-likelihood of the loss-mask tokens.

    `L = -sum_{r,t} m_{r,t} log pi(x_{r,t+1} | x_{r,<=t}) / sum_{r,t} m_{r,t}` over every row of
    the batch (use `loss_mask` to train on completions only).

    Args:
      model_def: the model from `split_model`.
      logps_fn: `(params, batch) -> (token_logps, mask)`; default `make_token_logps_fn`.

    Returns:
      An unpaired `Objective` weighted by token count; its metric is `nll` (= the loss).

    Example:
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> from jaxpref.train import split_model
      >>> md, params = split_model(Transformer(preset("gpt2-tiny", vocab_size=8), rngs=nnx.Rngs(0)))
      >>> import jax.numpy as jnp
      >>> batch = {"input_ids": jnp.array([[1, 2, 3, 4]]), "attention_mask": jnp.ones((1, 4))}
      >>> loss, metrics = make_sft_objective(md).fn(params, batch, ref_params=None, rng=None)
      >>> print(abs(float(loss) - float(jnp.log(8.0))) < 0.1, sorted(metrics))
      True ['nll']
    """
    token_fn = make_token_logps_fn(model_def) if logps_fn is None else logps_fn

    def fn(params, batch, *, ref_params=None, rng=None):
        del ref_params, rng
        logps, mask = token_fn(params, batch)
        nll = -jnp.sum(logps) / jnp.maximum(jnp.sum(mask), 1.0)
        return nll, {"nll": nll}

    def weight(batch):
        return jnp.sum(_targets(batch)[1])

    return Objective(fn=fn, paired=False, weight_fn=weight, name="sft")


def make_reward_objective(
    model_def: ModelDef,
    *,
    margin: float | None = None,
    center_rewards_coefficient: float | None = None,
) -> Objective:
    """Bradley-Terry reward modelling on preference pairs with a scalar-head model.

    `L = mean_i [-log sigmoid(R(y_w^i) - R(y_l^i) - m) + c (R(y_w^i) + R(y_l^i))^2]` over the
    pairs of the batch's `pair_mask` (fillers excluded, from the metrics too), with
    `R` the score at the last real token (`model.score(input_ids, attention_mask)`, e.g.
    `jaxpref.models.ScalarHeadModel`). A batch `margin` `[B]` overrides the constant `margin`.

    Args:
      model_def: the reward model from `split_model`.
      margin: constant required reward gap `m` (None: 0).
      center_rewards_coefficient: coefficient `c` of the centering penalty (None: off).

    Returns:
      A paired `Objective`; metrics `rewards/{chosen,rejected,margins,accuracies}`.

    References:
      Ouyang et al., "Training language models to follow instructions with human feedback",
      arXiv:2203.02155.

    Example:
      >>> from flax import nnx
      >>> from jaxpref.models import ScalarHeadModel, preset
      >>> from jaxpref.train import split_model
      >>> md, _ = split_model(ScalarHeadModel(preset("gpt2-tiny"), rngs=nnx.Rngs(0)))
      >>> print(make_reward_objective(md).name)
      reward_model
    """

    def fn(params, batch, *, ref_params=None, rng=None):
        del ref_params, rng
        model = model_def.merge(params)
        scores = model.score(batch["input_ids"], batch["attention_mask"])
        chosen, rejected = split_pairs(f32(scores))
        m = batch.get("margin", margin)
        per_pair = jl.bradley_terry_loss(
            chosen, rejected, margin=m, center_rewards_coefficient=center_rewards_coefficient
        )
        mask = _pair_mask(batch)
        value = masked_mean(per_pair, mask)
        c, r = jax.lax.stop_gradient(chosen), jax.lax.stop_gradient(rejected)
        metrics = {
            "rewards/chosen": masked_mean(c, mask),
            "rewards/rejected": masked_mean(r, mask),
            "rewards/margins": masked_mean(c - r, mask),
            "rewards/accuracies": masked_mean((c > r).astype(jnp.float32), mask),
        }
        return value, metrics

    return Objective(fn=fn, paired=True, weight_fn=_pair_count, name="reward_model")


def _as_objective(objective) -> Objective:
    if isinstance(objective, Objective):
        return objective
    if callable(objective):
        return Objective(fn=objective, name=getattr(objective, "__name__", "objective"))
    raise TypeError(f"make_step: `objective` must be an Objective or callable, got {objective!r}.")


def split_microbatches(batch: Mapping, num: int, *, paired: bool) -> dict:
    """Splits a batch into `num` microbatches stacked on a new leading axis.

    Microbatch `i` takes every `num`-th example starting at `i` (so a batch sharded over its
    leading dimension splits without moving data). With `paired=True`, leaves of leading size
    `2B` are `[chosen; rejected]` rows and each microbatch keeps both halves of its pairs;
    leaves of leading size `B` (`pair_mask`, cached log-probs) split alongside.

    Args:
      batch: dict of arrays with a leading batch dimension.
      num: number of microbatches; must divide the number of pairs (or rows).
      paired: the batch is a preference batch.

    Returns:
      Dict of `[num, ...]` arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> b = {"input_ids": jnp.arange(8)[:, None], "pair_mask": jnp.arange(4)}
      >>> mb = split_microbatches(b, 2, paired=True)
      >>> print(mb["input_ids"][0, :, 0], mb["pair_mask"][0])
      [0 2 4 6] [0 2]
    """
    rows = batch["input_ids"].shape[0]
    n = rows // 2 if paired else rows
    if paired and rows % 2:
        raise ValueError(f"split_microbatches: a paired batch has 2B rows, got {rows}.")
    if n % num:
        unit = "pairs" if paired else "rows"
        raise ValueError(
            f"split_microbatches: {n} {unit} are not divisible into {num} microbatches "
            "(`accum_steps`)."
        )

    def one(path, x):
        x = jnp.asarray(x)
        lead = x.shape[0] if x.ndim else None
        if paired and lead == 2 * n:
            y = x.reshape(2, n // num, num, *x.shape[1:])
            y = jnp.moveaxis(y, 2, 0)
            return y.reshape(num, 2 * (n // num), *x.shape[1:])
        if lead == n:
            return jnp.moveaxis(x.reshape(n // num, num, *x.shape[1:]), 1, 0)
        raise ValueError(
            f"split_microbatches: batch entry {jax.tree_util.keystr(path)} has shape "
            f"{x.shape}; expected a leading dimension of {2 * n if paired else n}"
            f"{f' or {n}' if paired else ''}."
        )

    return jax.tree_util.tree_map_with_path(one, dict(batch))


def _grads(objective: Objective, params, batch, ref_params, rng, accum_steps: int):
    def loss_fn(p, b, key):
        return objective.fn(p, b, ref_params=ref_params, rng=key)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, metrics), grads = grad_fn(params, batch, rng)
        return loss, metrics, grads

    micro = split_microbatches(batch, accum_steps, paired=objective.paired)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    m_shapes = jax.eval_shape(
        lambda b: loss_fn(params, b, rng)[1], jax.tree.map(lambda x: x[0], micro)
    )
    m_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), m_shapes)

    def body(carry, xs):
        g_sum, l_sum, m_sum, w_sum = carry
        mb, i = xs
        (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
        w = jnp.float32(1.0) if objective.weight_fn is None else f32(objective.weight_fn(mb))
        g_sum = jax.tree.map(lambda a, g: a + w * g.astype(jnp.float32), g_sum, grads)
        m_sum = jax.tree.map(lambda a, m: a + w * f32(m), m_sum, metrics)
        return (g_sum, l_sum + w * f32(loss), m_sum, w_sum + w), None

    init = (zeros, jnp.zeros((), jnp.float32), m_zeros, jnp.zeros((), jnp.float32))
    steps = jnp.arange(accum_steps, dtype=jnp.uint32)
    (g_sum, l_sum, m_sum, w_sum), _ = jax.lax.scan(body, init, (micro, steps))
    scale = jnp.where(w_sum > 0, 1.0 / jnp.maximum(w_sum, 1e-30), 0.0)
    grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), g_sum, params)
    metrics = jax.tree.map(lambda m: m * scale, m_sum)
    return l_sum * scale, metrics, grads


def make_step(
    objective: Objective | Callable,
    optimizer: optax.GradientTransformation,
    *,
    accum_steps: int = 1,
    ref_sync: RefSyncConfig | None = None,
    learning_rate: Callable | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """A pure train step `step(state, batch) -> (state, metrics)`.

    One step splits the RNG key, computes `(loss, metrics)` and gradients of the objective (the
    weighted mean over `accum_steps` microbatches when accumulating, see `Objective.weight_fn`),
    applies the optax update, and increments `state.step`. With `ref_sync` enabled, after every
    `ref_sync.every_steps`-th update the reference becomes
    `alpha * params + (1 - alpha) * ref_params` (TR-DPO). The function has no side effects; jit it
    with `jit_step`.

    Args:
      objective: an `Objective` or a callable `fn(params, batch, *, ref_params, rng)`.
      optimizer: the optax transformation (the one the state was initialised with).
      accum_steps: microbatches per step (scanned with `lax.scan`).
      ref_sync: TR-DPO reference updates (None or mode "none": frozen reference).
      learning_rate: optional schedule; its value at the step is reported as `learning_rate`.

    Returns:
      The step function. Its metrics: `loss`, `grad_norm` (global norm before clipping), the
      objective's metrics, and `learning_rate` when a schedule is given.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxpref.train import init_train_state
      >>> def objective(params, batch, *, ref_params, rng):
      ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2), {}
      >>> tx = optax.sgd(0.1)
      >>> step = jax.jit(make_step(objective, tx))
      >>> state = init_train_state({"w": jnp.zeros(())}, tx, 0)
      >>> batch = {"x": jnp.array([1.0, 2.0]), "y": jnp.array([2.0, 4.0])}
      >>> for _ in range(50):
      ...     state, metrics = step(state, batch)
      >>> print(int(state.step), round(float(state.params["w"]), 3))
      50 2.0
    """
    obj = _as_objective(objective)
    if accum_steps < 1:
        raise ValueError(f"make_step: `accum_steps` must be >= 1, got {accum_steps}.")
    sync = ref_sync is not None and ref_sync.enabled

    def step(state: TrainState, batch):
        if hasattr(batch, "_asdict"):
            batch = dict(batch._asdict())
        if sync and state.ref_params is None:
            raise ValueError(
                "make_step: reference sync (TR-DPO) needs `state.ref_params`; a cached "
                "reference cannot be updated."
            )
        rng, key = jax.random.split(state.rng)
        loss, metrics, grads = _grads(obj, state.params, batch, state.ref_params, key, accum_steps)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_step = state.step + 1
        ref = state.ref_params
        if sync:
            due = new_step % ref_sync.every_steps == 0
            ref = jax.lax.cond(
                due,
                lambda p, r: sync_reference(p, r, alpha=ref_sync.mixing),
                lambda p, r: r,
                params,
                ref,
            )
        out = {"loss": f32(loss), "grad_norm": optax.tree.norm(grads)}
        out.update({k: f32(v) for k, v in metrics.items()})
        if learning_rate is not None:
            out["learning_rate"] = f32(learning_rate(state.step))
        new_state = TrainState(
            step=new_step, params=params, opt_state=opt_state, rng=rng, ref_params=ref
        )
        return new_state, out

    return step


def jit_step(
    step: Callable,
    *,
    state_sharding: TrainState | None = None,
    batch_sharding=None,
    donate: bool = True,
) -> Callable:
    """Compiles a step with plain `jax.jit`, optionally with shardings and donated state.

    Args:
      step: from `make_step`.
      state_sharding: `TrainState` of `NamedSharding`s (`state_sharding`), or None.
      batch_sharding: a sharding for every batch leaf (e.g.
        `jaxpref.parallel.batch_sharding(mesh, rules, ndim=1)`, splitting the leading
        dimension), a pytree of them, or None to take the batch's own placement. Give it with
        `state_sharding` (or with a state already placed on the same mesh).
      donate: donate the input state's buffers to the output (do not reuse the input state).

    Returns:
      The jitted step; it compiles once and is reused for every step of the same shapes.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxpref.train import init_train_state
      >>> tx = optax.sgd(0.5)
      >>> step = jit_step(make_step(lambda p, b, **_: (jnp.sum((p["w"] - b) ** 2), {}), tx))
      >>> state, _ = step(init_train_state({"w": jnp.zeros(2)}, tx, 0), jnp.ones(2))
      >>> print(state.params["w"])
      [1. 1.]
    """
    kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if state_sharding is not None or batch_sharding is not None:
        kwargs["in_shardings"] = (state_sharding, batch_sharding)
        kwargs["out_shardings"] = (state_sharding, None)
    return jax.jit(step, **kwargs)
