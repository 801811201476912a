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
  `stop_reason="preempted"`;
* metrics every `logging.every_steps` (stdout, progress bar with ETA, JSONL, TensorBoard),
  evaluation hooks every `loop.eval_every` steps, checkpoints every `checkpoint.every_steps`
  and at the end.

The data iterator is any iterator of batches with `get_state()` / `set_state(state)` (a grain
`DatasetIterator`, or `IndexedIterator` here); its state is JSON-compatible or bytes.
"""

from __future__ import annotations

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

from jaxpref.train._checkpoint import CheckpointWarning, TrainCheckpointer
from jaxpref.train._config import TrainConfig, config_to_dict
from jaxpref.train._metrics import MetricLogger
from jaxpref.train._state import TrainState
from jaxpref.train._steps import as_batch

__all__ = [
    "DataIterator",
    "IndexedIterator",
    "NonFiniteError",
    "TrainResult",
    "train",
]


@runtime_checkable
class DataIterator(Protocol):
    """An iterator of batches whose position can be saved and restored.

    `get_state()` returns a JSON-compatible value or bytes; `set_state(state)` puts the iterator
    back at that position. grain's `DatasetIterator` satisfies it.
    """

    def __next__(self) -> Any:
        """The next batch."""

    def get_state(self) -> Any:
        """The current position."""

    def set_state(self, state: Any) -> None:
        """Moves to a position returned by `get_state`."""


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
        """Sets the index of the next batch."""
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


class TrainResult(NamedTuple):
    """Outcome of `train`.

    Attributes:
      state: the final `TrainState`.
      step: the final step.
      start_step: the step the run started from (the restored step when resuming, else 0 or the
        given state's step).
      restored: whether a checkpoint was restored.
      stop_reason: "completed", "preempted" or "data_exhausted".
      metrics: the last logged training metrics (Python numbers).
      eval_metrics: the last evaluation metrics (Python numbers), or {}.
    """

    state: TrainState
    step: int
    start_step: int
    restored: bool
    stop_reason: str
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
    names = [_path_name(path) for path, x in flat if _is_float(x)]
    return [n for n, ok in zip(names, np.asarray(flags), strict=True) if not ok]


def _path_name(path) -> str:
    """`params['w']` for the path `['params']['w']` of a dict of named trees."""
    head = getattr(path[0], "key", None) if path else None
    if isinstance(head, str):
        return head + jax.tree_util.keystr(path[1:])
    return jax.tree_util.keystr(path)


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
      data: iterator of batches; with `get_state` / `set_state` its position is checkpointed
        (without them a resumed run restarts the data stream, with a warning).
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
      A `TrainResult`.

    Raises:
      NonFiniteError: a step produced a non-finite loss, gradient norm or parameter, a state
        about to be saved holds a non-finite array, or the resumed checkpoint does (the run's
        checkpoints are left as they were, the latest one being the last good state).

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
    loop, ckpt_cfg = config.loop, config.checkpoint
    prepare = as_batch if prepare_batch is None else prepare_batch
    stored_config = {"train": config_to_dict(config), "extra": config_to_dict(extra_config)}
    has_state = hasattr(data, "get_state") and hasattr(data, "set_state")
    if not has_state:
        warnings.warn(
            "train: the data iterator has no get_state/set_state; a resumed run will restart "
            "the data stream instead of continuing it.",
            CheckpointWarning,
            stacklevel=2,
        )
    checkpointer = TrainCheckpointer(
        config.checkpoint_dir,
        keep=ckpt_cfg.keep,
        async_save=ckpt_cfg.async_save,
        verify=ckpt_cfg.verify,
    )
    restored = None
    if ckpt_cfg.resume:
        restored = checkpointer.restore(state)
    elif checkpointer.latest_step() is not None:
        existing = checkpointer.latest_step()
        checkpointer.close()
        raise ValueError(
            f"train: {config.checkpoint_dir} already holds checkpoints (latest step {existing}) "
            "and `checkpoint.resume` is False: a new run there would mix its checkpoints with "
            "the old ones (and skip saving their steps). Remove them, choose another "
            "directory, or resume."
        )
    if restored is not None:
        state = restored.state
        if restored.data_state is not None and has_state:
            data.set_state(restored.data_state)
        changed = _diff(restored.config or {}, stored_config)
        if changed:
            shown = "; ".join(changed[:8]) + ("; ..." if len(changed) > 8 else "")
            warnings.warn(
                f"train: resuming {config.checkpoint_dir} at step {restored.step} with a "
                f"configuration that differs from the stored one: {shown}.",
                CheckpointWarning,
                stacklevel=2,
            )
    start = int(jax.device_get(state.step))
    total = loop.steps
    logger = MetricLogger(config.run_dir, config.logging, total_steps=total, start_step=start)
    if restored is not None:
        logger.message(f"resumed from checkpoint step {start} in {config.checkpoint_dir}")

    last_saved = checkpointer.latest_step()
    # The latest checkpoint known to hold finite values: the restored one (checked below) or
    # one this run saved (checked before saving).
    last_good = restored.step if restored is not None else None
    host_metrics: dict = {}
    eval_metrics: dict = {}
    stop_reason = "completed"
    tokens = 0
    t_log = time.perf_counter()
    steps_since_log = 0

    def check_finite(step_no: int, metrics: Mapping, tree: Mapping, what: str) -> None:
        # One fetch for the step's loss and gradient norm and the finiteness of every
        # floating-point array of `tree` (the updated params, or all of a state to be saved).
        picked = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics}
        values, flags = jax.device_get((picked, _finite_flags(tree)))
        values = {k: float(np.asarray(v)) for k, v in values.items()}
        bad = _nonfinite_paths(tree, flags)
        if not _finite(values):
            fail(step_no, _host(metrics), bad, "non-finite training metrics")
        if bad:
            fail(step_no, values, bad, f"non-finite {what}")

    def save(step_no: int, metrics: Mapping, logged: Mapping) -> None:
        nonlocal last_saved, last_good
        if last_saved == step_no:
            return
        check_finite(step_no, metrics, _saved_part(state), "train state (not saved)")
        checkpointer.save(
            step_no,
            state,
            data_state=data.get_state() if has_state else None,
            config=stored_config,
            meta={"metrics": dict(logged)},
        )
        last_saved = last_good = step_no

    def fail(step_no: int, values: Mapping, paths: Sequence[str], reason: str) -> None:
        checkpointer.close()
        head = f"{reason} at step {step_no}"
        if values:
            head += " (" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")"
        if paths:
            more = f", ... ({len(paths) - 8} more)" if len(paths) > 8 else ""
            head += f"; non-finite arrays: {', '.join(paths[:8])}{more}"
        message = (
            f"{head}; stopped. The last good checkpoint is step {last_good} in "
            f"{config.checkpoint_dir}."
            if last_good is not None
            else f"{head}; stopped with no checkpoint known to be good."
        )
        logger.message(message)
        logger.log(step_no, {**values, "nonfinite": 1}, split="train")
        logger.close()
        raise NonFiniteError(
            message, step=step_no, metrics=values, last_checkpoint=last_good, paths=paths
        )

    if restored is not None:
        # A checkpoint written elsewhere (or by an older version) may hold non-finite arrays.
        tree = _saved_part(state)
        bad = _nonfinite_paths(tree, jax.device_get(_finite_flags(tree)))
        if bad:
            last_good = None
            where = f"{config.checkpoint_dir}/{start}"
            reason = f"non-finite resumed checkpoint {where} (move it aside to resume earlier)"
            fail(start, {}, bad, reason)

    try:
        with _Preemption(ckpt_cfg.save_on_preemption) as preempt:
            step_no = start
            while step_no < total:
                try:
                    raw = next(data)
                except StopIteration:
                    stop_reason = "data_exhausted"
                    break
                n_tok = _count_tokens(raw)
                state, metrics = step_fn(state, prepare(raw))
                step_no += 1
                if step_no == start + 1:
                    # Throughput excludes the first step of a session (it includes compilation).
                    jax.block_until_ready(metrics)
                    t_log, steps_since_log, tokens = time.perf_counter(), 0, 0
                else:
                    steps_since_log += 1
                    tokens += n_tok or 0
                final = step_no == total
                want_log = step_no % config.logging.every_steps == 0 or final
                if want_log or step_no % loop.nan_check_every == 0:
                    check_finite(
                        step_no, metrics, {"params": state.params}, "params after the update"
                    )
                for callback in callbacks:
                    callback(step_no, state, metrics)
                if want_log:
                    host_metrics = _host(metrics)
                    perf = {}
                    if steps_since_log:
                        elapsed = max(time.perf_counter() - t_log, 1e-9)
                        perf["perf/steps_per_s"] = steps_since_log / elapsed
                        if tokens:
                            perf["perf/tokens_per_s"] = tokens / elapsed
                    logger.log(step_no, {**host_metrics, **perf})
                    t_log, steps_since_log, tokens = time.perf_counter(), 0, 0
                want_eval = (
                    eval_fn is not None
                    and loop.eval_every
                    and (step_no % loop.eval_every == 0 or final)
                )
                preempted = ckpt_cfg.save_on_preemption and preempt.check(step_no, checkpointer)
                periodic = ckpt_cfg.every_steps and step_no % ckpt_cfg.every_steps == 0
                if want_eval or periodic or final or preempted:
                    # Evaluation and checkpointing are not training time: keep them out of the
                    # throughput of the next logging window.
                    jax.block_until_ready(metrics)
                    paused = time.perf_counter()
                    if want_eval:
                        record = logger.log(step_no, eval_fn(state), split="eval")
                        eval_metrics = {
                            k: v for k, v in record.items() if k not in ("step", "split", "time")
                        }
                    if periodic or final or preempted:
                        save(step_no, metrics, host_metrics)
                    t_log += time.perf_counter() - paused
                logger.advance()
                if preempted:
                    stop_reason = "preempted"
                    logger.message(f"preempted: saved step {step_no}; stopping.")
                    break
            if stop_reason == "data_exhausted" and step_no > start:
                save(step_no, metrics, host_metrics)
    except NonFiniteError:
        raise
    except BaseException:
        checkpointer.close()
        logger.close()
        raise
    checkpointer.close()
    logger.close()
    return TrainResult(
        state=state,
        step=int(jax.device_get(state.step)),
        start_step=start,
        restored=restored is not None,
        stop_reason=stop_reason,
        metrics=host_metrics,
        eval_metrics=eval_metrics,
    )
