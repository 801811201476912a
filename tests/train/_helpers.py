"""Tiny models and batches shared by the training-engine tests and the subprocess run script."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpref.models import Transformer, preset

VOCAB = 64
LENGTH = 12
PROMPT = 4


def tiny_config(**overrides):
    """gpt2-tiny shape (2 layers, width 32, 4 heads) with a 64-token vocabulary."""
    return preset("gpt2-tiny", vocab_size=VOCAB, max_seq_len=16, **overrides)


@functools.cache
def _initial_state(cls, seed: int):
    graphdef, state = nnx.split(cls(tiny_config(), rngs=nnx.Rngs(seed)))
    return graphdef, jax.tree.map(np.asarray, state)


def tiny_model(cls=Transformer, seed: int = 0):
    """A fresh `cls(tiny_config())` with the weights of seed `seed` (initialised once per process,
    then copied into new buffers, so donating one model's state never touches another's)."""
    graphdef, state = _initial_state(cls, seed)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, state))


def tiny_transformer(seed: int = 0) -> Transformer:
    return tiny_model(Transformer, seed)


class Bigram(nnx.Module):
    """Logits of the next token depend on the current token only: one `[V, V]` table."""

    def __init__(self, vocab: int = VOCAB, *, rngs: nnx.Rngs):
        self.table = nnx.Param(0.1 * jax.random.normal(rngs.params(), (vocab, vocab)))

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        del attention_mask, kwargs
        return jnp.take(self.table[...], input_ids, axis=0)


def pair_batch(seed: int, num_pairs: int = 4, *, length: int = LENGTH, fillers=()) -> dict:
    """A `[2B, T]` preference batch: shared random prompt, random completions of random length.

    Chosen completions use even token ids and rejected ones odd ids, so preferences are
    learnable. Rows are right-padded; `loss_mask` marks completion tokens; pairs listed in
    `fillers` get `pair_mask` 0.
    """
    rng = np.random.RandomState(seed)
    rows = 2 * num_pairs
    ids = np.zeros((rows, length), np.int32)
    attention = np.zeros((rows, length), np.int32)
    loss_mask = np.zeros((rows, length), np.int32)
    for i in range(num_pairs):
        prompt = rng.randint(1, VOCAB, PROMPT)
        for half in (0, 1):
            row = half * num_pairs + i
            n = rng.randint(2, length - PROMPT + 1)
            comp = 2 * rng.randint(1, VOCAB // 2, n) - half
            ids[row, :PROMPT] = prompt
            ids[row, PROMPT : PROMPT + n] = comp
            attention[row, : PROMPT + n] = 1
            loss_mask[row, PROMPT : PROMPT + n] = 1
    pair_mask = np.ones(num_pairs, np.int32)
    pair_mask[list(fillers)] = 0
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "loss_mask": loss_mask,
        "pair_mask": pair_mask,
    }


def sft_batch(seed: int, rows: int = 4, *, length: int = LENGTH) -> dict:
    """Rows of an arithmetic token pattern (learnable) with random lengths; loss on every token."""
    rng = np.random.RandomState(seed)
    ids = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), np.int32)
    for r in range(rows):
        n = rng.randint(4, length + 1)
        start = rng.randint(1, VOCAB)
        ids[r, :n] = (start + 3 * np.arange(n)) % (VOCAB - 1) + 1
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": mask}


def state_bytes(state) -> bytes:
    """Every array of a TrainState (PRNG keys by key data) as one byte string."""

    def raw(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(jax.device_get(x)).tobytes()

    return b"".join(raw(x) for x in jax.tree.leaves(state))
