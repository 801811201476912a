"""The decoder-only language model (GPT-2 and Llama families) and its key/value cache."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpref._checks import check_rank, check_same_shape
from jaxpref.models._config import ModelConfig
from jaxpref.models._layers import Block, make_norm, normal_param

__all__ = ["KVCache", "Transformer", "causal_attention_mask", "default_positions"]

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _run_block(block, x, positions, mask, kv):
    return block(x, positions, mask, kv)


class KVCache(NamedTuple):
    """Preallocated keys and values of every layer, for incremental decoding.

    Attributes:
      k: per-layer `[B, S, K, H]` keys (rotary positions already applied).
      v: per-layer `[B, S, K, H]` values.
      mask: `[B, S]` bool, True at slots holding a real (non-padding) token.
      index: `[]` int32, the next slot to write.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array


def default_positions(attention_mask=None, segment_ids=None, *, length: int | None = None):
    """Integer positions implied by a padding mask or by packed segments.

    .. math:: p_t = \\max\\big(\\textstyle\\sum_{s \\le t} m_s - 1,\\, 0\\big)

    With `segment_ids`, positions restart at 0 at every change of segment id. With only a padding
    mask, padding does not advance the position, so left- and right-padded rows give their valid
    tokens the positions `0, 1, ...`. With neither, positions are `0 .. length - 1`.

    Args:
      attention_mask: optional `[B, T]` mask (1 = real token).
      segment_ids: optional `[B, T]` integer segment ids of packed rows.
      length: `T`, used only when both arrays are None.

    Returns:
      `[B, T]` int32 positions (`[1, T]` when both arrays are None).

    Example:
      >>> import jax.numpy as jnp
      >>> print(default_positions(jnp.array([[0, 0, 1, 1, 1]])))
      [[0 0 0 1 2]]
      >>> print(default_positions(segment_ids=jnp.array([[1, 1, 2, 2, 2, 0]])))
      [[0 1 0 1 2 0]]
    """
    if segment_ids is not None:
        seg = jnp.asarray(segment_ids)
        idx = jnp.broadcast_to(jnp.arange(seg.shape[1], dtype=jnp.int32)[None, :], seg.shape)
        starts = jnp.concatenate(
            [jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1
        )
        first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
        return idx - first
    if attention_mask is not None:
        m = jnp.asarray(attention_mask).astype(jnp.int32)
        return jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0)
    if length is None:
        raise ValueError("default_positions: give `attention_mask`, `segment_ids` or `length`.")
    return jnp.arange(length, dtype=jnp.int32)[None, :]


def causal_attention_mask(
    q_slots: jax.Array,
    k_slots: jax.Array,
    key_valid: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    *,
    sliding_window: int | None = None,
) -> jax.Array:
    """Boolean causal attention mask from slot indices, key validity and packed segments.

    .. math:: M_{b,t,s} = [k_s \\le q_t]\\,[q_t - k_s < w]\\,\\mathrm{valid}_{b,s}\\,
       [\\mathrm{seg}_{b,t} = \\mathrm{seg}_{b,s}]

    Args:
      q_slots: `[T]` integer slot (sequence index) of each query.
      k_slots: `[S]` integer slot of each key.
      key_valid: optional `[B, S]` mask of real keys (1 = real).
      segment_ids: optional `[B, T]` segment ids (requires `T == S`: no cache).
      sliding_window: optional window `w`.

    Returns:
      `[B, T, S]` bool mask (`B = 1` when neither `key_valid` nor `segment_ids` is given).

    Example:
      >>> import jax.numpy as jnp
      >>> m = causal_attention_mask(jnp.arange(3), jnp.arange(3), jnp.array([[1, 1, 0]]))
      >>> print(m.astype(int)[0])
      [[1 0 0]
       [1 1 0]
       [1 1 0]]
    """
    m = k_slots[None, :] <= q_slots[:, None]
    if sliding_window is not None:
        m = m & (q_slots[:, None] - k_slots[None, :] < sliding_window)
    m = m[None]
    if key_valid is not None:
        m = m & jnp.asarray(key_valid).astype(bool)[:, None, :]
    if segment_ids is not None:
        seg = jnp.asarray(segment_ids)
        m = m & (seg[:, :, None] == seg[:, None, :])
    return m


