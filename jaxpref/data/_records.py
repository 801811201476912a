"""Record types, the bad-input error and the report that counts skipped records.

A record is an immutable Python value (a frozen dataclass) that validates itself on construction:
a record that exists is well formed. Text fields are either a plain string or a conversation, a
tuple of `Message(role, content)`; the three texts of a pair are of the same kind.

Bad input raises `DataError`, a `ValueError` carrying a machine-readable `reason` (one of
`REASONS`), the file `path` and the 1-based `line` (JSONL line or Parquet row). Readers take a
policy, `on_error="raise"` (the default) or `"skip"`; skipped records are counted by reason in a
`ReadReport`, which also keeps the first few errors of each reason, so nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

__all__ = [
    "REASONS",
    "DataError",
    "Message",
    "PreferencePair",
    "RankedExample",
    "ReadReport",
    "SegmentPreference",
    "UnpairedExample",
    "is_conversation",
    "unpair",
]

OnError = Literal["raise", "skip"]
"""Bad-input policy: `"raise"` a `DataError` at the first bad record, or `"skip"` and count it."""

REASONS = (
    "malformed_file",
    "malformed_json",
    "missing_field",
    "bad_field",
    "empty_completion",
    "identical_completions",
    "no_prompt_split",
    "diverging_history",
    "too_long",
)
"""Every `DataError.reason`, in the order a record is checked."""


class DataError(ValueError):
    """A bad record (or unreadable file), in one short line: `path:line: reason: detail`.

    Readers raise it at the first bad record under `on_error="raise"`, so a command line can
    catch it and suggest skipping such records. `reason` is a stable category, usable as a
    table key; the message is at most one line, with long values cut.

    Args:
      reason: one of `REASONS`.
      detail: what is wrong; line breaks are replaced by spaces and text past 300 characters
        is cut.
      path: file the record came from (None for in-memory records).
      line: 1-based line (JSONL, counted in the decompressed text) or row (Parquet) number;
        None when unknown or when the whole file is bad.

    Attributes:
      reason: one of `REASONS`.
      detail: human-readable description of what is wrong (one line).
      path: file the record came from (None for in-memory records).
      line: 1-based line (JSONL) or row (Parquet) number, None when unknown.

    Raises:
      ValueError: when `reason` is not one of `REASONS`.

    Example:
      >>> err = DataError("missing_field", "no field 'chosen'", path="a.jsonl", line=3)
      >>> print(err)
      a.jsonl:3: missing_field: no field 'chosen'
    """

    def __init__(
        self, reason: str, detail: str, *, path: str | None = None, line: int | None = None
    ):
        if reason not in REASONS:
            raise ValueError(f"DataError: unknown reason {reason!r}; expected one of {REASONS}.")
        self.reason = reason
        self.detail = _one_line(detail)
        self.path = path
        self.line = line
        super().__init__(str(self))

    def located(self, path: str | None, line: int | None) -> DataError:
        """Returns a copy of this error at `path:line` (keeps an existing location).

        Args:
          path: file of the record, used when the error has none.
          line: 1-based line or row, used when the error has none.

        Returns:
          A new `DataError` with the same reason and detail.
        """
        return DataError(
            self.reason,
            self.detail,
            path=self.path if self.path is not None else path,
            line=self.line if self.line is not None else line,
        )

    def __str__(self) -> str:
        where = "<memory>" if self.path is None else str(self.path)
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.reason}: {self.detail}"

    def __reduce__(self):
        return (_rebuild_error, (self.reason, self.detail, self.path, self.line))


_MAX_DETAIL = 300


def _one_line(text) -> str:
    text = " ".join(str(text).splitlines())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _brief(value, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters (error messages stay one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rebuild_error(reason, detail, path, line):
    return DataError(reason, detail, path=path, line=line)


@dataclasses.dataclass
class ReadReport:
    """What a reader (or tokenizer) kept and what it skipped, by reason.

    Skip reasons are the short, stable category strings of `REASONS` (usable as table keys);
    the full messages, with path and line, are in `examples`.

    Attributes:
      num_records: records kept.
      skipped: `Counter` of skipped records by `DataError.reason`.
      num_blank: blank lines ignored (not errors).
      examples: the first `max_examples` errors of each reason, with path and line.
      max_examples: how many errors to keep per reason.
      num_truncated: records kept whose tokens were cut to fit `TokenizeConfig` lengths
        (tokenization only; each has `truncated=True`).

    Example:
      >>> r = ReadReport()
      >>> r.add_skip(DataError("empty_completion", "chosen is empty", path="d.jsonl", line=7))
      >>> r.num_records += 4
      >>> print(r.num_skipped, dict(r.skipped))
      1 {'empty_completion': 1}
      >>> print(r.summary().replace("; ", "\\n"))
      kept 4 records, skipped 1 (empty_completion: 1)
      first: d.jsonl:7: empty_completion: chosen is empty
    """

    num_records: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    num_blank: int = 0
    examples: list = dataclasses.field(default_factory=list)
    max_examples: int = 5
    num_truncated: int = 0

    @property
    def num_skipped(self) -> int:
        """Total number of skipped records."""
        return sum(self.skipped.values())

    def add_skip(self, error: DataError) -> None:
        """Counts a skipped record; keeps the error if fewer than `max_examples` of its reason.

        Args:
          error: the record's error (its `reason` is the count's key).
        """
        self.skipped[error.reason] += 1
        if self.skipped[error.reason] <= self.max_examples:
            self.examples.append(error)

    def handle(self, error: DataError, on_error: OnError) -> None:
        """Applies the bad-input policy: raises `error` or counts it as a skip.

        Args:
          error: the bad record's error, with its path and line.
          on_error: `"raise"` raises `error`; `"skip"` counts it (`add_skip`).

        Raises:
          DataError: `error` itself, under `"raise"`.
          ValueError: for an unknown `on_error`.
        """
        if on_error == "raise":
            raise error
        if on_error != "skip":
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        self.add_skip(error)

    def merge(self, other: ReadReport) -> ReadReport:
        """Adds the counts and examples of `other` into this report (in place) and returns it.

        Args:
          other: another report (e.g. of another file or process).

        Returns:
          This report, with the counts summed and `other`'s examples added up to
          `max_examples` per reason.
        """
        self.num_records += other.num_records
        self.num_blank += other.num_blank
        self.num_truncated += other.num_truncated
        for err in other.examples:
            if sum(e.reason == err.reason for e in self.examples) < self.max_examples:
                self.examples.append(err)
        self.skipped.update(other.skipped)
        return self

    def locations(self) -> dict[str, list[str]]:
        """The kept example locations of each skip reason, as `"path:line"` strings.

        Returns:
          `{reason: ["path:line", ...]}` with at most `max_examples` entries per reason, in
          the order they were met (`"<memory>"` for records without a path).

        Example:
          >>> r = ReadReport()
          >>> r.add_skip(DataError("missing_field", "no field 'chosen'", path="d.jsonl", line=3))
          >>> print(r.locations())
          {'missing_field': ['d.jsonl:3']}
        """
        out: dict[str, list[str]] = {}
        for e in self.examples:
            where = "<memory>" if e.path is None else str(e.path)
            out.setdefault(e.reason, []).append(where if e.line is None else f"{where}:{e.line}")
        return out

    def summary(self) -> str:
        """One line: records kept, skips by reason, the first error, truncations, blank lines.

        Returns:
          E.g. `"kept 4 records, skipped 1 (empty_completion: 1); first: d.jsonl:7: ..."`.
        """
        text = f"kept {self.num_records} records, skipped {self.num_skipped}"
        if self.skipped:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
            text += f" ({reasons}); first: {self.examples[0]}"
        if self.num_truncated:
            text += f"; {self.num_truncated} truncated"
        if self.num_blank:
            text += f"; {self.num_blank} blank lines ignored"
        return text

    def to_dict(self) -> dict:
        """JSON-serialisable form (stored in dataset metadata).

        Returns:
          `{"num_records", "num_blank", "num_truncated", "skipped": {reason: count},
          "examples": [{"reason", "detail", "path", "line"}, ...]}`.
        """
        return {
            "num_records": self.num_records,
            "num_blank": self.num_blank,
            "num_truncated": self.num_truncated,
            "skipped": dict(self.skipped),
            "examples": [
                {"reason": e.reason, "detail": e.detail, "path": e.path, "line": e.line}
                for e in self.examples
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ReadReport:
        """Inverse of `to_dict` (older dicts without `num_blank` / `num_truncated` give 0).

        Args:
          d: a dict from `to_dict` (e.g. read back from JSON).

        Returns:
          The report.
        """
        return cls(
            num_records=int(d["num_records"]),
            skipped=Counter({k: int(v) for k, v in d["skipped"].items()}),
            num_blank=int(d.get("num_blank", 0)),
            num_truncated=int(d.get("num_truncated", 0)),
            examples=[
                DataError(e["reason"], e["detail"], path=e["path"], line=e["line"])
                for e in d["examples"]
            ],
        )


@dataclasses.dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    Attributes:
      role: speaker (`"system"`, `"user"`, `"assistant"`, `"tool"`, ...).
      content: text of the turn.

    Example:
      >>> print(Message("user", "Hi"))
      Message(role='user', content='Hi')
    """

    role: str
    content: str

    def __post_init__(self):
        if not isinstance(self.role, str) or not self.role:
            raise DataError(
                "bad_field", f"message role must be a non-empty string, got {_brief(self.role)}"
            )
        _check_string("message content", self.content)


