"""Reference log-prob cache: fingerprints, storage with the dataset, mismatch errors, lookups."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref.data import (
    FingerprintMismatchError,
    PreferencePair,
    PreferenceSource,
    RefLogprobCache,
    TokenizeConfig,
    build_preference_dataset,
    build_ref_cache,
    dataset_fingerprint,
    fingerprint,
    params_fingerprint,
    preference_pipeline,
    write_jsonl,
)

CFG = TokenizeConfig(max_length=32, buckets=(32,))


def _fake_ref_logps(batch):
    """A deterministic stand-in for a reference forward: a function of each row's tokens."""
    ids = np.asarray(batch.input_ids, np.float64)
    per_row = -np.sum(np.log1p(ids) * batch.loss_mask, axis=-1)
    b = ids.shape[0] // 2
    return per_row[:b].astype(np.float32), per_row[b:].astype(np.float32)


def test_fingerprints_are_sensitive(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("x")
    base = dataset_fingerprint([f], "tok", CFG)
    assert base == dataset_fingerprint([f], "tok", CFG)
    assert base != dataset_fingerprint([f], "tok", TokenizeConfig(max_length=64))
    assert base != dataset_fingerprint([f], "other-tok", CFG)
    f.write_text("y")
    assert base != dataset_fingerprint([f], "tok", CFG)
    p = {"a": jnp.ones((2, 3)), "b": [jnp.zeros(2)]}
    assert params_fingerprint(p) == params_fingerprint({"a": jnp.ones((2, 3)), "b": [jnp.zeros(2)]})
    assert params_fingerprint(p) != params_fingerprint({"a": jnp.ones((2, 3)), "b": [jnp.ones(2)]})
    assert params_fingerprint(p) != params_fingerprint({"a": jnp.ones((3, 2)), "b": [jnp.zeros(2)]})
    assert params_fingerprint(p) != params_fingerprint(
        {"a": jnp.ones((2, 3), jnp.bfloat16), "b": [jnp.zeros(2)]}
    )
    assert fingerprint({"x": 1, "y": [1, 2]}) == fingerprint({"y": [1, 2], "x": 1})


def test_cache_round_trip_and_errors(tmp_path):
    cache = RefLogprobCache.create(tmp_path, 4, dataset_fingerprint="D", model_fingerprint="M1")
    cache.write([0, 2, -1], [-1.0, -3.0, 9.0], [-10.0, -30.0, 9.0], pair_mask=[1, 1, 0])
    cache.flush()
    with pytest.raises(ValueError, match="incomplete"):
        RefLogprobCache.open(tmp_path, dataset_fingerprint="D", model_fingerprint="M1")
    cache.write([1, 3], [-2.0, -4.0], [-20.0, -40.0])
    cache.flush()
    opened = RefLogprobCache.open(tmp_path, dataset_fingerprint="D", model_fingerprint="M1")
    c, r = opened.lookup([3, 0, -1])
    np.testing.assert_array_equal(c, [-4.0, -1.0, 0.0])
    np.testing.assert_array_equal(r, [-40.0, -10.0, 0.0])
    with pytest.raises(FingerprintMismatchError, match="dataset_fingerprint"):
        RefLogprobCache.open(tmp_path, dataset_fingerprint="D2", model_fingerprint="M1")
    with pytest.raises(FingerprintMismatchError, match="M1"):
        RefLogprobCache.open(tmp_path, dataset_fingerprint="D", model_fingerprint="M2")
    with pytest.raises(FileNotFoundError):
        RefLogprobCache.open(
            tmp_path / "elsewhere", dataset_fingerprint="D", model_fingerprint="M1"
        )
    with pytest.raises(ValueError, match="out of range"):
        opened.lookup([4])


def test_cache_built_once_serves_shuffled_sharded_batches(tmp_path, tokenizer):
    records = [PreferencePair(f"Q{i}", f" answer {i}", f" wrong {i * 7}") for i in range(12)]
    write_jsonl(records, tmp_path / "d.jsonl")
    ds_dir = build_preference_dataset(tmp_path / "tfds", {"train": [tmp_path / "d.jsonl"]})
    src = PreferenceSource(ds_dir, "train")
    data_fp = dataset_fingerprint(src.files(), tokenizer.fingerprint(), CFG)
    model_fp = params_fingerprint({"w": jnp.arange(3.0)})
    ordered = preference_pipeline(
        src, batch_size=5, tokenizer=tokenizer, config=CFG, shuffle=False, num_epochs=1
    )
    with pytest.raises(ValueError, match="not covered"):  # drop_remainder leaves 2 records out
        build_ref_cache(
            ds_dir,
            ordered,
            _fake_ref_logps,
            num_records=12,
            dataset_fingerprint=data_fp,
            model_fingerprint=model_fp,
        )
    ordered = preference_pipeline(src, batch_size=4, tokenizer=tokenizer, config=CFG, shuffle=False)
    build_ref_cache(
        ds_dir,
        ordered,
        _fake_ref_logps,
        num_records=12,
        dataset_fingerprint=data_fp,
        model_fingerprint=model_fp,
    )
    cache = RefLogprobCache.open(ds_dir, dataset_fingerprint=data_fp, model_fingerprint=model_fp)
    assert cache.directory.startswith(ds_dir)
    for shard in range(2):
        ds = preference_pipeline(
            src,
            batch_size=3,
            tokenizer=tokenizer,
            config=CFG,
            seed=9,
            num_epochs=2,
            shard_index=shard,
            shard_count=2,
        )
        for batch in ds:
            want_c, want_r = _fake_ref_logps(batch)
            got_c, got_r = cache.lookup(batch.index)
            np.testing.assert_allclose(got_c, want_c, rtol=1e-6)
            np.testing.assert_allclose(got_r, want_r, rtol=1e-6)
