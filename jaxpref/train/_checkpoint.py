"""Checkpoints of a training run with orbax: state, data position, config, integrity checksums.

One checkpoint step holds four items, written together by an `orbax.checkpoint.CheckpointManager`
(asynchronously by default, keeping the last N):

* `state`: the `TrainState` (params, optimizer state, step, RNG key, reference params) through
  `StandardSave`, restored directly into the shardings of a template state;
* `data`: each process's data-iterator position (`get_state()`), one JSON file per process, so a
  resumed run sees exactly the batches an uninterrupted run would have seen;
* `config`: the run configuration as JSON;
* `meta`: the step, wall time, last metrics, and a checksum of every array of `state`.

The checksum (`state_checksums`) is a position-weighted sum of each array's bit patterns computed
on device; it does not depend on the sharding and detects any single corrupted word. On restore a
checkpoint that fails to load or whose checksums differ is skipped and the previous one is tried;
the skipped ones are then moved aside (`<step>.corrupt-*`), and each gets one `CheckpointWarning`
line with a readable reason. orbax's own logging of the failed attempts (and the late reports of
the reads they abandoned) is silenced while checkpoints are tried.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxpref.train._state import TrainState

__all__ = [
    "CheckpointWarning",
    "CorruptCheckpointError",
    "Restored",
    "TrainCheckpointer",
    "state_checksums",
]


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used (corrupt, partial, or mismatched) and was skipped.

    Example:
      >>> print(issubclass(CheckpointWarning, UserWarning))
      True
    """


class CorruptCheckpointError(RuntimeError):
    """A restored checkpoint's arrays do not match the checksums stored with it.

    Example:
      >>> print(issubclass(CorruptCheckpointError, RuntimeError))
      True
    """


# ------------------------------------------------------------------------------------------
# Per-process host state (data-iterator position) as an orbax item.


class _HostStateHandler(ocp.CheckpointHandler):
    """Writes one JSON file per process, like grain's iterator handler, for any JSON/bytes."""

    def save(self, directory: epath.Path, args: _HostStateSave):
        state = args.state
        if isinstance(state, bytes | bytearray):
            record = {"kind": "bytes", "state": base64.b64encode(bytes(state)).decode()}
        else:
            record = {"kind": "json", "state": state}
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (directory / name).write_text(json.dumps(record))

    def restore(self, directory: epath.Path, args: _HostStateRestore | None = None):
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        path = directory / name
        if not path.exists():
            raise FileNotFoundError(f"data-iterator state {path} is missing.")
        record = json.loads(path.read_text())
        if record["kind"] == "bytes":
            return base64.b64decode(record["state"])
        return record["state"]

    def metadata(self, directory: epath.Path):
        return None

    def structure(self, directory: epath.Path):
        return None

    def finalize(self, directory: epath.Path):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(_HostStateHandler, for_save=True)
@dataclasses.dataclass
class _HostStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(_HostStateHandler, for_restore=True)
@dataclasses.dataclass
class _HostStateRestore(ocp.args.CheckpointArgs):
    pass


# ------------------------------------------------------------------------------------------
# Checksums.

_GOLDEN = np.uint32(2654435761)


def _words(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    bits = jnp.dtype(x.dtype).itemsize * 8
    if bits == 32:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if bits == 64:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # adds a trailing axis of 2
    unsigned = {16: jnp.uint16, 8: jnp.uint8}[bits]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x):
    w = _words(jnp.asarray(x))
    index = jnp.zeros(w.shape, jnp.uint32)
    for axis in range(w.ndim):
        stride = int(np.prod(w.shape[axis + 1 :], dtype=np.int64)) % (1 << 32)
        iota = jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis)
        index = index + iota * jnp.uint32(stride)
    weight = (index * jnp.uint32(2) + jnp.uint32(1)) * _GOLDEN  # odd, so invertible mod 2^32
    return jnp.sum(w * weight, dtype=jnp.uint32)


@jax.jit
def _checksums(tree):
    return jax.tree.map(_checksum, tree)


