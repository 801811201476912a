"""tfds array_record builder + grain pipeline: round trip, sharding, determinism, resume."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from jaxpref.data import (
    DataError,
    Message,
    PackingConfig,
    PreferencePair,
    PreferenceSource,
    ReadReport,
    TokenizeConfig,
    build_preference_dataset,
    checkpoint_args,
    load_read_reports,
    preference_pipeline,
    read_preferences,
    shard_indices,
    tokenize_pair,
    write_jsonl,
    write_parquet,
)

CFG = TokenizeConfig(max_length=32, buckets=(16, 32))


def _pairs(n):
    return [
        PreferencePair(f"Question {i}?", f" Answer {i}.", f" Wrong {i + 1}.", metadata={"id": i})
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("ds")
    strings = _pairs(6)
    convs = [
        PreferencePair(
            (Message("user", f"Hi {i}"),),
            (Message("assistant", f"Hello {i}"),),
            (Message("assistant", "Go away"),),
            chosen_score=float(i),
            rejected_score=0.0,
        )
        for i in range(4)
    ]
    write_jsonl(strings, d / "a.jsonl")
    write_parquet(convs, d / "b.parquet")
    ds_dir = build_preference_dataset(
        d / "tfds", {"train": [d / "a.jsonl", d / "b.parquet"], "test": [d / "a.jsonl"]}, name="mix"
    )
    return ds_dir, strings + convs, d


def test_builder_round_trip_without_tensorflow(dataset):
    ds_dir, records, _ = dataset
    assert importlib.util.find_spec("tensorflow") is None or "tensorflow" not in sys.modules
    files = os.listdir(ds_dir)
    assert any("train.array_record" in f for f in files), files
    src = PreferenceSource(ds_dir, "train")
    assert len(src) == len(records)
    got = [src[i] for i in range(len(src))]
    assert got == records
    assert [(os.path.basename(g.path), g.line) for g in got] == [
        ("a.jsonl", i + 1) for i in range(6)
    ] + [("b.parquet", i + 1) for i in range(4)]
    assert src.__getitems__([7, 0]) == [records[7], records[0]]
    assert len(PreferenceSource(ds_dir, "test")) == 6
    assert src.files() and all(os.path.exists(f) for f in src.files())
    reports = load_read_reports(ds_dir)
    assert reports["train"].num_records == 10 and reports["train"].num_skipped == 0


def test_builder_bad_input_policies(tmp_path):
    good = json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b"})
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join([good, "{broken", good, json.dumps({"prompt": "Q", "chosen": " a"})]) + "\n"
    )
    ds_dir = build_preference_dataset(
        tmp_path / "t1", {"train": [path]}, name="skip", on_error="skip"
    )
    report = load_read_reports(ds_dir)["train"]
    assert report.num_records == 2
    assert dict(report.skipped) == {"malformed_json": 1, "missing_field": 1}
    assert [(e.line, e.path) for e in report.examples] == [(2, str(path)), (4, str(path))]
    assert len(PreferenceSource(ds_dir, "train")) == 2
    with pytest.raises(DataError) as e:
        build_preference_dataset(tmp_path / "t2", {"train": [path]}, name="raise")
    assert (e.value.reason, e.value.line) == ("malformed_json", 2)


def _indices(batches):
    return [int(i) for b in batches for i, m in zip(b.index, b.pair_mask, strict=True) if m]


def test_pipeline_batches_are_tokenized_records(tokenizer):
    records = _pairs(8)
    ds = preference_pipeline(records, batch_size=4, tokenizer=tokenizer, config=CFG, shuffle=False)
    batches = list(ds)
    assert len(batches) == 2 and _indices(batches) == list(range(8))
    for b in batches:
        assert b.input_ids.shape in ((8, 16), (8, 32))
        for k, idx in enumerate(b.index):
            t = tokenize_pair(records[idx], tokenizer, CFG)
            n = len(t.prompt_ids) + len(t.chosen_ids)
            np.testing.assert_array_equal(
                b.input_ids[k, :n], np.concatenate([t.prompt_ids, t.chosen_ids])
            )


def test_seeded_shuffle_is_deterministic_and_reshuffles_each_epoch(tokenizer):
    records = _pairs(12)
    kw = dict(batch_size=4, tokenizer=tokenizer, config=CFG, num_epochs=2)
    a = _indices(preference_pipeline(records, seed=3, **kw))
    b = _indices(preference_pipeline(records, seed=3, **kw))
    c = _indices(preference_pipeline(records, seed=4, **kw))
    assert a == b and a != c
    assert sorted(a[:12]) == list(range(12)) and sorted(a[12:]) == list(range(12))
    assert a[:12] != a[12:] and a[:12] != list(range(12))


@pytest.mark.parametrize("n,count", [(20, 3), (24, 4)])
def test_process_shards_are_disjoint_and_cover(tokenizer, n, count):
    records = _pairs(n)
    per_shard = n // count
    epochs = {0: [], 1: []}
    for shard in range(count):
        ds = preference_pipeline(
            records,
            batch_size=per_shard // 2 if per_shard % 2 == 0 else per_shard,
            tokenizer=tokenizer,
            config=CFG,
            seed=7,
            num_epochs=2,
            shard_index=shard,
            shard_count=count,
        )
        idx = _indices(ds)
        assert len(idx) == 2 * per_shard  # every process runs the same number of steps
        epochs[0].append(idx[:per_shard])
        epochs[1].append(idx[per_shard:])
    for e in epochs.values():
        flat = [i for shard in e for i in shard]
        assert len(set(flat)) == len(flat) == per_shard * count  # disjoint
        if n % count == 0:
            assert sorted(flat) == list(range(n))  # covering
    assert list(shard_indices(20, 2, 3)) == [2, 5, 8, 11, 14, 17]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for x, y in zip(batches_a, batches_b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


def test_resume_from_iterator_state(tokenizer):
    records = _pairs(10)
    make = lambda: preference_pipeline(
        records, batch_size=3, tokenizer=tokenizer, config=CFG, seed=1, num_epochs=3
    )
    full = list(make())
    it = iter(make())
    head = [next(it) for _ in range(4)]
    state = it.get_state()
    it2 = iter(make())
    it2.set_state(state)
    _assert_same(head + list(it2), full)


def test_resume_through_orbax_checkpoint(tmp_path, tokenizer):
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    records = _pairs(9)
    make = lambda: preference_pipeline(
        records,
        batch_size=2,
        tokenizer=tokenizer,
        config=CFG,
        seed=5,
        num_epochs=2,
        shard_index=0,
        shard_count=1,
    )
    full = list(make())
    params = {"w": jnp.arange(4.0)}
    it = iter(make())
    head = [next(it) for _ in range(3)]
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(
            3,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params), data=checkpoint_args(it)),
        )
        mngr.wait_until_finished()
    fresh = iter(make())
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        restored = mngr.restore(
            3,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params), data=checkpoint_args(fresh, restore=True)
            ),
        )
    np.testing.assert_array_equal(restored["params"]["w"], params["w"])
    _assert_same(head + list(fresh), full)


def test_pipeline_bad_records(tokenizer):
    records = _pairs(4)
    records[2] = PreferencePair("Question " * 30, " a", " b", path="x.jsonl", line=3)
    cfg = TokenizeConfig(max_length=32, buckets=(32,), truncation="error")
    report = ReadReport()
    ds = preference_pipeline(
        records,
        batch_size=2,
        tokenizer=tokenizer,
        config=cfg,
        shuffle=False,
        on_error="skip",
        report=report,
    )
    batches = list(ds)
    np.testing.assert_array_equal(batches[1].pair_mask, [0, 1])
    assert dict(report.skipped) == {"too_long": 1} and report.num_records == 3
    assert report.examples[0].line == 3
    ds = preference_pipeline(records, batch_size=2, tokenizer=tokenizer, config=cfg, shuffle=False)
    with pytest.raises(DataError, match="too_long"):
        list(ds)


def test_packed_pipeline_over_array_record(dataset, tokenizer):
    ds_dir, records, _ = dataset
    src = PreferenceSource(ds_dir, "train")
    ds = preference_pipeline(
        src,
        batch_size=5,
        tokenizer=tokenizer,
        config=CFG,
        seed=2,
        packing=PackingConfig(row_length=64),
    )
    batches = list(ds)
    assert sorted(_indices(batches)) == list(range(len(records)))
    for b in batches:
        assert b.input_ids.shape[1] == 64
        for k, idx in enumerate(b.index):
            t = tokenize_pair(records[idx], tokenizer, CFG)
            sel = b.segment_ids[b.pair_row[k]] == b.chosen_segment[k]
            np.testing.assert_array_equal(
                b.input_ids[b.pair_row[k]][sel], np.concatenate([t.prompt_ids, t.chosen_ids])
            )


def test_pipeline_argument_errors(tokenizer):
    with pytest.raises(ValueError, match="fewer than batch_size"):
        preference_pipeline(
            _pairs(5), batch_size=2, tokenizer=tokenizer, config=CFG, shard_index=0, shard_count=4
        )
    with pytest.raises(ValueError, match="shard_index"):
        shard_indices(10, 3, 3)


def test_read_then_pipeline_matches_file_lines(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    write_jsonl(_pairs(4), path)
    pairs, _ = read_preferences(str(path))
    batches = list(
        preference_pipeline(pairs, batch_size=4, tokenizer=tokenizer, config=CFG, shuffle=False)
    )
    assert [pairs[i].line for i in batches[0].index] == [1, 2, 3, 4]
