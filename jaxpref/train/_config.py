"""Frozen configuration dataclasses of the training engine, one per concern.

`TrainConfig` composes `LoopConfig`, `OptimizerConfig`, `CheckpointConfig`, `LoggingConfig` and
`RefSyncConfig`. Every class is a frozen dataclass of plain values, so `tyro` builds a command line
from it (`--optimizer.learning-rate 3e-4`) and `config_to_dict` stores it as JSON next to each
checkpoint. Derived values are methods (`OptimizerConfig.build`), never mutated fields.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "CheckpointConfig",
    "LoggingConfig",
    "LoopConfig",
    "OptimizerConfig",
    "RefSyncConfig",
    "TrainConfig",
    "config_to_dict",
]


def _positive(cls: str, field: str, value, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{cls}: `{field}` must be {bound}, got {value!r}.")


# The optimizers `OptimizerConfig.build` gives decoupled weight decay.
_DECAYING = ("adamw", "lion", "adafactor")


def _matrices(params):
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer, learning-rate schedule and gradient clipping.

    The learning rate rises linearly from 0 over `warmup_steps`, then follows `schedule` down to
    `learning_rate * final_lr_ratio` at the last step ("constant" stays at `learning_rate`).

    Args:
      name: "adamw", "adam", "sgd" (momentum `b1`), "lion" or "adafactor".
      learning_rate: peak learning rate.
      schedule: "constant", "cosine" or "linear" decay after warmup.
      warmup_steps: steps of linear warmup from 0.
      final_lr_ratio: learning rate at the last step as a fraction of `learning_rate`.
      weight_decay: decoupled weight decay (adamw, lion, adafactor; must be 0 otherwise).
      decay_vectors: also decay parameters of rank < 2 (biases, norm scales); by default only
        matrices and embeddings are decayed.
      b1: first-moment decay in [0, 1) (momentum for sgd; 0 disables it).
      b2: second-moment decay in [0, 1) (adam, adamw, lion).
      eps: denominator epsilon (adam, adamw), positive.
      grad_clip_norm: clip the global gradient norm to this value; None disables clipping.

    Example:
      >>> cfg = OptimizerConfig(learning_rate=1e-3, schedule="cosine", warmup_steps=10)
      >>> lr = cfg.learning_rate_schedule(100)
      >>> print(round(float(lr(5)), 6), round(float(lr(10)), 6), round(float(lr(100)), 6))
      0.0005 0.001 0.0
    """

    name: Literal["adamw", "adam", "sgd", "lion", "adafactor"] = "adamw"
    learning_rate: float = 1e-4
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    decay_vectors: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip_norm: float | None = 1.0

    def __post_init__(self):
        c = "OptimizerConfig"
        if self.name not in ("adamw", "adam", "sgd", "lion", "adafactor"):
            raise ValueError(f"{c}: unknown optimizer name {self.name!r}.")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"{c}: unknown schedule {self.schedule!r}.")
        _positive(c, "learning_rate", self.learning_rate)
        _positive(c, "warmup_steps", self.warmup_steps, allow_zero=True)
        _positive(c, "weight_decay", self.weight_decay, allow_zero=True)
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ValueError(f"{c}: `final_lr_ratio` must be in [0, 1], got {self.final_lr_ratio}.")
        if self.grad_clip_norm is not None:
            _positive(c, "grad_clip_norm", self.grad_clip_norm)
        for field in ("b1", "b2"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{c}: `{field}` must be in [0, 1), got {value!r}.")
        # Adam divides by sqrt(nu) + eps: eps = 0 gives 0 / 0 for a zero gradient.
        _positive(c, "eps", self.eps, allow_zero=self.name not in ("adam", "adamw"))
        if self.weight_decay and self.name not in _DECAYING:
            raise ValueError(
                f"{c}: `weight_decay` ({self.weight_decay!r}) is not applied by {self.name!r}; "
                f"use one of {', '.join(_DECAYING)} or set it to 0."
            )

    def learning_rate_schedule(self, total_steps: int) -> optax.Schedule:
        """The schedule `step -> learning rate` for a run of `total_steps` updates.

        Args:
          total_steps: number of optimizer updates of the run (sets the decay horizon).

        Returns:
          An optax schedule.
        """
        _positive("OptimizerConfig.learning_rate_schedule", "total_steps", total_steps)
        peak = self.learning_rate
        end = peak * self.final_lr_ratio
        warmup = min(self.warmup_steps, total_steps)
        decay = max(total_steps - warmup, 1)
        if self.schedule == "constant":
            after = optax.constant_schedule(peak)
        elif self.schedule == "cosine":
            after = optax.cosine_decay_schedule(peak, decay, alpha=self.final_lr_ratio)
        else:
            after = optax.linear_schedule(peak, end, decay)
        if warmup == 0:
            return after
        ramp = optax.linear_schedule(0.0, peak, warmup)
        return optax.join_schedules([ramp, after], [warmup])

    def build(self, total_steps: int) -> optax.GradientTransformation:
        """The optax transformation: optional global-norm clipping, then the optimizer.

        Args:
          total_steps: number of optimizer updates of the run (sets the decay horizon).

        Returns:
          An `optax.GradientTransformation`.

        Example:
          >>> import jax.numpy as jnp
          >>> tx = OptimizerConfig(name="sgd", learning_rate=0.5, b1=0.0).build(10)
          >>> updates, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
          >>> print(updates["w"])
          [-0.5]
        """
        lr = self.learning_rate_schedule(total_steps)
        mask = None if self.decay_vectors else _matrices
        wd = self.weight_decay
        if self.name == "adamw":
            opt = optax.adamw(lr, self.b1, self.b2, self.eps, weight_decay=wd, mask=mask)
        elif self.name == "adam":
            opt = optax.adam(lr, self.b1, self.b2, self.eps)
        elif self.name == "sgd":
            opt = optax.sgd(lr, momentum=self.b1 or None)
        elif self.name == "lion":
            opt = optax.lion(lr, self.b1, self.b2, weight_decay=wd, mask=mask)
        else:
            opt = optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=mask)
        if self.grad_clip_norm is None:
            return opt
        return optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), opt)


