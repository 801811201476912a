"""Readers and writers for the preference-data layouts in use: JSONL and Parquet files holding

* **explicit** pairs: `prompt`, `chosen`, `rejected` as strings or as lists of
  `{"role", "content"}` messages (TRL / UltraFeedback conversational style);
* **implicit** pairs without a `prompt` field, where `chosen` and `rejected` hold the whole text:
  strings in the Anthropic HH-RLHF layout (`"\\n\\nHuman: ...\\n\\nAssistant: ..."`, split by
  `split_hh`) or message lists (split at the first differing message by `extract_prompt`). Rows
  with a `prompt` string next to full conversations (UltraFeedback-binarized) are split the same
  way, and conversations that repeat a `prompt` message list are trimmed to the reply; a
  `prompt` string next to reply messages becomes a user turn.

Field names are configurable (`FieldMap`). Every row becomes a validated `PreferencePair`
(`UnpairedExample`, `RankedExample` for the other readers) that remembers its path and line.

JSONL files may be gzip, bzip2 or xz compressed (HH-RLHF ships as `train.jsonl.gz`): the
compression is recognised by its magic bytes (a `.gz`/`.bz2`/`.xz` suffix on data that lacks
them is an error), the format by the suffix under it (`train.jsonl.gz` is JSONL), and the file is
decompressed as it streams; line numbers are those of the decompressed text. A file that is not
text (a zip or tar archive, zstd data, a Parquet file under a JSONL name, UTF-16 or other
non-UTF-8 text, random bytes) raises one `DataError` (`malformed_file`) naming the path and what
was seen, under either `on_error` policy.

How a pair is split, and what counts as bad input:

* The prompt ends at the last `"\\n\\nAssistant:"` marker that lies inside the longest common
  prefix of the two texts; the completions are the remainders, so `prompt + chosen` reproduces
  the original text exactly (whitespace included).
* If the texts diverge inside an *earlier* turn, the completions span several turns and the pair
  no longer compares two answers to one conversation. By default this is bad input with reason
  `diverging_history`; `multi_turn="keep"` keeps pairs that diverge at an assistant turn as
  multi-turn completions. Texts that diverge inside a human/user turn are always
  `diverging_history` (the two completions answer different requests).
* A malformed JSON line, a missing or mistyped field, an empty completion and completions equal
  up to surrounding whitespace are reported with path and line (`DataError`); the policy
  `on_error` raises at the first one or skips and counts it in a `ReadReport`. Blank lines are
  ignored and counted.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from jaxpref.data._records import (
    DataError,
    Message,
    OnError,
    PreferencePair,
    RankedExample,
    ReadReport,
    UnpairedExample,
    _brief,
)

__all__ = [
    "HH_ASSISTANT",
    "HH_HUMAN",
    "FieldMap",
    "RankedFields",
    "UnpairedFields",
    "extract_prompt",
    "hh_to_messages",
    "iter_preferences",
    "iter_ranked",
    "iter_unpaired",
    "read_preferences",
    "read_ranked",
    "read_unpaired",
    "split_hh",
    "write_jsonl",
    "write_parquet",
]

HH_HUMAN = "\n\nHuman:"
"""Marker that opens a human turn in HH-RLHF texts."""
HH_ASSISTANT = "\n\nAssistant:"
"""Marker that opens an assistant turn in HH-RLHF texts."""

MultiTurn = Literal["error", "keep"]
"""What to do with completions spanning several turns: report (`"error"`) or keep them."""

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Field names of a preference-pair row.

    Attributes:
      prompt: prompt field; rows without it are implicit pairs (HH strings or message lists).
      chosen: preferred completion (or full text, implicit layout).
      rejected: dispreferred completion.
      chosen_score: optional score of `chosen`; read when present, None otherwise.
      rejected_score: optional score of `rejected`.
      metadata: fields copied into `PreferencePair.metadata`; None copies every other field.

    Example:
      >>> print(FieldMap(chosen="response_j", rejected="response_k").chosen)
      response_j
    """

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    chosen_score: str | None = "score_chosen"
    rejected_score: str | None = "score_rejected"
    metadata: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class UnpairedFields:
    """Field names of an unpaired (KTO-style) row: prompt, completion and a boolean label.

    Attributes:
      prompt: prompt field (a string or a list of messages).
      completion: completion field.
      label: desirability field: a boolean, or 0 / 1.
      metadata: fields copied into `UnpairedExample.metadata`; None copies every other field.

    Example:
      >>> print(UnpairedFields().label)
      label
    """

    prompt: str = "prompt"
    completion: str = "completion"
    label: str = "label"
    metadata: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class RankedFields:
    """Field names of a ranked row: prompt, a list of completions and one score per completion.

    Attributes:
      prompt: prompt field.
      completions: field holding a list of at least two completions.
      scores: field holding a list of numbers, one per completion (higher is better).
      metadata: fields copied into `RankedExample.metadata`; None copies every other field.

    Example:
      >>> print(RankedFields().scores)
      scores
    """

    prompt: str = "prompt"
    completions: str = "completions"
    scores: str = "scores"
    metadata: tuple[str, ...] | None = None


