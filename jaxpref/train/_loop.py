"""The host training loop: resume, step, check, log, evaluate, checkpoint, stop cleanly.

`train(config, state, step_fn, data)` runs a jitted step over batches from a data iterator up to
`config.loop.steps`. Everything host-side happens between steps:

* resume: the latest good checkpoint of the run (state, data-iterator position, RNG) is restored
  before the first step, so a run killed at any point and started again with the same command
  ends with the same parameters, bit for bit, as one that never stopped;
* NaN/inf guard: every `loop.nan_check_every` steps the loss, the gradient norm and the updated
  parameters are checked (one jitted all-finite reduction over the parameters, fetched with the
  metrics), and before every save the whole state (parameters, optimizer state, reference) is;
  a non-finite value stops the run with `NonFiniteError` naming the step and the leaves. Nothing
  non-finite is ever saved and a resumed checkpoint is checked too, so the last checkpoint is the
  last good state;
* SIGTERM (preemption): the current step is saved and `train` returns with
  `stop_reason=StopReason.PREEMPTED`;
* metrics every `logging.every_steps` (stdout, progress bar with ETA, JSONL, TensorBoard),
  evaluation hooks every `loop.eval_every` steps, checkpoints every `checkpoint.every_steps`
  and at the end.

The data iterator is a `DataIterator`, an iterator of batches with `get_state()` /
`set_state(state)` (a grain `DatasetIterator`, or `IndexedIterator` here) whose state is
JSON-compatible or bytes and is checkpointed; a plain iterator also works, without a saved
position (see `train`).
"""

from __future__ import annotations

import enum
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref._tree import path_label
from jaxpref.train._checkpoint import CheckpointWarning, Restored, TrainCheckpointer
from jaxpref.train._config import TrainConfig, config_to_dict
from jaxpref.train._metrics import MetricLogger
from jaxpref.train._state import TrainState
from jaxpref.train._steps import as_batch

__all__ = [
    "DataIterator",
    "IndexedIterator",
    "NonFiniteError",
    "StopReason",
    "TrainResult",
    "train",
]


@runtime_checkable
class DataIterator(Protocol):
    """An iterator of batches whose position can be saved and restored.

    `get_state()` returns a JSON-compatible value or bytes; `set_state(state)` puts the iterator
    back at that position. grain's `DatasetIterator` and `IndexedIterator` satisfy it, and
    `isinstance(it, DataIterator)` tells whether an iterator does (it has all three methods);
    `train` checkpoints the position of such an iterator only.
    """

    def __next__(self) -> Any:
        """The next batch."""

    def get_state(self) -> Any:
        """The current position."""

    def set_state(self, state: Any) -> None:
        """Moves to a position returned by `get_state`.

        Args:
          state: a value returned by `get_state` (JSON-compatible or bytes), e.g. read back from
            a checkpoint.
        """


