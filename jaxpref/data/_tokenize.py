"""Tokenization into fixed-shape batches: `[2B, T]` rows, chosen rows first, then rejected rows.

A tokenizer is a user-supplied Hugging Face `tokenizer.json` (`HFTokenizer`, the `tokenizers`
package) or a SentencePiece model (`SentencePieceTokenizer`, needs the `sentencepiece` package).
Plain-string records are tokenized as they are; conversations are rendered by a minimal
`ChatTemplate` (`<|role|>\\n` + content + `<|end|>\\n` per turn, and the assistant header as the
generation prompt). Each text piece is encoded separately and the ids concatenated, so every
token belongs to exactly one piece and the loss mask follows the pieces.

Row of a pair: `[bos] + prompt + completion [+ eos]`. The loss mask covers completion tokens only:
by default only the final assistant turn of a (multi-turn) completion (`completion_mask`), with
its end-of-turn marker and the eos. Truncation: the prompt is cut to `max_prompt_length`
(`keep_end` keeps its end, the part next to the answer, and the bos; `keep_start` keeps its
start), then each completion to what is left of `max_length`; `truncation="error"` reports
over-long records instead (`too_long`). Batches are padded to the smallest length bucket that
fits, so a jitted step compiles once per bucket, not once per batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

from jaxpref.data._records import (
    DataError,
    PreferencePair,
    RankedExample,
    UnpairedExample,
)

__all__ = [
    "ChatTemplate",
    "HFTokenizer",
    "PairBatch",
    "RankedBatch",
    "SentencePieceTokenizer",
    "SequenceBatch",
    "TokenizeConfig",
    "TokenizedPair",
    "TokenizedSequence",
    "Tokenizer",
    "bucket_length",
    "collate_pairs",
    "collate_ranked",
    "collate_sequences",
    "tokenize_completion",
    "tokenize_pair",
    "tokenize_ranked",
    "tokenize_unpaired",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer.

    Attributes:
      vocab_size: number of token ids.
      pad_id: id used for padding.
      bos_id: beginning-of-sequence id, or None.
      eos_id: end-of-sequence id, or None.
    """

    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens added.

        Args:
          text: the text to encode.

        Returns:
          `[L]` token ids (every token of `text`: no truncation, no padding).
        """
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens kept).

        Args:
          ids: `[L]` token ids.

        Returns:
          The decoded text.
        """
        ...

    def fingerprint(self) -> str:
        """Stable hash of the vocabulary and special ids (keys caches).

        Returns:
          Hex digest.
        """
        ...


