"""Record validation, the error type, the read report, and the light package import."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from jaxpref.data import (
    REASONS,
    DataError,
    Message,
    PreferencePair,
    RankedExample,
    ReadReport,
    SegmentPreference,
    UnpairedExample,
    unpair,
)


def _reason(fn):
    with pytest.raises(DataError) as e:
        fn()
    return e.value.reason


def test_pair_validation_reasons():
    conv = (Message("assistant", "hi"),)
    assert _reason(lambda: PreferencePair("q", "", " b")) == "empty_completion"
    assert _reason(lambda: PreferencePair("q", " b", " \n")) == "empty_completion"
    assert _reason(lambda: PreferencePair("q", " b", "b")) == "identical_completions"
    assert _reason(lambda: PreferencePair("q", 3, " b")) == "bad_field"
    assert _reason(lambda: PreferencePair("q", conv, " b")) == "bad_field"  # mixed kinds
    assert _reason(lambda: PreferencePair((), (Message("user", "x"),), conv)) == "bad_field"
    assert (
        _reason(lambda: PreferencePair("q", " a", " b", chosen_score=float("nan"))) == "bad_field"
    )
    assert _reason(lambda: PreferencePair("q", " a", " b", chosen_score=True)) == "bad_field"
    assert _reason(lambda: PreferencePair("q", " a\ud800", " b")) == "bad_field"
    assert _reason(lambda: Message("", "x")) == "bad_field"
    with pytest.raises(DataError) as info:
        PreferencePair("q", "", " b", path="f.jsonl", line=4)
    e = info.value
    assert (e.path, e.line, str(e)) == (
        "f.jsonl",
        4,
        "f.jsonl:4: empty_completion: chosen is empty",
    )
    # path and line are provenance, not content
    assert PreferencePair("q", " a", " b", path="x", line=1) == PreferencePair("q", " a", " b")


def test_other_records():
    assert _reason(lambda: UnpairedExample("q", " ", True)) == "empty_completion"
    assert _reason(lambda: UnpairedExample("q", " a", "yes")) == "bad_field"
    assert _reason(lambda: RankedExample("q", (" a",), (1.0,))) == "bad_field"
    assert _reason(lambda: RankedExample("q", (" a", " b"), (1.0,))) == "bad_field"
    assert _reason(lambda: RankedExample("q", (" a", "a"), (1.0, 2.0))) == "identical_completions"
    assert RankedExample("q", (" a", " b", " c"), (1.0, 1.0, 3.0)).ranking() == (2, 0, 1)
    s = SegmentPreference(np.zeros((4, 2)), np.zeros(4), np.ones((4, 2)), np.ones(4), 0.3)
    assert s.length == 4
    assert (
        _reason(lambda: SegmentPreference(np.zeros(4), np.zeros(3), np.zeros(4), np.zeros(4), 1.0))
        == "bad_field"
    )
    assert (
        _reason(lambda: SegmentPreference(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), 1.5))
        == "bad_field"
    )
    pairs = [PreferencePair("q", " a", " b", metadata={"i": 1}, path="p", line=2)]
    ex = unpair(pairs)
    assert [(e.completion, e.desirable, e.line, dict(e.metadata)) for e in ex] == [
        (" a", True, 2, {"i": 1}),
        (" b", False, 2, {"i": 1}),
    ]


def test_data_error_and_report():
    with pytest.raises(ValueError, match="unknown reason"):
        DataError("whatever", "x")
    err = DataError("too_long", "200 tokens", path="a.jsonl", line=9)
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, again.detail, again.path, again.line) == (
        "too_long",
        "200 tokens",
        "a.jsonl",
        9,
    )
    assert (
        err.located("b", 1).path == "a.jsonl"
        and DataError("too_long", "x").located("b", 1).line == 1
    )

    r = ReadReport(max_examples=2)
    for line in range(5):
        r.handle(DataError("bad_field", "x", path="f", line=line), "skip")
    r.num_records = 7
    assert r.num_skipped == 5 and len(r.examples) == 2
    with pytest.raises(DataError):
        r.handle(DataError("bad_field", "x"), "raise")
    with pytest.raises(ValueError):
        r.handle(DataError("bad_field", "x"), "ignore")
    back = ReadReport.from_dict(r.to_dict())
    assert back.num_records == 7 and dict(back.skipped) == {"bad_field": 5}
    assert [e.line for e in back.examples] == [0, 1]
    other = ReadReport(num_records=1, num_blank=2)
    other.add_skip(DataError("too_long", "y"))
    r.merge(other)
    assert (
        r.num_records == 8
        and r.num_blank == 2
        and dict(r.skipped) == {"bad_field": 5, "too_long": 1}
    )
    assert set(REASONS) >= set(r.skipped)


def test_import_is_light():
    code = (
        "import sys, jaxpref.data, jaxpref.data.synthetic\n"
        "heavy = ('grain', 'tensorflow_datasets', 'tensorflow')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_data_error_message_is_one_short_line():
    err = DataError("bad_field", "first line\nsecond line\r\nthird " + "x" * 1000, path="a", line=2)
    assert "\n" not in str(err) and "\r" not in str(err)
    assert str(err).startswith("a:2: bad_field: first line second line third x")
    assert len(err.detail) == 300 and err.detail.endswith("...")
    with pytest.raises(DataError) as e:
        UnpairedExample("q", " a", "y" * 500)
    assert e.value.reason == "bad_field" and len(str(e.value)) < 120
    with pytest.raises(DataError) as e:
        Message(["r" * 500], "x")
    assert len(str(e.value)) < 120
    r = ReadReport()
    r.add_skip(DataError("too_long", "x"))
    r.add_skip(DataError("too_long", "y", path="f.jsonl"))
    assert r.locations() == {"too_long": ["<memory>", "f.jsonl"]}