@dataclasses.dataclass(frozen=True)
class RefSyncConfig:
    """TR-DPO reference-model updates during training.

    Every `every_steps` updates, `ref <- alpha * policy + (1 - alpha) * ref` ("soft") or
    `ref <- policy` ("hard"); "none" keeps the reference frozen.

    Args:
      mode: "none", "soft" or "hard".
      alpha: mixing weight of the policy in a soft update.
      every_steps: update period `tau` in optimizer steps.

    References:
      Gorbatovski et al., "Learn Your Reference Model for Real Good Alignment", arXiv:2404.09656.

    Example:
      >>> cfg = RefSyncConfig(mode="soft", alpha=0.6, every_steps=512)
      >>> print(cfg.enabled, cfg.mixing)
      True 0.6
    """

    mode: Literal["none", "soft", "hard"] = "none"
    alpha: float = 0.6
    every_steps: int = 512

    def __post_init__(self):
        if self.mode not in ("none", "soft", "hard"):
            raise ValueError(f"RefSyncConfig: unknown mode {self.mode!r}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"RefSyncConfig: `alpha` must be in [0, 1], got {self.alpha}.")
        _positive("RefSyncConfig", "every_steps", self.every_steps)

    @property
    def enabled(self) -> bool:
        """Whether the reference is updated at all."""
        return self.mode != "none"

    @property
    def mixing(self) -> float:
        """Policy weight of an update: `alpha` (soft) or 1 (hard)."""
        return 1.0 if self.mode == "hard" else float(self.alpha)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often checkpoints are written, and how a run resumes.

    Args:
      directory: checkpoint directory; None uses `<run_dir>/checkpoints`.
      every_steps: save every this many steps (0: only at the end, on preemption and on stop).
      keep: number of most recent checkpoints kept.
      async_save: write in a background thread (the step loop continues after the
        device-to-host copy).
      resume: restore the latest good checkpoint of `directory` when there is one (False: the
        directory must hold no checkpoints; `train` refuses to mix two runs in it).
      verify: store a checksum of every array and check it on restore, so silently corrupted
        files are detected and the previous checkpoint is used instead.
      save_on_preemption: on SIGTERM, save at the current step and stop cleanly.

    Example:
      >>> print(CheckpointConfig(every_steps=50).keep)
      3
    """

    directory: str | None = None
    every_steps: int = 100
    keep: int = 3
    async_save: bool = True
    resume: bool = True
    verify: bool = True
    save_on_preemption: bool = True

    def __post_init__(self):
        _positive("CheckpointConfig", "every_steps", self.every_steps, allow_zero=True)
        _positive("CheckpointConfig", "keep", self.keep)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go: stdout lines and a progress bar, JSONL, TensorBoard.

    Args:
      every_steps: log training metrics every this many steps (and at the last step).
      stdout: print one line of metrics per log step.
      progress: show a progress bar with throughput and ETA (tqdm, on stderr).
      jsonl: append records to `<run_dir>/metrics.jsonl`.
      tensorboard: write TensorBoard events under `<run_dir>/tensorboard` (tensorboardX).

    Example:
      >>> print(LoggingConfig().every_steps)
      10
    """

    every_steps: int = 10
    stdout: bool = True
    progress: bool = True
    jsonl: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        _positive("LoggingConfig", "every_steps", self.every_steps)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Length of the run, evaluation period and numerical safety.

    Args:
      steps: total optimizer steps of the run (a resumed run continues up to this count).
      accum_steps: microbatches per step (gradient accumulation); the batch's pair or row count
        must be divisible by it.
      eval_every: run the evaluation hook every this many steps and at the end (0: never).
      seed: seed of the training RNG key.
      nan_check_every: check the loss, the gradient norm and the updated parameters for NaN/inf
        every this many steps; before every save the whole state (parameters, optimizer state,
        reference) is checked too. A non-finite value stops the run (`NonFiniteError`).

    Example:
      >>> print(LoopConfig(steps=200, accum_steps=4).accum_steps)
      4
    """

    steps: int = 1000
    accum_steps: int = 1
    eval_every: int = 0
    seed: int = 0
    nan_check_every: int = 1

    def __post_init__(self):
        _positive("LoopConfig", "steps", self.steps)
        _positive("LoopConfig", "accum_steps", self.accum_steps)
        _positive("LoopConfig", "eval_every", self.eval_every, allow_zero=True)
        _positive("LoopConfig", "nan_check_every", self.nan_check_every)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run: its directory and one config per concern.

    Args:
      run_dir: directory of checkpoints, metrics and TensorBoard events.
      loop: steps, accumulation, evaluation period, seed.
      optimizer: optimizer and schedule.
      checkpoint: checkpointing and resumption.
      logging: metric sinks.
      ref_sync: TR-DPO reference updates.

    Example:
      >>> cfg = TrainConfig(run_dir="/tmp/run", loop=LoopConfig(steps=20))
      >>> print(cfg.checkpoint_dir, cfg.loop.steps)
      /tmp/run/checkpoints 20
    """

    run_dir: str = "runs/train"
    loop: LoopConfig = LoopConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    ref_sync: RefSyncConfig = RefSyncConfig()

    @property
    def checkpoint_dir(self) -> str:
        """`checkpoint.directory`, or `<run_dir>/checkpoints` when unset."""
        if self.checkpoint.directory is not None:
            return self.checkpoint.directory
        return f"{self.run_dir.rstrip('/')}/checkpoints"

    def replace(self, **changes) -> TrainConfig:
        """A copy with the given top-level fields changed.

        Args:
          **changes: top-level field name -> new value.

        Returns:
          The new config.
        """
        return dataclasses.replace(self, **changes)

    def step_options(self) -> dict[str, Any]:
        """Keyword arguments of `make_step` that this config sets.

        Returns:
          `{"accum_steps", "ref_sync", "learning_rate"}` (the schedule, for logging).

        Example:
          >>> print(sorted(TrainConfig().step_options()))
          ['accum_steps', 'learning_rate', 'ref_sync']
        """
        return {
            "accum_steps": self.loop.accum_steps,
            "ref_sync": self.ref_sync,
            "learning_rate": self.optimizer.learning_rate_schedule(self.loop.steps),
        }


def config_to_dict(config: Any) -> Any:
    """A JSON-compatible copy of a (nested) config: dataclasses become dicts, tuples lists.

    Values JSON cannot represent are stored as their `str`.

    Args:
      config: a dataclass instance, a mapping, or any JSON-like value.

    Returns:
      Plain dicts, lists, strings, numbers, booleans and None.

    Example:
      >>> print(config_to_dict(RefSyncConfig(mode="hard")))
      {'mode': 'hard', 'alpha': 0.6, 'every_steps': 512}
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config, default=str))