def _special_id(lookup, vocab_size: int, name: str, token) -> int | None:
    if token is None:
        return None
    if isinstance(token, int):
        if not 0 <= token < vocab_size:
            raise ValueError(f"{name} id {token} is outside the vocabulary [0, {vocab_size}).")
        return token
    tid = lookup(token)
    if tid is None:
        raise ValueError(f"{name} token {token!r} is not in the tokenizer's vocabulary.")
    return int(tid)


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer loaded from a `tokenizer.json`.

    Truncation and padding stored in the `tokenizer.json` (pipelines often export them, e.g. a
    `"truncation": {"max_length": 50}` entry) are switched off on load: `TokenizeConfig` is the
    only length setting, so every cut is made by jaxpref, flagged (`truncated`) and counted. The
    settings found are kept in `ignored_settings`; a `tokenizers.Tokenizer` passed in is copied,
    never modified.

    Args:
      tokenizer: path to a `tokenizer.json` or a `tokenizers.Tokenizer`.
      bos_token: beginning-of-sequence token (string or id), or None.
      eos_token: end-of-sequence token, or None.
      pad_token: padding token; None uses `eos_token`, else id 0.

    Attributes:
      path: the `tokenizer.json` path, or None for a tokenizer passed in.
      tokenizer: the `tokenizers.Tokenizer`, with truncation and padding off.
      vocab_size: number of token ids (added tokens included).
      bos_id: beginning-of-sequence id, or None.
      eos_id: end-of-sequence id, or None.
      pad_id: padding id.
      ignored_settings: `{"truncation": ..., "padding": ...}` as stored in the tokenizer, for
        each of the two that was set (empty when neither was).

    Raises:
      ValueError: when a special token is not in the vocabulary.

    Example:
      >>> from tokenizers import Tokenizer, models, pre_tokenizers
      >>> raw = Tokenizer(models.WordLevel({"<eos>": 0, "hi": 1, "there": 2}, unk_token="<eos>"))
      >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
      >>> tok = HFTokenizer(raw, eos_token="<eos>")
      >>> print(tok.encode("hi there"), tok.eos_id, tok.pad_id)
      [1, 2] 0 0
    """

    def __init__(self, tokenizer, *, bos_token=None, eos_token=None, pad_token=None):
        from tokenizers import Tokenizer as _Raw

        if isinstance(tokenizer, str | os.PathLike):
            self.path = os.fspath(tokenizer)
            tokenizer = _Raw.from_file(self.path)
        else:
            self.path = None
        stored = {"truncation": tokenizer.truncation, "padding": tokenizer.padding}
        self.ignored_settings = {k: dict(v) for k, v in stored.items() if v is not None}
        if self.ignored_settings:
            if self.path is None:
                tokenizer = _Raw.from_str(tokenizer.to_str())  # leave the caller's object as is
            tokenizer.no_truncation()
            tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        lookup = tokenizer.token_to_id
        self.bos_id = _special_id(lookup, self.vocab_size, "bos", bos_token)
        self.eos_id = _special_id(lookup, self.vocab_size, "eos", eos_token)
        pad = _special_id(lookup, self.vocab_size, "pad", pad_token)
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added, never truncated or padded).

        Args:
          text: the text to encode.

        Returns:
          `[L]` token ids.
        """
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens kept.

        Args:
          ids: `[L]` token ids.

        Returns:
          The decoded text.
        """
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def fingerprint(self) -> str:
        """SHA-256 of the serialised tokenizer (truncation and padding off) and the special ids.

        Returns:
          Hex digest.
        """
        h = hashlib.sha256(self.tokenizer.to_str().encode())
        h.update(repr((self.bos_id, self.eos_id, self.pad_id)).encode())
        return h.hexdigest()


class SentencePieceTokenizer:
    """A SentencePiece model (`.model` file); needs the `sentencepiece` package.

    Args:
      model_file: path to the SentencePiece model.
      add_bos: whether this tokenizer exposes the model's bos id (used by `TokenizeConfig`).
      add_eos: whether this tokenizer exposes the model's eos id.
      pad_id: padding id; None uses the model's pad id, else eos, else 0.

    Raises:
      ImportError: when `sentencepiece` is not installed.
      FileNotFoundError: when `model_file` does not exist.

    Example:
      >>> try:
      ...     SentencePieceTokenizer("missing.model")
      ... except FileNotFoundError as e:
      ...     print(e)
      SentencePieceTokenizer: no model file at 'missing.model'.
    """

    def __init__(self, model_file, *, add_bos: bool = True, add_eos: bool = True, pad_id=None):
        try:
            import sentencepiece as spm
        except ImportError as e:
            raise ImportError(
                "SentencePieceTokenizer needs the `sentencepiece` package, which is not "
                "installed; install it (pip install sentencepiece) or convert the model to a "
                "Hugging Face tokenizer.json and use HFTokenizer."
            ) from e
        self.path = os.fspath(model_file)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"SentencePieceTokenizer: no model file at {self.path!r}.")
        self.processor = spm.SentencePieceProcessor(model_file=self.path)
        self.vocab_size = int(self.processor.get_piece_size())
        bos, eos, pad = (
            int(self.processor.bos_id()),
            int(self.processor.eos_id()),
            int(self.processor.pad_id()),
        )
        self.bos_id = bos if add_bos and bos >= 0 else None
        self.eos_id = eos if add_eos and eos >= 0 else None
        if pad_id is not None:
            self.pad_id = int(pad_id)
        else:
            self.pad_id = pad if pad >= 0 else (eos if eos >= 0 else 0)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no bos/eos).

        Args:
          text: the text to encode.

        Returns:
          `[L]` token ids.
        """
        return [int(i) for i in self.processor.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`.

        Args:
          ids: `[L]` token ids.

        Returns:
          The decoded text.
        """
        return self.processor.decode([int(i) for i in ids])

    def fingerprint(self) -> str:
        """SHA-256 of the serialised model and the special ids.

        Returns:
          Hex digest.
        """
        h = hashlib.sha256(self.processor.serialized_model_proto())
        h.update(repr((self.bos_id, self.eos_id, self.pad_id)).encode())
        return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A minimal chat template: each turn is `header(role) + content + end`.

    Attributes:
      header: format string of a turn header, with `{role}`.
      end: end-of-turn marker (trained as part of an assistant turn, so the model learns to stop).

    Example:
      >>> from jaxpref.data._records import Message
      >>> t = ChatTemplate()
      >>> print(repr("".join(s for s, _ in t.prompt_pieces((Message("user", "Hi"),)))))
      '<|user|>\\nHi<|end|>\\n<|assistant|>\\n'
    """

    header: str = "<|{role}|>\n"
    end: str = "<|end|>\n"

    def prompt_pieces(self, messages) -> list[tuple[str, str]]:
        """`(text, role)` pieces of a prompt, ending with the assistant header.

        Args:
          messages: the prompt, a sequence of `Message`.

        Returns:
          `(text, role)` pairs: for each message its header (role `"header"`) and its content
          with the end marker (the message's role), then the assistant header.
        """
        pieces = []
        for m in messages:
            pieces += [(self.header.format(role=m.role), "header"), (m.content + self.end, m.role)]
        return [*pieces, (self.header.format(role="assistant"), "header")]

    def completion_pieces(self, messages) -> list[tuple[str, str]]:
        """`(text, role)` pieces of a completion (its first header is in the prompt).

        Args:
          messages: the completion, a sequence of `Message` starting with an assistant turn.

        Returns:
          `(text, role)` pairs: each message's content with the end marker (the message's
          role), preceded by its header (role `"header"`) for every message but the first.
        """
        pieces = []
        for i, m in enumerate(messages):
            if i:
                pieces.append((self.header.format(role=m.role), "header"))
            pieces.append((m.content + self.end, m.role))
        return pieces


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """How records become token rows.

    Attributes:
      max_length: most tokens in a row (prompt + completion).
      max_prompt_length: most prompt tokens; None means `max_length // 2`.
      truncation: `"keep_end"` (cut the prompt's start, keep the bos), `"keep_start"` (cut its
        end), or `"error"` (report over-long records as `too_long`). Completions are always
        cut at their end.
      add_bos: prepend the tokenizer's bos (if it has one).
      add_eos: append the tokenizer's eos to completions (if it has one), trained.
      completion_mask: which completion tokens are trained: `"final_assistant"` (the last
        assistant turn), `"assistant"` (every assistant turn) or `"all"`.
      buckets: allowed padded lengths `T`; None means powers of two from 16 below `max_length`,
        then `max_length`.
      template: chat template for conversations.

    Example:
      >>> print(TokenizeConfig(max_length=100).padded_buckets)
      (16, 32, 64, 100)
    """

    max_length: int = 512
    max_prompt_length: int | None = None
    truncation: Literal["keep_end", "keep_start", "error"] = "keep_end"
    add_bos: bool = True
    add_eos: bool = True
    completion_mask: Literal["final_assistant", "assistant", "all"] = "final_assistant"
    buckets: tuple[int, ...] | None = None
    template: ChatTemplate = ChatTemplate()

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError(f"TokenizeConfig: max_length must be >= 2, got {self.max_length}.")
        if not 1 <= self.prompt_limit < self.max_length:
            raise ValueError(
                f"TokenizeConfig: max_prompt_length must be in [1, max_length), got "
                f"{self.max_prompt_length} with max_length {self.max_length}."
            )
        if self.truncation not in ("keep_end", "keep_start", "error"):
            raise ValueError(f"TokenizeConfig: unknown truncation {self.truncation!r}.")
        if self.completion_mask not in ("final_assistant", "assistant", "all"):
            raise ValueError(f"TokenizeConfig: unknown completion_mask {self.completion_mask!r}.")
        b = self.padded_buckets
        if list(b) != sorted(set(b)) or b[-1] < self.max_length:
            raise ValueError(
                f"TokenizeConfig: buckets must be increasing and reach max_length "
                f"{self.max_length}, got {b}."
            )

    @property
    def prompt_limit(self) -> int:
        """The effective `max_prompt_length`."""
        if self.max_prompt_length is None:
            return self.max_length // 2
        return self.max_prompt_length

    @property
    def padded_buckets(self) -> tuple[int, ...]:
        """The effective bucket lengths."""
        if self.buckets is not None:
            return tuple(self.buckets)
        out, b = [], 16
        while b < self.max_length:
            out.append(b)
            b *= 2
        return (*out, self.max_length)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket `>= n`.

    Args:
      n: a row length in tokens.
      buckets: allowed padded lengths, increasing (`TokenizeConfig.padded_buckets`).

    Returns:
      The padded length `T`.

    Raises:
      ValueError: when `n` exceeds the largest bucket.

    Example:
      >>> print(bucket_length(20, (16, 32, 64)))
      32
    """
    for b in buckets:
        if b >= n:
            return int(b)
    raise ValueError(f"bucket_length: length {n} exceeds the largest bucket {max(buckets)}.")


class TokenizedSequence(NamedTuple):
    """One tokenized completion with its prompt.

    Attributes:
      prompt_ids: `[Lp]` int32 prompt ids (bos included).
      completion_ids: `[Lc]` int32 completion ids (eos included).
      completion_mask: `[Lc]` int32, 1 at trained completion tokens.
      truncated: whether truncation removed tokens.
    """

    prompt_ids: np.ndarray
    completion_ids: np.ndarray
    completion_mask: np.ndarray
    truncated: bool


class TokenizedPair(NamedTuple):
    """A tokenized preference pair (the prompt is shared).

    Attributes:
      prompt_ids: `[Lp]` int32.
      chosen_ids: `[Lc]` int32.
      chosen_mask: `[Lc]` int32 loss mask.
      rejected_ids: `[Lr]` int32.
      rejected_mask: `[Lr]` int32 loss mask.
      index: position of the record in its dataset (keys the reference log-prob cache).
      truncated: whether truncation removed tokens.
    """

    prompt_ids: np.ndarray
    chosen_ids: np.ndarray
    chosen_mask: np.ndarray
    rejected_ids: np.ndarray
    rejected_mask: np.ndarray
    index: int
    truncated: bool


def _where(record) -> dict:
    return {"path": getattr(record, "path", None), "line": getattr(record, "line", None)}


def _encode_pieces(tokenizer, pieces, mask_of) -> tuple[list[int], list[int]]:
    ids, mask = [], []
    for i, (text, role) in enumerate(pieces):
        piece = tokenizer.encode(text)
        ids += piece
        mask += [int(mask_of(i, role))] * len(piece)
    return ids, mask


def _encode_prompt(prompt, tokenizer, config: TokenizeConfig) -> list[int]:
    bos = [tokenizer.bos_id] if config.add_bos and tokenizer.bos_id is not None else []
    if isinstance(prompt, str):
        return bos + tokenizer.encode(prompt)
    ids, _ = _encode_pieces(tokenizer, config.template.prompt_pieces(prompt), lambda i, r: 0)
    return bos + ids


def _encode_completion(completion, tokenizer, config: TokenizeConfig):
    if isinstance(completion, str):
        ids = tokenizer.encode(completion)
        mask = [1] * len(ids)
    else:
        pieces = config.template.completion_pieces(completion)
        roles = [r for _, r in pieces]
        last = max(i for i, r in enumerate(roles) if r == "assistant")
        policy = config.completion_mask

        def mask_of(i, role):
            if policy == "all":
                return 1
            if policy == "assistant":
                return role == "assistant"
            return i == last

        ids, mask = _encode_pieces(tokenizer, pieces, mask_of)
    if config.add_eos and tokenizer.eos_id is not None:
        ids, mask = [*ids, tokenizer.eos_id], [*mask, 1]
    return ids, mask


def _truncate_prompt(ids: list[int], config: TokenizeConfig, has_bos: bool, record) -> tuple:
    limit = config.prompt_limit
    if len(ids) <= limit:
        return ids, False
    if config.truncation == "error":
        raise DataError(
            "too_long",
            f"prompt has {len(ids)} tokens > max_prompt_length {limit}",
            **_where(record),
        )
    if config.truncation == "keep_start":
        return ids[:limit], True
    if has_bos:
        return [ids[0], *ids[len(ids) - limit + 1 :]], True
    return ids[len(ids) - limit :], True


def _truncate_completion(ids, mask, room: int, config: TokenizeConfig, name: str, record):
    if len(ids) <= room:
        return ids, mask, False
    if config.truncation == "error":
        raise DataError(
            "too_long",
            f"prompt + {name} has {len(ids) + config.max_length - room} tokens > max_length "
            f"{config.max_length}",
            **_where(record),
        )
    ids, mask = ids[:room], mask[:room]
    if not any(mask):
        raise DataError(
            "too_long",
            f"no trained token of {name} is left after truncation to {config.max_length} tokens",
            **_where(record),
        )
    return ids, mask, True


def _i32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int32).reshape(-1)


