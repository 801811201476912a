"""Preference data: records, file formats, tokenization, packing, storage, input pipelines.

* Records (`PreferencePair`, `UnpairedExample`, `RankedExample`, `SegmentPreference`) are frozen,
  self-validating values; bad input raises `DataError` with the file path and line, or under
  `on_error="skip"` is counted by reason in a `ReadReport`.
* Readers for JSONL (plain, or gzip / bzip2 / xz compressed, read as it streams) and Parquet in
  the layouts in use: explicit `prompt`/`chosen`/`rejected` (strings or `{role, content}`
  message lists), HH-RLHF full texts (`split_hh`), implicit-prompt conversations
  (`extract_prompt`); configurable field names (`FieldMap`).
* Tokenization (`HFTokenizer` for a `tokenizer.json`, whose stored truncation and padding are
  ignored; `SentencePieceTokenizer`), a minimal `ChatTemplate`, truncation set by
  `TokenizeConfig` alone (flagged per record, counted in `ReadReport.num_truncated`), and
  fixed-shape `[2B, T]` batches (chosen rows, then rejected rows) padded to length buckets
  (`collate_pairs`); packing of several pairs per row (`pack_pairs`).
* Storage: a tfds builder writing `array_record` without TensorFlow (`build_preference_dataset`,
  read back by `PreferenceSource` through `tfds.data_source`), a grain pipeline with seeded
  shuffling, per-process sharding and checkpointable iterator state (`preference_pipeline`), and
  a fingerprinted cache of reference log-probs stored with the dataset (`RefLogprobCache`).
* `jaxpref.data.synthetic`: preference data sampled from the `jaxpref.envs` testbeds, whose
  ground truth is known (bandit pairs, token-task pairs with gold credit, CPL segment pairs,
  trajectory preferences of linear MDPs).

The tfds and grain parts are imported on first use, so `import jaxpref.data` stays light.
"""

import importlib as _importlib

from jaxpref.data._cache import *  # noqa: F403
from jaxpref.data._formats import *  # noqa: F403
from jaxpref.data._packing import *  # noqa: F403
from jaxpref.data._records import *  # noqa: F403
from jaxpref.data._tokenize import *  # noqa: F403

_LAZY = {
    "PreferenceFiles": "_arrayrecord",
    "PreferenceFilesConfig": "_arrayrecord",
    "PreferenceSource": "_arrayrecord",
    "build_preference_dataset": "_arrayrecord",
    "decode_example": "_arrayrecord",
    "encode_example": "_arrayrecord",
    "load_read_reports": "_arrayrecord",
    "PackingConfig": "_pipeline",
    "checkpoint_args": "_pipeline",
    "preference_pipeline": "_pipeline",
    "shard_indices": "_pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        module = _importlib.import_module(f"jaxpref.data.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxpref.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


from jaxpref.data import _cache, _formats, _packing, _records, _tokenize  # noqa: E402

__all__ = sorted(
    {
        *_cache.__all__,
        *_formats.__all__,
        *_packing.__all__,
        *_records.__all__,
        *_tokenize.__all__,
        *_LAZY,
    }
)
