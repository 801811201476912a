"""A cache of reference-model sequence log-probs, stored next to the dataset it was computed on.

Training against a frozen reference model needs `log pi_ref(chosen | prompt)` and
`log pi_ref(rejected | prompt)` for every pair; computing them once and reading them back removes
the reference forward pass from every step. A cache is only valid for one tokenized dataset and
one set of reference parameters, so it is keyed by two fingerprints:

* `dataset_fingerprint(files, *extra)`: a hash of the data files' bytes and of anything else that
  changes the token rows (pass the tokenizer's `fingerprint()` and the `TokenizeConfig`);
* `params_fingerprint(params)`: a hash of the parameter tree's paths, shapes, dtypes and values
  (the one parameter fingerprint of jaxpref; a checkpoint round trip keeps it).

Layout: `<dataset_dir>/ref_logps/<model fingerprint[:16]>/` holds `logps.npy` (`[N, 2]` float32,
chosen and rejected per record index, NaN until written) and `manifest.json` (both fingerprints,
the record count and how many are filled). Opening a cache whose fingerprints differ from the
expected ones raises `FingerprintMismatchError`, naming both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from jaxpref._tree import params_fingerprint

__all__ = [
    "FingerprintMismatchError",
    "RefLogprobCache",
    "build_ref_cache",
    "dataset_fingerprint",
    "fingerprint",
    "params_fingerprint",
]

_MANIFEST = "manifest.json"
_VALUES = "logps.npy"
_VERSION = 1


class FingerprintMismatchError(ValueError):
    """A cache exists but was computed for another dataset or another model.

    Raised by `RefLogprobCache.open`; the message names the expected and the stored
    fingerprints.

    Example:
      >>> print(issubclass(FingerprintMismatchError, ValueError))
      True
    """


def _update(h, part) -> None:
    if isinstance(part, bytes | bytearray | memoryview):
        h.update(b"b")
        h.update(bytes(part))
    elif isinstance(part, str):
        h.update(b"s")
        h.update(part.encode())
    elif isinstance(part, np.ndarray | np.generic):
        a = np.ascontiguousarray(part)
        h.update(f"a{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(part, dict):
        h.update(b"d")
        for k in sorted(part, key=str):
            _update(h, str(k))
            _update(h, part[k])
    elif isinstance(part, list | tuple):
        h.update(f"l{len(part)}".encode())
        for x in part:
            _update(h, x)
    else:
        h.update(b"r")
        h.update(repr(part).encode())


def fingerprint(*parts: Any) -> str:
    """SHA-256 hex digest of a sequence of strings, bytes, numpy arrays, dicts, lists, reprs.

    Args:
      *parts: values to hash, in order: strings, bytes, numpy arrays (dtype, shape and values),
        dicts (by sorted key), lists / tuples (recursively); anything else by its `repr`.

    Returns:
      Hex digest.

    Example:
      >>> print(fingerprint("a", 1) == fingerprint("a", 1), fingerprint("a") == fingerprint("b"))
      True False
    """
    h = hashlib.sha256()
    _update(h, list(parts))
    return h.hexdigest()


def dataset_fingerprint(files: Iterable, *extra: Any) -> str:
    """Fingerprint of data files (their names' order and bytes) and of `extra` parts.

    Args:
      files: paths of the files that make up the dataset (e.g. its array_record shards).
      *extra: whatever else shapes the token rows: tokenizer fingerprint, `TokenizeConfig`, ...

    Returns:
      Hex digest.

    Example:
      >>> import os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "d.jsonl")
      >>> _ = open(f, "w").write("{}")
      >>> print(dataset_fingerprint([f], "cfg") == dataset_fingerprint([f], "other"))
      False
    """
    h = hashlib.sha256()
    for path in files:
        _update(h, os.path.basename(os.fspath(path)))
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    _update(h, list(extra))
    return h.hexdigest()


def _cache_dir(dataset_dir, model_fp: str) -> str:
    return os.path.join(os.fspath(dataset_dir), "ref_logps", model_fp[:16])


class RefLogprobCache:
    """Reference log-probs of every pair of a dataset, by record index.

    Create one with `RefLogprobCache.create`, fill it with `write`, `flush` it; open it in
    training with `RefLogprobCache.open` and read batches with `lookup(batch.index)`.

    Attributes:
      directory: where the cache lives.
      dataset_fingerprint: the dataset it belongs to.
      model_fingerprint: the reference model it belongs to.
      values: `[N, 2]` float32 (chosen, rejected); NaN where not written.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> c = RefLogprobCache.create(d, 3, dataset_fingerprint="D", model_fingerprint="M")
      >>> c.write([0, 1, 2], [-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]); c.flush()
      >>> c = RefLogprobCache.open(d, dataset_fingerprint="D", model_fingerprint="M")
      >>> ch, rj = c.lookup([2, -1])
      >>> print(ch, rj)
      [-3.  0.] [-6.  0.]
    """

    def __init__(self, directory: str, dataset_fp: str, model_fp: str, values: np.ndarray):
        self.directory = directory
        self.dataset_fingerprint = dataset_fp
        self.model_fingerprint = model_fp
        self.values = values

    @classmethod
    def create(
        cls,
        dataset_dir,
        num_records: int,
        *,
        dataset_fingerprint: str,
        model_fingerprint: str,
    ) -> RefLogprobCache:
        """A new, empty cache for `num_records` pairs (overwrites one for the same model).

        Args:
          dataset_dir: the dataset's directory (the cache goes in `ref_logps/` under it).
          num_records: dataset size `N`.
          dataset_fingerprint: see `dataset_fingerprint`.
          model_fingerprint: `params_fingerprint` of the reference parameters.

        Returns:
          A cache with `[N, 2]` NaN values, not yet written to disk (`write`, then `flush`).
        """
        directory = _cache_dir(dataset_dir, model_fingerprint)
        os.makedirs(directory, exist_ok=True)
        values = np.full((int(num_records), 2), np.nan, np.float32)
        return cls(directory, dataset_fingerprint, model_fingerprint, values)

    @classmethod
    def open(
        cls, dataset_dir, *, dataset_fingerprint: str, model_fingerprint: str
    ) -> RefLogprobCache:
        """Opens the cache of `dataset_dir` for this dataset and model.

        Args:
          dataset_dir: the dataset's directory.
          dataset_fingerprint: the expected `dataset_fingerprint`.
          model_fingerprint: the expected `params_fingerprint` of the reference parameters.

        Returns:
          The cache, with every one of its `[N, 2]` values filled.

        Raises:
          FingerprintMismatchError: a cache exists but for another dataset or model.
          FileNotFoundError: no cache at all.
          ValueError: the cache is incomplete.
        """
        directory = _cache_dir(dataset_dir, model_fingerprint)
        manifest_path = os.path.join(directory, _MANIFEST)
        if not os.path.exists(manifest_path):
            root = os.path.join(os.fspath(dataset_dir), "ref_logps")
            others = []
            if os.path.isdir(root):
                for name in sorted(os.listdir(root)):
                    m = os.path.join(root, name, _MANIFEST)
                    if os.path.exists(m):
                        with open(m) as f:
                            others.append(json.load(f)["model_fingerprint"])
            if others:
                raise FingerprintMismatchError(
                    f"reference log-prob cache in {root} was computed for model "
                    f"fingerprint(s) {others}, not {model_fingerprint}; recompute it for this "
                    "reference model."
                )
            raise FileNotFoundError(f"no reference log-prob cache under {root}.")
        with open(manifest_path) as f:
            manifest = json.load(f)
        for key, want in (
            ("dataset_fingerprint", dataset_fingerprint),
            ("model_fingerprint", model_fingerprint),
        ):
            if manifest[key] != want:
                raise FingerprintMismatchError(
                    f"reference log-prob cache {directory} has {key} {manifest[key]}, expected "
                    f"{want}; the {key.split('_')[0]} changed since it was computed."
                )
        values = np.load(os.path.join(directory, _VALUES))
        missing = int(np.isnan(values).any(axis=1).sum())
        if missing:
            raise ValueError(
                f"reference log-prob cache {directory} is incomplete: {missing} of "
                f"{len(values)} records have no value."
            )
        return cls(directory, dataset_fingerprint, model_fingerprint, values)

    @property
    def num_records(self) -> int:
        """Number of records `N`."""
        return int(self.values.shape[0])

    def write(self, index, chosen, rejected, pair_mask=None) -> None:
        """Stores values for a batch; entries with `pair_mask == 0` or `index < 0` are ignored.

        Args:
          index: `[B]` record indices.
          chosen: `[B]` reference log-probs of the chosen completions.
          rejected: `[B]` reference log-probs of the rejected completions.
          pair_mask: optional `[B]` mask of real pairs.
        """
        index = np.asarray(index).reshape(-1)
        keep = index >= 0
        if pair_mask is not None:
            keep &= np.asarray(pair_mask).reshape(-1) != 0
        if np.any(index[keep] >= self.num_records):
            raise ValueError(
                f"RefLogprobCache.write: index {int(index[keep].max())} out of range "
                f"[0, {self.num_records})."
            )
        vals = np.stack([np.asarray(chosen), np.asarray(rejected)], axis=-1).astype(np.float32)
        self.values[index[keep]] = vals.reshape(-1, 2)[keep]

    def flush(self) -> None:
        """Writes `logps.npy` and `manifest.json` (the manifest last)."""
        np.save(os.path.join(self.directory, _VALUES), self.values)
        manifest = {
            "version": _VERSION,
            "dataset_fingerprint": self.dataset_fingerprint,
            "model_fingerprint": self.model_fingerprint,
            "num_records": self.num_records,
            "num_filled": int((~np.isnan(self.values).any(axis=1)).sum()),
        }
        tmp = os.path.join(self.directory, _MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2)
        os.replace(tmp, os.path.join(self.directory, _MANIFEST))

    def lookup(self, index) -> tuple[np.ndarray, np.ndarray]:
        """`(chosen [B], rejected [B])` float32 for record indices; 0 for fillers (index < 0).

        Args:
          index: `[B]` record indices (a batch's `index`; -1 for filler pairs).

        Returns:
          `(chosen, rejected)`, each `[B]` float32 reference sequence log-probs.

        Raises:
          ValueError: an index out of range or never written.
        """
        index = np.asarray(index).reshape(-1)
        keep = index >= 0
        if np.any(index[keep] >= self.num_records):
            raise ValueError(
                f"RefLogprobCache.lookup: index {int(index[keep].max())} out of range "
                f"[0, {self.num_records})."
            )
        vals = np.where(keep[:, None], self.values[np.where(keep, index, 0)], 0.0)
        if np.isnan(vals).any():
            bad = index[np.isnan(vals).any(axis=1)][:5].tolist()
            raise ValueError(f"RefLogprobCache.lookup: records {bad} have no cached value.")
        return vals[:, 0].astype(np.float32), vals[:, 1].astype(np.float32)


def build_ref_cache(
    dataset_dir,
    batches: Iterable,
    logprob_fn: Callable,
    *,
    num_records: int,
    dataset_fingerprint: str,
    model_fingerprint: str,
) -> RefLogprobCache:
    """Runs `logprob_fn` over batches covering a dataset once and stores the results.

    Args:
      dataset_dir: the dataset's directory (the cache goes in `ref_logps/` under it).
      batches: batches with `index` and `pair_mask` fields (`PairBatch`, `PackedPairBatch`),
        covering every record at least once (e.g. an unshuffled one-epoch pipeline).
      logprob_fn: `batch -> (chosen [B], rejected [B])` reference sequence log-probs.
      num_records: dataset size `N`.
      dataset_fingerprint: see `dataset_fingerprint`.
      model_fingerprint: `params_fingerprint` of the reference parameters.

    Returns:
      The flushed cache.

    Raises:
      ValueError: some records were not covered by `batches`.

    Example:
      >>> import tempfile
      >>> from types import SimpleNamespace as NS
      >>> batches = [NS(index=np.array([0, 1]), pair_mask=np.array([1, 1]))]
      >>> fn = lambda b: (-1.0 * b.index, -2.0 * b.index)
      >>> c = build_ref_cache(tempfile.mkdtemp(), batches, fn, num_records=2,
      ...                     dataset_fingerprint="D", model_fingerprint="M")
      >>> print(c.lookup([1])[1])
      [-2.]
    """
    cache = RefLogprobCache.create(
        dataset_dir,
        num_records,
        dataset_fingerprint=dataset_fingerprint,
        model_fingerprint=model_fingerprint,
    )
    for batch in batches:
        chosen, rejected = logprob_fn(batch)
        cache.write(batch.index, np.asarray(chosen), np.asarray(rejected), batch.pair_mask)
    missing = int(np.isnan(cache.values).any(axis=1).sum())
    if missing:
        raise ValueError(f"build_ref_cache: {missing} of {num_records} records were not covered.")
    cache.flush()
    return cache