def tokenize_completion(
    prompt, completion, tokenizer: Tokenizer, config: TokenizeConfig, *, record=None
) -> TokenizedSequence:
    """Tokenizes and truncates one prompt and completion.

    Args:
      prompt: string or conversation.
      completion: string or conversation.
      tokenizer: a `Tokenizer`.
      config: `TokenizeConfig`.
      record: the record (for the path and line of errors).

    Returns:
      `TokenizedSequence`.

    Raises:
      DataError: `too_long` (see `TokenizeConfig.truncation`).

    Example:
      >>> from tokenizers import Tokenizer, models, pre_tokenizers
      >>> raw = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2}, unk_token="<eos>"))
      >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
      >>> s = tokenize_completion("a a", "b", HFTokenizer(raw, eos_token="<eos>"), TokenizeConfig())
      >>> print(s.prompt_ids, s.completion_ids, s.completion_mask)
      [1 1] [2 0] [1 1]
    """
    has_bos = config.add_bos and tokenizer.bos_id is not None
    p, tp = _truncate_prompt(_encode_prompt(prompt, tokenizer, config), config, has_bos, record)
    c, m = _encode_completion(completion, tokenizer, config)
    c, m, tc = _truncate_completion(c, m, config.max_length - len(p), config, "completion", record)
    return TokenizedSequence(_i32(p), _i32(c), _i32(m), tp or tc)


