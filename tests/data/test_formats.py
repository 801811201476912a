"""Readers and writers: round trips, the HH prompt split, implicit prompts, bad input."""

import bz2
import gzip
import json
import lzma
import os
import random
import tempfile
import traceback

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxpref.data import (
    HH_ASSISTANT,
    REASONS,
    DataError,
    FieldMap,
    Message,
    PreferencePair,
    RankedExample,
    ReadReport,
    UnpairedExample,
    extract_prompt,
    hh_to_messages,
    iter_preferences,
    read_preferences,
    read_ranked,
    read_unpaired,
    split_hh,
    write_jsonl,
    write_parquet,
)

H, A = "\n\nHuman:", "\n\nAssistant:"


def _write_lines(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else line.encode("utf-8"))
            f.write(b"\n")
    return str(path)


def _conv(*turns):
    return tuple(Message(r, c) for r, c in turns)


STRING_PAIRS = [
    PreferencePair("What is 2+2?", " 4", " 5", chosen_score=9.0, rejected_score=1.5),
    PreferencePair("Name a colour.", " Blue ", " Seven", metadata={"id": 3, "src": "x"}),
    PreferencePair("", "Unconditional text.", "Other text.", metadata={"tags": ["a", "b"]}),
    PreferencePair("Ünïcode ✓", " 日本語", " emoji 🙂"),
]

CONV_PAIRS = [
    PreferencePair(
        _conv(("system", "Be brief."), ("user", "Hi")),
        _conv(("assistant", "Hello!")),
        _conv(("assistant", "Go away.")),
        chosen_score=5.0,
        rejected_score=1.0,
    ),
    PreferencePair(
        _conv(("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?")),
        _conv(("assistant", "6")),
        _conv(("assistant", "7")),
        metadata={"id": 1},
    ),
]

HH_PAIRS = [
    PreferencePair(f"{H} Hi{A}", " Hello!", " Go away."),
    PreferencePair(f"{H} 2+2?{A} 4{H} and 3+3?{A}", " 6", " 7\n", metadata={"id": 9}),
]


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet])
@pytest.mark.parametrize(
    "records,layout",
    [
        (STRING_PAIRS, "explicit"),
        (CONV_PAIRS, "explicit"),
        (CONV_PAIRS, "implicit"),
        (HH_PAIRS, "implicit"),
    ],
)
def test_pair_round_trip(tmp_path, writer, records, layout):
    suffix = ".jsonl" if writer is write_jsonl else ".parquet"
    path = str(tmp_path / f"pairs{suffix}")
    assert writer(records, path, layout=layout) == len(records)
    got, report = read_preferences(path)
    if writer is write_parquet:
        # Parquet gives every row every column: absent metadata keys come back as None.
        got = [
            PreferencePair(
                g.prompt,
                g.chosen,
                g.rejected,
                g.chosen_score,
                g.rejected_score,
                {k: v for k, v in g.metadata.items() if v is not None},
            )
            for g in got
        ]
    assert got == records
    assert report.num_records == len(records) and report.num_skipped == 0
    got_raw, _ = read_preferences(path)
    assert [g.line for g in got_raw] == list(range(1, len(records) + 1))
    assert all(g.path == path for g in got_raw)