class IndexedIterator:
    """A deterministic iterator whose `i`-th batch is `batch_fn(i)`; its state is `{"index": i}`.

    Args:
      batch_fn: `index -> batch` (must be a pure function of the index, e.g. a seeded sampler
        or a slice of a shuffled dataset).
      start: first index.
      stop: index at which the iterator is exhausted (None: never).

    Example:
      >>> it = IndexedIterator(lambda i: i * 10)
      >>> print(next(it), next(it), it.get_state())
      0 10 {'index': 2}
      >>> it.set_state({"index": 5}); print(next(it))
      50
    """

    def __init__(self, batch_fn: Callable[[int], Any], *, start: int = 0, stop: int | None = None):
        self.batch_fn = batch_fn
        self.index = int(start)
        self.stop = stop

    def __iter__(self) -> IndexedIterator:
        """Returns itself."""
        return self

    def __next__(self):
        """The batch at the current index; advances the index."""
        if self.stop is not None and self.index >= self.stop:
            raise StopIteration
        batch = self.batch_fn(self.index)
        self.index += 1
        return batch

    def get_state(self) -> dict:
        """`{"index": i}`: the index of the next batch."""
        return {"index": self.index}

    def set_state(self, state: Mapping) -> None:
        """Sets the index of the next batch.

        Args:
          state: a mapping with key `"index"` (as returned by `get_state`), the index of the
            next batch.
        """
        self.index = int(state["index"])


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite value; the run stopped.

    The value is a loss or gradient norm, a parameter after an update, an optimizer-state or
    reference array about to be saved, or an array of the checkpoint a run resumed from.

    Attributes:
      step: the step (number of updates applied) at which the non-finite value was detected. A
        loss or gradient norm of step `n` is computed from the parameters before update `n`;
        parameters checked at step `n` are those after it. With `nan_check_every > 1` the value
        may have appeared up to `nan_check_every - 1` steps earlier.
      metrics: the host values of that step's metrics ({} when none were computed).
      last_checkpoint: the latest checkpoint step known to be finite (None if none).
      paths: the state leaves found non-finite (`params['w']`, `opt_state[0].mu['w']`, ...);
        empty when only the loss or gradient norm was.

    Example:
      >>> err = NonFiniteError("loss is nan", step=3, metrics={}, last_checkpoint=2)
      >>> print(err.step, err.last_checkpoint, err.paths)
      3 2 ()
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        metrics: Mapping,
        last_checkpoint: int | None,
        paths: Sequence[str] = (),
    ):
        super().__init__(message)
        self.step = step
        self.metrics = dict(metrics)
        self.last_checkpoint = last_checkpoint
        self.paths = tuple(paths)


class StopReason(enum.StrEnum):
    """Why `train` returned (`TrainResult.stop_reason`).

    A `str` enum: members compare equal to their values and serialise to JSON as them.

    * `COMPLETED` ("completed"): the run reached `config.loop.steps`;
    * `PREEMPTED` ("preempted"): SIGTERM (or, on several hosts, JAX's preemption notice)
      arrived; the step reached was saved;
    * `DATA_EXHAUSTED` ("data_exhausted"): the data iterator ran out; the step reached was saved.

    Example:
      >>> import json
      >>> print(StopReason.PREEMPTED == "preempted", json.dumps(StopReason.COMPLETED))
      True "completed"
    """

    COMPLETED = "completed"
    PREEMPTED = "preempted"
    DATA_EXHAUSTED = "data_exhausted"


class TrainResult(NamedTuple):
    """Outcome of `train`.

    Attributes:
      state: the final `TrainState`.
      step: the final step.
      start_step: the step the run started from (the restored step when resuming, else 0 or the
        given state's step).
      restored: whether a checkpoint was restored.
      stop_reason: a `StopReason` ("completed", "preempted" or "data_exhausted").
      metrics: the last logged training metrics (Python numbers).
      eval_metrics: the last evaluation metrics (Python numbers), or {}.
    """

    state: TrainState
    step: int
    start_step: int
    restored: bool
    stop_reason: StopReason
    metrics: dict
    eval_metrics: dict


class _Preemption:
    """Turns SIGTERM into a flag checked between steps (main thread, single process)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def check(self, manager_step: int, checkpointer: TrainCheckpointer) -> bool:
        if jax.process_count() > 1:
            # All processes must agree on the step; orbax asks JAX's preemption service.
            return checkpointer.reached_preemption(manager_step) or self.requested
        return self.requested


def _diff(old, new, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON trees (`a.b: old -> new`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_diff(old.get(key), new.get(key), name))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _count_tokens(batch) -> int | None:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is None and hasattr(batch, "attention_mask"):
        mask = batch.attention_mask
    if isinstance(mask, np.ndarray):
        return int(np.count_nonzero(mask))
    return None


def _finite(values: Mapping) -> bool:
    return all(math.isfinite(float(values[k])) for k in ("loss", "grad_norm") if k in values)


def _is_float(x) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact))


@jax.jit
def _finite_flags(tree) -> jax.Array:
    """`[n]` bool: whether each floating-point leaf is all finite (one fused pass, one fetch)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _is_float(x)]
    return jnp.stack(flags) if flags else jnp.ones((0,), bool)