def tokenize_pair(
    pair: PreferencePair, tokenizer: Tokenizer, config: TokenizeConfig, *, index: int = -1
) -> TokenizedPair:
    """Tokenizes and truncates a preference pair.

    Args:
      pair: the record.
      tokenizer: a `Tokenizer`.
      config: `TokenizeConfig`.
      index: the record's position in its dataset (kept in the batch as `index`).

    Returns:
      `TokenizedPair`.

    Raises:
      DataError: `too_long` (see `TokenizeConfig.truncation`), or `identical_completions` when
        truncation leaves chosen and rejected equal; with the record's path and line.

    Example:
      >>> from tokenizers import Tokenizer, models, pre_tokenizers
      >>> raw = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2}, unk_token="<eos>"))
      >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
      >>> t = tokenize_pair(PreferencePair("a", "b", "a b"), HFTokenizer(raw), TokenizeConfig())
      >>> print(t.prompt_ids, t.chosen_ids, t.rejected_ids)
      [1] [2] [1 2]
    """
    has_bos = config.add_bos and tokenizer.bos_id is not None
    p, tp = _truncate_prompt(_encode_prompt(pair.prompt, tokenizer, config), config, has_bos, pair)
    room = config.max_length - len(p)
    out = []
    for name in ("chosen", "rejected"):
        ids, mask = _encode_completion(getattr(pair, name), tokenizer, config)
        out.append(_truncate_completion(ids, mask, room, config, name, pair))
    (c, cm, tc), (r, rm, tr) = out
    if c == r and cm == rm:
        raise DataError(
            "identical_completions",
            f"chosen and rejected have the same {len(c)} tokens after truncation",
            **_where(pair),
        )
    return TokenizedPair(_i32(p), _i32(c), _i32(cm), _i32(r), _i32(rm), int(index), tp or tc or tr)