def is_conversation(text) -> bool:
    """True for a conversation (a tuple of `Message`), False for a plain string.

    Args:
      text: a record's text field (a string or a tuple of `Message`).

    Returns:
      Whether `text` is a conversation.

    Example:
      >>> print(is_conversation("hi"), is_conversation((Message("user", "hi"),)))
      False True
    """
    return isinstance(text, tuple)


def _check_string(name: str, s) -> None:
    if not isinstance(s, str):
        raise DataError("bad_field", f"{name} must be a string, got {type(s).__name__}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError("bad_field", f"{name} is not valid Unicode ({e.reason})") from None


def _check_text(name: str, text) -> None:
    if isinstance(text, str):
        _check_string(name, text)
        return
    if not isinstance(text, tuple) or not all(isinstance(m, Message) for m in text):
        raise DataError(
            "bad_field",
            f"{name} must be a string or a tuple of Message, got {type(text).__name__}",
        )


def _is_blank(text) -> bool:
    if isinstance(text, str):
        return not text.strip()
    return not text or all(not m.content.strip() for m in text)


def _normalised(text):
    if isinstance(text, str):
        return text.strip()
    return tuple((m.role, m.content.strip()) for m in text)


def _check_score(name: str, score) -> None:
    if score is None:
        return
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise DataError("bad_field", f"{name} must be a finite number or None, got {_brief(score)}")


def _check_completion_roles(name: str, text) -> None:
    if isinstance(text, tuple) and text[0].role != "assistant":
        raise DataError(
            "bad_field",
            f"{name} must start with an assistant message, got role {_brief(text[0].role)}",
        )


def _same_kind(**texts) -> None:
    kinds = {name: isinstance(t, str) for name, t in texts.items()}
    if len(set(kinds.values())) > 1:
        desc = ", ".join(f"{n}: {'string' if s else 'conversation'}" for n, s in kinds.items())
        raise DataError("bad_field", f"texts must all be strings or all conversations ({desc})")


_location = dict(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """A preference: `chosen` is preferred to `rejected` as a continuation of `prompt`.

    Validated on construction (`DataError` otherwise): texts of one kind (strings, or tuples of
    `Message`), non-empty completions, conversational completions starting with an assistant
    turn, and completions that differ after stripping surrounding whitespace (a whitespace-only
    difference carries no preference signal, reason `identical_completions`).

    Attributes:
      prompt: the shared context (may be empty).
      chosen: preferred completion.
      rejected: dispreferred completion.
      chosen_score: optional scalar score of `chosen` (e.g. UltraFeedback rating).
      rejected_score: optional score of `rejected`.
      metadata: extra fields carried through unchanged.
      path: source file (not compared).
      line: 1-based source line or row (not compared).

    Example:
      >>> p = PreferencePair("2+2=", " 4", " 5")
      >>> print(p.chosen, p.rejected)
       4  5
      >>> try:
      ...     PreferencePair("q", " a", "a ")
      ... except DataError as e:
      ...     print(e.reason)
      identical_completions
    """

    prompt: str | tuple[Message, ...]
    chosen: str | tuple[Message, ...]
    rejected: str | tuple[Message, ...]
    chosen_score: float | None = None
    rejected_score: float | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    path: str | None = dataclasses.field(**_location)
    line: int | None = dataclasses.field(**_location)

    def __post_init__(self):
        try:
            for name in ("prompt", "chosen", "rejected"):
                _check_text(name, getattr(self, name))
            _same_kind(prompt=self.prompt, chosen=self.chosen, rejected=self.rejected)
            for name in ("chosen", "rejected"):
                if _is_blank(getattr(self, name)):
                    raise DataError("empty_completion", f"{name} is empty")
                _check_completion_roles(name, getattr(self, name))
            if _normalised(self.chosen) == _normalised(self.rejected):
                raise DataError(
                    "identical_completions",
                    "chosen and rejected are equal up to surrounding whitespace",
                )
            _check_score("chosen_score", self.chosen_score)
            _check_score("rejected_score", self.rejected_score)
            if not isinstance(self.metadata, Mapping):
                raise DataError("bad_field", "metadata must be a mapping")
        except DataError as e:
            raise e.located(self.path, self.line) from None


@dataclasses.dataclass(frozen=True)
class UnpairedExample:
    """A single completion labelled desirable or undesirable (KTO-style data).

    Attributes:
      prompt: context.
      completion: the completion.
      desirable: True for a desirable (thumbs-up) completion.
      metadata: extra fields.
      path: source file (not compared).
      line: source line (not compared).

    Example:
      >>> print(UnpairedExample("q", " a", True).desirable)
      True
    """

    prompt: str | tuple[Message, ...]
    completion: str | tuple[Message, ...]
    desirable: bool
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    path: str | None = dataclasses.field(**_location)
    line: int | None = dataclasses.field(**_location)

    def __post_init__(self):
        try:
            _check_text("prompt", self.prompt)
            _check_text("completion", self.completion)
            _same_kind(prompt=self.prompt, completion=self.completion)
            if _is_blank(self.completion):
                raise DataError("empty_completion", "completion is empty")
            _check_completion_roles("completion", self.completion)
            if not isinstance(self.desirable, bool | np.bool_):
                raise DataError(
                    "bad_field", f"desirable must be a bool, got {_brief(self.desirable)}"
                )
        except DataError as e:
            raise e.located(self.path, self.line) from None


@dataclasses.dataclass(frozen=True)
class RankedExample:
    """Several completions of one prompt with scores (higher is better), for listwise losses.

    Attributes:
      prompt: context.
      completions: tuple of at least two completions.
      scores: tuple of finite scores, one per completion.
      metadata: extra fields.
      path: source file (not compared).
      line: source line (not compared).

    Example:
      >>> r = RankedExample("q", (" a", " b", " c"), (0.1, 2.0, 1.0))
      >>> print(r.ranking())
      (1, 2, 0)
    """

    prompt: str | tuple[Message, ...]
    completions: tuple
    scores: tuple
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    path: str | None = dataclasses.field(**_location)
    line: int | None = dataclasses.field(**_location)

    def __post_init__(self):
        try:
            _check_text("prompt", self.prompt)
            if not isinstance(self.completions, tuple) or len(self.completions) < 2:
                raise DataError("bad_field", "completions must be a tuple of at least 2 texts")
            for i, c in enumerate(self.completions):
                _check_text(f"completions[{i}]", c)
                _same_kind(prompt=self.prompt, completion=c)
                if _is_blank(c):
                    raise DataError("empty_completion", f"completions[{i}] is empty")
                _check_completion_roles(f"completions[{i}]", c)
            if not isinstance(self.scores, tuple) or len(self.scores) != len(self.completions):
                raise DataError(
                    "bad_field",
                    f"scores must be a tuple with one score per completion "
                    f"({len(self.completions)}), got {_brief(self.scores)}",
                )
            for i, s in enumerate(self.scores):
                if s is None:
                    raise DataError("bad_field", f"scores[{i}] is missing")
                _check_score(f"scores[{i}]", s)
            if len({_normalised(c) for c in self.completions}) < len(self.completions):
                raise DataError("identical_completions", "two completions are equal")
        except DataError as e:
            raise e.located(self.path, self.line) from None

    def ranking(self) -> tuple[int, ...]:
        """Indices of the completions from best to worst (stable for ties).

        Returns:
          `K` indices into `completions`, highest score first.
        """
        return tuple(int(i) for i in np.argsort(-np.asarray(self.scores), kind="stable"))


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentPreference:
    """Two behaviour segments of a control task and the probability that the first is preferred.

    Attributes:
      observations_1: `[K, ...]` observations (or state indices) of the first segment.
      actions_1: `[K, ...]` actions of the first segment.
      observations_2: `[K, ...]` observations of the second segment.
      actions_2: `[K, ...]` actions of the second segment.
      label: probability in `[0, 1]` that segment 1 is preferred (1.0 / 0.0 for hard labels).
      metadata: extra fields.

    Example:
      >>> import numpy as np
      >>> s = SegmentPreference(np.arange(3), np.zeros(3), np.arange(3), np.ones(3), 1.0)
      >>> print(s.length)
      3
    """

    observations_1: np.ndarray
    actions_1: np.ndarray
    observations_2: np.ndarray
    actions_2: np.ndarray
    label: float
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        arrays = [self.observations_1, self.actions_1, self.observations_2, self.actions_2]
        lengths = {np.shape(a)[0] if np.ndim(a) else None for a in arrays}
        if len(lengths) != 1 or None in lengths:
            shapes = [np.shape(a) for a in arrays]
            raise DataError("bad_field", f"segments must share a leading length K, got {shapes}")
        label = float(self.label)
        if not 0.0 <= label <= 1.0:
            raise DataError("bad_field", f"label must be a probability in [0, 1], got {label}")

    @property
    def length(self) -> int:
        """Segment length `K`."""
        return int(np.shape(self.actions_1)[0])


def unpair(pairs: Iterable[PreferencePair]) -> list[UnpairedExample]:
    """Splits each pair into a desirable (chosen) and an undesirable (rejected) example.

    Args:
      pairs: preference pairs.

    Returns:
      `2 * len(pairs)` unpaired examples, chosen then rejected for each pair.

    Example:
      >>> ex = unpair([PreferencePair("q", " a", " b")])
      >>> print([(e.completion, e.desirable) for e in ex])
      [(' a', True), (' b', False)]
    """
    out = []
    for p in pairs:
        for text, good in ((p.chosen, True), (p.rejected, False)):
            out.append(
                UnpairedExample(p.prompt, text, good, dict(p.metadata), path=p.path, line=p.line)
            )
    return out
