"""The run directory of an experiment: saved config, resume checks, phases, report files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxpref.experiment._errors import InputError
from jaxpref.experiment._report import Markdown, Report, environment
from jaxpref.train import config_to_dict

__all__ = [
    "RunDir",
    "cached_arrays",
    "config_diff",
    "file_sha256",
    "flag_name",
    "guard_inputs",
    "is_writer",
    "open_run_dir",
]

CONFIG_FILE = "config.json"


def is_writer() -> bool:
    """Whether this process writes files (process 0 of a multi-host run)."""
    return jax.process_index() == 0


def flag_name(path: str) -> str:
    """The command-line flag of a dotted config path: `task.num_pairs` -> `--task.num-pairs`.

    Args:
      path: a dotted path into the config (`config_to_dict` keys).
    """
    return "--" + path.replace("_", "-")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _ignored(path: str, ignore: Sequence[str]) -> bool:
    return any(path == i or path.startswith(i + ".") for i in ignore)


def config_diff(saved: Mapping, new: Mapping, *, ignore: Sequence[str] = ()) -> list[str]:
    """Readable lines naming each setting that differs between two config dicts.

    Args:
      saved: the stored config (`config_to_dict` form).
      new: the config of this run, same form.
      ignore: dotted paths (and their children) that may differ, e.g. `("out", "logging")`.

    Returns:
      One line per differing setting, `--flag: saved X, now Y`, sorted by flag.

    Example:
      >>> config_diff({"loss": {"name": "sigmoid"}}, {"loss": {"name": "ipo"}})
      ["--loss.name: saved 'sigmoid', now 'ipo'"]
    """
    a, b = _flatten(saved), _flatten(new)
    lines = []
    for path in sorted(set(a) | set(b)):
        if _ignored(path, ignore) or a.get(path, _MISSING) == b.get(path, _MISSING):
            continue
        old = "(absent)" if path not in a else repr(a[path])
        now = "(absent)" if path not in b else repr(b[path])
        lines.append(f"{flag_name(path)}: saved {old}, now {now}")
    return lines


_MISSING = object()


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks.

    Args:
      path: the file.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunDir:
    """An experiment's run directory, opened by `open_run_dir`.

    Holds the experiment name, the config (as a dict), wall-clock time per phase and whether this
    process writes. `finish` writes `report.json` and `report.md` and returns the `Report`.

    Attributes:
      path: the directory.
      experiment: the experiment's name (e.g. "dpo").
      config: the config as saved in `config.json`.
      writer: whether this process writes files (process 0).
      phases: wall seconds spent in each phase of this session, in order of first entry.
    """

    def __init__(self, path: pathlib.Path, experiment: str, config: dict, writer: bool):
        self.path, self.experiment, self.config, self.writer = path, experiment, config, writer
        self.phases: dict[str, float] = {}
        self._start = time.perf_counter()

    def log(self, message: str) -> None:
        """Prints `[experiment] message` on process 0.

        Args:
          message: one line.
        """
        if self.writer:
            print(f"[{self.experiment}] {message}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the enclosed block and adds its wall seconds to `phases[name]`.

        Args:
          name: the phase (timings of repeated entries add up).
        """
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def write_text(self, name: str, text: str) -> pathlib.Path:
        """Writes `text` to `path/name` atomically (process 0 only); returns the path.

        Args:
          name: file name inside the run directory.
          text: the content.
        """
        target = self.path / name
        if self.writer:
            _atomic_write(target, text)
        return target

    def write_json(self, name: str, value: Any) -> pathlib.Path:
        """Writes a JSON file atomically (process 0 only); returns the path.

        Args:
          name: file name inside the run directory.
          value: a JSON value.
        """
        return self.write_text(name, json.dumps(value, indent=2) + "\n")

    def finish(self, results: Mapping[str, Any], markdown: Markdown | str) -> Report:
        """Writes `report.json` (the `Report` schema) and `report.md`; returns the report.

        Args:
          results: the module's results (JSON values; NumPy and JAX arrays become lists).
          markdown: the `report.md` content.
        """
        report = Report(
            experiment=self.experiment,
            config=self.config,
            results=json.loads(json.dumps(dict(results), default=_json_default)),
            environment=environment(),
            phases_s={k: round(v, 3) for k, v in self.phases.items()},
            wall_s=round(time.perf_counter() - self._start, 3),
            run_dir=str(self.path),
        )
        self.write_json("report.json", report.to_dict())
        text = markdown.text() if isinstance(markdown, Markdown) else str(markdown)
        self.write_text("report.md", text)
        self.log(f"wrote {self.path / 'report.json'} and {self.path / 'report.md'}")
        return report


def _json_default(value):
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    return str(value)