@pytest.mark.parametrize("writer,suffix", [(write_jsonl, ".jsonl"), (write_parquet, ".parquet")])
def test_unpaired_and_ranked_round_trip(tmp_path, writer, suffix):
    unpaired = [
        UnpairedExample("Q1", " good", True),
        UnpairedExample("Q2", " bad", False),
        UnpairedExample(_conv(("user", "Hi")), _conv(("assistant", "Hey")), True),
    ]
    ranked = [
        RankedExample("Q", (" a", " b", " c"), (0.5, 2.0, -1.0)),
        RankedExample(
            _conv(("user", "Q")), (_conv(("assistant", "x")), _conv(("assistant", "y"))), (1.0, 0.0)
        ),
    ]
    for records, reader, name in (
        (unpaired[:2], read_unpaired, "u"),
        (ranked[:1], read_ranked, "r"),
    ):
        path = str(tmp_path / f"{name}{suffix}")
        writer(records, path)
        got, report = reader(path)
        assert got == records and report.num_records == len(records)
    # Mixed string/conversation rows only round-trip through JSONL (Parquet needs one schema).
    if writer is write_jsonl:
        for records, reader in ((unpaired, read_unpaired), (ranked, read_ranked)):
            path = str(tmp_path / f"mixed{suffix}")
            writer(records, path)
            assert reader(path)[0] == records
    assert ranked[0].ranking() == (1, 0, 2)


def test_custom_field_names(tmp_path):
    row = {"question": "Q?", "response_j": " yes", "response_k": " no", "id": 7, "junk": 1}
    path = _write_lines(tmp_path / "shp.jsonl", [json.dumps(row)])
    fields = FieldMap(
        prompt="question", chosen="response_j", rejected="response_k", metadata=("id",)
    )
    (pair,), _ = read_preferences(path, fields=fields)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q?", " yes", " no")
    assert dict(pair.metadata) == {"id": 7}
    (pair,), _ = read_preferences(path, fields=FieldMap("question", "response_j", "response_k"))
    assert dict(pair.metadata) == {"id": 7, "junk": 1}


def test_ultrafeedback_conversational_scores(tmp_path):
    row = {
        "prompt": "Write a haiku",
        "chosen": [
            {"role": "user", "content": "Write a haiku"},
            {"role": "assistant", "content": "Leaves fall"},
        ],
        "rejected": [
            {"role": "user", "content": "Write a haiku"},
            {"role": "assistant", "content": "No."},
        ],
        "score_chosen": 8.5,
        "score_rejected": 3,
    }
    # UltraFeedback-binarized keeps a prompt string next to the full conversations; TRL's
    # implicit form drops the prompt; an explicit form may repeat the prompt messages.
    implicit = {k: v for k, v in row.items() if k != "prompt"}
    repeated = dict(row, prompt=row["chosen"][:1])
    replies = dict(row, chosen=row["chosen"][1:], rejected=row["rejected"][1:])
    rows = (row, implicit, repeated, replies)
    path = _write_lines(tmp_path / "uf.jsonl", [json.dumps(r) for r in rows])
    pairs, _ = read_preferences(path)
    assert len(pairs) == 4
    for pair in pairs:
        assert pair.prompt == _conv(("user", "Write a haiku"))
        assert pair.chosen == _conv(("assistant", "Leaves fall"))
        assert pair.rejected == _conv(("assistant", "No."))
        assert (pair.chosen_score, pair.rejected_score) == (8.5, 3.0)


# --------------------------------------------------------------------------------------------
# HH-RLHF prompt split.


def test_hh_single_turn_reconstructs_texts():
    c, r = f"{H} Hi there{A} Hello! How can I help?", f"{H} Hi there{A} Go away."
    p, cc, rr = split_hh(c, r)
    assert p == f"{H} Hi there{A}"
    assert (p + cc, p + rr) == (c, r)
    assert cc == " Hello! How can I help?"


def test_hh_multi_turn_shared_history_splits_at_last_assistant():
    hist = f"{H} What is 2+2?{A} 4.{H} And 3+3?{A}"
    p, c, r = split_hh(hist + " 6.", hist + " 7.")
    assert p == hist and (c, r) == (" 6.", " 7.")


def test_hh_shared_completion_prefix():
    base = f"{H} Capital of France?{A}"
    p, c, r = split_hh(base + " The capital is Paris.", base + " The capital is Lyon.")
    assert p == base
    assert (c, r) == (" The capital is Paris.", " The capital is Lyon.")
    p, c, r = split_hh(base + " Paris", base + " Paris, of course")
    assert (p, c, r) == (base, " Paris", " Paris, of course")


