"""Batched generation with a preallocated KV cache: greedy, sampling, beam search.

Every function is a `jax.jit`-compiled program over the model (an `nnx.Module`, passed as a
pytree): the prompt is processed once (prefill), then a `lax.while_loop` appends one token per
iteration, reading and writing a `KVCache` of fixed size `T + max_new_tokens`, so nothing is
recompiled per step or per call with equal shapes. The loop stops early once every row has
emitted `eos_id`.

Prompts may be padded on either side (`prompt_mask`, 1 = real token): rows are first
left-aligned, so that all rows write the same cache slot at each step; positions count real
tokens only, so a prompt's padding never changes what is generated. Every prompt needs at least
one real token.

Outputs carry the per-token log-probabilities of the generating policy,
`log softmax(logits)[y_t]` of the model itself (what PPO / RTO / credit assignment consume; the
same values a teacher-forced forward pass over `sequences` gives), and, for sampling, the
log-probability under the tempered / truncated distribution actually sampled from.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref._checks import check_rank, check_same_shape
from jaxpref.models import default_positions

__all__ = [
    "BeamSearchOutput",
    "Generation",
    "beam_search",
    "greedy",
    "left_align",
    "process_logits",
    "sample",
]

_NEG = -1e30  # stands for log(0) where arithmetic on it must stay finite


class Generation(NamedTuple):
    """Result of `greedy` / `sample`.

    Attributes:
      tokens: `[B, N]` int32 generated tokens; `pad_id` after the row's EOS.
      logprobs: `[B, N]` float32 `log pi(y_t | x, y_<t)` of the model (untempered); 0 at padding.
      sampling_logprobs: `[B, N]` float32 log-prob under the distribution sampled from (after
        temperature, top-k, top-p; 0 for greedy, whose choice is deterministic); 0 at padding.
      mask: `[B, N]` bool, True for generated tokens up to and including EOS.
      sequences: `[B, T + N]` left-aligned prompt followed by the generated tokens.
      sequence_mask: `[B, T + N]` bool mask of real tokens in `sequences`.
    """

    tokens: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    mask: jax.Array
    sequences: jax.Array
    sequence_mask: jax.Array


class BeamSearchOutput(NamedTuple):
    """Result of `beam_search`, best beam first.

    Attributes:
      tokens: `[B, K, N]` int32 tokens of each finished hypothesis; `pad_id` after its EOS.
      logprobs: `[B, K, N]` float32 per-token log-probs of the model; 0 at padding.
      mask: `[B, K, N]` bool, True for tokens up to and including EOS.
      scores: `[B, K]` float32 `sum(logprobs) / length ** length_penalty`.
    """

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    scores: jax.Array


def left_align(ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Moves each row's real tokens to the end, keeping their order (padding goes first).

    Args:
      ids: `[B, T]` token ids.
      mask: `[B, T]` mask (1 = real token), padding anywhere.

    Returns:
      `(ids, mask)` left-padded, mask as bool.

    Example:
      >>> import jax.numpy as jnp
      >>> ids, m = left_align(jnp.array([[5, 6, 0, 0]]), jnp.array([[1, 1, 0, 0]]))
      >>> print(ids, m.astype(int))
      [[0 0 5 6]] [[0 0 1 1]]
    """
    m = jnp.asarray(mask).astype(bool)
    order = jnp.argsort(m.astype(jnp.int32), axis=1, stable=True)
    return jnp.take_along_axis(ids, order, axis=1), jnp.take_along_axis(m, order, axis=1)


