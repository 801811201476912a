"""Token log-probabilities, masked reductions and logit diagnostics.

Everything here computes in float32 whatever the input dtype, and accepts a `mask` with the shape
of the per-token values (float or bool; 1 = counted). A fully masked row reduces to 0 with finite
gradients.

Layout conventions:

* `logits[b, t]` scores the token `targets[b, t]` (aligned). Language models predict the *next*
  token; `shift_targets` turns `input_ids` and a loss mask into aligned `targets` and mask without
  changing the sequence length, so every array stays `[B, T]`.
* Pairwise batches use the concatenated layout: the first `B` rows are the chosen completions,
  the last `B` rows the rejected ones (`split_pairs` / `concat_pairs`).

The memory-lean path `chunked_token_logprobs` takes final hidden states `[B, T, D]` and the
unembedding `[D, V]` and never materialises the `[B, T, V]` logits or log-softmax: it computes them
chunk by chunk in the forward pass and recomputes them chunk by chunk in the backward pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxpref._checks import check_rank, check_same_shape, f32

__all__ = [
    "chunked_token_logprobs",
    "concat_pairs",
    "entropy",
    "kl_divergence",
    "lengths",
    "masked_mean",
    "masked_sum",
    "sequence_logprobs",
    "shift_targets",
    "split_pairs",
    "token_logprobs",
]


def _mask_or_ones(mask, like):
    if mask is None:
        return jnp.ones(jnp.shape(like), jnp.float32)
    return jnp.asarray(mask).astype(jnp.float32)


def masked_sum(values, mask=None, *, axis: int = -1):
    """Sums `values` over `axis`, counting only positions where `mask` is non-zero.

    .. math:: \\sum_t m_t x_t

    Masked positions are replaced by 0 before the product, so NaN or inf stored in padding never
    reaches the result or its gradient.

    Args:
      values: `[..., T]` per-token values (any float dtype).
      mask: `[..., T]` float or bool mask with the shape of `values`; None counts everything.
      axis: axis to reduce.

    Returns:
      `[...]` float32 sums.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 2.0, jnp.nan], [3.0, 4.0, 5.0]])
      >>> m = jnp.array([[1, 1, 0], [0, 0, 0]])
      >>> print(masked_sum(x, m))
      [3. 0.]
    """
    values = f32(values)
    if mask is None:
        return jnp.sum(values, axis=axis)
    check_same_shape({"values": values, "mask": mask}, "values", fn="masked_sum")
    m = _mask_or_ones(mask, values)
    return jnp.sum(jnp.where(m != 0, values, 0.0) * m, axis=axis)


def lengths(mask, *, axis: int = -1):
    """Number of counted positions per row: `sum_t m_t` as float32.

    Args:
      mask: `[..., T]` float or bool mask.
      axis: axis to reduce.

    Returns:
      `[...]` float32 counts (may be 0).

    Example:
      >>> import jax.numpy as jnp
      >>> print(lengths(jnp.array([[1, 1, 0], [0, 0, 0]])))
      [2. 0.]
    """
    return jnp.sum(jnp.asarray(mask).astype(jnp.float32), axis=axis)


def masked_mean(values, mask=None, *, axis: int = -1):
    """Mean of `values` over the counted positions; 0 for a fully masked row.

    .. math:: \\frac{\\sum_t m_t x_t}{\\max(1, \\sum_t m_t)}

    Args:
      values: `[..., T]` per-token values.
      mask: `[..., T]` mask; None averages everything.
      axis: axis to reduce.

    Returns:
      `[...]` float32 means.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 3.0, 9.0], [3.0, 4.0, 5.0]])
      >>> print(masked_mean(x, jnp.array([[1, 1, 0], [0, 0, 0]])))
      [2. 0.]
    """
    if mask is None:
        return jnp.mean(f32(values), axis=axis)
    total = masked_sum(values, mask, axis=axis)
    return total / jnp.maximum(lengths(mask, axis=axis), 1.0)


def shift_targets(input_ids, loss_mask=None):
    """Aligns next-token targets with the logits that predict them, keeping length `T`.

    A causal LM's logits at position `t` predict `input_ids[:, t + 1]`. This returns
    `targets[:, t] = input_ids[:, t + 1]` (0 at the last position) and the loss mask shifted the
    same way (0 at the last position), so `token_logprobs(logits, targets, mask)` is `[B, T]`.

    Args:
      input_ids: `[B, T]` integer token ids.
      loss_mask: `[B, T]` mask over `input_ids` marking the tokens to score (e.g. completion
        tokens); None scores every token after the first.

    Returns:
      `(targets [B, T] int32, mask [B, T] float32)`.

    Example:
      >>> import jax.numpy as jnp
      >>> t, m = shift_targets(jnp.array([[5, 6, 7]]), jnp.array([[0, 1, 1]]))
      >>> print(t, m)
      [[6 7 0]] [[1. 1. 0.]]
    """
    check_rank(input_ids, "input_ids", 2, fn="shift_targets")
    input_ids = jnp.asarray(input_ids)
    if loss_mask is None:
        loss_mask = jnp.ones(input_ids.shape, jnp.float32)
    check_same_shape(
        {"input_ids": input_ids, "loss_mask": loss_mask}, "input_ids", fn="shift_targets"
    )
    pad_ids = jnp.zeros((input_ids.shape[0], 1), jnp.int32)
    pad_mask = jnp.zeros((input_ids.shape[0], 1), jnp.float32)
    targets = jnp.concatenate([input_ids[:, 1:].astype(jnp.int32), pad_ids], axis=1)
    mask = jnp.concatenate([jnp.asarray(loss_mask).astype(jnp.float32)[:, 1:], pad_mask], axis=1)
    return targets, mask


def _check_targets(fn, targets, lead_shape):
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise TypeError(
            f"{fn}: `targets` must be integer token ids, got {jnp.result_type(targets)}."
        )
    if tuple(jnp.shape(targets)) != tuple(lead_shape):
        raise ValueError(
            f"{fn}: `targets` must have shape {tuple(lead_shape)} (the leading dims of the "
            f"scores), got {tuple(jnp.shape(targets))}."
        )


def token_logprobs(logits, targets, mask=None):
    """Log-probability of each target token under the softmax of its logits (float32).

    .. math:: \\log \\pi(y_t) = z_{t, y_t} - \\log\\sum_v e^{z_{t, v}}

    Computed as the gathered logit minus a float32 logsumexp, so the `[B, T, V]` log-softmax is not
    stored. Target ids outside `[0, V)` (e.g. `-100` padding) are allowed where `mask` is 0.

    Args:
      logits: `[B, T, V]` logits aligned with `targets` (see `shift_targets`), any float dtype.
      targets: `[B, T]` integer token ids.
      mask: optional `[B, T]` mask; masked positions return 0.

    Returns:
      `[B, T]` float32 per-token log-probs.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.log(jnp.array([[[0.25, 0.75], [0.5, 0.5]]]))
      >>> print(token_logprobs(logits, jnp.array([[1, 0]])).round(4))
      [[-0.2877 -0.6931]]
    """
    check_rank(logits, "logits", 3, fn="token_logprobs")
    _check_targets("token_logprobs", targets, jnp.shape(logits)[:2])
    logits = f32(logits)
    vocab = logits.shape[-1]
    safe = jnp.clip(jnp.asarray(targets), 0, vocab - 1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    logps = picked - jax.nn.logsumexp(logits, axis=-1)
    if mask is None:
        return logps
    check_same_shape({"targets": targets, "mask": mask}, "targets", fn="token_logprobs")
    return jnp.where(jnp.asarray(mask) != 0, logps, 0.0)


def sequence_logprobs(token_logps, mask):
    """Sequence log-probs `sum_t m_t log pi(y_t)` and lengths `sum_t m_t`.

    Args:
      token_logps: `[B, T]` per-token log-probs.
      mask: `[B, T]` completion-token mask.

    Returns:
      `(logps [B], lengths [B])`, both float32.

    Example:
      >>> import jax.numpy as jnp
      >>> s, n = sequence_logprobs(jnp.array([[-1.0, -2.0, -4.0]]), jnp.array([[1, 1, 0]]))
      >>> print(s, n)
      [-3.] [2.]
    """
    return masked_sum(token_logps, mask), lengths(mask)


def split_pairs(x):
    """Splits a concatenated pair batch `[2B, ...]` into `(chosen [B, ...], rejected [B, ...])`.

    Args:
      x: array whose leading axis holds `B` chosen rows followed by `B` rejected rows.

    Returns:
      `(chosen, rejected)`.

    Example:
      >>> import jax.numpy as jnp
      >>> c, r = split_pairs(jnp.arange(4))
      >>> print(c, r)
      [0 1] [2 3]
    """
    n = jnp.shape(x)[0]
    if n % 2:
        raise ValueError(
            f"split_pairs: the leading axis must hold chosen rows then rejected rows (even size), "
            f"got shape {tuple(jnp.shape(x))}."
        )
    return x[: n // 2], x[n // 2 :]


def concat_pairs(chosen, rejected):
    """Inverse of `split_pairs`: stacks chosen rows then rejected rows along axis 0.

    Args:
      chosen: `[B, ...]` array.
      rejected: `[B, ...]` array with the same shape.

    Returns:
      `[2B, ...]` array.

    Example:
      >>> import jax.numpy as jnp
      >>> print(concat_pairs(jnp.array([0, 1]), jnp.array([2, 3])))
      [0 1 2 3]
    """
    check_same_shape({"chosen": chosen, "rejected": rejected}, "chosen", fn="concat_pairs")
    return jnp.concatenate([chosen, rejected], axis=0)


def entropy(logits, mask=None):
    """Per-token entropy of the softmax policy, in nats (float32).

    .. math:: H_t = -\\sum_v \\pi_t(v) \\log \\pi_t(v)

    Args:
      logits: `[..., V]` logits.
      mask: optional mask with the leading shape of `logits`; masked positions return 0.

    Returns:
      `[...]` float32 entropies.

    Example:
      >>> import jax.numpy as jnp
      >>> print(entropy(jnp.zeros((1, 4))).round(4))  # uniform over 4 tokens: log 4
      [1.3863]
    """
    logp = jax.nn.log_softmax(f32(logits), axis=-1)
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    if mask is None:
        return ent
    check_same_shape({"mask": mask, "logits[..., 0]": ent}, "mask", fn="entropy")
    return jnp.where(jnp.asarray(mask) != 0, ent, 0.0)


def kl_divergence(logits_p, logits_q, mask=None):
    """Per-token KL divergence `KL(p || q)` between two softmax policies (float32).

    .. math:: \\mathrm{KL}_t = \\sum_v p_t(v)\\,[\\log p_t(v) - \\log q_t(v)]

    Args:
      logits_p: `[..., V]` logits of `p` (e.g. the policy).
      logits_q: `[..., V]` logits of `q` (e.g. the reference), same shape.
      mask: optional mask with the leading shape; masked positions return 0.

    Returns:
      `[...]` float32 non-negative KL values.

    Example:
      >>> import jax.numpy as jnp
      >>> p = jnp.log(jnp.array([[0.5, 0.5]]))
      >>> q = jnp.log(jnp.array([[0.9, 0.1]]))
      >>> print(kl_divergence(p, q).round(4))
      [0.5108]
    """
    check_same_shape({"logits_p": logits_p, "logits_q": logits_q}, "logits_p", fn="kl_divergence")
    logp = jax.nn.log_softmax(f32(logits_p), axis=-1)
    logq = jax.nn.log_softmax(f32(logits_q), axis=-1)
    kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    if mask is None:
        return kl
    check_same_shape({"mask": mask, "logits_p[..., 0]": kl}, "mask", fn="kl_divergence")
    return jnp.where(jnp.asarray(mask) != 0, kl, 0.0)


# --------------------------------------------------------------------------------------------
# Memory-lean log-probs from hidden states and the unembedding.
# --------------------------------------------------------------------------------------------


def _chunk_logits(h, w, v0, vsize):
    """fp32 logits of rows `h [n, D]` against vocab columns `[v0, v0 + vsize)` of `w [D, V]`."""
    w_c = jax.lax.dynamic_slice_in_dim(w, v0, vsize, axis=1)
    return jnp.dot(h, w_c, preferred_element_type=jnp.float32), w_c


def _rows_forward(h, w, t, vocab_chunk):
    """Logsumexp and target logit of rows `h [n, D]`, scanning the vocabulary in chunks."""
    vocab = w.shape[1]
    n = h.shape[0]

    def body(carry, v0):
        running_max, running_sum, target_logit = carry
        logits, _ = _chunk_logits(h, w, v0, vocab_chunk)
        chunk_max = jnp.max(logits, axis=-1)
        new_max = jnp.maximum(running_max, chunk_max)
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
            jnp.exp(logits - new_max[:, None]), axis=-1
        )
        local = t - v0
        inside = (local >= 0) & (local < vocab_chunk)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, vocab_chunk - 1)[:, None], axis=1)
        target_logit = jnp.where(inside, picked[:, 0], target_logit)
        return (new_max, running_sum, target_logit), None

    init = (
        jnp.full((n,), -jnp.inf, jnp.float32),
        jnp.zeros((n,), jnp.float32),
        jnp.zeros((n,), jnp.float32),
    )
    starts = jnp.arange(0, vocab, vocab_chunk)
    (running_max, running_sum, target_logit), _ = jax.lax.scan(body, init, starts)
    lse = running_max + jnp.log(running_sum)
    return lse, target_logit


def _rows_backward(h, w, t, lse, g, vocab_chunk):
    """Gradients of `sum_i g_i log p(t_i | h_i)` wrt `h [n, D]` and `w [D, V]` for one row chunk."""
    vocab = w.shape[1]

    def body(dh, v0):
        logits, w_c = _chunk_logits(h, w, v0, vocab_chunk)
        probs = jnp.exp(logits - lse[:, None])
        local = t - v0
        onehot = (local[:, None] == jnp.arange(vocab_chunk)[None, :]).astype(jnp.float32)
        dlogits = g[:, None] * (onehot - probs)
        dh = dh + jnp.dot(dlogits, w_c.T.astype(jnp.float32))
        dw_c = jnp.dot(h.T.astype(jnp.float32), dlogits)
        return dh, dw_c

    starts = jnp.arange(0, vocab, vocab_chunk)
    dh, dw_chunks = jax.lax.scan(body, jnp.zeros(h.shape, jnp.float32), starts)
    # dw_chunks: [num_vocab_chunks, D, vocab_chunk] -> [D, V]
    dw = jnp.moveaxis(dw_chunks, 0, 1).reshape(h.shape[1], vocab)
    return dh, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused_logprobs(h, w, t, row_chunk, vocab_chunk):
    logps, _ = _fused_fwd(h, w, t, row_chunk, vocab_chunk)
    return logps


def _fused_fwd(h, w, t, row_chunk, vocab_chunk):
    n, d = h.shape
    hc = h.reshape(n // row_chunk, row_chunk, d)
    tc = t.reshape(n // row_chunk, row_chunk)

    def body(_, xs):
        h_i, t_i = xs
        lse, tgt = _rows_forward(h_i, w, t_i, vocab_chunk)
        return None, (tgt - lse, lse)

    _, (logps, lse) = jax.lax.scan(body, None, (hc, tc))
    return logps.reshape(n), (h, w, t, lse.reshape(n))


def _fused_bwd(row_chunk, vocab_chunk, res, g):
    h, w, t, lse = res
    n, d = h.shape
    chunks = n // row_chunk
    xs = (
        h.reshape(chunks, row_chunk, d),
        t.reshape(chunks, row_chunk),
        lse.reshape(chunks, row_chunk),
        g.astype(jnp.float32).reshape(chunks, row_chunk),
    )

    def body(dw, x):
        h_i, t_i, lse_i, g_i = x
        dh_i, dw_i = _rows_backward(h_i, w, t_i, lse_i, g_i, vocab_chunk)
        return dw + dw_i, dh_i

    dw, dh = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32), xs)
    return dh.reshape(n, d).astype(h.dtype), dw.astype(w.dtype), None


_fused_logprobs.defvjp(_fused_fwd, _fused_bwd)


def chunked_token_logprobs(
    hidden,
    unembedding,
    targets,
    mask=None,
    *,
    seq_chunk: int = 1024,
    vocab_chunk: int | None = None,
):
    """Per-token log-probs from hidden states, never materialising `[B, T, V]` (float32).

    .. math:: \\log \\pi(y_t) = h_t^\\top W_{:, y_t} - \\log \\sum_v e^{h_t^\\top W_{:, v}}

    Rows (`B * T` positions) are processed `seq_chunk` at a time and, within a chunk, the vocabulary
    `vocab_chunk` columns at a time with an online logsumexp. Only one `[seq_chunk, vocab_chunk]`
    block of fp32 logits is alive at once. A custom VJP recomputes the logits block by block in the
    backward pass (one extra matmul), so activation memory is `O(B T)` rather than `O(B T V)`.
    Matmuls accumulate in float32 (`preferred_element_type`) whatever the input dtype.

    Values and gradients match `token_logprobs(hidden @ unembedding, targets, mask)` to float32
    rounding.

    Args:
      hidden: `[B, T, D]` final hidden states (after the final norm), aligned with `targets`.
      unembedding: `[D, V]` output projection (the transposed token embedding for tied models).
      targets: `[B, T]` integer token ids; values outside `[0, V)` are allowed where `mask` is 0.
      mask: optional `[B, T]` mask; masked positions return 0 and get no gradient.
      seq_chunk: number of positions per row chunk (rows are zero-padded up to a multiple).
      vocab_chunk: vocabulary columns per block; must divide `V`. None uses the whole vocabulary.

    Returns:
      `[B, T]` float32 per-token log-probs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> h = jax.random.normal(jax.random.key(0), (2, 3, 4))
      >>> w = jax.random.normal(jax.random.key(1), (4, 6))
      >>> y = jnp.array([[0, 1, 2], [3, 4, 5]])
      >>> a = chunked_token_logprobs(h, w, y, seq_chunk=4, vocab_chunk=3)
      >>> b = token_logprobs(h @ w, y)
      >>> print(bool(jnp.allclose(a, b, atol=1e-5)))
      True
    """
    check_rank(hidden, "hidden", 3, fn="chunked_token_logprobs")
    check_rank(unembedding, "unembedding", 2, fn="chunked_token_logprobs")
    b, t, d = hidden.shape
    if unembedding.shape[0] != d:
        raise ValueError(
            f"chunked_token_logprobs: `unembedding` must have shape [D={d}, V], got "
            f"{tuple(unembedding.shape)} (D must match `hidden` {tuple(hidden.shape)})."
        )
    _check_targets("chunked_token_logprobs", targets, (b, t))
    vocab = unembedding.shape[1]
    vocab_chunk = vocab if vocab_chunk is None else int(vocab_chunk)
    if vocab_chunk <= 0 or vocab % vocab_chunk:
        raise ValueError(
            f"chunked_token_logprobs: `vocab_chunk` must be a positive divisor of V={vocab}, "
            f"got {vocab_chunk}."
        )
    if seq_chunk <= 0:
        raise ValueError(f"chunked_token_logprobs: `seq_chunk` must be positive, got {seq_chunk}.")
    n = b * t
    row_chunk = min(int(seq_chunk), n)
    padded = -(-n // row_chunk) * row_chunk
    h2 = hidden.reshape(n, d)
    t2 = jnp.clip(jnp.asarray(targets).reshape(n).astype(jnp.int32), 0, vocab - 1)
    if padded != n:
        h2 = jnp.concatenate([h2, jnp.zeros((padded - n, d), h2.dtype)], axis=0)
        t2 = jnp.concatenate([t2, jnp.zeros((padded - n,), jnp.int32)], axis=0)
    logps = _fused_logprobs(h2, unembedding, t2, row_chunk, vocab_chunk)[:n].reshape(b, t)
    if mask is None:
        return logps
    check_same_shape({"targets": targets, "mask": mask}, "targets", fn="chunked_token_logprobs")
    return jnp.where(jnp.asarray(mask) != 0, logps, 0.0)
