"""Training engine: train state, pure step builders, the checkpointed host loop, configs.

* State: `split_model` turns an NNX module into a static `ModelDef` and a params dict;
  `TrainState` (step, params, opt_state, rng, ref_params) is a plain pytree;
  `create_train_state` / `init_train_state` build it, sharded by `state_sharding` when a mesh
  and a `jaxpref.parallel` rules table are given.
* Steps: objectives for SFT (`make_sft_objective`), Bradley-Terry reward models
  (`make_reward_objective`) and any pairwise loss of `jaxpref.losses`
  (`make_preference_objective`, reference log-probs live or from a cache); `make_step` adds
  gradient accumulation, the optax update and TR-DPO reference sync; `jit_step` compiles it.
* Loop: `train` resumes from the latest good checkpoint (`TrainCheckpointer`), guards against
  NaN/inf, saves on SIGTERM, logs (`MetricLogger`: stdout, tqdm, JSONL, TensorBoard) and runs
  evaluation hooks; `TrainResult.stop_reason` is a `StopReason`.
* Fingerprints: `params_fingerprint` (SHA-256 of a parameter tree that a checkpoint round trip
  keeps) names a set of parameters in reports and run guards; `state_checksums` are the
  per-array checksums a checkpoint is verified with.
* Configs: `TrainConfig` of `LoopConfig`, `OptimizerConfig`, `CheckpointConfig`,
  `LoggingConfig`, `RefSyncConfig` (frozen dataclasses, `tyro`-ready).

A DPO run (`config` a `TrainConfig`, `data` an iterator of `[2B, T]` pair batches)::

    tx = config.optimizer.build(config.loop.steps)
    model_def, state, sharding = create_train_state(
        model, tx, config.loop.seed, with_reference=True, mesh=mesh, rules=rules)
    objective = make_preference_objective(model_def, "sigmoid", beta=0.1)
    step = jit_step(make_step(objective, tx, **config.step_options()), state_sharding=sharding,
                    batch_sharding=batch_sharding(mesh, rules, ndim=1))
    result = train(config, state, step, data)
"""

from jaxpref._tree import params_fingerprint
from jaxpref.train._checkpoint import (
    CheckpointWarning,
    CorruptCheckpointError,
    Restored,
    TrainCheckpointer,
    state_checksums,
)
from jaxpref.train._config import (
    CheckpointConfig,
    LoggingConfig,
    LoopConfig,
    OptimizerConfig,
    RefSyncConfig,
    TrainConfig,
    config_to_dict,
)
from jaxpref.train._loop import (
    DataIterator,
    IndexedIterator,
    NonFiniteError,
    StopReason,
    TrainResult,
    train,
)
from jaxpref.train._metrics import (
    MetricLogger,
    read_metrics,
)
from jaxpref.train._state import (
    ModelDef,
    TrainState,
    create_train_state,
    init_train_state,
    split_model,
    state_sharding,
    sync_reference,
)
from jaxpref.train._steps import (
    Objective,
    add_cached_reference,
    as_batch,
    jit_step,
    make_pair_logps_fn,
    make_preference_objective,
    make_reward_objective,
    make_sft_objective,
    make_step,
    make_token_logps_fn,
    split_microbatches,
)

__all__ = [
    "CheckpointConfig",
    "CheckpointWarning",
    "CorruptCheckpointError",
    "DataIterator",
    "IndexedIterator",
    "LoggingConfig",
    "LoopConfig",
    "MetricLogger",
    "ModelDef",
    "NonFiniteError",
    "Objective",
    "OptimizerConfig",
    "RefSyncConfig",
    "Restored",
    "StopReason",
    "TrainCheckpointer",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "add_cached_reference",
    "as_batch",
    "config_to_dict",
    "create_train_state",
    "init_train_state",
    "jit_step",
    "make_pair_logps_fn",
    "make_preference_objective",
    "make_reward_objective",
    "make_sft_objective",
    "make_step",
    "make_token_logps_fn",
    "params_fingerprint",
    "read_metrics",
    "split_microbatches",
    "split_model",
    "state_checksums",
    "state_sharding",
    "sync_reference",
    "train",
]
