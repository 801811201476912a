"""Flax NNX language models (GPT-2 and Llama families), scalar heads and Hugging Face import.

Every parameter carries logical axis names (`jaxpref.parallel` maps them to a device mesh).
Models are `nnx.Module`s; cross a `jax.jit` boundary with `nnx.split` / `nnx.merge` (or pass the
module itself, which is a pytree).
"""

from jaxpref.models._config import *  # noqa: F403
from jaxpref.models._heads import *  # noqa: F403
from jaxpref.models._hf import *  # noqa: F403
from jaxpref.models._layers import *  # noqa: F403
from jaxpref.models._transformer import *  # noqa: F403