# ------------------------------------------------------------------------------------------
# Splitting implicit pairs.


def split_hh(chosen: str, rejected: str, *, multi_turn: MultiTurn = "error"):
    """Splits two HH-RLHF texts into `(prompt, chosen_completion, rejected_completion)`.

    The prompt ends at the last `"\\n\\nAssistant:"` marker lying wholly inside the longest common
    prefix of the two texts, so `prompt + completion` is the original text exactly. See the module
    docstring for the multi-turn rule.

    Args:
      chosen: full text of the preferred conversation.
      rejected: full text of the dispreferred conversation.
      multi_turn: `"error"` reports completions spanning several turns (`diverging_history`);
        `"keep"` keeps them when the texts diverge at an assistant turn.

    Returns:
      `(prompt, chosen_completion, rejected_completion)` strings.

    Raises:
      DataError: reasons `no_prompt_split`, `diverging_history` (no path or line; readers add
        them).

    Example:
      >>> h = "\\n\\nHuman: Hi\\n\\nAssistant:"
      >>> p, c, r = split_hh(h + " Hello!", h + " Go away.")
      >>> print(repr(p), repr(c), repr(r))
      '\\n\\nHuman: Hi\\n\\nAssistant:' ' Hello!' ' Go away.'
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    k = chosen.rfind(HH_ASSISTANT, 0, n)
    if k < 0:
        raise DataError(
            "no_prompt_split",
            f"no {HH_ASSISTANT!r} marker in the common prefix of chosen and rejected",
        )
    cut = k + len(HH_ASSISTANT)
    prompt, c, r = chosen[:cut], chosen[cut:], rejected[cut:]
    later = [
        name for name, t in (("chosen", c), ("rejected", r)) if HH_ASSISTANT in t or HH_HUMAN in t
    ]
    if later:
        if HH_HUMAN in chosen[cut:n]:
            raise DataError(
                "diverging_history",
                "chosen and rejected diverge inside a later human turn, so they answer "
                "different requests",
            )
        if multi_turn != "keep":
            raise DataError(
                "diverging_history",
                "chosen and rejected diverge before the final assistant turn "
                f"({' and '.join(later)} continue with further turns); pass "
                "multi_turn='keep' to keep multi-turn completions",
            )
    return prompt, c, r


def extract_prompt(chosen: tuple, rejected: tuple, *, multi_turn: MultiTurn = "error"):
    """Splits two conversations at their first differing message into prompt and completions.

    Args:
      chosen: tuple of `Message`, the full preferred conversation.
      rejected: tuple of `Message`, the full dispreferred conversation.
      multi_turn: `"error"` reports completions of more than one message
        (`diverging_history`); `"keep"` keeps them.

    Returns:
      `(prompt, chosen_completion, rejected_completion)` tuples of `Message`.

    Raises:
      DataError: `diverging_history` when the conversations first differ at a non-assistant
        message (or span several turns and `multi_turn="error"`).

    Example:
      >>> u, a, b = Message("user", "Hi"), Message("assistant", "Hello"), Message("assistant", "No")
      >>> p, c, r = extract_prompt((u, a), (u, b))
      >>> print(p == (u,), c[0].content, r[0].content)
      True Hello No
    """
    d = 0
    while d < min(len(chosen), len(rejected)) and chosen[d] == rejected[d]:
        d += 1
    prompt, c, r = chosen[:d], chosen[d:], rejected[d:]
    for name, comp in (("chosen", c), ("rejected", r)):
        if comp and comp[0].role != "assistant":
            raise DataError(
                "diverging_history",
                f"the conversations first differ at message {d}, a {comp[0].role!r} turn of "
                f"{name}, so they answer different requests",
            )
    _check_turns(c, r, multi_turn)
    return prompt, c, r


def _check_turns(c, r, multi_turn: MultiTurn) -> None:
    if multi_turn == "keep":
        return
    if multi_turn != "error":
        raise ValueError(f"multi_turn must be 'error' or 'keep', got {multi_turn!r}.")
    if isinstance(c, tuple) and (len(c) > 1 or len(r) > 1):
        raise DataError(
            "diverging_history",
            f"completions span several turns (chosen {len(c)}, rejected {len(r)} messages); "
            "pass multi_turn='keep' to keep multi-turn completions",
        )


def hh_to_messages(text: str) -> tuple[Message, ...]:
    """Parses an HH-RLHF text into messages (`Human` -> `user`, `Assistant` -> `assistant`).

    Contents are stripped of surrounding whitespace; an empty trailing assistant marker (a
    prompt) gives no message for it.

    Args:
      text: `"\\n\\nHuman: ...\\n\\nAssistant: ..."` text.

    Returns:
      Tuple of `Message`.

    Raises:
      DataError: `bad_field` if the text does not start with a turn marker.

    Example:
      >>> h, a = "\\n\\nHuman:", "\\n\\nAssistant:"
      >>> m = hh_to_messages(h + " Hi" + a + " Hello" + h + " Bye" + a)
      >>> print([(x.role, x.content) for x in m])
      [('user', 'Hi'), ('assistant', 'Hello'), ('user', 'Bye')]
    """
    markers = {HH_HUMAN: "user", HH_ASSISTANT: "assistant"}
    pos, turns = 0, []
    if not any(text.startswith(m) for m in markers):
        raise DataError("bad_field", "HH text must start with '\\n\\nHuman:' or '\\n\\nAssistant:'")
    while pos < len(text):
        marker = next(m for m in markers if text.startswith(m, pos))
        start = pos + len(marker)
        nxt = [i for i in (text.find(m, start) for m in markers) if i >= 0]
        end = min(nxt) if nxt else len(text)
        content = text[start:end].strip()
        if content or end < len(text):
            turns.append(Message(markers[marker], content))
        pos = end
    return tuple(turns)


# ------------------------------------------------------------------------------------------
# Row iteration.


_COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".xz": "xz"}
_SNIFF_BYTES = 4096
_CHUNK_BYTES = 1 << 20


def _strip_compression(name: str) -> tuple[str, str | None]:
    """`(name without a compression suffix, compression named by the suffix or None)`."""
    for suffix, kind in _COMPRESSION_SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def _format_of(path, file_format: str) -> str:
    if file_format != "auto":
        if file_format not in ("jsonl", "parquet"):
            raise ValueError(
                f"file_format must be 'auto', 'jsonl' or 'parquet', got {file_format!r}."
            )
        return file_format
    name, compression = _strip_compression(os.fspath(path).lower())
    if name.endswith((".parquet", ".pq")):
        if compression is not None:
            raise ValueError(
                f"{os.fspath(path)!r} is a {compression}-compressed Parquet file; Parquet "
                "compresses its own columns, so decompress the file first."
            )
        return "parquet"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise ValueError(
        f"cannot infer the format of {os.fspath(path)!r} from its suffix "
        "(.jsonl/.json/.ndjson, optionally followed by .gz/.bz2/.xz, or .parquet); "
        "pass file_format='jsonl' or 'parquet'."
    )


def _compression_of(head: bytes) -> str | None:
    """The compression whose magic bytes start `head`: `"gzip"`, `"bz2"`, `"xz"` or None."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if (
        head.startswith(b"BZh")
        and head[3:4] in tuple(b"123456789"[i : i + 1] for i in range(9))
        and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90")
    ):
        return "bz2"
    return None