def test_hh_whitespace_is_kept_exactly():
    base = f"{H}  spaced  question \n{A}"
    c, r = base + " Answer one.\n\n", base + "\tAnswer two."
    p, cc, rr = split_hh(c, r)
    assert p == base and p + cc == c and p + rr == r
    with pytest.raises(DataError) as e:
        PreferencePair(p, " Same.", "Same.  ")
    assert e.value.reason == "identical_completions"


def test_hh_divergence_in_earlier_assistant_turn():
    c = f"{H} Hi{A} Hello!{H} Thanks{A} You're welcome."
    r = f"{H} Hi{A} Go away.{H} Thanks{A} Whatever."
    with pytest.raises(DataError) as e:
        split_hh(c, r)
    assert e.value.reason == "diverging_history"
    p, cc, rr = split_hh(c, r, multi_turn="keep")
    assert p == f"{H} Hi{A}"
    assert p + cc == c and p + rr == r


def test_hh_divergence_inside_human_turn_is_always_an_error():
    c = f"{H} Hi{A} Hello!{H} Tell me a joke{A} Knock knock."
    r = f"{H} Hi{A} Hello!{H} Tell me a fact{A} Water is wet."
    for mode in ("error", "keep"):
        with pytest.raises(DataError) as e:
            split_hh(c, r, multi_turn=mode)
        assert e.value.reason == "diverging_history"


def test_hh_no_shared_assistant_marker():
    with pytest.raises(DataError) as e:
        split_hh(f"{H} A{A} x", f"{H} B{A} y")
    assert e.value.reason == "no_prompt_split"