def state_checksums(tree) -> dict[str, int]:
    """Sharding-independent checksums of every array of a pytree, by tree path.

    `c(x) = sum_i w_i (2 i + 1) 2654435761 mod 2^32` over the 32-bit words `w_i` of `x` in
    row-major order (16- and 8-bit values widened, 64-bit values split, PRNG keys by key data).
    The multipliers are odd, so changing any one word changes the checksum.

    Args:
      tree: pytree of arrays (global `jax.Array`s, sharded or not, or numpy arrays).

    Returns:
      Dict from `jax.tree_util.keystr` path to checksum.

    Example:
      >>> import jax.numpy as jnp
      >>> a = state_checksums({"w": jnp.arange(4.0)})
      >>> b = state_checksums({"w": jnp.arange(4.0).at[2].set(2.0000002)})
      >>> print(list(a), a == b)
      ["['w']"] False
    """
    values = jax.device_get(_checksums(tree))
    flat = jax.tree_util.tree_flatten_with_path(values)[0]
    return {jax.tree_util.keystr(path): int(v) for path, v in flat}


# ------------------------------------------------------------------------------------------


def _to_tree(state: TrainState) -> dict:
    out = {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }
    if state.ref_params is not None:
        out["ref_params"] = state.ref_params
    return out


def _from_tree(tree: Mapping) -> TrainState:
    return TrainState(
        step=tree["step"],
        params=tree["params"],
        opt_state=tree["opt_state"],
        rng=tree["rng"],
        ref_params=tree.get("ref_params"),
    )