def process_logits(
    logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Tempered, top-k- and nucleus-truncated logits (removed tokens get -inf).

    .. math:: \\tilde\\ell = \\ell / \\tau;\\quad \\text{keep the } k \\text{ largest};\\quad
       \\text{keep the smallest prefix (by probability) with mass} \\ge p

    Args:
      logits: `[..., V]` logits.
      temperature: `tau > 0`.
      top_k: keep the `k` most likely tokens (0: all).
      top_p: keep the most likely tokens whose cumulative probability reaches `p` (1: all).

    Returns:
      `[..., V]` float32 processed logits.

    References:
      Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv 1904.09751.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
      >>> print(jnp.round(jax.nn.softmax(process_logits(x, top_p=0.7)), 4))
      [0.625 0.375 0.    0.   ]
    """
    if temperature <= 0:
        raise ValueError(f"process_logits: `temperature` must be > 0, got {temperature} "
                         "(use `greedy` for argmax decoding).")  # fmt: skip
    x = logits.astype(jnp.float32) / temperature
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if top_p < 1.0:
        sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        keep = before < top_p
        threshold = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < threshold, -jnp.inf, x)
    return x


def _pick(logp: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def _last_logits(model, seq, seq_mask, index):
    """Float32 logits at one position, recomputing the whole sequence (no cache)."""
    hidden = model.hidden_states(seq, seq_mask)
    h = jax.lax.dynamic_index_in_dim(hidden, index, axis=1, keepdims=False)
    return jnp.einsum("bd,dv->bv", h, model.unembedding(), preferred_element_type=jnp.float32)


class _Carry(NamedTuple):
    step: jax.Array
    logits: jax.Array  # [B, V] logits of the next token
    state: tuple  # KVCache, or (sequences, sequence_mask) without cache
    tokens: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    done: jax.Array


def _check_prompt(fn, prompt_ids, prompt_mask):
    check_rank(prompt_ids, "prompt_ids", 2, fn=fn)
    check_same_shape({"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}, "prompt_ids", fn=fn)
    if prompt_mask is None:
        prompt_mask = jnp.ones(prompt_ids.shape, bool)
    return left_align(prompt_ids, prompt_mask)


def _generate(model, prompt_ids, prompt_mask, select, *, max_new_tokens, eos_id, pad_id,
              use_cache, fn):  # fmt: skip
    ids, pmask = _check_prompt(fn, prompt_ids, prompt_mask)
    b, t = ids.shape
    n = max_new_tokens
    lengths = jnp.sum(pmask, axis=1, dtype=jnp.int32)
    seq = jnp.concatenate([ids, jnp.full((b, n), pad_id, ids.dtype)], axis=1)
    seq_mask = jnp.concatenate([pmask, jnp.zeros((b, n), bool)], axis=1)
    if use_cache:
        cache = model.init_cache(b, t + n)
        logits, cache = model.forward_cached(
            ids, cache, positions=default_positions(pmask), attention_mask=pmask, last_only=True
        )
        state = cache
    else:
        logits = _last_logits(model, seq, seq_mask, t - 1)[:, None]
        state = (seq, seq_mask)
    zeros = jnp.zeros((b, n), jnp.float32)
    carry = _Carry(
        step=jnp.zeros((), jnp.int32),
        logits=logits[:, -1],
        state=state,
        tokens=jnp.full((b, n), pad_id, jnp.int32),
        logprobs=zeros,
        sampling_logprobs=zeros,
        done=jnp.zeros((b,), bool),
    )

    def cond(c: _Carry):
        return (c.step < n) & ~jnp.all(c.done)

    def body(c: _Carry):
        i = c.step
        tok, lp, slp = select(c.logits, i)
        live = ~c.done
        tok = jnp.where(live, tok, pad_id).astype(jnp.int32)
        lp = jnp.where(live, lp, 0.0)
        slp = jnp.where(live, slp, 0.0)
        done = c.done if eos_id is None else c.done | (live & (tok == eos_id))
        put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=i, axis=1)
        tokens = put(c.tokens, tok[:, None])
        logprobs = put(c.logprobs, lp[:, None])
        sampling = put(c.sampling_logprobs, slp[:, None])
        if use_cache:
            logits, state = model.forward_cached(
                tok[:, None],
                c.state,
                positions=(lengths + i)[:, None],
                attention_mask=live[:, None],
            )
            logits = logits[:, 0]
        else:
            seq, smask = c.state
            seq = jax.lax.dynamic_update_slice_in_dim(seq, tok[:, None].astype(seq.dtype), t + i, 1)
            smask = jax.lax.dynamic_update_slice_in_dim(smask, live[:, None], t + i, 1)
            logits = _last_logits(model, seq, smask, t + i)
            state = (seq, smask)
        return _Carry(i + 1, logits, state, tokens, logprobs, sampling, done)

    out = jax.lax.while_loop(cond, body, carry)
    valid = jnp.arange(n)[None, :] < out.step
    # A row's tokens are real up to and including its EOS; the loop writes pad afterwards.
    if eos_id is None:
        mask = jnp.broadcast_to(valid, (b, n))
    else:
        is_eos = out.tokens == eos_id
        eos_before = jnp.cumsum(is_eos.astype(jnp.int32), axis=1) - is_eos.astype(jnp.int32)
        mask = valid & (eos_before == 0)
    tokens = jnp.where(mask, out.tokens, pad_id)
    return Generation(
        tokens=tokens,
        logprobs=jnp.where(mask, out.logprobs, 0.0),
        sampling_logprobs=jnp.where(mask, out.sampling_logprobs, 0.0),
        mask=mask,
        sequences=jnp.concatenate([ids, tokens.astype(ids.dtype)], axis=1),
        sequence_mask=jnp.concatenate([pmask, mask], axis=1),
    )


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "eos_id", "pad_id", "use_cache"))
def greedy(
    model,
    prompt_ids: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    prompt_mask: jax.Array | None = None,
) -> Generation:
    """Greedy decoding: `y_t = argmax_v pi(v | x, y_<t)`, batched, with a KV cache.

    .. math:: y_t = \\arg\\max_v \\log\\pi_\\theta(v \\mid x, y_{<t})

    Args:
      model: a `jaxpref.models.Transformer` (any module with `init_cache`, `forward_cached`,
        `hidden_states` and `unembedding`).
      prompt_ids: `[B, T]` int prompt tokens, padded on either side.
      max_new_tokens: `N`, number of tokens to generate at most.
      eos_id: end-of-sequence id; a row stops after emitting it (None: never stop early).
      pad_id: id written after a row's EOS.
      use_cache: False recomputes the whole prefix every step (a reference; same results).
      prompt_mask: `[B, T]` mask of real prompt tokens (default: all real).

    Returns:
      `Generation` (tokens, log-probs, masks, full sequences).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> model = Transformer(preset("llama-tiny"), rngs=nnx.Rngs(0))
      >>> out = greedy(model, jnp.array([[3, 4, 5]]), max_new_tokens=4)
      >>> print(out.tokens.shape, out.mask.all().item())
      (1, 4) True
    """

    def select(logits, i):
        del i
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        tok = jnp.argmax(logits, axis=-1)
        return tok, _pick(logp, tok), jnp.zeros(tok.shape, jnp.float32)

    return _generate(
        model, prompt_ids, prompt_mask, select, max_new_tokens=max_new_tokens, eos_id=eos_id,
        pad_id=pad_id, use_cache=use_cache, fn="greedy",
    )  # fmt: skip


@functools.partial(
    jax.jit,
    static_argnames=(
        "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id", "use_cache"
    ),
)  # fmt: skip
def sample(
    model,
    prompt_ids: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    prompt_mask: jax.Array | None = None,
) -> Generation:
    """Ancestral sampling with temperature, top-k and top-p (nucleus) truncation.

    .. math:: y_t \\sim \\mathrm{softmax}\\big(\\mathrm{process}(\\ell_t)\\big)

    Step `t` draws with `jax.random.fold_in(key, t)`, so results depend only on `key`.

    Args:
      model: a `jaxpref.models.Transformer`.
      prompt_ids: `[B, T]` int prompt tokens, padded on either side.
      key: PRNG key.
      max_new_tokens: `N`.
      temperature: softmax temperature (> 0).
      top_k: keep only the `k` most likely tokens (0: no limit).
      top_p: nucleus mass (1: no truncation).
      eos_id: end-of-sequence id (None: never stop early).
      pad_id: id written after a row's EOS.
      use_cache: False recomputes the whole prefix every step.
      prompt_mask: `[B, T]` mask of real prompt tokens (default: all real).

    Returns:
      `Generation`; `logprobs` are the model's own, `sampling_logprobs` those of the processed
      distribution.

    References:
      Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv 1904.09751.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> model = Transformer(preset("gpt2-tiny"), rngs=nnx.Rngs(0))
      >>> out = sample(model, jnp.array([[3, 4, 5]]), jax.random.key(0), max_new_tokens=4,
      ...              temperature=0.7, top_p=0.9)
      >>> print(out.tokens.shape, bool((out.sampling_logprobs <= 0).all()))
      (1, 4) True
    """

    def select(logits, i):
        processed = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        tok = jax.random.categorical(jax.random.fold_in(key, i), processed, axis=-1)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        slogp = jax.nn.log_softmax(processed, axis=-1)
        return tok, _pick(logp, tok), _pick(slogp, tok)

    return _generate(
        model, prompt_ids, prompt_mask, select, max_new_tokens=max_new_tokens, eos_id=eos_id,
        pad_id=pad_id, use_cache=use_cache, fn="sample",
    )  # fmt: skip


class _BeamCarry(NamedTuple):
    step: jax.Array
    logp: jax.Array  # [B, K, V] next-token log-probs of each alive beam
    cache: object
    alive_tokens: jax.Array  # [B, K, N]
    alive_token_logp: jax.Array  # [B, K, N]
    alive_logp: jax.Array  # [B, K] summed log-probs
    fin_tokens: jax.Array  # [B, K, N]
    fin_token_logp: jax.Array  # [B, K, N]
    fin_scores: jax.Array  # [B, K]
    fin_lengths: jax.Array  # [B, K]


def _gather_beams(x, idx):
    """`x[b, idx[b, j]]` for `x` of shape `[B, K, ...]` and `idx` `[B, J]`."""
    return jax.vmap(lambda xb, ib: xb[ib])(x, idx)


@functools.partial(jax.jit, static_argnames=("beam_width", "max_new_tokens", "eos_id", "pad_id"))
def beam_search(
    model,
    prompt_ids: jax.Array,
    *,
    beam_width: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: jax.Array | None = None,
) -> BeamSearchOutput:
    """Beam search over the model's log-likelihood with a length penalty and EOS handling.

    .. math:: \\mathrm{score}(y) = \\frac{\\sum_t \\log\\pi_\\theta(y_t \\mid x, y_{<t})}
       {|y|^{\\alpha}}

    `|y|` counts generated tokens including EOS. Each step expands the `K` alive beams, keeps the
    `2K` best continuations, moves those ending in EOS to the finished set (best `K` by score)
    and the `K` best others stay alive; at `max_new_tokens` the alive beams finish too. A row
    stops early only when no alive beam can still beat its `K`-th finished score, so the result
    equals the exhaustive `K`-beam search. Width 1 with `length_penalty=0` is greedy decoding.

    Args:
      model: a `jaxpref.models.Transformer`.
      prompt_ids: `[B, T]` int prompt tokens, padded on either side.
      beam_width: `K`.
      max_new_tokens: `N`.
      length_penalty: `alpha` (0: raw log-likelihood; > 0 favours longer outputs); traced, so
        changing it does not recompile.
      eos_id: end-of-sequence id (None: every hypothesis has length `N`).
      pad_id: id written after EOS.
      prompt_mask: `[B, T]` mask of real prompt tokens (default: all real).

    Returns:
      `BeamSearchOutput` with `K` hypotheses per row, best first.

    References:
      Rafailov et al., "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv 2404.12358 (likelihood search on a DPO policy); Wu et al., "Google's Neural Machine
      Translation System", arXiv 1609.08144 (length penalty).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import Transformer, preset
      >>> model = Transformer(preset("llama-tiny"), rngs=nnx.Rngs(0))
      >>> out = beam_search(model, jnp.array([[3, 4, 5]]), beam_width=3, max_new_tokens=4)
      >>> print(out.tokens.shape, bool(out.scores[0, 0] >= out.scores[0, 1]))
      (1, 3, 4) True
    """
    ids, pmask = _check_prompt("beam_search", prompt_ids, prompt_mask)
    b, t = ids.shape
    k, n = beam_width, max_new_tokens
    if k < 1:
        raise ValueError(f"beam_search: `beam_width` must be >= 1, got {k}.")
    lengths = jnp.repeat(jnp.sum(pmask, axis=1, dtype=jnp.int32), k)  # [B*K]
    cache = model.init_cache(b, t + n)
    logits, cache = model.forward_cached(
        ids, cache, positions=default_positions(pmask), attention_mask=pmask, last_only=True
    )
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, cache)
    logp0 = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)
    v = logp0.shape[-1]
    width = min(2 * k, k * v)
    alive_logp = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, _NEG) * jnp.ones((b, 1))

    alpha = jnp.asarray(length_penalty, jnp.float32)

    def penalty(length):
        return jnp.asarray(length, jnp.float32) ** alpha

    carry = _BeamCarry(
        step=jnp.zeros((), jnp.int32),
        logp=jnp.broadcast_to(logp0[:, None, :], (b, k, v)),
        cache=cache,
        alive_tokens=jnp.full((b, k, n), pad_id, jnp.int32),
        alive_token_logp=jnp.zeros((b, k, n), jnp.float32),
        alive_logp=alive_logp,
        fin_tokens=jnp.full((b, k, n), pad_id, jnp.int32),
        fin_token_logp=jnp.zeros((b, k, n), jnp.float32),
        fin_scores=jnp.full((b, k), _NEG, jnp.float32),
        fin_lengths=jnp.zeros((b, k), jnp.int32),
    )

    def cond(c: _BeamCarry):
        # Best final score any alive beam can still reach: its log-prob can only fall, so the
        # bound divides it by the largest penalty among the lengths it can still end at.
        longest = jnp.maximum(penalty(c.step + 1), penalty(n))
        bound = jnp.max(c.alive_logp, axis=1) / longest
        finished = jnp.all(bound <= c.fin_scores[:, -1])
        return (c.step < n) & ~finished

    def body(c: _BeamCarry):
        i = c.step
        cand = (c.alive_logp[:, :, None] + c.logp).reshape(b, k * v)
        top_logp, top_idx = jax.lax.top_k(cand, width)  # [B, W]
        parent, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
        tok_logp = jnp.take_along_axis(c.logp.reshape(b, k * v), top_idx, axis=1)
        put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=i, axis=2)
        cand_tokens = put(_gather_beams(c.alive_tokens, parent), tok[:, :, None])
        cand_token_logp = put(_gather_beams(c.alive_token_logp, parent), tok_logp[:, :, None])
        is_eos = jnp.zeros_like(tok, bool) if eos_id is None else tok == eos_id
        is_eos = is_eos & (top_logp > _NEG / 2)

        # Finished set: the K best of the old finished and the new EOS candidates.
        new_scores = jnp.where(is_eos, top_logp / penalty(i + 1), _NEG)
        all_scores = jnp.concatenate([c.fin_scores, new_scores], axis=1)
        fin_scores, fin_pick = jax.lax.top_k(all_scores, k)
        both = functools.partial(jnp.concatenate, axis=1)
        fin_tokens = _gather_beams(both([c.fin_tokens, cand_tokens]), fin_pick)
        fin_token_logp = _gather_beams(both([c.fin_token_logp, cand_token_logp]), fin_pick)
        new_lengths = jnp.full((b, width), i + 1, jnp.int32)
        fin_lengths = jnp.take_along_axis(both([c.fin_lengths, new_lengths]), fin_pick, axis=1)

        # Alive set: the K best candidates that did not end.
        alive_logp, alive_pick = jax.lax.top_k(jnp.where(is_eos, _NEG, top_logp), k)
        alive_tokens = _gather_beams(cand_tokens, alive_pick)
        alive_token_logp = _gather_beams(cand_token_logp, alive_pick)
        rows = jnp.take_along_axis(parent, alive_pick, axis=1)  # [B, K] parent beam
        flat_rows = (jnp.arange(b)[:, None] * k + rows).reshape(-1)
        cache = c.cache._replace(
            k=tuple(x[flat_rows] for x in c.cache.k),
            v=tuple(x[flat_rows] for x in c.cache.v),
            mask=c.cache.mask[flat_rows],
        )
        next_tok = jnp.take_along_axis(tok, alive_pick, axis=1).reshape(b * k, 1)
        logits, cache = model.forward_cached(
            next_tok, cache, positions=(lengths + i)[:, None], attention_mask=None
        )
        logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1).reshape(b, k, v)
        return _BeamCarry(
            i + 1, logp, cache, alive_tokens, alive_token_logp, alive_logp, fin_tokens,
            fin_token_logp, fin_scores, fin_lengths,
        )  # fmt: skip

    out = jax.lax.while_loop(cond, body, carry)
    # Hypotheses still alive at max length are complete; add them if the loop reached it.
    reached = out.step == n
    alive_scores = jnp.where(
        reached & (out.alive_logp > _NEG / 2), out.alive_logp / penalty(n), _NEG
    )
    scores, pick = jax.lax.top_k(jnp.concatenate([out.fin_scores, alive_scores], axis=1), k)
    tokens = _gather_beams(jnp.concatenate([out.fin_tokens, out.alive_tokens], axis=1), pick)
    token_logp = _gather_beams(
        jnp.concatenate([out.fin_token_logp, out.alive_token_logp], axis=1), pick
    )
    lens = jnp.take_along_axis(
        jnp.concatenate([out.fin_lengths, jnp.full((b, k), n, jnp.int32)], axis=1), pick, axis=1
    )
    mask = jnp.arange(n)[None, None, :] < lens[:, :, None]
    return BeamSearchOutput(
        tokens=jnp.where(mask, tokens, pad_id),
        logprobs=jnp.where(mask, token_logp, 0.0),
        mask=mask,
        scores=scores,
    )