def open_run_dir(
    out: str | os.PathLike,
    config: Any,
    *,
    experiment: str,
    ignore: Sequence[str] = ("out", "force", "logging"),
    force: bool = False,
) -> RunDir:
    """Creates or reopens a run directory and saves the config as `config.json`.

    Call it after the config and inputs are validated: nothing is written before. An existing
    `config.json` that differs from `config` (outside `ignore`) is refused with a readable diff
    unless `force`, in which case the new config replaces it (with a warning naming the changes).

    Args:
      out: the directory (created with its parents).
      config: the experiment's frozen dataclass config (or a dict).
      experiment: the experiment's name, used in messages and the report.
      ignore: dotted config paths that may differ on resume (where the run writes, whether
        to overwrite, log sinks).
      force: resume even if the saved config differs (the `--force` flag).

    Returns:
      The `RunDir`.

    Raises:
      InputError: `out` is a file, cannot be created or written, or holds a run with another
        config.
    """
    path = pathlib.Path(out)
    new = config_to_dict(config)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out}: is a file, not a directory.")
    writer = is_writer()
    saved_file = path / CONFIG_FILE
    if saved_file.exists():
        try:
            saved = json.loads(saved_file.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"--out {out}: cannot read {saved_file} ({err}).") from err
        diff = config_diff(saved, new, ignore=ignore)
        if diff and not force:
            lines = "\n  ".join(diff)
            raise InputError(
                f"--out {out} holds a run with another configuration:\n  {lines}\n"
                "Use another --out for a new run, or --force to resume this one with the new "
                "configuration."
            )
        if diff:
            warnings.warn(
                f"{out}: resuming with a changed configuration ({'; '.join(diff)}).", stacklevel=2
            )
    if writer:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path):
                pass
        except OSError as err:
            raise InputError(f"--out {out}: cannot write there ({err.strerror or err}).") from err
        _atomic_write(saved_file, json.dumps(new, indent=2) + "\n")
    return RunDir(path, experiment, new, writer)


def guard_inputs(
    stage_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, inputs: Mapping[str, Any]
) -> None:
    """Refuses to resume a stage whose checkpoints were trained on other inputs.

    `inputs` (e.g. the reference's and the data's fingerprints) is stored in
    `stage_dir/inputs.json` when the stage starts; a later run with different inputs and
    existing checkpoints raises instead of silently continuing them.

    Args:
      stage_dir: the stage's directory (holds `inputs.json`).
      checkpoint_dir: where the stage's checkpoints are.
      inputs: name -> JSON value of what the stage depends on.

    Raises:
      InputError: checkpoints exist and were trained with other inputs.
    """
    stage_dir, ckpt = pathlib.Path(stage_dir), pathlib.Path(checkpoint_dir)
    path = stage_dir / "inputs.json"
    has_checkpoints = ckpt.is_dir() and any(ckpt.iterdir())
    inputs = json.loads(json.dumps(dict(inputs)))
    if path.exists() and has_checkpoints:
        stored = json.loads(path.read_text())
        differ = sorted(k for k in set(stored) | set(inputs) if stored.get(k) != inputs.get(k))
        if differ:
            raise InputError(
                f"{stage_dir} holds checkpoints trained with another {', '.join(differ)} "
                f"(stored {[stored.get(k) for k in differ]}, now {[inputs.get(k) for k in differ]})"
                f". Remove {stage_dir} and {ckpt} to train again with the new inputs, or use "
                "another --out."
            )
        return
    if has_checkpoints:
        warnings.warn(
            f"{stage_dir}: checkpoints without a record of their inputs; assuming they match.",
            stacklevel=2,
        )
    if is_writer():
        stage_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(inputs, indent=2))


def cached_arrays(
    path: str | os.PathLike, key: Mapping[str, str], make: Callable[[], dict[str, Any]]
) -> dict[str, np.ndarray]:
    """Arrays stored at `path` (`.npz`) if they were made with `key`, else `make()`, then stored.

    Args:
      path: the `.npz` file.
      key: name -> string of what the arrays depend on (a model fingerprint, settings as JSON);
        stored beside the arrays and compared on load.
      make: builds the arrays (name -> array) when the file is missing or was made with
        another key.

    Returns:
      name -> array (without the key entries).
    """
    path = pathlib.Path(path)
    if path.exists():
        with np.load(path) as f:
            stored = {k: f[k] for k in f.files}
        old = {k: str(stored.pop(k)) if k in stored else None for k in key}
        if old == dict(key):
            return stored
        differ = ", ".join(k for k in key if old[k] != key[k])
        warnings.warn(f"{path} was made with another {differ}; making it again.", stacklevel=2)
    arrays = {k: np.asarray(v) for k, v in make().items()}
    if is_writer():
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in key.items()}, **arrays)
        tmp.replace(path)
    return arrays