_FOREIGN_MAGIC = (
    (b"PK\x03\x04", "a zip archive", "; unpack it first"),
    (b"PK\x05\x06", "a zip archive", "; unpack it first"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "; unpack it first"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "; decompress it, or recompress with gzip"),
    (b"\x04\x22\x4d\x18", "lz4-compressed data", "; decompress it, or recompress with gzip"),
    (b"PAR1", "a Parquet file", "; name it .parquet or pass file_format='parquet'"),
    (b"\xff\xfe", "UTF-16 text", "; convert it to UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "; convert it to UTF-8"),
)


def _first_bytes(head: bytes) -> str:
    return "first bytes " + head[:8].hex(" ")


def _not_text(head: bytes) -> str | None:
    """Why the (decompressed) start of a file is not JSON Lines text, or None if it may be.

    The file is rejected as a whole when it starts with a known binary signature, holds a NUL
    byte in its first 4 KiB (JSON text never does), or its first non-blank line is not UTF-8.
    Later undecodable lines are bad records, counted one by one.
    """
    for magic, what, hint in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return f"{what}, not JSON Lines text ({_first_bytes(head)}){hint}"
    if head[257:262] == b"ustar":
        return f"a tar archive, not JSON Lines text ({_first_bytes(head)}); unpack it first"
    nul = head.find(b"\x00")
    if nul >= 0:
        return f"binary data, not JSON Lines text (NUL byte at offset {nul}; {_first_bytes(head)})"
    lines = head.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    k = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if k is None:
        return None
    try:
        lines[k].decode("utf-8")
    except UnicodeDecodeError as e:
        cut_by_sniff = k == len(lines) - 1 and len(head) == _SNIFF_BYTES
        if not (cut_by_sniff and e.end == len(lines[k])):
            return (
                f"not UTF-8 text ({e.reason} at byte {e.start} of line {k + 1}; "
                f"{_first_bytes(head)})"
            )
    return None


def _open_decompressed(path: str, compression: str | None):
    if compression == "gzip":
        import gzip

        return gzip.open(path, "rb")
    if compression == "bz2":
        import bz2

        return bz2.open(path, "rb")
    if compression == "xz":
        import lzma

        return lzma.open(path, "rb")
    return open(path, "rb")


def _decompression_errors() -> tuple:
    import lzma
    import zlib

    return (OSError, EOFError, zlib.error, lzma.LZMAError)


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Splits a stream of byte chunks at `\\n` (lines without it), holding one line at a time."""
    carry: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            carry.append(chunk[start:end])
            yield b"".join(carry)
            carry, start = [], end + 1
        if start < len(chunk):
            carry.append(chunk[start:])
    if carry:
        yield b"".join(carry)


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Streams the numbered lines of a text file, gzip/bz2/xz-compressed or not.

    The compression is recognised from the magic bytes (a `.gz`/`.bz2`/`.xz` suffix on data
    without them is an error); the file is decompressed as it is read, never whole in memory.
    Line numbers count lines of the decompressed text. A file that is not text raises one
    `DataError` (`malformed_file`) whatever the `on_error` policy.
    """
    with open(path, "rb") as f:
        raw_head = f.read(16)
    compression = _compression_of(raw_head)
    claimed = _strip_compression(path.lower())[1]
    if raw_head and claimed is not None and compression != claimed:
        seen = f"{compression} data" if compression else _first_bytes(raw_head)
        raise DataError(
            "malformed_file",
            f"the suffix says {claimed} but the file is not {claimed}-compressed ({seen})",
            path=path,
        )
    what = f"{compression} data holding " if compression else ""
    errors = _decompression_errors()
    line = 0
    try:
        with _open_decompressed(path, compression) as f:
            head = f.read(_SNIFF_BYTES)
            why = _not_text(head)
            if why is not None:
                raise DataError("malformed_file", what + why, path=path)
            chunks = itertools.chain([head], iter(lambda: f.read(_CHUNK_BYTES), b""))
            for line, raw in enumerate(_split_lines(chunks), start=1):
                yield line, raw
    except errors as e:
        if compression is None:
            raise
        raise DataError(
            "malformed_file",
            f"corrupt {compression} data after {line} lines ({type(e).__name__}: {e})",
            path=path,
            line=line + 1,
        ) from None


def _iter_jsonl(path: str, report: ReadReport) -> Iterator[tuple[int, Any]]:
    for line, raw in _iter_lines(path):
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            report.num_blank += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield line, DataError("malformed_json", f"not UTF-8 ({e.reason} at byte {e.start})")
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            msg = str(e) if isinstance(e, ValueError) else "nesting too deep"
            yield line, DataError("malformed_json", f"invalid JSON: {msg}")
            continue
        if not isinstance(obj, dict):
            yield (
                line,
                DataError("malformed_json", f"expected a JSON object, got {type(obj).__name__}"),
            )
            continue
        yield line, obj


def _iter_parquet(path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=1024)
        row = 0
        for batch in batches:
            for obj in batch.to_pylist():
                row += 1
                yield row, obj
    except (pa.ArrowException, OSError) as e:
        raise DataError("malformed_file", f"unreadable Parquet file: {e}", path=path) from None


def _iter_rows(path, file_format: str, report: ReadReport):
    path = os.fspath(path)
    if _format_of(path, file_format) == "parquet":
        return path, _iter_parquet(path)
    return path, _iter_jsonl(path, report)


def _get(row: dict, name: str, *, required: bool = True):
    value = row.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            if value is None:
                raise DataError("missing_field", f"field {name!r} is null")
            present = ", ".join(_brief(k, 20) for k in list(row)[:8])
            raise DataError("missing_field", f"no field {name!r} (fields: {present})")
        return None
    return value


def _parse_text(name: str, value):
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(
                    "bad_field", f"{name}[{i}] must be an object with 'role' and 'content'"
                )
            out.append(Message(m["role"], m["content"]))
        return tuple(out)
    raise DataError(
        "bad_field", f"{name} must be a string or a list of messages, got {type(value).__name__}"
    )


def _parse_score(name: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError("bad_field", f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _metadata(row: dict, used: set, names: tuple[str, ...] | None) -> dict:
    if names is None:
        return {k: v for k, v in row.items() if k not in used}
    return {k: row[k] for k in names if k in row}


def _pair_from_row(row: dict, fields: FieldMap, multi_turn: MultiTurn) -> PreferencePair:
    chosen = _parse_text(fields.chosen, _get(row, fields.chosen))
    rejected = _parse_text(fields.rejected, _get(row, fields.rejected))
    raw_prompt = _get(row, fields.prompt, required=False)
    prompt = None if raw_prompt is None else _parse_text(fields.prompt, raw_prompt)
    convs = isinstance(chosen, tuple) and isinstance(rejected, tuple)
    if convs and isinstance(prompt, tuple) and prompt:
        # Completions that repeat the prompt turns (full conversations) are trimmed to the reply.
        n = len(prompt)
        if chosen[:n] == prompt and rejected[:n] == prompt:
            chosen, rejected = chosen[n:], rejected[n:]
    if convs and isinstance(prompt, str):
        if chosen and chosen[0].role != "assistant":
            # UltraFeedback-binarized layout: a prompt string next to full conversations.
            prompt = None
        else:
            # A prompt string with reply messages: the prompt is the user's turn.
            prompt = (Message("user", prompt),)
    if prompt is not None:
        if convs:
            _check_turns(chosen, rejected, multi_turn)
    elif isinstance(chosen, str) and isinstance(rejected, str):
        if HH_ASSISTANT not in chosen and HH_ASSISTANT not in rejected:
            if HH_HUMAN in chosen or HH_HUMAN in rejected:
                raise DataError(
                    "no_prompt_split",
                    f"HH texts without an {HH_ASSISTANT!r} marker in chosen or rejected",
                )
            raise DataError(
                "missing_field",
                f"no field {fields.prompt!r}, and chosen/rejected are not HH texts with "
                f"{HH_ASSISTANT!r} turns",
            )
        if chosen.strip() == rejected.strip():
            raise DataError("identical_completions", "chosen and rejected are equal")
        prompt, chosen, rejected = split_hh(chosen, rejected, multi_turn=multi_turn)
    elif isinstance(chosen, tuple) and isinstance(rejected, tuple):
        if chosen == rejected:
            raise DataError("identical_completions", "chosen and rejected are equal")
        prompt, chosen, rejected = extract_prompt(chosen, rejected, multi_turn=multi_turn)
    else:
        raise DataError("bad_field", "chosen and rejected must both be strings or both messages")
    scores = {}
    for attr in ("chosen_score", "rejected_score"):
        name = getattr(fields, attr)
        scores[attr] = None if name is None else _parse_score(name, row.get(name))
    used = {
        fields.prompt,
        fields.chosen,
        fields.rejected,
        fields.chosen_score,
        fields.rejected_score,
    }
    return PreferencePair(
        prompt, chosen, rejected, metadata=_metadata(row, used, fields.metadata), **scores
    )


def _unpaired_from_row(row: dict, fields: UnpairedFields, multi_turn: MultiTurn):
    prompt = _parse_text(fields.prompt, _get(row, fields.prompt))
    completion = _parse_text(fields.completion, _get(row, fields.completion))
    label = _get(row, fields.label)
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise DataError("bad_field", f"{fields.label} must be a boolean, got {_brief(label)}")
    if isinstance(completion, tuple) and len(completion) > 1 and multi_turn != "keep":
        _check_turns(completion, completion, multi_turn)
    used = {fields.prompt, fields.completion, fields.label}
    return UnpairedExample(prompt, completion, label, _metadata(row, used, fields.metadata))


def _ranked_from_row(row: dict, fields: RankedFields, multi_turn: MultiTurn):
    prompt = _parse_text(fields.prompt, _get(row, fields.prompt))
    comps = _get(row, fields.completions)
    scores = _get(row, fields.scores)
    if not isinstance(comps, list) or not isinstance(scores, list):
        raise DataError("bad_field", f"{fields.completions} and {fields.scores} must be lists")
    comps = tuple(_parse_text(f"{fields.completions}[{i}]", c) for i, c in enumerate(comps))
    scores = tuple(_parse_score(f"{fields.scores}[{i}]", s) for i, s in enumerate(scores))
    for c in comps:
        if isinstance(c, tuple):
            _check_turns(c, c, multi_turn)
    used = {fields.prompt, fields.completions, fields.scores}
    return RankedExample(prompt, comps, scores, _metadata(row, used, fields.metadata))


def _iter_records(path, parse: Callable, *, file_format, on_error, multi_turn, report) -> Iterator:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    if multi_turn not in ("error", "keep"):
        raise ValueError(f"multi_turn must be 'error' or 'keep', got {multi_turn!r}.")
    report = ReadReport() if report is None else report
    path, rows = _iter_rows(path, file_format, report)
    return _records(path, rows, parse, on_error, report)


def _records(path, rows, parse, on_error, report) -> Iterator:
    for line, row in rows:
        error = row if isinstance(row, DataError) else None
        if error is None:
            try:
                record = parse(row)
            except DataError as e:
                error = e
        if error is not None:
            # Raised outside the `except` block: one exception, no chained context.
            report.handle(error.located(path, line), on_error)
            continue
        report.num_records += 1
        yield dataclasses.replace(record, path=path, line=line)


def iter_preferences(
    path,
    *,
    fields: FieldMap = FieldMap(),
    file_format: str = "auto",
    multi_turn: MultiTurn = "error",
    on_error: OnError = "raise",
    report: ReadReport | None = None,
) -> Iterator[PreferencePair]:
    """Streams `PreferencePair`s from a JSONL or Parquet file (see the module docstring).

    Args:
      path: file path: `.jsonl`/`.json`/`.ndjson`, optionally gzip/bzip2/xz compressed
        (`.gz`/`.bz2`/`.xz`, or recognised by magic bytes), or `.parquet`; for other names give
        `file_format`.
      fields: field names.
      file_format: `"auto"` (from the suffix under any compression suffix), `"jsonl"` or
        `"parquet"`.
      multi_turn: `"error"` or `"keep"` for completions spanning several turns.
      on_error: `"raise"` at the first bad record or `"skip"` and count it.
      report: a `ReadReport` to fill (counts kept, skipped by reason, blank lines).

    Returns:
      Iterator of validated pairs carrying `path` and `line`.

    Raises:
      DataError: at the first bad record under `on_error="raise"` (one line:
        `path:line: reason: detail`); for a file that cannot be read as a whole (not text,
        corrupt compressed data, unreadable Parquet: `malformed_file`) under either policy.
      ValueError: for an unknown `file_format`, `multi_turn` or `on_error`, or a name whose
        format cannot be inferred.

    Example:
      >>> import json, os, tempfile
      >>> d = tempfile.mkdtemp(); f = os.path.join(d, "p.jsonl")
      >>> with open(f, "w") as fh:
      ...     _ = fh.write(json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b"}) + "\\n")
      ...     _ = fh.write("{oops\\n")
      >>> report = ReadReport()
      >>> pairs = list(iter_preferences(f, on_error="skip", report=report))
      >>> print(len(pairs), pairs[0].line, dict(report.skipped))
      1 1 {'malformed_json': 1}
    """
    parse = lambda row: _pair_from_row(row, fields, multi_turn)
    return _iter_records(
        path,
        parse,
        file_format=file_format,
        on_error=on_error,
        multi_turn=multi_turn,
        report=report,
    )


def read_preferences(path, **kwargs) -> tuple[list[PreferencePair], ReadReport]:
    """Reads a whole file of preference pairs: `(pairs, report)`.

    Args:
      path: file path (JSONL, possibly gzip/bzip2/xz compressed, or Parquet; see
        `iter_preferences`).
      **kwargs: keyword arguments of `iter_preferences` (`fields`, `file_format`,
        `multi_turn`, `on_error`), except `report`.

    Returns:
      `(pairs, report)`: the list of validated `PreferencePair`s, each with its `path` and
      `line`, and the `ReadReport` of the read (kept, skipped by reason, blank lines).

    Raises:
      DataError: see `iter_preferences`.

    Example:
      >>> import json, os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "hh.jsonl")
      >>> h = "\\n\\nHuman: Hi\\n\\nAssistant:"
      >>> row = {"chosen": h + " Hey", "rejected": h + " No"}
      >>> with open(f, "w") as fh:
      ...     _ = fh.write(json.dumps(row) + "\\n")
      >>> pairs, report = read_preferences(f)
      >>> print(repr(pairs[0].prompt), report.num_records)
      '\\n\\nHuman: Hi\\n\\nAssistant:' 1
    """
    report = ReadReport()
    return list(iter_preferences(path, report=report, **kwargs)), report


def iter_unpaired(
    path,
    *,
    fields: UnpairedFields = UnpairedFields(),
    file_format: str = "auto",
    multi_turn: MultiTurn = "error",
    on_error: OnError = "raise",
    report: ReadReport | None = None,
) -> Iterator[UnpairedExample]:
    """Streams `UnpairedExample`s (prompt, completion, boolean label) from JSONL or Parquet.

    Args:
      path: file path.
      fields: field names.
      file_format: `"auto"`, `"jsonl"` or `"parquet"`.
      multi_turn: `"error"` or `"keep"` for multi-message completions.
      on_error: `"raise"` or `"skip"`.
      report: `ReadReport` to fill.

    Returns:
      Iterator of examples.

    Example:
      >>> import json, os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "u.jsonl")
      >>> with open(f, "w") as fh:
      ...     _ = fh.write(json.dumps({"prompt": "Q", "completion": " a", "label": True}))
      >>> print([e.desirable for e in iter_unpaired(f)])
      [True]
    """
    parse = lambda row: _unpaired_from_row(row, fields, multi_turn)
    return _iter_records(
        path,
        parse,
        file_format=file_format,
        on_error=on_error,
        multi_turn=multi_turn,
        report=report,
    )


def read_unpaired(path, **kwargs) -> tuple[list[UnpairedExample], ReadReport]:
    """Reads a whole file of unpaired examples: `(examples, report)` (see `iter_unpaired`).

    Args:
      path: file path (JSONL, possibly compressed, or Parquet).
      **kwargs: keyword arguments of `iter_unpaired`, except `report`.

    Returns:
      `(examples, report)`: the list of `UnpairedExample`s and the `ReadReport`.

    Example:
      >>> import json, os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "u.jsonl")
      >>> with open(f, "w") as fh:
      ...     _ = fh.write(json.dumps({"prompt": "Q", "completion": " a", "label": 0}))
      >>> ex, rep = read_unpaired(f)
      >>> print(ex[0].desirable, rep.num_records)
      False 1
    """
    report = ReadReport()
    return list(iter_unpaired(path, report=report, **kwargs)), report


def iter_ranked(
    path,
    *,
    fields: RankedFields = RankedFields(),
    file_format: str = "auto",
    multi_turn: MultiTurn = "error",
    on_error: OnError = "raise",
    report: ReadReport | None = None,
) -> Iterator[RankedExample]:
    """Streams `RankedExample`s (prompt, list of completions, list of scores).

    Args:
      path: file path.
      fields: field names.
      file_format: `"auto"`, `"jsonl"` or `"parquet"`.
      multi_turn: `"error"` or `"keep"` for multi-message completions.
      on_error: `"raise"` or `"skip"`.
      report: `ReadReport` to fill.

    Returns:
      Iterator of examples.

    Example:
      >>> import json, os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "r.jsonl")
      >>> with open(f, "w") as fh:
      ...     _ = fh.write(json.dumps({"prompt": "Q", "completions": ["a", "b"], "scores": [1, 3]}))
      >>> print([r.ranking() for r in iter_ranked(f)])
      [(1, 0)]
    """
    parse = lambda row: _ranked_from_row(row, fields, multi_turn)
    return _iter_records(
        path,
        parse,
        file_format=file_format,
        on_error=on_error,
        multi_turn=multi_turn,
        report=report,
    )


def read_ranked(path, **kwargs) -> tuple[list[RankedExample], ReadReport]:
    """Reads a whole file of ranked examples: `(examples, report)` (see `iter_ranked`).

    Args:
      path: file path (JSONL, possibly compressed, or Parquet).
      **kwargs: keyword arguments of `iter_ranked`, except `report`.

    Returns:
      `(examples, report)`: the list of `RankedExample`s and the `ReadReport`.

    Example:
      >>> import json, os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "r.jsonl")
      >>> with open(f, "w") as fh:
      ...     _ = fh.write(json.dumps({"prompt": "Q", "completions": ["a", "b"], "scores": [2, 1]}))
      >>> ex, rep = read_ranked(f)
      >>> print(ex[0].scores, rep.num_records)
      (2.0, 1.0) 1
    """
    report = ReadReport()
    return list(iter_ranked(path, report=report, **kwargs)), report


# ------------------------------------------------------------------------------------------
# Writers.


def _text_value(text):
    if isinstance(text, str):
        return text
    return [{"role": m.role, "content": m.content} for m in text]


def _join(prompt, completion):
    if isinstance(prompt, str):
        return prompt + completion
    return _text_value(tuple(prompt) + tuple(completion))


def _to_row(record, layout: str) -> dict:
    if isinstance(record, PreferencePair):
        f = FieldMap()
        if layout == "implicit":
            row = {
                f.chosen: _join(record.prompt, record.chosen),
                f.rejected: _join(record.prompt, record.rejected),
            }
        else:
            row = {
                f.prompt: _text_value(record.prompt),
                f.chosen: _text_value(record.chosen),
                f.rejected: _text_value(record.rejected),
            }
        if record.chosen_score is not None:
            row[f.chosen_score] = record.chosen_score
        if record.rejected_score is not None:
            row[f.rejected_score] = record.rejected_score
    elif isinstance(record, UnpairedExample):
        f = UnpairedFields()
        row = {
            f.prompt: _text_value(record.prompt),
            f.completion: _text_value(record.completion),
            f.label: bool(record.desirable),
        }
    elif isinstance(record, RankedExample):
        f = RankedFields()
        row = {
            f.prompt: _text_value(record.prompt),
            f.completions: [_text_value(c) for c in record.completions],
            f.scores: [float(s) for s in record.scores],
        }
    else:
        raise TypeError(f"cannot write a {type(record).__name__}.")
    clash = set(row) & set(record.metadata)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} clash with record fields.")
    row.update(record.metadata)
    return row


def _check_layout(layout: str) -> None:
    if layout not in ("explicit", "implicit"):
        raise ValueError(f"layout must be 'explicit' or 'implicit', got {layout!r}.")


def write_jsonl(records: Iterable, path, *, layout: str = "explicit") -> int:
    """Writes records as JSONL with the default field names; metadata fields are flattened in.

    Args:
      records: `PreferencePair`, `UnpairedExample` or `RankedExample` records.
      path: output file.
      layout: for pairs, `"explicit"` (a `prompt` field) or `"implicit"` (full texts in
        `chosen` / `rejected`: HH strings or whole conversations).

    Returns:
      Number of rows written.

    Example:
      >>> import os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "o.jsonl")
      >>> print(write_jsonl([PreferencePair("Q", " a", " b")], f), open(f).read().strip())
      1 {"prompt": "Q", "chosen": " a", "rejected": " b"}
    """
    _check_layout(layout)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(_to_row(record, layout), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_parquet(records: Iterable, path, *, layout: str = "explicit") -> int:
    """Writes records as a Parquet file (same rows as `write_jsonl`).

    Every row gets every column (missing metadata keys are null, read back as None).

    Args:
      records: records of one type.
      path: output file.
      layout: `"explicit"` or `"implicit"` (pairs only).

    Returns:
      Number of rows written.

    Example:
      >>> import os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "o.parquet")
      >>> print(write_parquet([PreferencePair("Q", " a", " b")], f))
      1
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_layout(layout)
    rows = [_to_row(r, layout) for r in records]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    columns = {k: [row.get(k) for row in rows] for k in keys}
    pq.write_table(pa.table(columns), path)
    return len(rows)
