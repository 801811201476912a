"""Metric sinks of the training loop: stdout lines, a progress bar, JSONL and TensorBoard.

Only process 0 writes. Each JSONL record is `{"step": n, "split": "train" | "eval", "time": t,
<name>: value, ...}`; when a run resumes from step `s`, records after `s` left by the interrupted
run are dropped (and TensorBoard events after `s` purged), so the files describe one consistent
history.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxpref.train._config import LoggingConfig

__all__ = ["MetricLogger", "read_metrics"]

_JSONL = "metrics.jsonl"


def _scalar(value) -> float | int | None:
    try:
        arr = np.asarray(jax.device_get(value))
    except Exception:  # non-array values are not logged
        return None
    if arr.size != 1:
        return None
    v = arr.reshape(()).item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float):
        return v
    return None


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan", "inf": JSON has no literal for them
    return v


def read_metrics(run_dir: str | os.PathLike, *, split: str | None = None) -> list[dict[str, Any]]:
    """The records of `<run_dir>/metrics.jsonl`, optionally of one split.

    Args:
      run_dir: the run directory.
      split: "train", "eval", or None for all records.

    Returns:
      List of dicts in file order (empty when there is no file).

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> log = MetricLogger(d, LoggingConfig(stdout=False, progress=False, tensorboard=False),
      ...                    total_steps=2)
      >>> _ = log.log(1, {"loss": 0.5}); log.close()
      >>> print(read_metrics(d)[0]["loss"])
      0.5
    """
    path = os.path.join(os.fspath(run_dir), _JSONL)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            if split is None or record.get("split") == split:
                out.append(record)
    return out


def _truncate_jsonl(path: str, start_step: int) -> None:
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if int(record.get("step", 0)) <= start_step:
                kept.append(json.dumps(record))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(k + "\n" for k in kept))
    os.replace(tmp, path)


class MetricLogger:
    """Writes scalar metrics to stdout, a tqdm progress bar, JSONL and TensorBoard.

    Args:
      run_dir: directory of `metrics.jsonl` and `tensorboard/`.
      config: which sinks are on.
      total_steps: the run's last step (for the progress bar and ETA).
      start_step: the step the run starts or resumes from; later records are dropped.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> cfg = LoggingConfig(stdout=False, progress=False, tensorboard=False)
      >>> log = MetricLogger(d, cfg, total_steps=3)
      >>> _ = log.log(1, {"loss": 1.0}); _ = log.log(2, {"loss": 0.5}); log.close()
      >>> log = MetricLogger(d, cfg, total_steps=3, start_step=1); log.close()
      >>> print([r["step"] for r in read_metrics(d)])
      [1]
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: LoggingConfig,
        *,
        total_steps: int,
        start_step: int = 0,
    ):
        self.config = config
        self.run_dir = os.fspath(run_dir)
        self.primary = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not self.primary:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        if config.jsonl:
            path = os.path.join(self.run_dir, _JSONL)
            _truncate_jsonl(path, start_step)
            self._jsonl = open(path, "a")
        if config.tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                os.path.join(self.run_dir, "tensorboard"), purge_step=start_step + 1
            )
        if config.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def advance(self, n: int = 1) -> None:
        """Moves the progress bar by `n` steps.

        Args:
          n: number of steps to advance (no effect without a progress bar, e.g. off process 0).
        """
        if self._bar is not None:
            self._bar.update(n)

    def log(
        self, step: int, metrics: Mapping[str, Any], *, split: str = "train", echo: bool = True
    ) -> dict:
        """Writes one record of scalar metrics (arrays are fetched from the devices).

        Args:
          step: the step the metrics belong to.
          metrics: name -> scalar (Python number, numpy or jax scalar); others are skipped.
          split: "train" or "eval" (TensorBoard tags are `<split>/<name>`).
          echo: print the record to stdout when `config.stdout` is on (False: files only, e.g.
            for a record another report, such as an exception, already states).

        Returns:
          The record as written (Python numbers).
        """
        values = {k: v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
        record = {"step": int(step), "split": split, "time": round(time.time(), 3), **values}
        if not self.primary:
            return record
        if self._jsonl is not None:
            clean = {k: _json_value(v) for k, v in record.items()}
            self._jsonl.write(json.dumps(clean) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, int(step))
        if self.config.stdout and echo:
            shown = " ".join(
                f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
            )
            line = f"[{split}] step {int(step)}: {shown}"
            if self._bar is not None:
                self._bar.write(line, file=sys.stdout)
            else:
                print(line, flush=True)
        if self._bar is not None and split == "train" and "loss" in values:
            self._bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)
        return record

    def message(self, text: str) -> None:
        """Prints a line to stdout (above the progress bar) on process 0.

        Args:
          text: the line to print (printed whether or not `config.stdout` is on).
        """
        if not self.primary:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """Flushes and closes every sink."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