def tokenize_unpaired(
    example: UnpairedExample, tokenizer: Tokenizer, config: TokenizeConfig
) -> TokenizedSequence:
    """Tokenizes an `UnpairedExample` (see `tokenize_completion`).

    Args:
      example: the record (its path and line name it in errors).
      tokenizer: a `Tokenizer`.
      config: `TokenizeConfig`.

    Returns:
      `TokenizedSequence` of the prompt and the completion.

    Raises:
      DataError: `too_long` (see `TokenizeConfig.truncation`).

    Example:
      >>> from tokenizers import Tokenizer, models, pre_tokenizers
      >>> raw = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2}, unk_token="<eos>"))
      >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
      >>> s = tokenize_unpaired(UnpairedExample("a", "b", True), HFTokenizer(raw), TokenizeConfig())
      >>> print(s.completion_ids)
      [2]
    """
    return tokenize_completion(
        example.prompt, example.completion, tokenizer, config, record=example
    )


def tokenize_ranked(
    example: RankedExample, tokenizer: Tokenizer, config: TokenizeConfig
) -> list[TokenizedSequence]:
    """Tokenizes each completion of a `RankedExample` with the shared prompt.

    Args:
      example: the record (its path and line name it in errors).
      tokenizer: a `Tokenizer`.
      config: `TokenizeConfig`.

    Returns:
      One `TokenizedSequence` per completion, in the record's order.

    Raises:
      DataError: `too_long` (see `TokenizeConfig.truncation`).

    Example:
      >>> from tokenizers import Tokenizer, models, pre_tokenizers
      >>> raw = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2}, unk_token="<eos>"))
      >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
      >>> ex = RankedExample("a", ("b", "a b"), (1.0, 0.0))
      >>> seqs = tokenize_ranked(ex, HFTokenizer(raw), TokenizeConfig())
      >>> print([s.completion_ids.tolist() for s in seqs])
      [[2], [1, 2]]
    """
    return [
        tokenize_completion(example.prompt, c, tokenizer, config, record=example)
        for c in example.completions
    ]


