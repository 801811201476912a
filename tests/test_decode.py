"""Decoding: cache == recomputation, independent references, padding, EOS masks, sampling
truncation, beam search vs greedy and vs brute force, and no retracing."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import decode
from jaxpref.models import preset
from tests.models.helpers import random_model

N_NEW = 6


@pytest.fixture(scope="module")
def model():
    return random_model(preset("llama-tiny"), seed=0, scale=0.5)


@pytest.fixture(scope="module")
def gpt2():
    return random_model(preset("gpt2-tiny"), seed=1, scale=0.5)


# Prompts of lengths 3, 5, 1: right-padded and the same prompts left-padded.
PROMPTS = [[3, 4, 5], [7, 8, 9, 10, 11], [12]]


def padded(side, t=5):
    ids = np.zeros((len(PROMPTS), t), np.int32)
    mask = np.zeros((len(PROMPTS), t), np.int32)
    for i, p in enumerate(PROMPTS):
        sl = slice(0, len(p)) if side == "right" else slice(t - len(p), t)
        ids[i, sl], mask[i, sl] = p, 1
    return jnp.asarray(ids), jnp.asarray(mask)


@jax.jit
def _last_logp(model, buf, length):
    logits = model(buf, jnp.arange(buf.shape[1])[None, :] < length)
    return jax.nn.log_softmax(logits[0, length - 1])


def reference_greedy(model, prompt, n, eos_id=None):
    """Token-by-token greedy decoding of one prompt in Python, recomputing the whole prefix each
    step (no cache, no left-alignment); the prefix sits right-padded in a fixed 16-token buffer so
    that one compiled forward serves every step."""
    seq, tokens, logps = list(prompt), [], []
    for _ in range(n):
        buf = np.zeros((1, 16), np.int32)
        buf[0, : len(seq)] = seq
        logp = np.asarray(_last_logp(model, jnp.asarray(buf), jnp.asarray(len(seq))))
        tok = int(np.argmax(logp))
        tokens.append(tok)
        logps.append(float(logp[tok]))
        seq.append(tok)
        if tok == eos_id:
            break
    return tokens, logps


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_greedy_equals_uncached_and_reference(model, gpt2, family):
    m = model if family == "llama" else gpt2
    ids, mask = padded("right")
    cached = decode.greedy(m, ids, max_new_tokens=N_NEW, prompt_mask=mask)
    if family == "llama":  # the recomputing path is family-independent code
        uncached = decode.greedy(m, ids, max_new_tokens=N_NEW, prompt_mask=mask, use_cache=False)
        np.testing.assert_array_equal(cached.tokens, uncached.tokens)
        np.testing.assert_allclose(cached.logprobs, uncached.logprobs, atol=1e-5)
    for i, prompt in enumerate(PROMPTS):
        tokens, logps = reference_greedy(m, prompt, N_NEW)
        np.testing.assert_array_equal(cached.tokens[i], tokens)
        np.testing.assert_allclose(cached.logprobs[i], logps, atol=1e-5)
    assert bool(cached.mask.all())
    assert len(set(np.asarray(cached.tokens).ravel().tolist())) > 3  # not a degenerate model


def test_left_and_right_padding_agree_and_sequences_rescore(model):
    rids, rmask = padded("right")
    right = decode.greedy(model, rids, max_new_tokens=N_NEW, prompt_mask=rmask)
    ids, mask = padded("left")
    left = decode.greedy(model, ids, max_new_tokens=N_NEW, prompt_mask=mask)
    np.testing.assert_array_equal(left.tokens, right.tokens)
    np.testing.assert_allclose(left.logprobs, right.logprobs, atol=1e-5)
    # Teacher forcing over the returned sequences gives the same per-token log-probs.
    logits = jax.jit(lambda m, a, b: m(a, b))(model, left.sequences, left.sequence_mask)
    logp = jax.nn.log_softmax(logits[:, ids.shape[1] - 1 : -1], axis=-1)
    forced = jnp.take_along_axis(logp, left.tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(forced * left.mask, left.logprobs, atol=1e-5)


def test_eos_stops_rows_and_masks_the_rest(model):
    ids, mask = padded("right")
    free = decode.greedy(model, ids, max_new_tokens=N_NEW, prompt_mask=mask)
    eos = int(free.tokens[0, 2])  # row 0 emits it at step 2
    out = decode.greedy(model, ids, max_new_tokens=N_NEW, prompt_mask=mask, eos_id=eos, pad_id=95)
    for i, prompt in enumerate(PROMPTS):
        tokens, logps = reference_greedy(model, prompt, N_NEW, eos_id=eos)
        k = len(tokens)
        np.testing.assert_array_equal(out.tokens[i, :k], tokens)
        np.testing.assert_allclose(out.logprobs[i, :k], logps, atol=1e-5)
        np.testing.assert_array_equal(out.mask[i], np.arange(N_NEW) < k)
        np.testing.assert_array_equal(out.tokens[i, k:], 95)
        np.testing.assert_array_equal(out.logprobs[i, k:], 0.0)
    assert int(out.mask[0].sum()) == 3
    np.testing.assert_array_equal(out.sequence_mask[:, ids.shape[1] :], out.mask)


def test_process_logits_hand_values():
    logits = jnp.log(jnp.asarray([0.1, 0.4, 0.2, 0.3]))
    probs = lambda **kw: np.asarray(jax.nn.softmax(decode.process_logits(logits, **kw)))
    np.testing.assert_allclose(probs(top_k=2), [0, 4 / 7, 0, 3 / 7], atol=1e-6)
    # Sorted: 0.4, 0.3, 0.2, 0.1; mass before each: 0, 0.4, 0.7, 0.9. top_p=0.7 keeps 0.4, 0.3.
    np.testing.assert_allclose(probs(top_p=0.7), [0, 4 / 7, 0, 3 / 7], atol=1e-6)
    np.testing.assert_allclose(probs(top_p=0.71), [0, 4 / 9, 2 / 9, 3 / 9], atol=1e-6)
    p2 = np.asarray([0.1, 0.4, 0.2, 0.3]) ** 2
    np.testing.assert_allclose(probs(temperature=0.5), p2 / p2.sum(), atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        decode.process_logits(logits, temperature=0.0)


def test_sampling(model):
    ids, mask = padded("left")
    key = jax.random.key(3)
    kw = dict(max_new_tokens=N_NEW, prompt_mask=mask, temperature=0.8, top_k=5, top_p=0.9)
    a = decode.sample(model, ids, key, **kw)
    b = decode.sample(model, ids, key, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # Each token lies in the processed support and both log-probs match a teacher-forced pass.
    logits = jax.jit(lambda m, x, y: m(x, y))(model, a.sequences, a.sequence_mask)
    step_logits = logits[:, ids.shape[1] - 1 : -1]
    pick = lambda lp: np.take_along_axis(np.asarray(lp), np.asarray(a.tokens)[..., None], -1)[
        ..., 0
    ]
    processed = decode.process_logits(step_logits, temperature=0.8, top_k=5, top_p=0.9)
    np.testing.assert_allclose(pick(jax.nn.log_softmax(step_logits)), a.logprobs, atol=1e-5)
    np.testing.assert_allclose(pick(jax.nn.log_softmax(processed)), a.sampling_logprobs, atol=1e-5)
    assert np.isfinite(a.sampling_logprobs).all()
    other = decode.sample(model, ids, jax.random.key(4), **kw)
    assert not np.array_equal(other.tokens, a.tokens)
    greedy = decode.greedy(model, ids, max_new_tokens=N_NEW, prompt_mask=mask)
    top1 = decode.sample(model, ids, key, max_new_tokens=N_NEW, prompt_mask=mask, top_k=1)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    np.testing.assert_array_equal(top1.sampling_logprobs, 0.0)


def test_sampling_frequencies_follow_the_processed_distribution(model):
    """One step from 2000 copies of a prompt: empirical frequencies vs the processed probs."""
    ids = jnp.full((2000, 3), 7, jnp.int32).at[:, 1].set(8)
    out = decode.sample(model, ids, jax.random.key(0), max_new_tokens=1, temperature=2.0, top_k=4)
    logits = jax.jit(lambda m, x: m(x))(model, ids[:1])[0, -1]
    probs = np.asarray(jax.nn.softmax(decode.process_logits(logits, temperature=2.0, top_k=4)))
    freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=probs.size) / 2000
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(probs))
    # 4.5 standard errors of a binomial frequency with n = 2000.
    np.testing.assert_array_less(
        np.abs(freq - probs), 4.5 * np.sqrt(probs * (1 - probs) / 2000) + 1e-9
    )


def test_beam_width_one_is_greedy(model):
    ids, mask = padded("right")
    free = decode.greedy(model, ids, max_new_tokens=N_NEW, prompt_mask=mask)
    eos_id = int(free.tokens[0, 2])  # row 0 stops at step 2, the others run on
    g = decode.greedy(model, ids, max_new_tokens=N_NEW, prompt_mask=mask, eos_id=eos_id)
    b = decode.beam_search(model, ids, beam_width=1, max_new_tokens=N_NEW, length_penalty=0.0,
                           eos_id=eos_id, prompt_mask=mask)  # fmt: skip
    np.testing.assert_array_equal(b.tokens[:, 0], g.tokens)
    np.testing.assert_allclose(b.logprobs[:, 0], g.logprobs, atol=1e-5)
    np.testing.assert_array_equal(b.mask[:, 0], g.mask)
    np.testing.assert_allclose(b.scores[:, 0], g.logprobs.sum(-1), atol=1e-4)


def _brute_force(model, prompt, vocab, n, eos_id, alpha):
    """All complete continuations (ending in EOS, or of length n) with their exact scores."""
    tails = [
        tail
        for length in range(1, n + 1)
        for tail in itertools.product(range(vocab), repeat=length)
        if eos_id not in tail[:-1] and (length == n or tail[-1] == eos_id)
    ]
    seqs = jnp.asarray([list(prompt) + list(t) + [0] * (n - len(t)) for t in tails])
    logp = np.asarray(jax.nn.log_softmax(jax.jit(lambda m, x: m(x))(model, seqs), axis=-1))
    results = []
    for row, tail in zip(logp, tails, strict=True):
        total = sum(row[len(prompt) - 1 + j, tok] for j, tok in enumerate(tail))
        results.append((total / len(tail) ** alpha, tail))
    return sorted(results, key=lambda r: -r[0])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_exhaustive_beam_search_finds_the_brute_force_optimum(alpha):
    # Vocabulary 5, 3 new tokens: width 25 = 5^2 keeps every prefix, so beam search is exact.
    cfg = preset("llama-tiny", vocab_size=5)
    tiny = random_model(cfg, seed=5, scale=0.7)
    prompts = [[1, 2], [3]]
    ids = jnp.asarray([[1, 2], [0, 3]])
    mask = jnp.asarray([[1, 1], [0, 1]])
    eos = 4
    out = decode.beam_search(tiny, ids, beam_width=25, max_new_tokens=3, length_penalty=alpha,
                             eos_id=eos, prompt_mask=mask)  # fmt: skip
    for i, prompt in enumerate(prompts):
        brute = _brute_force(tiny, prompt, 5, 3, eos, alpha)
        best_score, best = brute[0]
        length = len(best)
        np.testing.assert_array_equal(out.tokens[i, 0, :length], best)
        np.testing.assert_array_equal(out.mask[i, 0], np.arange(3) < length)
        # Scores sum three log-softmaxes of full forward passes: composite tolerance.
        np.testing.assert_allclose(out.scores[i, 0], best_score, atol=1e-4)
        np.testing.assert_allclose(out.scores[i], [s for s, _ in brute[:25]], atol=1e-4)
        np.testing.assert_allclose(
            out.logprobs[i].sum(-1) / out.mask[i].sum(-1) ** alpha, out.scores[i], atol=1e-5
        )


def test_small_beam_is_sorted_and_consistent(gpt2):
    ids, mask = padded("left")
    out = decode.beam_search(gpt2, ids, beam_width=3, max_new_tokens=N_NEW, eos_id=11,
                             prompt_mask=mask)  # fmt: skip
    assert np.all(np.diff(np.asarray(out.scores), axis=1) <= 0)
    lengths = np.asarray(out.mask.sum(-1))
    np.testing.assert_allclose(out.logprobs.sum(-1) / lengths, out.scores, atol=1e-5)
    # Each hypothesis's log-probs are those of a teacher-forced pass over it.
    seqs = jnp.concatenate([jnp.repeat(ids, 3, axis=0), out.tokens.reshape(9, N_NEW)], axis=1)
    smask = jnp.concatenate([jnp.repeat(mask, 3, axis=0), out.mask.reshape(9, N_NEW)], axis=1)
    logp = jax.nn.log_softmax(jax.jit(lambda m, a, b: m(a, b))(gpt2, seqs, smask), axis=-1)
    forced = jnp.take_along_axis(logp[:, 4:-1], seqs[:, 5:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(forced * smask[:, 5:], out.logprobs.reshape(9, N_NEW), atol=1e-5)
    greedy = decode.greedy(gpt2, ids, max_new_tokens=N_NEW, eos_id=11, prompt_mask=mask)
    greedy_score = np.asarray(greedy.logprobs.sum(-1) / greedy.mask.sum(-1))
    assert np.all(np.asarray(out.scores[:, 0]) >= greedy_score - 1e-5)


def test_no_retracing_across_calls(model):
    ids, mask = padded("right")
    kw = dict(max_new_tokens=N_NEW, eos_id=None, pad_id=0, use_cache=True)
    fn = jax.jit(chex.assert_max_traces(decode.greedy.__wrapped__, n=1),
                 static_argnames=tuple(kw))  # fmt: skip
    first = fn(model, ids, **kw, prompt_mask=mask)
    other = random_model(preset("llama-tiny"), seed=7)
    fn(other, ids + 1, **kw, prompt_mask=mask[:, ::-1])
    again = fn(model, ids, **kw, prompt_mask=mask)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    # The public entry points are cached the same way.
    before = decode.greedy._cache_size()
    decode.greedy(model, ids, max_new_tokens=N_NEW, prompt_mask=mask)
    decode.greedy(other, ids + 2, max_new_tokens=N_NEW, prompt_mask=mask)
    assert decode.greedy._cache_size() <= before + 1


def test_prompt_shape_errors(model):
    with pytest.raises(ValueError, match="prompt_mask"):
        decode.greedy(model, jnp.ones((2, 3), jnp.int32), max_new_tokens=2,
                      prompt_mask=jnp.ones((2, 4)))  # fmt: skip
    with pytest.raises(ValueError, match="prompt_ids"):
        decode.greedy(model, jnp.ones((3,), jnp.int32), max_new_tokens=2)