def _abstract(state: TrainState):
    def one(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(one, _to_tree(state))


# ------------------------------------------------------------------------------------------
# Quiet restore attempts.

# Loggers that report a failed restore attempt at length (orbax logs through absl; asyncio
# reports the tasks of the event loop orbax closes).
_NOISY_LOGGERS = ("absl", "asyncio")


def _abandoned_read(args) -> bool:
    """Whether an unraisable exception is the late report of a read of a failed restore.

    When one array of a restore fails, orbax closes its event loop while TensorStore reads of
    other arrays are still in flight; each of them completes later, in another thread, tries
    to wake the closed loop, and is reported as `RuntimeError: Event loop is closed`.
    Coroutines of that restore that never ran are reported when collected.
    """
    if issubclass(args.exc_type, RuntimeError) and str(args.exc_value) == "Event loop is closed":
        tb = args.exc_traceback
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
                return True
            tb = tb.tb_next
    code = getattr(args.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class _QuietAttempts:
    """While checkpoints are tried: orbax's and asyncio's logging off, the late reports of
    the reads a failed attempt abandoned dropped (see `_abandoned_read`); everything else, and
    every setting, as before on exit."""

    SETTLE_S = 0.25  # after a failed attempt, exit once no late report came for this long
    MAX_WAIT_S = 5.0

    def __init__(self):
        self.failed = False
        self._last_report = 0.0

    def _hook(self, args) -> None:
        if _abandoned_read(args):
            self._last_report = time.monotonic()
            return
        self._previous_hook(args)

    def __enter__(self) -> _QuietAttempts:
        self._levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._hook
        return self

    def __exit__(self, *exc) -> bool:
        try:
            if self.failed:
                # The abandoned reads finish within moments; wait for their reports.
                start = self._last_report = time.monotonic()
                while time.monotonic() - start < self.MAX_WAIT_S:
                    gc.collect()
                    if time.monotonic() - self._last_report >= self.SETTLE_S:
                        break
                    time.sleep(0.05)
        finally:
            sys.unraisablehook = self._previous_hook
            for name, level in self._levels.items():
                logging.getLogger(name).setLevel(level)
        return False


def _empty_files(directory: epath.Path) -> list[str]:
    """The files of a directory tree that hold 0 bytes, relative to it (sorted)."""
    out = []
    with contextlib.suppress(Exception):  # an unlistable directory: nothing to name
        for root, _, files in directory.walk():
            for name in files:
                path = root / name
                if path.stat().length == 0:
                    out.append(os.fspath(path.relative_to(directory)))
    return sorted(out)


def _unusable_reason(step_dir: epath.Path, err: Exception) -> str:
    """Why a checkpoint did not restore, in a few words: its empty (truncated) files if it has
    any, else the error's type and first line (without orbax's TensorStore repr)."""
    empty = _empty_files(step_dir)
    if empty:
        shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        verb = "is" if len(empty) == 1 else "are"
        return f"{'file' if len(empty) == 1 else 'files'} {shown} {verb} empty (truncated)"
    text = str(err).split(" See full TensorStore details:")[0]
    first = text.splitlines()[0][:300] if text else ""
    # The status of a failed read (e.g. DATA_LOSS for a corrupt chunk) may sit past the first
    # line of orbax's message: name it.
    codes = [c for c in dict.fromkeys(_STATUS.findall(str(err))) if c not in first]
    if codes:
        first = f"{first} ({', '.join(codes)})"
    return f"{type(err).__name__}: {first}"


_STATUS = re.compile(
    r"\b(DATA_LOSS|INVALID_ARGUMENT|NOT_FOUND|FAILED_PRECONDITION|OUT_OF_RANGE|INTERNAL|"
    r"UNKNOWN|UNIMPLEMENTED|PERMISSION_DENIED|RESOURCE_EXHAUSTED)\b"
)


class Restored(NamedTuple):
    """What `TrainCheckpointer.restore` returns.

    Attributes:
      step: the checkpoint step.
      state: the restored `TrainState` (in the template's shardings).
      data_state: this process's data-iterator state (None if none was saved).
      config: the stored configuration (JSON).
      meta: the stored metadata (step, time, metrics, checksums).
    """

    step: int
    state: TrainState
    data_state: Any
    config: Any
    meta: dict


class TrainCheckpointer:
    """Saves and restores `TrainState` checkpoints with orbax, with a fallback on corruption.

    Args:
      directory: checkpoint directory (created if absent).
      keep: number of most recent checkpoints kept.
      async_save: write in a background thread after the device-to-host copy.
      verify: store checksums and check them on restore.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, optax
      >>> from jaxpref.train import init_train_state
      >>> state = init_train_state({"w": jnp.arange(3.0)}, optax.sgd(0.1), 0)
      >>> ckpt = TrainCheckpointer(tempfile.mkdtemp(), keep=2)
      >>> ckpt.save(5, state, data_state={"index": 5}, config={"lr": 0.1})
      >>> r = ckpt.restore(state)
      >>> ckpt.close()
      >>> print(r.step, r.data_state, r.state.params["w"])
      5 {'index': 5} [0. 1. 2.]
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        async_save: bool = True,
        verify: bool = True,
    ):
        self.directory = epath.Path(os.fspath(directory)).absolute()
        self.verify = verify
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options)

    def all_steps(self) -> list[int]:
        """Steps of the finalized checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The most recent finalized step, or None."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: TrainState,
        *,
        data_state: Any = None,
        config: Any = None,
        meta: Mapping | None = None,
    ) -> None:
        """Saves one checkpoint step (returns once the arrays are copied off the devices).

        Args:
          step: the step number (normally `int(state.step)`).
          state: the train state.
          data_state: the data iterator's `get_state()` (JSON-compatible or bytes), or None.
          config: JSON-compatible run configuration.
          meta: extra JSON-compatible metadata (e.g. the last metrics).
        """
        tree = _to_tree(state)
        record = {"step": int(step), "time": time.time(), **dict(meta or {})}
        if self.verify:
            record["checksums"] = state_checksums(tree)
        items = {
            "state": ocp.args.StandardSave(tree),
            "config": ocp.args.JsonSave(config if config is not None else {}),
            "meta": ocp.args.JsonSave(record),
        }
        if data_state is not None:
            items["data"] = _HostStateSave(data_state)
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def _restore_step(self, step: int, template: TrainState) -> Restored:
        path = self.directory / str(step)
        items = {
            "state": ocp.args.StandardRestore(_abstract(template)),
            "config": ocp.args.JsonRestore(),
            "meta": ocp.args.JsonRestore(),
        }
        has_data = (path / "data").exists()
        if has_data:
            items["data"] = _HostStateRestore()
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        meta = dict(out["meta"])
        tree = out["state"]
        if int(meta.get("step", step)) != step:
            raise CorruptCheckpointError(
                f"checkpoint {path} holds metadata of step {meta.get('step')}, not {step}."
            )
        if self.verify and "checksums" in meta:
            got = state_checksums(tree)
            bad = [k for k, v in meta["checksums"].items() if got.get(k) != v]
            if bad or set(got) != set(meta["checksums"]):
                shown = ", ".join(bad[:5]) or "tree structure"
                raise CorruptCheckpointError(
                    f"checkpoint {path}: checksums differ for {len(bad)} array(s): {shown}."
                )
        data_state = out["data"] if has_data else None
        return Restored(step, _from_tree(tree), data_state, out["config"], meta)

    def _quarantine(self, step: int) -> str | None:
        path = self.directory / str(step)
        target = None
        if jax.process_index() == 0 and path.exists():
            target = self.directory / f"{step}.corrupt-{int(time.time() * 1000)}"
            path.rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxpref_quarantine_{step}")
        self._manager.close()
        self._manager = self._open()
        return None if target is None else os.fspath(target)

    def restore(self, template: TrainState) -> Restored | None:
        """Restores the most recent good checkpoint, falling back past bad ones.

        Steps are tried from the newest. A checkpoint that fails to load, or whose checksums or
        step differ from what was saved, is skipped; once an older one restores, the skipped
        newer ones are moved aside to `<directory>/<step>.corrupt-<ms>` (so the run can save
        those steps again), each with one `CheckpointWarning` that names the reason (its empty
        files, or the error), the step resumed from and where it was moved. If no checkpoint
        restores, nothing is moved, each is warned about, and `CorruptCheckpointError` lists
        the errors (a template that does not match the saved state, e.g. another model, fails
        every step). orbax's logging is silenced while checkpoints are tried.

        Args:
          template: a `TrainState` with the structure, dtypes and shardings to restore into
            (e.g. the freshly initialised state).

        Returns:
          A `Restored`, or None when the directory has no checkpoint.

        Raises:
          CorruptCheckpointError: checkpoints exist but none could be restored.
        """
        self._manager.wait_until_finished()
        failed: list[tuple[int, str]] = []
        restored = None
        with _QuietAttempts() as quiet:
            for step in reversed(self.all_steps()):
                try:
                    restored = self._restore_step(step, template)
                    break
                except Exception as err:  # any failure makes the checkpoint unusable
                    quiet.failed = True
                    failed.append((step, _unusable_reason(self.directory / str(step), err)))
        for bad, reason in failed:
            head = f"checkpoint step {bad} in {self.directory} is unusable ({reason})"
            if restored is None:
                warnings.warn(f"{head}.", CheckpointWarning, stacklevel=2)
                continue
            moved = self._quarantine(bad)
            where = f"; moved it to {moved}" if moved else ""
            warnings.warn(
                f"{head}; resuming from step {restored.step}{where}.",
                CheckpointWarning,
                stacklevel=2,
            )
        if restored is not None:
            return restored
        if failed:
            listed = "; ".join(f"step {s}: {r}" for s, r in failed)
            raise CorruptCheckpointError(
                f"no checkpoint in {self.directory} could be restored into this train state "
                f"({listed}). Fix the configuration, or move the directory aside to start over."
            )
        return None

    def reached_preemption(self, step: int) -> bool:
        """Whether JAX's preemption service asks every process to save at `step` (multi-host).

        Args:
          step: the current training step (number of updates applied).

        Returns:
          True when a preemption notice was received and `step` is the step at which every
          process agreed to save.
        """
        return bool(self._manager.reached_preemption(step))

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