def test_hh_to_messages():
    msgs = hh_to_messages(f"{H} Hi{A} Hello!{H} Bye{A}")
    assert msgs == _conv(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"))
    with pytest.raises(DataError):
        hh_to_messages("no markers")


def test_extract_prompt_cases():
    u, u2 = Message("user", "Hi"), Message("user", "Other")
    a, b = Message("assistant", "Hello"), Message("assistant", "Bye")
    assert extract_prompt((u, a), (u, b)) == ((u,), (a,), (b,))
    with pytest.raises(DataError) as e:
        extract_prompt((u, a), (u2, a))
    assert e.value.reason == "diverging_history"
    follow = Message("user", "More?")
    with pytest.raises(DataError) as e:
        extract_prompt((u, a, follow, a), (u, b, follow, b))
    assert e.value.reason == "diverging_history"
    p, c, r = extract_prompt((u, a, follow, a), (u, b, follow, b), multi_turn="keep")
    assert p == (u,) and c == (a, follow, a) and r == (b, follow, b)


# --------------------------------------------------------------------------------------------
# Bad input: path + line, raise / skip, counted.

GOOD = json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b"})
BAD_LINES = {
    "malformed_json": '{"prompt": "Q", "chosen": " a"',
    "missing_field": json.dumps({"prompt": "Q", "chosen": " a"}),
    "empty_completion": json.dumps({"prompt": "Q", "chosen": "   ", "rejected": " b"}),
    "identical_completions": json.dumps({"prompt": "Q", "chosen": " a", "rejected": "a "}),
    "bad_field": json.dumps({"prompt": "Q", "chosen": 3, "rejected": " b"}),
    "no_prompt_split": json.dumps({"chosen": f"{H} A{A} x", "rejected": f"{H} B{A} y"}),
    "diverging_history": json.dumps(
        {"chosen": f"{H} A{A} x{H} B{A} y", "rejected": f"{H} A{A} z{H} B{A} w"}
    ),
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_each_bad_record_raises_with_path_and_line(tmp_path, reason):
    path = _write_lines(tmp_path / "d.jsonl", [GOOD, BAD_LINES[reason], GOOD])
    with pytest.raises(DataError) as e:
        read_preferences(path)
    assert (e.value.reason, e.value.path, e.value.line) == (reason, path, 2)
    assert str(e.value).startswith(f"{path}:2: {reason}: ")
    pairs, report = read_preferences(path, on_error="skip")
    assert [p.line for p in pairs] == [1, 3]
    assert dict(report.skipped) == {reason: 1}
    assert report.examples[0].line == 2


def test_skip_counts_every_reason_and_blank_lines(tmp_path):
    lines = [
        GOOD,
        BAD_LINES["malformed_json"],
        BAD_LINES["missing_field"],
        "",
        "   ",
        BAD_LINES["empty_completion"],
        "[1, 2]",
        b"\xff\xfe not utf-8",
        GOOD,
        BAD_LINES["identical_completions"],
        json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b", "score_chosen": "high"}),
        json.dumps({"prompt": "Q", "chosen": [{"role": "user", "content": "x"}], "rejected": " b"}),
    ]
    path = _write_lines(tmp_path / "mixed.jsonl", lines)
    pairs, report = read_preferences(path, on_error="skip")
    assert [p.line for p in pairs] == [1, 9]
    assert dict(report.skipped) == {
        "malformed_json": 3,
        "missing_field": 1,
        "empty_completion": 1,
        "identical_completions": 1,
        "bad_field": 2,
    }
    assert report.num_blank == 2 and report.num_records == 2
    assert {(e.reason, e.line) for e in report.examples} >= {
        ("malformed_json", 8),
        ("bad_field", 12),
    }
    assert "skipped 8" in report.summary()


def test_unreadable_parquet_raises(tmp_path):
    path = str(tmp_path / "broken.parquet")
    with open(path, "wb") as f:
        f.write(b"not a parquet file")
    with pytest.raises(DataError) as e:
        read_preferences(path, on_error="skip")
    assert e.value.reason == "malformed_file" and e.value.path == path


def test_parquet_bad_row_has_row_number(tmp_path):
    records = [PreferencePair("Q", " a", " b"), PreferencePair("Q", " c", " d")]
    path = str(tmp_path / "p.parquet")
    write_parquet(records, path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pylist()
    table[1]["chosen"] = ""
    pq.write_table(pa.Table.from_pylist(table), path)
    with pytest.raises(DataError) as e:
        read_preferences(path)
    assert (e.value.reason, e.value.line) == ("empty_completion", 2)


def test_unknown_suffix_and_policy(tmp_path):
    with pytest.raises(ValueError, match="cannot infer"):
        read_preferences(str(tmp_path / "data.txt"))
    path = _write_lines(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(ValueError, match="on_error"):
        read_preferences(path, on_error="ignore")


# --------------------------------------------------------------------------------------------
# Property: junk never crashes the reader with anything but DataError.

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_field_values = st.one_of(
    _json_values,
    st.text(max_size=12),
    st.just(f"{H} x{A} y"),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant", ""]), "content": st.text(max_size=5)}
        ),
        max_size=3,
    ),
)
_rows = st.dictionaries(
    st.sampled_from(["prompt", "chosen", "rejected", "score_chosen", "other"]),
    _field_values,
    max_size=5,
).map(lambda d: json.dumps(d).encode())
_lines = st.lists(
    st.one_of(
        _rows,
        st.binary(max_size=30),
        st.text(max_size=30).map(lambda s: s.encode("utf-8")),
        _json_values.map(lambda v: json.dumps(v).encode()),
        st.just(b"[" * 5000),
    ),
    max_size=8,
)


_SIGNATURES = (
    b"\x1f\x8b\x08",  # gzip
    b"\xfd7zXZ\x00",  # xz
    b"PK\x03\x04",  # zip
    b"PK\x05\x06",
    b"7z\xbc\xaf\x27\x1c",
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\x04\x22\x4d\x18",  # lz4
    b"PAR1",
    b"\xff\xfe",  # UTF-16
    b"\xfe\xff",
)


def _is_binary_file(data: bytes) -> bool:
    """The reader's whole-file rule: a signature, a NUL in 4 KiB, or a non-UTF-8 first line."""
    head = data[:4096]
    if head.startswith(_SIGNATURES) or head[257:262] == b"ustar" or b"\x00" in head:
        return True
    lines = head.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    first = next((s for s in lines if s.strip()), b"")
    try:
        first.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lines)
def test_junk_lines_only_raise_data_error(lines):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "junk.jsonl")
        data = b"\n".join(lines)
        with open(path, "wb") as f:
            f.write(data)
        if _is_binary_file(data):
            for on_error in ("skip", "raise"):
                with pytest.raises(DataError) as e:
                    read_preferences(path, on_error=on_error)
                assert (e.value.reason, e.value.path) == ("malformed_file", path)
                assert "\n" not in str(e.value)
            return
        pairs, report = read_preferences(path, on_error="skip")
        segments = data.split(b"\n")
        if segments and segments[0].startswith(b"\xef\xbb\xbf"):
            segments[0] = segments[0][3:]
        non_blank = sum(1 for s in segments if s.strip())
        assert report.num_records + report.num_skipped == non_blank
        assert report.num_records == len(pairs)
        assert set(report.skipped) <= set(REASONS)
        assert all(isinstance(p, PreferencePair) and p.line >= 1 for p in pairs)
        try:
            strict, _ = read_preferences(path)
        except DataError as e:
            assert e.path == path and e.line >= 1 and e.reason in REASONS
        else:
            assert strict == pairs


