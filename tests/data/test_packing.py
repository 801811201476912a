"""Packing: layout, and packed == unpacked per-pair log-probs on a `jaxpref.models` decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpref.data import (
    PreferencePair,
    TokenizeConfig,
    collate_pairs,
    pack_pairs,
    packed_pair_logprobs,
    tokenize_pair,
)
from jaxpref.logprobs import masked_sum, shift_targets, split_pairs, token_logprobs
from jaxpref.models import Transformer, preset

PAIRS = [
    PreferencePair("Tell me a joke.", " Why did the chicken cross the road?", " No."),
    PreferencePair("What is the capital of France?", " Paris.", " The capital of France is Lyon."),
    PreferencePair("", "Thanks!", "You are welcome."),
    PreferencePair("How do I bake bread?", " Mix flour, water, salt and yeast.", " Buy it."),
    PreferencePair("1 2 3", " 4", " 5 6 7 8 9 10"),
]


@pytest.fixture(scope="module")
def tokenized(tokenizer):
    cfg = TokenizeConfig(max_length=32, buckets=(32,), add_bos=False)
    return [tokenize_pair(p, tokenizer, cfg, index=10 + i) for i, p in enumerate(PAIRS)]


def test_pack_layout(tokenized, tokenizer):
    b = pack_pairs(tokenized, row_length=48, pad_id=tokenizer.pad_id, batch_size=6)
    assert b.input_ids.shape[1] == 48 and b.input_ids.dtype == np.int32
    np.testing.assert_array_equal(b.pair_mask, [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(b.index, [10, 11, 12, 13, 14, -1])
    for k, t in enumerate(tokenized):
        row = b.input_ids[b.pair_row[k]]
        for seg, ids, mask in (
            (b.chosen_segment[k], t.chosen_ids, t.chosen_mask),
            (b.rejected_segment[k], t.rejected_ids, t.rejected_mask),
        ):
            sel = b.segment_ids[b.pair_row[k]] == seg
            np.testing.assert_array_equal(row[sel], np.concatenate([t.prompt_ids, ids]))
            np.testing.assert_array_equal(b.positions[b.pair_row[k]][sel], np.arange(sel.sum()))
            want = np.concatenate([np.zeros(len(t.prompt_ids), np.int32), mask])
            want[0] = 0
            np.testing.assert_array_equal(b.loss_mask[b.pair_row[k]][sel], want)
        assert b.rejected_segment[k] == b.chosen_segment[k] + 1
    # every row is filled left to right, then padding (segment 0)
    for r in range(b.input_ids.shape[0]):
        seg = b.segment_ids[r]
        n = int((seg > 0).sum())
        assert (seg[:n] > 0).all() and (seg[n:] == 0).all()
        assert (np.diff(seg[:n]) >= 0).all()
        np.testing.assert_array_equal(b.attention_mask[r], seg > 0)
    assert b.input_ids.shape[0] < 2 * len(tokenized)  # it actually packs


def test_pack_row_buckets_and_errors(tokenized):
    b = pack_pairs(tokenized, row_length=48, pad_id=0, row_buckets=(2, 4, 8))
    assert b.input_ids.shape[0] in (2, 4, 8)
    with pytest.raises(ValueError, match="row_length"):
        pack_pairs(tokenized, row_length=10, pad_id=0)
    with pytest.raises(ValueError, match="bucket"):
        pack_pairs(tokenized, row_length=48, pad_id=0, row_buckets=(1,))


def _model(config):
    # Random parameters drawn on the host: initialising through `jax.random` compiles one small
    # program per parameter shape, which dominates this test's run time on a CPU.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype), state)
    return nnx.merge(graphdef, state)


@jax.jit
def _forward(graphdef, state, input_ids, attention_mask, positions, segment_ids):
    model = nnx.merge(graphdef, state)
    return model(input_ids, attention_mask, positions=positions, segment_ids=segment_ids)


def _unpacked(model, tokenized, pad_id):
    b = collate_pairs(tokenized, pad_id=pad_id, buckets=(32,))
    logits = _forward(*nnx.split(model), b.input_ids, b.attention_mask, None, None)
    targets, mask = shift_targets(b.input_ids, b.loss_mask)
    lp = token_logprobs(logits, targets, mask)
    return split_pairs(masked_sum(lp, mask))


def _packed(model, tokenized, pad_id, *, use_segments=True):
    b = pack_pairs(tokenized, row_length=48, pad_id=pad_id)
    pos, seg = (b.positions, b.segment_ids) if use_segments else (None, None)
    logits = _forward(*nnx.split(model), b.input_ids, b.attention_mask, pos, seg)
    targets, mask = shift_targets(b.input_ids, b.loss_mask)
    lp = token_logprobs(logits, targets, mask)
    return packed_pair_logprobs(lp, b, mask)


@pytest.mark.parametrize("family", ["llama-tiny", "gpt2-tiny"])
def test_packed_equals_unpacked_logprobs(tokenized, tokenizer, family):
    model = _model(preset(family, vocab_size=tokenizer.vocab_size))
    c_u, r_u = _unpacked(model, tokenized, tokenizer.pad_id)
    c_p, r_p = _packed(model, tokenized, tokenizer.pad_id)
    np.testing.assert_allclose(c_p, c_u, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(r_p, r_u, rtol=1e-5, atol=1e-4)
    # the sums are over the completion tokens only: count them
    n_c = [int(t.chosen_mask.sum()) - (len(t.prompt_ids) == 0) for t in tokenized]
    assert all(n > 0 for n in n_c)
    # without segment ids and restarted positions, attention leaks across pairs
    c_leak, _ = _packed(model, tokenized, tokenizer.pad_id, use_segments=False)
    assert np.max(np.abs(np.asarray(c_leak) - np.asarray(c_u))) > 1e-2


def test_packed_pair_logprobs_hand_computed():
    from jaxpref.data import TokenizedPair

    t = TokenizedPair(
        np.array([5, 6]), np.array([7, 8]), np.array([1, 1]), np.array([9]), np.array([1]), 0, False
    )
    b = pack_pairs([t, None], row_length=8, pad_id=0)
    # row: [5 6 7 8 | 5 6 9 | pad]; seg [1 1 1 1 2 2 2 0]; loss [0 0 1 1 0 0 1 0]
    values = jnp.arange(8, dtype=jnp.float32)[None, :] + 1.0
    c, r = jax.jit(packed_pair_logprobs)(values, b)
    # shifted mask picks positions 1, 2 (chosen) and 5 (rejected): values 2+3 and 6
    np.testing.assert_allclose(c, [5.0, 0.0])
    np.testing.assert_allclose(r, [6.0, 0.0])