class PairBatch(NamedTuple):
    """A fixed-shape batch of `B` pairs: rows `0..B-1` chosen, rows `B..2B-1` rejected.

    Attributes:
      input_ids: `[2B, T]` int32 token ids, right-padded with `pad_id`.
      attention_mask: `[2B, T]` int32, 1 at real tokens.
      loss_mask: `[2B, T]` int32, 1 at trained completion tokens (over `input_ids`; use
        `jaxpref.logprobs.shift_targets` to align it with next-token log-probs).
      positions: `[2B, T]` int32 position of each token in its sequence (0 at padding).
      segment_ids: `[2B, T]` int32, 1 at real tokens and 0 at padding (one segment per row).
      lengths: `[2B]` int32 number of real tokens per row.
      pair_mask: `[B]` int32, 0 for filler pairs added to reach the batch size.
      index: `[B]` int32 dataset position of each pair (-1 for fillers).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    lengths: np.ndarray
    pair_mask: np.ndarray
    index: np.ndarray


class SequenceBatch(NamedTuple):
    """A fixed-shape batch of `B` single completions (unpaired / SFT data).

    Attributes:
      input_ids: `[B, T]` int32.
      attention_mask: `[B, T]` int32.
      loss_mask: `[B, T]` int32.
      positions: `[B, T]` int32.
      segment_ids: `[B, T]` int32.
      lengths: `[B]` int32.
      row_mask: `[B]` int32, 0 for filler rows.
      desirable: `[B]` int32 label (1 desirable, 0 undesirable; 0 for fillers).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    lengths: np.ndarray
    row_mask: np.ndarray
    desirable: np.ndarray


