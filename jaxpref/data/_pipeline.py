"""A grain input pipeline of fixed-shape preference batches, sharded by process, resumable.

`preference_pipeline(source, ...)` returns a `grain.MapDataset` of `PairBatch`es (or
`PackedPairBatch`es). Each step is deterministic given the seed:

1. every record is tagged with its position in `source` (the `index` of the batch, which keys the
   reference log-prob cache);
2. the whole dataset is shuffled with `seed` (a fresh permutation per epoch, the same on every
   process);
3. process `shard_index` of `shard_count` takes every `shard_count`-th element of that permutation:
   in each epoch the shards are disjoint and cover the dataset (the last `N mod shard_count`
   elements of an epoch's permutation are dropped so all processes run the same number of steps);
4. records are tokenized; a bad record raises `DataError` or, with `on_error="skip"`, becomes a
   filler pair (`pair_mask` 0) and is counted in the `report` passed in, as is every record
   that truncation cut (`report.num_truncated`);
5. `batch_size` consecutive records make one batch (`drop_remainder`, so every batch has the same
   number of pairs; batches may straddle epochs).

Iterate with `it = iter(ds)`; `it.get_state()` / `it.set_state(state)` save and restore the
position, and `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` put it in the same
orbax checkpoint as the model (`checkpoint_args`), so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Sequence
from typing import NamedTuple

import grain

from jaxpref.data._packing import pack_pairs
from jaxpref.data._records import DataError, OnError, ReadReport
from jaxpref.data._tokenize import (
    TokenizeConfig,
    Tokenizer,
    collate_pairs,
    tokenize_pair,
)

__all__ = [
    "PackingConfig",
    "checkpoint_args",
    "preference_pipeline",
    "shard_indices",
]


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """Pack pairs into rows instead of one row per sequence.

    Attributes:
      row_length: tokens per packed row `T`.
      row_buckets: allowed row counts `R` (None: as many as needed).

    Example:
      >>> print(PackingConfig(row_length=256).row_length)
      256
    """

    row_length: int
    row_buckets: tuple[int, ...] | None = None


class _Skipped(NamedTuple):
    error: DataError


def shard_indices(num_records: int, shard_index: int, shard_count: int) -> range:
    """Positions of one shard in an epoch's permutation (equal sizes, disjoint, covering).

    Args:
      num_records: records per epoch `N`.
      shard_index: this shard, in `[0, shard_count)`.
      shard_count: number of shards (processes).

    Returns:
      The positions `shard_index, shard_index + shard_count, ...` below
      `(N // shard_count) * shard_count` (the last `N mod shard_count` are dropped).

    Raises:
      ValueError: when `shard_index` is out of range.

    Example:
      >>> print(list(shard_indices(10, 1, 3)))
      [1, 4, 7]
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} must be in [0, {shard_count}).")
    usable = (num_records // shard_count) * shard_count
    return range(shard_index, usable, shard_count)


_REPORT_LOCK = threading.Lock()


def _tokenize(item, *, tokenizer, config, on_error, report):
    index, record = item
    try:
        out = tokenize_pair(record, tokenizer, config, index=index)
    except DataError as e:
        if on_error == "raise":
            raise
        with _REPORT_LOCK:
            report.add_skip(e)
        return _Skipped(e)
    with _REPORT_LOCK:
        report.num_records += 1
        report.num_truncated += int(out.truncated)
    return out


def _collate(items, *, pad_id, buckets, packing):
    pairs = [None if isinstance(x, _Skipped) else x for x in items]
    if packing is None:
        return collate_pairs(pairs, pad_id=pad_id, buckets=buckets, batch_size=len(items))
    return pack_pairs(
        pairs,
        row_length=packing.row_length,
        pad_id=pad_id,
        row_buckets=packing.row_buckets,
        batch_size=len(items),
    )


def preference_pipeline(
    source: Sequence,
    *,
    batch_size: int,
    tokenizer: Tokenizer,
    config: TokenizeConfig,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int | None = None,
    shard_count: int | None = None,
    on_error: OnError = "raise",
    packing: PackingConfig | None = None,
    report: ReadReport | None = None,
) -> grain.MapDataset:
    """A grain dataset of fixed-shape batches over random-access preference records.

    Args:
      source: random-access sequence of `PreferencePair` (`PreferenceSource`, a list, ...).
      batch_size: pairs per batch on this process.
      tokenizer: a `Tokenizer`.
      config: `TokenizeConfig` (truncation, length buckets).
      seed: shuffle seed (same on every process).
      shuffle: shuffle globally each epoch.
      num_epochs: passes over the data; None repeats forever.
      shard_index: this process's shard; None uses `jax.process_index()`.
      shard_count: number of shards; None uses `jax.process_count()`.
      on_error: `"raise"` or `"skip"` for records that fail tokenization (`too_long`, ...).
      packing: pack pairs into rows (`PackingConfig`) instead of `[2B, T]` batches.
      report: a `ReadReport` counting, in this process, the records tokenized, truncated
        (`num_truncated`) and skipped (including records tokenized ahead of consumption by
        grain's prefetching).

    Returns:
      `grain.MapDataset` of `PairBatch` (or `PackedPairBatch`) of numpy arrays.

    Example:
      >>> from jaxpref.data._records import PreferencePair
      >>> from tokenizers import Tokenizer, models, pre_tokenizers
      >>> from jaxpref.data._tokenize import HFTokenizer
      >>> raw = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2}, unk_token="<eos>"))
      >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
      >>> recs = [PreferencePair("a", "b", "a")] * 4
      >>> ds = preference_pipeline(recs, batch_size=2, tokenizer=HFTokenizer(raw),
      ...                          config=TokenizeConfig(max_length=8, buckets=(8,)), seed=1)
      >>> batches = list(ds)
      >>> print(len(batches), batches[0].input_ids.shape)
      2 (4, 8)
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    n = len(source)
    shard = shard_indices(n, shard_index, shard_count)
    if len(shard) < batch_size:
        raise ValueError(
            f"preference_pipeline: shard {shard_index}/{shard_count} of {n} records has "
            f"{len(shard)} records, fewer than batch_size {batch_size}."
        )
    # Indices reaching the source run on across epochs (epoch * n + i); keep the record's own.
    ds = grain.MapDataset.source(source).map_with_index(lambda i, r: (i % n, r))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds[: shard.stop][shard.start :: shard.step]
    ds = ds.repeat(num_epochs)
    report = ReadReport() if report is None else report
    ds = ds.map(
        functools.partial(
            _tokenize, tokenizer=tokenizer, config=config, on_error=on_error, report=report
        )
    )
    collate = functools.partial(
        _collate, pad_id=tokenizer.pad_id, buckets=config.padded_buckets, packing=packing
    )
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=collate)
    return ds


def checkpoint_args(iterator, *, restore: bool = False):
    """Orbax checkpoint args saving (or restoring into) a grain iterator.

    Use inside `orbax.checkpoint.args.Composite(..., data=checkpoint_args(it))` next to the
    model state; restoring sets the iterator's position in place.

    Args:
      iterator: the iterator from `iter(preference_pipeline(...))`.
      restore: build restore args instead of save args.

    Returns:
      `grain.checkpoint.CheckpointSave` or `CheckpointRestore`.

    Example:
      >>> print(type(checkpoint_args(iter(grain.MapDataset.range(3)))).__name__)
      CheckpointSave
    """
    import grain.checkpoint as gc

    return gc.CheckpointRestore(iterator) if restore else gc.CheckpointSave(iterator)