def _nonfinite_paths(tree, flags) -> list[str]:
    """The paths (`params['w']`) of the leaves whose `_finite_flags` entry is False."""
    if np.all(flags):
        return []
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [path_label(path) for path, x in flat if _is_float(x)]
    return [n for n, ok in zip(names, np.asarray(flags), strict=True) if not ok]


def _saved_part(state: TrainState) -> dict:
    """The floating-point parts of a state that a checkpoint holds, by name."""
    out = {"params": state.params, "opt_state": state.opt_state}
    if state.ref_params is not None:
        out["ref_params"] = state.ref_params
    return out


def _host(metrics: Mapping, keys=None) -> dict:
    picked = metrics if keys is None else {k: metrics[k] for k in keys if k in metrics}
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(picked)).items()}


def train(
    config: TrainConfig,
    state: TrainState,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, Mapping]],
    data: Iterator,
    *,
    prepare_batch: Callable[[Any], Any] | None = None,
    eval_fn: Callable[[TrainState], Mapping[str, Any]] | None = None,
    callbacks: Sequence[Callable[[int, TrainState, Mapping], None]] = (),
    extra_config: Any = None,
) -> TrainResult:
    """Runs (or resumes) a training run to `config.loop.steps`.

    Args:
      config: the run configuration (directory, steps, checkpoint and logging settings).
      state: the freshly initialised state; also the template (structure, dtypes, shardings)
        a checkpoint is restored into.
      step_fn: the jitted step, `step_fn(state, batch) -> (state, metrics)` (`jit_step`).
      data: iterator of batches. A `DataIterator` (with `get_state` / `set_state`: grain's
        `DatasetIterator`, `IndexedIterator`) has its position saved in every checkpoint and
        set back on resume, so a resumed run sees exactly the batches an uninterrupted run
        would. A plain iterator has no position to save: `train` warns
        (`CheckpointWarning`), its checkpoints hold no data state, and a resumed run takes
        batches from the iterator as given (normally the start of the data stream again).
      prepare_batch: host function applied to each batch before the step (e.g. add cached
        reference log-probs, shard it with `jaxpref.parallel.shard_batch`); default `as_batch`.
      eval_fn: `state -> {name: scalar}` run every `loop.eval_every` steps and at the end;
        logged with split "eval".
      callbacks: `callback(step, state, metrics)` called after every step (metrics on device).
        With a donating step (`jit_step`'s default) the state passed to hooks is consumed by
        the next step: read from it, do not keep it.
      extra_config: JSON-compatible configuration stored in each checkpoint next to `config`
        (e.g. the experiment's whole config).

    Returns:
      A `TrainResult`; its `stop_reason` is a `StopReason`.

    Raises:
      NonFiniteError: a step produced a non-finite loss, gradient norm or parameter, a state
        about to be saved holds a non-finite array, or the resumed checkpoint does (the run's
        checkpoints are left as they were, the latest one being the last good state). The
        exception is the report: the loop does not print its message (the metrics file gets
        a record with `nonfinite=1`).
      ValueError: `checkpoint.resume` is False and the checkpoint directory holds checkpoints.
      CorruptCheckpointError: checkpoints exist but none can be restored into `state`.

    Example:
      >>> import tempfile, jax.numpy as jnp, optax
      >>> from jaxpref.train import (LoggingConfig, LoopConfig, init_train_state, jit_step,
      ...                            make_step)
      >>> tx = optax.sgd(0.2)
      >>> step = jit_step(make_step(lambda p, b, **_: (jnp.sum((p["w"] - b["y"]) ** 2), {}), tx))
      >>> data = IndexedIterator(lambda i: {"y": jnp.full((2,), 3.0)})
      >>> cfg = TrainConfig(run_dir=tempfile.mkdtemp(), loop=LoopConfig(steps=30),
      ...                   logging=LoggingConfig(stdout=False, progress=False, tensorboard=False))
      >>> result = train(cfg, init_train_state({"w": jnp.zeros(2)}, tx, 0), step, data)
      >>> print(result.step, result.stop_reason, result.state.params["w"].round(2))
      30 completed [3. 3.]
    """
    resumable = isinstance(data, DataIterator)
    if not resumable:
        warnings.warn(
            "train: the data iterator has no get_state/set_state; a resumed run will restart "
            "the data stream instead of continuing it.",
            CheckpointWarning,
            stacklevel=2,
        )
    run = _Run(config, state, data, resumable=resumable, extra_config=extra_config)
    try:
        run.check_resumed()
        run.loop(step_fn, as_batch if prepare_batch is None else prepare_batch, eval_fn, callbacks)
    except BaseException:
        run.close()
        raise
    run.close()
    return run.result()


