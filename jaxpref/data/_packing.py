"""Packing several preference pairs per row, for pairwise losses.

Each pair becomes two consecutive segments of one row: `prompt + chosen`, then
`prompt + rejected`. Segment ids number the segments of a row from 1 (0 is padding) and positions
restart at 0 in each segment, so a model that restricts attention to equal segment ids
(`jaxpref.models.Transformer(..., positions=, segment_ids=)`) computes for every segment what it
computes for the same sequence alone in an unpacked row. The loss mask is 0 at the first token of
every segment, so after `jaxpref.logprobs.shift_targets` no position is trained on a token of the
next segment. `packed_pair_logprobs` turns per-token values back into per-pair sums `[P]`.

Rows are filled first-fit in the order of the pairs; the number of rows is rounded up to a row
bucket so a jitted step sees a handful of shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxpref._checks import check_rank, check_same_shape, f32
from jaxpref.data._tokenize import TokenizedPair, bucket_length

__all__ = ["PackedPairBatch", "pack_pairs", "packed_pair_logprobs"]


class PackedPairBatch(NamedTuple):
    """`P` pairs packed into `R` rows of length `T`.

    Attributes:
      input_ids: `[R, T]` int32.
      attention_mask: `[R, T]` int32, 1 at real tokens.
      loss_mask: `[R, T]` int32, 1 at trained completion tokens (0 at each segment's first token).
      positions: `[R, T]` int32, restarting at 0 in each segment.
      segment_ids: `[R, T]` int32 segment number within the row, from 1; 0 at padding.
      pair_row: `[P]` int32 row holding pair `p`.
      chosen_segment: `[P]` int32 segment id of the chosen sequence of pair `p`.
      rejected_segment: `[P]` int32 segment id of the rejected sequence.
      pair_mask: `[P]` int32, 0 for filler pairs.
      index: `[P]` int32 dataset position of each pair (-1 for fillers).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    pair_row: np.ndarray
    chosen_segment: np.ndarray
    rejected_segment: np.ndarray
    pair_mask: np.ndarray
    index: np.ndarray


def pack_pairs(
    pairs: Sequence[TokenizedPair | None],
    *,
    row_length: int,
    pad_id: int,
    row_buckets: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> PackedPairBatch:
    """Packs tokenized pairs into rows of `row_length` tokens.

    Args:
      pairs: tokenized pairs; None entries become filler pairs (`pair_mask` 0).
      row_length: `T`; every pair must fit in one row (`len(chosen row) + len(rejected row)`).
      pad_id: padding id.
      row_buckets: allowed numbers of rows `R`; None uses as many rows as needed.
      batch_size: number of pairs `P` (fillers added); None uses `len(pairs)`.

    Returns:
      `PackedPairBatch` of numpy arrays.

    Raises:
      ValueError: a pair longer than `row_length`, or more rows needed than the largest bucket.

    Example:
      >>> t = TokenizedPair(np.array([5]), np.array([6]), np.array([1]), np.array([7]),
      ...                   np.array([1]), 3, False)
      >>> b = pack_pairs([t, t._replace(index=4)], row_length=8, pad_id=0)
      >>> print(b.input_ids, b.segment_ids, b.positions, sep="\\n")
      [[5 6 5 7 5 6 5 7]]
      [[1 1 2 2 3 3 4 4]]
      [[0 1 0 1 0 1 0 1]]
      >>> print(b.chosen_segment, b.rejected_segment, b.index)
      [1 3] [2 4] [3 4]
    """
    n = len(pairs) if batch_size is None else batch_size
    if len(pairs) > n:
        raise ValueError(f"pack_pairs: got {len(pairs)} pairs for batch_size {n}.")
    items = list(pairs) + [None] * (n - len(pairs))
    fill: list[int] = []
    rows: list[list[tuple]] = []
    placement = []
    for k, p in enumerate(items):
        if p is None:
            placement.append(None)
            continue
        c = (p.prompt_ids, p.chosen_ids, p.chosen_mask)
        r = (p.prompt_ids, p.rejected_ids, p.rejected_mask)
        need = sum(len(x[0]) + len(x[1]) for x in (c, r))
        if need > row_length:
            raise ValueError(
                f"pack_pairs: pair {k} (index {p.index}) needs {need} tokens > row_length "
                f"{row_length}."
            )
        row = next((i for i, used in enumerate(fill) if used + need <= row_length), None)
        if row is None:
            row = len(rows)
            rows.append([])
            fill.append(0)
        seg = len(rows[row]) + 1
        rows[row] += [c, r]
        fill[row] += need
        placement.append((row, seg, seg + 1))
    num_rows = max(len(rows), 1)
    if row_buckets is not None:
        num_rows = bucket_length(num_rows, row_buckets)
    shape = (num_rows, row_length)
    ids = np.full(shape, pad_id, np.int32)
    attn, loss, pos, seg_ids = (np.zeros(shape, np.int32) for _ in range(4))
    for i, segments in enumerate(rows):
        t = 0
        for s, (p, c, m) in enumerate(segments, start=1):
            length = len(p) + len(c)
            ids[i, t : t + len(p)] = p
            ids[i, t + len(p) : t + length] = c
            loss[i, t + len(p) : t + length] = m
            loss[i, t] = 0
            attn[i, t : t + length] = 1
            pos[i, t : t + length] = np.arange(length)
            seg_ids[i, t : t + length] = s
            t += length
    placed = [(0, 0, 0) if x is None else x for x in placement]
    return PackedPairBatch(
        ids,
        attn,
        loss,
        pos,
        seg_ids,
        np.asarray([x[0] for x in placed], np.int32),
        np.asarray([x[1] for x in placed], np.int32),
        np.asarray([x[2] for x in placed], np.int32),
        np.asarray([x is not None for x in placement], np.int32),
        np.asarray([-1 if p is None else p.index for p in items], np.int32),
    )


def packed_pair_logprobs(token_logps, batch: PackedPairBatch, mask=None):
    """Per-pair sums of per-token values of a packed batch: `(chosen [P], rejected [P])`.

    .. math:: S_p^{w} = \\sum_t m_{r_p, t}\\, [\\mathrm{seg}_{r_p, t} = c_p]\\, x_{r_p, t}

    `token_logps[r, t]` must score the token at `t + 1` (the layout of
    `jaxpref.logprobs.token_logprobs` after `shift_targets`), and `mask` is the shifted loss mask
    (0 at the last token of every segment, because the next segment starts untrained). Filler
    pairs give 0.

    Args:
      token_logps: `[R, T]` per-token values (e.g. log-probs).
      batch: the `PackedPairBatch` (its `segment_ids`, `pair_row`, `*_segment`, `pair_mask`).
      mask: `[R, T]` shifted loss mask; None uses `batch.loss_mask` shifted left by one.

    Returns:
      `(chosen [P], rejected [P])` float32 sums.

    Example:
      >>> t = TokenizedPair(np.array([5]), np.array([6]), np.array([1]), np.array([7]),
      ...                   np.array([1]), 0, False)
      >>> b = pack_pairs([t], row_length=4, pad_id=0)
      >>> c, r = packed_pair_logprobs(jnp.array([[-1.0, -2.0, -3.0, -4.0]]), b)
      >>> print(c, r)
      [-1.] [-3.]
    """
    fn = "packed_pair_logprobs"
    check_rank(token_logps, "token_logps", 2, fn=fn)
    seg = jnp.asarray(batch.segment_ids)
    if mask is None:
        lm = jnp.asarray(batch.loss_mask)
        mask = jnp.concatenate([lm[:, 1:], jnp.zeros_like(lm[:, :1])], axis=1)
    check_same_shape({"token_logps": token_logps, "mask": mask, "seg": seg}, "token_logps", fn=fn)
    values = f32(token_logps)
    keep = f32(mask) != 0
    rows = jnp.asarray(batch.pair_row)
    valid = jnp.asarray(batch.pair_mask)[:, None] != 0

    def gather(segment):
        sel = keep[rows] & (seg[rows] == jnp.asarray(segment)[:, None]) & valid
        return jnp.sum(jnp.where(sel, values[rows], 0.0), axis=-1)

    return gather(batch.chosen_segment), gather(batch.rejected_segment)