def test_assistant_marker_constant():
    assert A == HH_ASSISTANT


# --------------------------------------------------------------------------------------------
# Compressed files: gzip / bz2 / xz read as they stream, detected by suffix and magic bytes.

_COMPRESSORS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def _hh_rows(n):
    rows = []
    for i in range(n):
        history = f"{H} Question {i}?{A} Answer {i}.{H} Why {i}?{A}"
        rows.append({"chosen": history + f" Because {i}.", "rejected": history + " No."})
    return rows


def _explicit_rows(n):
    return [
        {
            "prompt": [{"role": "user", "content": f"Q{i} ✓"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
            "score_chosen": 2.0,
            "score_rejected": 1.0,
        }
        for i in range(n)
    ]


def _jsonl_bytes(rows, blank_at=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for k in blank_at:
        lines.insert(k, "")
    return ("\n".join(lines) + "\n").encode("utf-8")


@pytest.mark.parametrize("kind", sorted(_COMPRESSORS))
@pytest.mark.parametrize("rows", [_hh_rows(300), _explicit_rows(300)], ids=["hh", "explicit"])
def test_compressed_jsonl_reads_like_plain(tmp_path, kind, rows):
    data = _jsonl_bytes(rows, blank_at=(3,))
    plain = tmp_path / "train.jsonl"
    plain.write_bytes(data)
    packed = tmp_path / f"train.jsonl.{kind}"
    packed.write_bytes(_COMPRESSORS[kind](data))
    want, want_report = read_preferences(str(plain))
    got, report = read_preferences(str(packed))
    assert got == want and len(got) == 300
    assert [p.line for p in got] == [p.line for p in want] and got[5].line == 7
    assert all(p.path == str(packed) for p in got)
    assert (report.num_records, report.num_blank) == (want_report.num_records, 1)


@pytest.mark.parametrize("kind", sorted(_COMPRESSORS))
def test_compression_detected_by_magic_bytes(tmp_path, kind):
    data = _jsonl_bytes(_hh_rows(20))
    want, _ = read_preferences(_write_lines(tmp_path / "plain.jsonl", data.splitlines()))
    misnamed = tmp_path / "train.jsonl"  # compressed, but no compression suffix
    misnamed.write_bytes(_COMPRESSORS[kind](data))
    assert read_preferences(str(misnamed))[0] == want
    unknown = tmp_path / "train.bin"
    unknown.write_bytes(_COMPRESSORS[kind](data))
    with pytest.raises(ValueError, match="cannot infer"):
        read_preferences(str(unknown))
    assert read_preferences(str(unknown), file_format="jsonl")[0] == want


def test_compressed_bad_records_keep_decompressed_line_numbers(tmp_path):
    lines = [GOOD, BAD_LINES["malformed_json"], "", GOOD, BAD_LINES["diverging_history"], GOOD]
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(DataError) as e:
        read_preferences(str(path))
    assert (e.value.reason, e.value.line) == ("malformed_json", 2)
    pairs, report = read_preferences(str(path), on_error="skip")
    assert [p.line for p in pairs] == [1, 4, 6]
    assert [(x.reason, x.line) for x in report.examples] == [
        ("malformed_json", 2),
        ("diverging_history", 5),
    ]


def test_suffix_without_the_compression_is_one_clear_error(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl.gz", [GOOD, GOOD])
    with pytest.raises(DataError) as e:
        read_preferences(path, on_error="skip")
    assert (e.value.reason, e.value.path, e.value.line) == ("malformed_file", path, None)
    assert "not gzip-compressed" in str(e.value)
    empty = tmp_path / "empty.jsonl.xz"
    empty.write_bytes(b"")
    assert read_preferences(str(empty))[0] == []


def test_truncated_compressed_file_is_one_error_with_its_line(tmp_path):
    data = _jsonl_bytes(_hh_rows(2000))
    path = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(data)
    path.write_bytes(packed[: len(packed) // 2])
    report_lines = []
    with pytest.raises(DataError) as e:
        for p in iter_preferences(str(path), on_error="skip"):
            report_lines.append(p.line)
    assert e.value.reason == "malformed_file" and "corrupt gzip data" in str(e.value)
    assert report_lines == list(range(1, len(report_lines) + 1)) and len(report_lines) > 10
    assert e.value.line > report_lines[-1]


def _zip_bytes(tmp_path):
    import zipfile

    zpath = tmp_path / "archive.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("train.jsonl", _jsonl_bytes(_hh_rows(50)))
    return zpath.read_bytes()


@pytest.mark.parametrize(
    "name,make,expect",
    [
        ("train.jsonl", _zip_bytes, "a zip archive"),
        ("train.jsonl", lambda _: random.Random(0).randbytes(20000), "binary data"),
        (
            "train.jsonl.gz",
            lambda _: gzip.compress(random.Random(1).randbytes(20000)),
            "gzip data holding binary data",
        ),
        ("train.jsonl", lambda _: b"\xff\xfe" + "{}".encode("utf-16-le"), "UTF-16"),
        ("train.jsonl", lambda _: '{"é": 1}\n'.encode("latin-1") * 50, "not UTF-8 text"),
        ("train.jsonl", lambda _: b"PAR1" + bytes(100), "a Parquet file"),
    ],
    ids=["zip", "random", "gz-random", "utf16", "latin1", "parquet"],
)
def test_binary_file_fails_once_with_a_clear_error(tmp_path, name, make, expect):
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    for on_error in ("raise", "skip"):
        report = ReadReport()
        with pytest.raises(DataError) as e:
            list(iter_preferences(str(path), on_error=on_error, report=report))
        assert (e.value.reason, e.value.path, e.value.line) == ("malformed_file", str(path), None)
        assert expect in str(e.value) and "\n" not in str(e.value)
        assert report.num_skipped == 0 and report.num_records == 0


def test_compressed_parquet_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Parquet compresses its own columns"):
        read_preferences(str(tmp_path / "train.parquet.gz"))


# --------------------------------------------------------------------------------------------
# Bad HH-RLHF records: one short exception under "raise", counts by reason under "skip".

HH_BAD = {
    "diverging_history": {
        "chosen": f"{H} Hi{A} Hello.{H} Any tips?{A} Drink water.",
        "rejected": f"{H} Hi{A} Go away.{H} Any tips?{A} No.",
    },
    "no_prompt_split": {"chosen": f"{H} Hi there", "rejected": f"{H} Hi you"},
    "empty_completion": {"chosen": f"{H} Hi{A}", "rejected": f"{H} Hi{A} Hello."},
    "missing_field": {"chosen": None, "rejected": f"{H} Hi{A} Hello."},
}
HH_GOOD = json.dumps({"chosen": f"{H} Hi{A} Hello.", "rejected": f"{H} Hi{A} Go away."})


@pytest.mark.parametrize(
    "bad,reason,says",
    [
        (json.dumps(HH_BAD["diverging_history"]), "diverging_history", "before the final"),
        (json.dumps(HH_BAD["no_prompt_split"]), "no_prompt_split", "Assistant"),
        (json.dumps(HH_BAD["empty_completion"]), "empty_completion", "chosen is empty"),
        (json.dumps(HH_BAD["missing_field"]), "missing_field", "'chosen' is null"),
        ('{"chosen": "\\n\\nHuman: Hi", ', "malformed_json", "invalid JSON"),
        (json.dumps([HH_BAD["empty_completion"]]), "malformed_json", "expected a JSON object"),
    ],
    ids=["diverging", "no-marker", "empty", "null", "invalid-json", "not-object"],
)
def test_bad_hh_record_raises_one_short_error(tmp_path, bad, reason, says):
    path = _write_lines(tmp_path / "harmless.jsonl", [HH_GOOD] * 86 + [bad, HH_GOOD])
    with pytest.raises(DataError) as e:
        read_preferences(path)
    err = e.value
    assert isinstance(err, ValueError)
    assert (err.path, err.line, err.reason) == (path, 87, reason)
    message = str(err)
    assert message.startswith(f"{path}:87: {reason}: ") and says in message
    assert "\n" not in message and len(message) < len(path) + 200
    assert err.__context__ is None and err.__cause__ is None  # one exception, no chain
    text = "".join(traceback.format_exception(err))
    assert "During handling" not in text and "direct cause" not in text


def test_bad_hh_records_skipped_and_counted_by_reason(tmp_path):
    lines = [HH_GOOD]
    for row in HH_BAD.values():
        lines += [json.dumps(row)] * 2 + [HH_GOOD]
    lines += ["{oops", "[1, 2]", "null", json.dumps({"chosen": f"{H} Hi{A} a", "rejected": None})]
    path = _write_lines(tmp_path / "harmless.jsonl", lines)
    pairs, report = read_preferences(path, on_error="skip")
    assert len(pairs) == report.num_records == 5
    assert dict(report.skipped) == {
        "diverging_history": 2,
        "no_prompt_split": 2,
        "empty_completion": 2,
        "missing_field": 3,
        "malformed_json": 3,
    }
    assert set(report.skipped) <= set(REASONS)
    first = {}
    for err in report.examples:
        first.setdefault(err.reason, err)
        assert err.path == path and "\n" not in str(err)
    assert {r: e.line for r, e in first.items()} == {
        "diverging_history": 2,
        "no_prompt_split": 5,
        "empty_completion": 8,
        "missing_field": 11,
        "malformed_json": 14,
    }
    assert report.to_dict()["skipped"] == dict(report.skipped)
    assert report.locations()["no_prompt_split"] == [f"{path}:5", f"{path}:6"]


def test_long_values_are_cut_in_error_messages(tmp_path):
    row = {"prompt": "Q", "completion": " a", "label": "yes " * 500}
    path = _write_lines(tmp_path / "u.jsonl", [json.dumps(row)])
    with pytest.raises(DataError) as e:
        read_unpaired(path)
    assert e.value.reason == "bad_field" and len(str(e.value)) < len(path) + 120
