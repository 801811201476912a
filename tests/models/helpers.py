"""Shared helpers for model tests: models with random weights large enough to give peaked logits,
built without compiling anything (abstract init + numpy draws)."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpref.models import Transformer


def randomize(model, seed: int = 0, scale: float = 0.3):
    """Returns `model` (concrete or abstract) with every parameter redrawn with numpy: kernels and
    embeddings N(0, scale^2), biases N(0, 0.1^2), norm scales 1 + N(0, 0.1^2). Initial weights
    (std 0.02, zero biases, unit norms) would make logits nearly uniform and hide layout mistakes
    in biases and norms."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(model)
    flat = []
    for path, var in nnx.to_flat_state(state):
        name = "/".join(map(str, path))
        value = var.get_value()
        noise = rng.standard_normal(value.shape).astype(np.float32)
        if "norm" in name and name.endswith("scale"):
            new = 1.0 + 0.1 * noise
        elif name.endswith("bias"):
            new = 0.1 * noise
        else:
            new = scale * noise
        flat.append((path, var.replace(jnp.asarray(new, dtype=value.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def random_model(config, seed: int = 0, scale: float = 0.3, cls=Transformer):
    """A `cls(config)` with `randomize` weights, created without running its initialisers."""
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    return randomize(abstract, seed, scale)
