"""Local preference files -> an `array_record` dataset via tfds (no TensorFlow needed).

`PreferenceFiles` is a `tfds.core.GeneratorBasedBuilder` whose config names the local files of
each split and how to read them (`FieldMap`, file format, multi-turn and bad-input policies).
`build_preference_dataset` prepares it in `array_record` format; the read report of every split
(records kept, skips by reason, first errors with path and line) is stored in the dataset's
metadata (`read_reports`). Records keep the order of the files (no tfds shuffling); shuffling is
the input pipeline's job.

Each stored example holds the JSON of the three texts (a string or a list of
`{"role", "content"}`), the two scores (NaN when absent), the JSON of the metadata, and the
source path and line, so `PreferenceSource` gives back the exact `PreferencePair`s that were read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxpref.data._formats import FieldMap, MultiTurn, iter_preferences
from jaxpref.data._records import Message, OnError, PreferencePair, ReadReport

__all__ = [
    "PreferenceFiles",
    "PreferenceFilesConfig",
    "PreferenceSource",
    "build_preference_dataset",
    "decode_example",
    "encode_example",
    "load_read_reports",
]


@dataclasses.dataclass(eq=False, kw_only=True)
class PreferenceFilesConfig(tfds.core.BuilderConfig):
    """Which local files make up each split, and how to read them.

    Attributes:
      splits: split name -> tuple of file paths (JSONL or Parquet).
      fields: field names (`FieldMap`).
      file_format: `"auto"`, `"jsonl"` or `"parquet"`.
      multi_turn: `"error"` or `"keep"`.
      on_error: `"raise"` or `"skip"` (skips are counted in the stored read reports).
    """

    splits: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    fields: FieldMap = dataclasses.field(default_factory=FieldMap)
    file_format: str = "auto"
    multi_turn: MultiTurn = "error"
    on_error: OnError = "raise"


def _text_json(text) -> str:
    if isinstance(text, str):
        return json.dumps(text, ensure_ascii=False)
    return json.dumps([{"role": m.role, "content": m.content} for m in text], ensure_ascii=False)


def _text_from_json(s: str):
    value = json.loads(s)
    if isinstance(value, str):
        return value
    return tuple(Message(m["role"], m["content"]) for m in value)


def encode_example(pair: PreferencePair) -> dict:
    """The stored feature dict of a pair (JSON texts, NaN for missing scores).

    Args:
      pair: the record.

    Returns:
      `{"prompt", "chosen", "rejected", "metadata"}` JSON strings, `"chosen_score"`,
      `"rejected_score"` floats (NaN when absent), `"source"` path (`""` when unknown) and
      `"line"` (-1 when unknown).

    Example:
      >>> e = encode_example(PreferencePair("Q", " a", " b", chosen_score=2.0))
      >>> print(e["prompt"], e["chosen_score"], e["rejected_score"])
      "Q" 2.0 nan
    """
    nan = float("nan")
    return {
        "prompt": _text_json(pair.prompt),
        "chosen": _text_json(pair.chosen),
        "rejected": _text_json(pair.rejected),
        "chosen_score": nan if pair.chosen_score is None else float(pair.chosen_score),
        "rejected_score": nan if pair.rejected_score is None else float(pair.rejected_score),
        "metadata": json.dumps(dict(pair.metadata), ensure_ascii=False, default=str),
        "source": pair.path or "",
        "line": -1 if pair.line is None else int(pair.line),
    }


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes | np.bytes_) else str(x)


def decode_example(example: Mapping) -> PreferencePair:
    """Inverse of `encode_example` (accepts the bytes tfds returns for text features).

    Args:
      example: a feature dict from `encode_example` or read back from the dataset.

    Returns:
      The `PreferencePair`, with its source `path` and `line`.

    Example:
      >>> p = PreferencePair("Q", " a", " b", metadata={"id": 7})
      >>> print(decode_example(encode_example(p)) == p)
      True
    """

    def score(x):
        x = float(x)
        return None if math.isnan(x) else x

    line = int(example["line"])
    return PreferencePair(
        _text_from_json(_str(example["prompt"])),
        _text_from_json(_str(example["chosen"])),
        _text_from_json(_str(example["rejected"])),
        chosen_score=score(example["chosen_score"]),
        rejected_score=score(example["rejected_score"]),
        metadata=json.loads(_str(example["metadata"])),
        path=_str(example["source"]) or None,
        line=None if line < 0 else line,
    )


class PreferenceFiles(tfds.core.GeneratorBasedBuilder):
    """tfds builder turning local preference files into a dataset (use `array_record`).

    Build it through `build_preference_dataset`, or directly:
    `PreferenceFiles(config=PreferenceFilesConfig(name=..., splits=...), data_dir=...,
    file_format="array_record").download_and_prepare()`.

    Args:
      config: a `PreferenceFilesConfig` (files of each split and how to read them).
      data_dir: tfds data directory.
      file_format: tfds storage format; `"array_record"` for `PreferenceSource`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Preference pairs as JSON texts, scores, metadata, source line."
    }

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """This module's file (tfds's own lookup needs `importlib_resources`)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Preference pairs (prompt, chosen, rejected) read from local files.",
            features=tfds.features.FeaturesDict(
                {
                    "prompt": text,
                    "chosen": text,
                    "rejected": text,
                    "chosen_score": tfds.features.Scalar(dtype=np.float32),
                    "rejected_score": tfds.features.Scalar(dtype=np.float32),
                    "metadata": text,
                    "source": text,
                    "line": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        if not cfg.splits:
            raise ValueError("PreferenceFilesConfig.splits is empty: give split -> files.")
        self.info.metadata.setdefault("read_reports", {})
        return {
            name: self._generate_examples(name, tuple(files)) for name, files in cfg.splits.items()
        }

    def _generate_examples(self, split: str, files: tuple[str, ...]):
        cfg = self.builder_config
        report = ReadReport()
        n = 0
        for path in files:
            pairs = iter_preferences(
                path,
                fields=cfg.fields,
                file_format=cfg.file_format,
                multi_turn=cfg.multi_turn,
                on_error=cfg.on_error,
                report=report,
            )
            for pair in pairs:
                yield n, encode_example(pair)
                n += 1
        self.info.metadata["read_reports"][split] = report.to_dict()


def build_preference_dataset(
    data_dir,
    splits: Mapping[str, Sequence],
    *,
    name: str = "default",
    fields: FieldMap | None = None,
    file_format: str = "auto",
    multi_turn: MultiTurn = "error",
    on_error: OnError = "raise",
    verbose: bool = False,
) -> str:
    """Reads local preference files and writes them as an `array_record` tfds dataset.

    Args:
      data_dir: tfds data directory.
      splits: split name -> file paths.
      name: config name (the dataset lives in `data_dir/preference_files/<name>/1.0.0`).
      fields: field names (None: `FieldMap()`).
      file_format: `"auto"`, `"jsonl"` or `"parquet"`.
      multi_turn: `"error"` or `"keep"`.
      on_error: `"raise"` (a `DataError` with path and line aborts the build) or `"skip"`.
      verbose: show tfds's progress bars and messages.

    Returns:
      The dataset directory (for `PreferenceSource`, `load_read_reports` and the reference
      log-prob cache).

    Example:
      >>> import json, os, tempfile
      >>> d = tempfile.mkdtemp(); f = os.path.join(d, "p.jsonl")
      >>> with open(f, "w") as fh:
      ...     _ = fh.write(json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b"}) + "\\n")
      >>> ds_dir = build_preference_dataset(os.path.join(d, "tfds"), {"train": [f]}, name="doc")
      >>> src = PreferenceSource(ds_dir, "train")
      >>> print(len(src), src[0].chosen, src[0].line)
      1  a 1
    """
    files = {k: tuple(os.path.abspath(os.fspath(p)) for p in v) for k, v in splits.items()}
    config = PreferenceFilesConfig(
        name=name,
        splits=files,
        fields=FieldMap() if fields is None else fields,
        file_format=file_format,
        multi_turn=multi_turn,
        on_error=on_error,
    )
    builder = PreferenceFiles(
        config=config, data_dir=os.fspath(data_dir), file_format="array_record"
    )
    if verbose:
        builder.download_and_prepare()
    else:
        from tensorflow_datasets.core.utils import tqdm_utils

        was_active = tqdm_utils._active
        tqdm_utils.disable_progress_bar()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare()
        finally:
            if was_active:
                tqdm_utils.enable_progress_bar()
    return os.fspath(builder.data_dir)


def load_read_reports(dataset_dir) -> dict[str, ReadReport]:
    """The per-split `ReadReport`s stored when the dataset was built.

    Args:
      dataset_dir: directory returned by `build_preference_dataset`.

    Returns:
      Split name -> `ReadReport` (records kept, skips by reason, first errors).

    Example:
      >>> import json, os, tempfile
      >>> d = tempfile.mkdtemp(); f = os.path.join(d, "p.jsonl")
      >>> with open(f, "w") as fh:
      ...     _ = fh.write('{"prompt": "Q", "chosen": " a", "rejected": " b"}\\nnot json\\n')
      >>> ds = build_preference_dataset(os.path.join(d, "t"), {"train": [f]}, on_error="skip")
      >>> print(load_read_reports(ds)["train"].summary().split(";")[0])
      kept 1 records, skipped 1 (malformed_json: 1)
    """
    builder = tfds.builder_from_directory(os.fspath(dataset_dir))
    reports = builder.info.metadata.get("read_reports", {})
    return {k: ReadReport.from_dict(v) for k, v in reports.items()}


class PreferenceSource(Sequence):
    """Random access to the `PreferencePair`s of one split (a grain-compatible data source).

    Reads with `tfds.data_source` (array_record; no TensorFlow) and decodes each example.

    Args:
      dataset_dir: directory returned by `build_preference_dataset`.
      split: split name.

    Example:
      >>> import json, os, tempfile
      >>> d = tempfile.mkdtemp(); f = os.path.join(d, "p.jsonl")
      >>> with open(f, "w") as fh:
      ...     _ = fh.write(json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b"}) + "\\n")
      >>> src = PreferenceSource(build_preference_dataset(d, {"train": [f]}), "train")
      >>> print(src[0].prompt, len(src))
      Q 1
    """

    def __init__(self, dataset_dir, split: str):
        self.dataset_dir = os.fspath(dataset_dir)
        self.split = split
        builder = tfds.builder_from_directory(self.dataset_dir)
        self.source = tfds.data_source(
            builder.name + "/" + builder.builder_config.name
            if builder.builder_config
            else builder.name,
            data_dir=os.path.dirname(os.path.dirname(os.path.dirname(self.dataset_dir))),
            split=split,
        )

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return decode_example(self.source[int(index)])

    def __getitems__(self, indices) -> list[PreferencePair]:
        """Decodes several records with one read."""
        return [decode_example(e) for e in self.source.__getitems__([int(i) for i in indices])]

    def files(self) -> list[str]:
        """The array_record files of this split (for `dataset_fingerprint`).

        Returns:
          Sorted paths of the split's shards.
        """
        prefix = f"-{self.split}.array_record-"
        return sorted(
            os.path.join(self.dataset_dir, f) for f in os.listdir(self.dataset_dir) if prefix in f
        )
