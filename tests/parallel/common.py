"""Pieces shared by the sharding tests and the multi-process worker: data and a train-step loss."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpref.models import Transformer, preset


def config(name="llama-tiny"):
    return preset(name)


def make_model(name="llama-tiny"):
    return lambda rngs: Transformer(config(name), rngs=rngs)


def data(batch=8, length=8, vocab=96):
    """A fixed batch: random ids and a right-padding mask with row lengths 3..8."""
    rng = np.random.RandomState(0)
    ids = rng.randint(1, vocab, (batch, length)).astype(np.int32)
    lengths = 3 + np.arange(batch) % (length - 2)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return ids, mask


def loss_fn(graphdef, state, ids, mask):
    """Mean next-token cross-entropy over real target tokens."""
    model = nnx.merge(graphdef, state)
    logits = model(ids, mask)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    m = mask[:, 1:].astype(jnp.float32)
    return -jnp.sum(picked * m) / jnp.sum(m)
