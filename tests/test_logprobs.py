"""Tests for `jaxpref.logprobs` against NumPy references and the naive path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import logprobs as bench
from jaxpref import logprobs as lp


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _problem(b=3, t=7, d=8, v=12, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    h = jax.random.normal(k[0], (b, t, d))
    w = jax.random.normal(k[1], (d, v)) / 2.0
    y = jax.random.randint(k[2], (b, t), 0, v)
    m = (jax.random.uniform(k[3], (b, t)) > 0.3).astype(jnp.float32)
    m = m.at[-1].set(0.0)  # one fully masked row
    return h, w, y, m


def test_token_logprobs_matches_numpy():
    h, w, y, m = _problem()
    logits = h @ w
    got = lp.token_logprobs(logits, y, m)
    ref = np.take_along_axis(_np_log_softmax(logits), np.asarray(y)[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, ref * np.asarray(m), atol=1e-5)
    assert got.dtype == jnp.float32


def test_token_logprobs_bf16_gives_f32_and_ignores_padding_ids():
    h, w, y, m = _problem()
    y = jnp.where(m > 0, y, -100)
    got = lp.token_logprobs((h @ w).astype(jnp.bfloat16), y, m)
    assert got.dtype == jnp.float32
    assert np.all(np.asarray(got)[np.asarray(m) == 0] == 0.0)
    assert np.all(np.isfinite(np.asarray(got)))


def test_masked_reductions_fully_masked_row_and_nan_padding():
    x = jnp.array([[1.0, 2.0, jnp.nan], [jnp.inf, 4.0, 5.0]])
    m = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(lp.masked_sum(x, m), [3.0, 0.0])
    np.testing.assert_allclose(lp.masked_mean(x, m), [1.5, 0.0])
    g = jax.grad(lambda x: jnp.sum(lp.masked_mean(x, m)))(x)
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(g, [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(lp.lengths(m), [2.0, 0.0])


def test_masked_equals_filtered():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 9)).astype(np.float32)
    m = rng.random((4, 9)) > 0.5
    got = lp.masked_sum(x, m)
    ref = [x[i][m[i]].sum() for i in range(4)]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="mask"):
        lp.masked_sum(jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="targets"):
        lp.token_logprobs(jnp.ones((2, 3, 5)), jnp.ones((2, 4), jnp.int32))
    with pytest.raises(TypeError, match="targets"):
        lp.token_logprobs(jnp.ones((2, 3, 5)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="logits"):
        lp.token_logprobs(jnp.ones((2, 5)), jnp.ones((2,), jnp.int32))
    with pytest.raises(ValueError, match="even"):
        lp.split_pairs(jnp.ones((3, 2)))


def test_shift_targets_and_sequence_logprobs():
    ids = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    mask = jnp.array([[0, 0, 1, 1], [0, 1, 1, 0]])
    t, m = lp.shift_targets(ids, mask)
    np.testing.assert_array_equal(t, [[2, 3, 4, 0], [6, 7, 8, 0]])
    np.testing.assert_array_equal(m, [[0, 1, 1, 0], [1, 1, 0, 0]])
    s, n = lp.sequence_logprobs(jnp.full((2, 4), -0.5), m)
    np.testing.assert_allclose(s, [-1.0, -1.0])
    np.testing.assert_allclose(n, [2.0, 2.0])


def test_split_concat_roundtrip():
    x = jnp.arange(12).reshape(6, 2)
    c, r = lp.split_pairs(x)
    np.testing.assert_array_equal(lp.concat_pairs(c, r), x)


def test_entropy_and_kl_match_numpy():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(2, 3, 5)).astype(np.float32)
    q = rng.normal(size=(2, 3, 5)).astype(np.float32)
    lpn, lqn = _np_log_softmax(p), _np_log_softmax(q)
    np.testing.assert_allclose(lp.entropy(p), -(np.exp(lpn) * lpn).sum(-1), atol=1e-5)
    np.testing.assert_allclose(
        lp.kl_divergence(p, q), (np.exp(lpn) * (lpn - lqn)).sum(-1), atol=1e-5
    )
    np.testing.assert_allclose(lp.kl_divergence(p, p), 0.0, atol=1e-6)
    m = np.array([[1, 0, 1], [0, 0, 0]])
    assert np.all(np.asarray(lp.kl_divergence(p, q, m))[m == 0] == 0)


@pytest.mark.parametrize(
    "seq_chunk,vocab_chunk", [(1024, None), (4, None), (5, 3), (21, 4), (1, 12)]
)
def test_chunked_matches_naive_values_and_grads(seq_chunk, vocab_chunk):
    h, w, y, m = _problem()
    weights = jax.random.normal(jax.random.key(9), y.shape)

    def naive(h, w):
        return jnp.sum(lp.token_logprobs(h @ w, y, m) * weights)

    def chunked(h, w):
        out = lp.chunked_token_logprobs(h, w, y, m, seq_chunk=seq_chunk, vocab_chunk=vocab_chunk)
        return jnp.sum(out * weights)

    va, ga = jax.value_and_grad(naive, argnums=(0, 1))(h, w)
    vb, gb = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(h, w)
    np.testing.assert_allclose(vb, va, rtol=1e-5, atol=1e-5)
    for a, b in zip(ga, gb, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_chunked_eager_equals_jit_and_masks_out_of_range_targets():
    h, w, y, m = _problem()
    y = jnp.where(m > 0, y, -100)
    eager = lp.chunked_token_logprobs(h, w, y, m, seq_chunk=4)
    jitted = jax.jit(lambda h, w: lp.chunked_token_logprobs(h, w, y, m, seq_chunk=4))(h, w)
    np.testing.assert_allclose(eager, jitted, atol=1e-6)
    assert np.all(np.asarray(eager)[np.asarray(m) == 0] == 0.0)
    g = jax.grad(lambda h: jnp.sum(lp.chunked_token_logprobs(h, w, y, m, seq_chunk=4)))(h)
    np.testing.assert_array_equal(np.asarray(g)[np.asarray(m) == 0], 0.0)


def test_chunked_bf16_inputs():
    h, w, y, m = _problem()
    hb, wb = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    got = lp.chunked_token_logprobs(hb, wb, y, m, seq_chunk=8, vocab_chunk=6)
    ref = lp.token_logprobs(jnp.dot(hb, wb, preferred_element_type=jnp.float32), y, m)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    gh, gw = jax.grad(
        lambda a, b: jnp.sum(lp.chunked_token_logprobs(a, b, y, m, seq_chunk=8)), argnums=(0, 1)
    )(hb, wb)
    assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16


def test_chunked_argument_errors():
    h, w, y, m = _problem()
    with pytest.raises(ValueError, match="vocab_chunk"):
        lp.chunked_token_logprobs(h, w, y, m, vocab_chunk=5)
    with pytest.raises(ValueError, match="unembedding"):
        lp.chunked_token_logprobs(h, w.T, y, m)


def test_benchmark_workers_agree_at_tiny_size():
    kw = dict(batch=2, seq=16, vocab=64, dim=8, repeats=1, seq_chunk=8, vocab_chunk=16)
    naive = bench.run_worker("naive", **kw)
    chunked = bench.run_worker("chunked", **kw)
    np.testing.assert_allclose(chunked["value"], naive["value"], rtol=1e-5)
    np.testing.assert_allclose(chunked["grad_norms"], naive["grad_norms"], rtol=1e-5)