class _Run:
    """The host side of one `train` call: checkpointer, logger, and what the steps share.

    `__init__` sets the run up (checkpointer, resume or refusal, data position, logger);
    `check_resumed` guards the restored state; `loop` runs the steps, each one `_step` (the
    update and its NaN/inf guard) then `_periodic` (logging, evaluation, checkpoint); `close`
    releases the checkpointer and the logger; `result` is the outcome.
    """

    def __init__(
        self,
        config: TrainConfig,
        state: TrainState,
        data: Iterator,
        *,
        resumable: bool,
        extra_config: Any,
    ):
        self.config = config
        self.data = data
        self.resumable = resumable
        self.stored_config = {
            "train": config_to_dict(config),
            "extra": config_to_dict(extra_config),
        }
        ckpt = config.checkpoint
        self.checkpointer = TrainCheckpointer(
            config.checkpoint_dir, keep=ckpt.keep, async_save=ckpt.async_save, verify=ckpt.verify
        )
        try:
            restored = self._restore(state)
            self.restored_step = None if restored is None else restored.step
            self.state = state if restored is None else restored.state
            self.start = self.step = int(jax.device_get(self.state.step))
            self.logger = MetricLogger(
                config.run_dir, config.logging, total_steps=config.loop.steps, start_step=self.start
            )
        except BaseException:
            self.checkpointer.close()
            raise
        if restored is not None:
            self.logger.message(
                f"resumed from checkpoint step {self.start} in {config.checkpoint_dir}"
            )
        self.last_saved = self.checkpointer.latest_step()
        # The latest checkpoint known to hold finite values: the restored one (checked by
        # `check_resumed`) or one this run saved (checked before saving).
        self.last_good = self.restored_step
        self.metrics: Mapping = {}  # the last step's metrics, on device
        self.host_metrics: dict = {}  # the last logged ones
        self.eval_metrics: dict = {}
        self.stop_reason = StopReason.COMPLETED
        # The current logging window, for throughput.
        self.t_log = time.perf_counter()
        self.steps_since_log = 0
        self.tokens = 0

    # -- setup ----------------------------------------------------------------------------

    def _restore(self, template: TrainState) -> Restored | None:
        """The latest good checkpoint, with the data position set back; None for a new run.

        Raises ValueError when checkpoints exist and `checkpoint.resume` is False.
        """
        config = self.config
        if not config.checkpoint.resume:
            existing = self.checkpointer.latest_step()
            if existing is not None:
                raise ValueError(
                    f"train: {config.checkpoint_dir} already holds checkpoints (latest step "
                    f"{existing}) and `checkpoint.resume` is False: a new run there would mix "
                    "its checkpoints with the old ones (and skip saving their steps). Remove "
                    "them, choose another directory, or resume."
                )
            return None
        restored = self.checkpointer.restore(template)
        if restored is None:
            return None
        if restored.data_state is not None and self.resumable:
            self.data.set_state(restored.data_state)
        changed = _diff(restored.config or {}, self.stored_config)
        if changed:
            shown = "; ".join(changed[:8]) + ("; ..." if len(changed) > 8 else "")
            warnings.warn(
                f"train: resuming {config.checkpoint_dir} at step {restored.step} with a "
                f"configuration that differs from the stored one: {shown}.",
                CheckpointWarning,
                stacklevel=4,  # _restore <- __init__ <- train <- train's caller
            )
        return restored

    def check_resumed(self) -> None:
        """Stops with `NonFiniteError` when the restored state holds a non-finite array.

        A checkpoint written elsewhere (or by an older version) may hold one.
        """
        if self.restored_step is None:
            return
        tree = _saved_part(self.state)
        bad = _nonfinite_paths(tree, jax.device_get(_finite_flags(tree)))
        if bad:
            self.last_good = None
            where = f"{self.config.checkpoint_dir}/{self.start}"
            reason = f"non-finite resumed checkpoint {where} (move it aside to resume earlier)"
            self._fail({}, bad, reason)

    # -- steps ----------------------------------------------------------------------------

    def loop(
        self,
        step_fn: Callable[[TrainState, Any], tuple[TrainState, Mapping]],
        prepare: Callable[[Any], Any],
        eval_fn: Callable[[TrainState], Mapping[str, Any]] | None,
        callbacks: Sequence[Callable[[int, TrainState, Mapping], None]],
    ) -> None:
        """Steps to `loop.steps`, or until the data ends or a preemption is requested."""
        with _Preemption(self.config.checkpoint.save_on_preemption) as preempt:
            while self.step < self.config.loop.steps:
                try:
                    raw = next(self.data)
                except StopIteration:
                    self.stop_reason = StopReason.DATA_EXHAUSTED
                    break
                self._step(step_fn, prepare, raw)
                for callback in callbacks:
                    callback(self.step, self.state, self.metrics)
                preempted = self._periodic(eval_fn, preempt)
                self.logger.advance()
                if preempted:
                    self.stop_reason = StopReason.PREEMPTED
                    self.logger.message(f"preempted: saved step {self.step}; stopping.")
                    break
            if self.stop_reason is StopReason.DATA_EXHAUSTED and self.step > self.start:
                self._save()

    def _step(self, step_fn, prepare, raw) -> None:
        """One update, its throughput bookkeeping, and the NaN/inf guard when one is due."""
        n_tok = _count_tokens(raw)
        self.state, self.metrics = step_fn(self.state, prepare(raw))
        self.step += 1
        if self.step == self.start + 1:
            # Throughput excludes the first step of a session (it includes compilation).
            jax.block_until_ready(self.metrics)
            self._new_window()
        else:
            self.steps_since_log += 1
            self.tokens += n_tok or 0
        if self._log_due() or self.step % self.config.loop.nan_check_every == 0:
            self._check_finite({"params": self.state.params}, "params after the update")

    def _check_finite(self, tree: Mapping, what: str) -> None:
        """Stops with `NonFiniteError` unless this step's loss and gradient norm and every
        floating-point array of `tree` are finite.

        One fetch for all of them: the metrics and one all-finite flag per array of `tree` (the
        updated params, or all of a state about to be saved).
        """
        picked = {k: self.metrics[k] for k in ("loss", "grad_norm") if k in self.metrics}
        values, flags = jax.device_get((picked, _finite_flags(tree)))
        values = {k: float(np.asarray(v)) for k, v in values.items()}
        bad = _nonfinite_paths(tree, flags)
        if not _finite(values):
            self._fail(_host(self.metrics), bad, "non-finite training metrics")
        if bad:
            self._fail(values, bad, f"non-finite {what}")

    def _fail(self, values: Mapping, paths: Sequence[str], reason: str) -> None:
        """Records the step as non-finite in the metric files and raises `NonFiniteError`.

        The exception is the one report: nothing is printed here.
        """
        head = f"{reason} at step {self.step}"
        if values:
            head += " (" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")"
        if paths:
            more = f", ... ({len(paths) - 8} more)" if len(paths) > 8 else ""
            head += f"; non-finite arrays: {', '.join(paths[:8])}{more}"
        message = (
            f"{head}; stopped. The last good checkpoint is step {self.last_good} in "
            f"{self.config.checkpoint_dir}."
            if self.last_good is not None
            else f"{head}; stopped with no checkpoint known to be good."
        )
        self.logger.log(self.step, {**values, "nonfinite": 1}, split="train", echo=False)
        raise NonFiniteError(
            message, step=self.step, metrics=values, last_checkpoint=self.last_good, paths=paths
        )

    # -- periodic work --------------------------------------------------------------------

    def _log_due(self) -> bool:
        every = self.config.logging.every_steps
        return self.step % every == 0 or self.step == self.config.loop.steps

    def _periodic(self, eval_fn, preempt: _Preemption) -> bool:
        """The logging, evaluation and checkpoint due after this step; whether it was preempted
        (the step is then saved)."""
        loop, ckpt = self.config.loop, self.config.checkpoint
        final = self.step == loop.steps
        if self._log_due():
            self._log()
        want_eval = (
            eval_fn is not None and loop.eval_every and (self.step % loop.eval_every == 0 or final)
        )
        preempted = ckpt.save_on_preemption and preempt.check(self.step, self.checkpointer)
        periodic = ckpt.every_steps and self.step % ckpt.every_steps == 0
        if want_eval or periodic or final or preempted:
            # Evaluation and checkpointing are not training time: keep them out of the
            # throughput of the next logging window.
            jax.block_until_ready(self.metrics)
            paused = time.perf_counter()
            if want_eval:
                self._evaluate(eval_fn)
            if periodic or final or preempted:
                self._save()
            self.t_log += time.perf_counter() - paused
        return bool(preempted)

    def _new_window(self) -> None:
        self.t_log, self.steps_since_log, self.tokens = time.perf_counter(), 0, 0

    def _log(self) -> None:
        """Logs this step's metrics and the throughput since the last log."""
        self.host_metrics = _host(self.metrics)
        perf = {}
        if self.steps_since_log:
            elapsed = max(time.perf_counter() - self.t_log, 1e-9)
            perf["perf/steps_per_s"] = self.steps_since_log / elapsed
            if self.tokens:
                perf["perf/tokens_per_s"] = self.tokens / elapsed
        self.logger.log(self.step, {**self.host_metrics, **perf})
        self._new_window()

    def _evaluate(self, eval_fn: Callable[[TrainState], Mapping[str, Any]]) -> None:
        record = self.logger.log(self.step, eval_fn(self.state), split="eval")
        self.eval_metrics = {k: v for k, v in record.items() if k not in ("step", "split", "time")}

    def _save(self) -> None:
        """Checkpoints this step (once), after checking that all of the state is finite."""
        if self.last_saved == self.step:
            return
        self._check_finite(_saved_part(self.state), "train state (not saved)")
        self.checkpointer.save(
            self.step,
            self.state,
            data_state=self.data.get_state() if self.resumable else None,
            config=self.stored_config,
            meta={"metrics": dict(self.host_metrics)},
        )
        self.last_saved = self.last_good = self.step

    # -- finish ---------------------------------------------------------------------------

    def close(self) -> None:
        """Waits for pending checkpoint writes; closes the checkpointer and the metric sinks."""
        self.checkpointer.close()
        self.logger.close()

    def result(self) -> TrainResult:
        """The outcome of the run."""
        return TrainResult(
            state=self.state,
            step=int(jax.device_get(self.state.step)),
            start_step=self.start,
            restored=self.restored_step is not None,
            stop_reason=self.stop_reason,
            metrics=self.host_metrics,
            eval_metrics=self.eval_metrics,
        )