class Transformer(nnx.Module):
    """Decoder-only language model of the GPT-2 or Llama family (see `ModelConfig`).

    .. math:: \\text{logits} = \\mathrm{norm}\\big(\\mathrm{block}_L \\circ \\cdots \\circ
       \\mathrm{block}_1(E[x] + P[p])\\big)\\, W_U

    `model(input_ids, attention_mask)` returns float32 logits `[B, T, V]`; `logits[:, t]`
    predicts token `t + 1`. Padding (any side) is handled by the mask; positions default to
    `default_positions(attention_mask)`, so padding does not shift them. Packed rows pass
    `segment_ids` (attention stays inside each segment; positions restart per segment).
    There is no dropout.

    Args:
      config: architecture and dtypes.
      rngs: random streams (`params`).
      with_unembedding: create the untied output matrix (set False for trunks that only feed a
        scalar head; ignored when embeddings are tied).

    References:
      Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2, 2019);
      Touvron et al., "LLaMA", arXiv 2302.13971; Ainslie et al., "GQA", arXiv 2305.13245.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import preset
      >>> model = Transformer(preset("llama-tiny"), rngs=nnx.Rngs(0))
      >>> ids, mask = jnp.array([[5, 6, 7, 0]]), jnp.array([[1, 1, 1, 0]])
      >>> logits = jax.jit(lambda m, x, a: m(x, a))(model, ids, mask)
      >>> print(logits.shape, logits.dtype)
      (1, 4, 96) float32
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, with_unembedding: bool = True):
        c = config
        self.config = c
        pd = c.param_jnp_dtype
        self.embed = normal_param(rngs, (c.vocab_size, c.d_model), ("vocab", "embed"), pd)
        self.pos_embed = (
            normal_param(rngs, (c.max_seq_len, c.d_model), ("seq", "embed"), pd)
            if c.family == "gpt2"
            else None
        )
        self.layers = nnx.List([Block(c, rngs=rngs) for _ in range(c.num_layers)])
        self.final_norm = make_norm(c)
        self.lm_head = (
            normal_param(rngs, (c.d_model, c.vocab_size), ("embed", "vocab"), pd)
            if with_unembedding and not c.tie_embeddings
            else None
        )

    # ----------------------------------------------------------------------------------------
    def _embed(self, input_ids, positions):
        dt = self.config.compute_jnp_dtype
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(dt)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(dt)
        return x

    def _blocks(self, x, positions, mask, cache: KVCache | None):
        policy = self.config.remat
        run = _run_block
        if policy != "none":
            run = jax.checkpoint(_run_block, policy=_REMAT_POLICIES[policy])
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i], cache.index)
            x, layer_kv = run(block, x, positions, mask, kv)
            if layer_kv is not None:
                new_k.append(layer_kv[0])
                new_v.append(layer_kv[1])
        return self.final_norm(x), (tuple(new_k), tuple(new_v))

    def _check(self, fn, input_ids, attention_mask, positions, segment_ids):
        check_rank(input_ids, "input_ids", 2, fn=fn)
        check_same_shape(
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "positions": positions,
                "segment_ids": segment_ids,
            },
            "input_ids",
            fn=fn,
        )

    def unembedding(self) -> jax.Array:
        """The unembedding matrix `W_U`, `[D, V]` in the compute dtype."""
        if self.lm_head is None and not self.config.tie_embeddings:
            raise ValueError("Transformer: built with `with_unembedding=False`; no unembedding.")
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        return w.astype(self.config.compute_jnp_dtype)

    def hidden_states(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None):
        """Final (normalised) hidden states `[B, T, D]` in the compute dtype.

        Args:
          input_ids: `[B, T]` int token ids.
          attention_mask: optional `[B, T]` mask, 1 at real tokens.
          positions: optional `[B, T]` positions (default: `default_positions`).
          segment_ids: optional `[B, T]` ids of packed segments.

        Returns:
          `[B, T, D]` hidden states.
        """
        fn = "Transformer.hidden_states"
        self._check(fn, input_ids, attention_mask, positions, segment_ids)
        t = input_ids.shape[1]
        if positions is None:
            positions = default_positions(attention_mask, segment_ids, length=t)
            positions = jnp.broadcast_to(positions, input_ids.shape)
        slots = jnp.arange(t, dtype=jnp.int32)
        mask = causal_attention_mask(
            slots, slots, attention_mask, segment_ids, sliding_window=self.config.sliding_window
        )
        x = self._embed(input_ids, positions)
        hidden, _ = self._blocks(x, positions, mask, None)
        return hidden

    def hidden_and_unembedding(
        self, input_ids, attention_mask=None, *, positions=None, segment_ids=None
    ) -> tuple[jax.Array, jax.Array]:
        """Final hidden states and the unembedding, without computing logits.

        `logits = hidden @ unembedding`; memory-lean log-probs (`jaxpref.logprobs.
        chunked_token_logprobs`) take these two instead of the `[B, T, V]` logits.

        Args:
          input_ids: `[B, T]` int token ids.
          attention_mask: optional `[B, T]` mask, 1 at real tokens.
          positions: optional `[B, T]` positions (default: `default_positions`).
          segment_ids: optional `[B, T]` ids of packed segments.

        Returns:
          `([B, T, D] hidden states, [D, V] unembedding)`, both in the compute dtype.
        """
        hidden = self.hidden_states(
            input_ids, attention_mask, positions=positions, segment_ids=segment_ids
        )
        return hidden, self.unembedding()

    def __call__(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None):
        """Float32 next-token logits.

        Args:
          input_ids: `[B, T]` int token ids.
          attention_mask: optional `[B, T]` mask, 1 at real tokens (padding on any side).
          positions: optional `[B, T]` positions (default: `default_positions`).
          segment_ids: optional `[B, T]` ids of packed segments.

        Returns:
          `[B, T, V]` float32 logits.
        """
        hidden, w = self.hidden_and_unembedding(
            input_ids, attention_mask, positions=positions, segment_ids=segment_ids
        )
        return jnp.einsum("btd,dv->btv", hidden, w, preferred_element_type=jnp.float32)

    def init_cache(self, batch_size: int, max_length: int, *, dtype=None) -> KVCache:
        """An empty `KVCache` with `max_length` slots per row (compute dtype by default).

        Args:
          batch_size: number of rows `B`.
          max_length: number of cache slots `S` per row (prompt plus generated tokens).
          dtype: dtype of the key and value caches (default: the compute dtype).

        Returns:
          A `KVCache` with per-layer zero keys and values `[B, S, K, H]`, an all-False `[B, S]`
          slot mask and write index 0.
        """
        c = self.config
        dtype = c.compute_jnp_dtype if dtype is None else dtype
        shape = (batch_size, max_length, c.kv_heads, c.head_size)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(c.num_layers))
        return KVCache(
            k=zeros,
            v=tuple(jnp.zeros(shape, dtype) for _ in range(c.num_layers)),
            mask=jnp.zeros((batch_size, max_length), bool),
            index=jnp.zeros((), jnp.int32),
        )

    def forward_cached(
        self, input_ids, cache: KVCache, *, positions=None, attention_mask=None, last_only=False
    ) -> tuple[jax.Array, KVCache]:
        """Runs `T` new tokens against the cache, writes them at slots `index .. index + T - 1`.

        The new tokens attend to every valid cached slot before them and causally to each other.

        Args:
          input_ids: `[B, T]` new token ids.
          cache: the cache (`init_cache`), `S` slots.
          positions: optional `[B, T]` positions; default: continue each row's count of valid
            tokens, which matches `default_positions` of the whole sequence.
          attention_mask: optional `[B, T]` mask of the new tokens (1 = real).
          last_only: return the logits of the last new token only, `[B, 1, V]` (a prefill
            needs no more, and the `[B, T, V]` logits of a long prompt can be large).

        Returns:
          `([B, T, V] float32 logits, updated cache)`.
        """
        fn = "Transformer.forward_cached"
        self._check(fn, input_ids, attention_mask, positions, None)
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        new_valid = jnp.asarray(attention_mask).astype(bool)
        if positions is None:
            seen = jnp.sum(cache.mask, axis=1, dtype=jnp.int32)[:, None]
            positions = seen + jnp.maximum(jnp.cumsum(new_valid.astype(jnp.int32), 1) - 1, 0)
        key_valid = jax.lax.dynamic_update_slice(cache.mask, new_valid, (0, cache.index))
        q_slots = cache.index + jnp.arange(t, dtype=jnp.int32)
        k_slots = jnp.arange(cache.mask.shape[1], dtype=jnp.int32)
        mask = causal_attention_mask(
            q_slots, k_slots, key_valid, sliding_window=self.config.sliding_window
        )
        x = self._embed(input_ids, positions)
        hidden, (ks, vs) = self._blocks(x, positions, mask, cache)
        if last_only:
            hidden = hidden[:, -1:]
        logits = jnp.einsum(
            "btd,dv->btv", hidden, self.unembedding(), preferred_element_type=jnp.float32
        )
        return logits, KVCache(k=ks, v=vs, mask=key_valid, index=cache.index + t)