class RankedBatch(NamedTuple):
    """A fixed-shape batch of `B` prompts with `K` completions: row `k * B + b` is completion `k`.

    Attributes:
      input_ids: `[K*B, T]` int32.
      attention_mask: `[K*B, T]` int32.
      loss_mask: `[K*B, T]` int32.
      positions: `[K*B, T]` int32.
      segment_ids: `[K*B, T]` int32.
      lengths: `[K*B]` int32.
      scores: `[B, K]` float32 scores (higher is better; 0 where absent).
      completion_mask: `[B, K]` int32, 1 where completion `k` exists.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    completion_mask: np.ndarray


def _rows(seqs, *, pad_id: int, buckets):
    """Fills `[N, T]` row arrays from `(prompt_ids, completion_ids, completion_mask)` or None."""
    lens = [0 if s is None else len(s[0]) + len(s[1]) for s in seqs]
    t = bucket_length(max([1, *lens]), buckets)
    n = len(seqs)
    ids = np.full((n, t), pad_id, np.int32)
    attn = np.zeros((n, t), np.int32)
    loss = np.zeros((n, t), np.int32)
    for i, s in enumerate(seqs):
        if s is None:
            continue
        p, c, m = s
        ids[i, : len(p)] = p
        ids[i, len(p) : lens[i]] = c
        attn[i, : lens[i]] = 1
        loss[i, len(p) : lens[i]] = m
        loss[i, 0] = 0  # nothing predicts the first token of a sequence
    positions = np.where(attn == 1, np.arange(t, dtype=np.int32)[None, :], 0).astype(np.int32)
    return ids, attn, loss, positions, attn.copy(), np.asarray(lens, np.int32)


def _fill(items, batch_size):
    n = len(items) if batch_size is None else batch_size
    if len(items) > n:
        raise ValueError(f"collate: got {len(items)} items for batch_size {n}.")
    return list(items) + [None] * (n - len(items)), n


def collate_pairs(
    pairs: Sequence[TokenizedPair | None],
    *,
    pad_id: int,
    buckets: Sequence[int],
    batch_size: int | None = None,
) -> PairBatch:
    """Pads tokenized pairs into a `PairBatch` of length `T = bucket_length(longest row)`.

    Args:
      pairs: tokenized pairs; None entries (e.g. skipped records) become filler pairs.
      pad_id: padding id.
      buckets: allowed lengths (`TokenizeConfig.padded_buckets`).
      batch_size: number of pairs `B`; missing pairs become fillers (`pair_mask` 0).

    Returns:
      `PairBatch` of numpy arrays.

    Example:
      >>> t = TokenizedPair(np.array([5]), np.array([6]), np.array([1]), np.array([7, 8]),
      ...                   np.array([1, 1]), 0, False)
      >>> b = collate_pairs([t], pad_id=0, buckets=(4, 8), batch_size=2)
      >>> print(b.input_ids)
      [[5 6 0 0]
       [0 0 0 0]
       [5 7 8 0]
       [0 0 0 0]]
      >>> print(b.loss_mask[2], b.pair_mask, b.index)
      [0 1 1 0] [1 0] [ 0 -1]
    """
    items, _ = _fill(pairs, batch_size)
    seqs = [None if p is None else (p.prompt_ids, p.chosen_ids, p.chosen_mask) for p in items]
    seqs += [None if p is None else (p.prompt_ids, p.rejected_ids, p.rejected_mask) for p in items]
    rows = _rows(seqs, pad_id=pad_id, buckets=buckets)
    pair_mask = np.asarray([p is not None for p in items], np.int32)
    index = np.asarray([-1 if p is None else p.index for p in items], np.int32)
    return PairBatch(*rows, pair_mask, index)


def collate_sequences(
    seqs: Sequence[TokenizedSequence | None],
    *,
    pad_id: int,
    buckets: Sequence[int],
    batch_size: int | None = None,
    desirable: Sequence[bool] | None = None,
) -> SequenceBatch:
    """Pads tokenized completions into a `SequenceBatch`.

    Args:
      seqs: tokenized sequences; None entries become filler rows.
      pad_id: padding id.
      buckets: allowed lengths.
      batch_size: rows `B` (fillers added).
      desirable: optional label per sequence.

    Returns:
      `SequenceBatch`.

    Example:
      >>> s = TokenizedSequence(np.array([5]), np.array([6]), np.array([1]), False)
      >>> print(collate_sequences([s], pad_id=0, buckets=(4,), desirable=[True]).desirable)
      [1]
    """
    items, b = _fill(seqs, batch_size)
    rows = _rows(
        [None if s is None else (s.prompt_ids, s.completion_ids, s.completion_mask) for s in items],
        pad_id=pad_id,
        buckets=buckets,
    )
    labels = list(desirable or [False] * len(seqs)) + [False] * (b - len(seqs))
    row_mask = np.asarray([s is not None for s in items], np.int32)
    return SequenceBatch(*rows, row_mask, np.asarray(labels, np.int32) * row_mask)


def collate_ranked(
    examples: Sequence[tuple[list[TokenizedSequence], Sequence[float]] | None],
    *,
    num_completions: int,
    pad_id: int,
    buckets: Sequence[int],
    batch_size: int | None = None,
) -> RankedBatch:
    """Pads tokenized ranked examples (`(sequences, scores)` each) into a `RankedBatch`.

    Args:
      examples: per prompt, its tokenized completions and their scores; None for fillers.
      num_completions: `K`; examples with fewer completions are padded (`completion_mask` 0).
      pad_id: padding id.
      buckets: allowed lengths.
      batch_size: prompts `B`.

    Returns:
      `RankedBatch`.

    Example:
      >>> s = TokenizedSequence(np.array([5]), np.array([6]), np.array([1]), False)
      >>> r = collate_ranked([([s, s], [1.0, 0.0])], num_completions=3, pad_id=0, buckets=(4,))
      >>> print(r.input_ids.shape, r.completion_mask)
      (3, 4) [[1 1 0]]
    """
    items, b = _fill(examples, batch_size)
    k = num_completions
    seqs = [None] * (k * b)
    scores = np.zeros((b, k), np.float32)
    cmask = np.zeros((b, k), np.int32)
    for i, ex in enumerate(items):
        if ex is None:
            continue
        toks, sc = ex
        if len(toks) > k:
            raise ValueError(f"collate_ranked: example {i} has {len(toks)} > {k} completions.")
        for j, s in enumerate(toks):
            seqs[j * b + i] = (s.prompt_ids, s.completion_ids, s.completion_mask)
            scores[i, j] = sc[j]
            cmask[i, j] = 1
    return RankedBatch(*_rows(seqs, pad_id=pad_id, buckets=buckets), scores, cmask)
