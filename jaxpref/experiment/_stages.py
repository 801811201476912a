"""Running `jaxpref.train` stages inside an experiment's run directory."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import jax

import jaxpref.train as jt
from jaxpref.experiment._errors import RunStopped

__all__ = ["mesh_for", "require_completed", "stage_config", "stage_records"]


def stage_config(
    stage_dir: str | os.PathLike,
    *,
    loop: jt.LoopConfig,
    optimizer: jt.OptimizerConfig,
    checkpoint: jt.CheckpointConfig,
    logging: jt.LoggingConfig,
    ref_sync: jt.RefSyncConfig = jt.RefSyncConfig(),
) -> jt.TrainConfig:
    """The `TrainConfig` of one stage writing to `stage_dir`.

    A shared `checkpoint.directory` gets one subdirectory per stage (named like `stage_dir`),
    so stages never share checkpoints.

    Args:
      stage_dir: the stage's directory (metrics, checkpoints unless `checkpoint.directory`).
      loop: steps, evaluation period, seed.
      optimizer: optimizer and schedule.
      checkpoint: checkpointing.
      logging: metric sinks.
      ref_sync: TR-DPO reference updates.
    """
    stage_dir = pathlib.Path(stage_dir)
    if checkpoint.directory is not None:
        directory = str(pathlib.Path(checkpoint.directory) / stage_dir.name)
        checkpoint = dataclasses.replace(checkpoint, directory=directory)
    return jt.TrainConfig(
        run_dir=str(stage_dir),
        loop=loop,
        optimizer=optimizer,
        checkpoint=checkpoint,
        logging=logging,
        ref_sync=ref_sync,
    )


def require_completed(result, stage: str, out) -> None:
    """Raises `RunStopped` unless a `jaxpref.train.TrainResult` ran to its last step.

    Args:
      result: the stage's `TrainResult`.
      stage: the stage's name, for the message.
      out: the run directory to resume.
    """
    if result.stop_reason != "completed":
        raise RunStopped(stage, int(result.step), result.stop_reason, out)


def _by_step(records: list[dict]) -> list[dict]:
    by_step: dict[int, dict] = {}
    for r in records:
        by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def stage_records(stage_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """A stage's `(train, eval)` metric records, one per step (a resumed run's re-logged steps
    keep their last record).

    Args:
      stage_dir: the stage's directory.
    """
    records = jt.read_metrics(stage_dir)
    return (
        _by_step([r for r in records if r.get("split") == "train"]),
        _by_step([r for r in records if r.get("split") == "eval"]),
    )


def mesh_for(sharding: str):
    """`(mesh, rules)` of a `jaxpref.parallel` preset over all devices; `(None, None)` for "none".

    "dp" puts every device on the data axis, "fsdp" on the fsdp axis, "fsdp_tp" uses a tensor
    axis of 2 when the device count is even.

    Args:
      sharding: "none", "dp", "fsdp" or "fsdp_tp".
    """
    if sharding == "none":
        return None, None
    from jaxpref.parallel import MeshConfig, make_mesh, sharding_rules

    if sharding == "dp":
        mesh_config = MeshConfig(data=-1, fsdp=1)
    elif sharding == "fsdp":
        mesh_config = MeshConfig(fsdp=-1)
    elif sharding == "fsdp_tp":
        tensor = 2 if jax.device_count() % 2 == 0 and jax.device_count() > 1 else 1
        mesh_config = MeshConfig(fsdp=-1, tensor=tensor)
    else:
        raise ValueError(f"unknown sharding preset {sharding!r}; use none, dp, fsdp or fsdp_tp.")
    return make_mesh(mesh_config), sharding_rules(sharding)
