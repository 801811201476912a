"""Scalar heads on the transformer trunk: reward models and value functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpref._checks import check_rank, check_same_shape
from jaxpref.models._config import ModelConfig
from jaxpref.models._layers import constant_param, normal_param
from jaxpref.models._transformer import Transformer

__all__ = ["ScalarHead", "ScalarHeadModel", "last_valid"]


class ScalarHead(nnx.Module):
    """Linear map from hidden states to one float32 scalar per token.

    .. math:: s_t = h_t^\\top w + b

    Args:
      d_model: width `D` of the hidden states.
      rngs: random streams.
      param_dtype: storage dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> head = ScalarHead(4, rngs=nnx.Rngs(0))
      >>> print(head(jnp.zeros((2, 3, 4))).shape)
      (2, 3)
    """

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, param_dtype="float32"):
        self.kernel = normal_param(rngs, (d_model,), ("embed",), param_dtype)
        self.bias = constant_param((), (), param_dtype, value=0.0)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """`[B, T, D]` hidden states -> `[B, T]` float32 scalars.

        Args:
          hidden: `[B, T, D]` hidden states (any float dtype; the kernel is cast to it and the sum
            is accumulated in float32).

        Returns:
          `[B, T]` float32 scalars, one per token.
        """
        check_rank(hidden, "hidden", 3, fn="ScalarHead")
        w = self.kernel[...].astype(hidden.dtype)
        out = jnp.einsum("btd,d->bt", hidden, w, preferred_element_type=jnp.float32)
        return out + self.bias[...].astype(jnp.float32)


class ScalarHeadModel(nnx.Module):
    """Transformer trunk plus a `ScalarHead`: a reward model or a value function.

    `model(input_ids, attention_mask)` returns one float32 scalar per token, `[B, T]`; a
    sequence-level reward is the value at the last real token (`last_valid`), a value function
    uses every position. The trunk is built without an (untied) unembedding.

    Args:
      config: architecture of the trunk.
      rngs: random streams.
      backbone: optional existing trunk to reuse (its config must equal `config`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import preset
      >>> rm = ScalarHeadModel(preset("llama-tiny"), rngs=nnx.Rngs(0))
      >>> ids, mask = jnp.array([[4, 5, 6, 0]]), jnp.array([[1, 1, 1, 0]])
      >>> print(jax.eval_shape(rm, ids, mask).shape, jax.eval_shape(rm.score, ids, mask).shape)
      (1, 4) (1,)
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, backbone: Transformer | None = None):
        if backbone is None:
            backbone = Transformer(config, rngs=rngs, with_unembedding=False)
        elif backbone.config != config:
            raise ValueError("ScalarHeadModel: `backbone.config` differs from `config`.")
        self.backbone = backbone
        self.head = ScalarHead(config.d_model, rngs=rngs, param_dtype=config.param_dtype)

    @classmethod
    def from_backbone(cls, backbone: Transformer, *, rngs: nnx.Rngs) -> ScalarHeadModel:
        """Puts a fresh head on an existing trunk (e.g. a language model from `from_hf`).

        Args:
          backbone: the trunk to reuse (shared, not copied); its config becomes the model's.
          rngs: random streams for the new head.

        Returns:
          A `ScalarHeadModel` with `backbone` as its trunk and a freshly initialised head.
        """
        return cls(backbone.config, rngs=rngs, backbone=backbone)

    def __call__(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None):
        """`[B, T]` float32 scalar per token (arguments as in `Transformer.__call__`).

        Args:
          input_ids: `[B, T]` int token ids.
          attention_mask: optional `[B, T]` mask, 1 at real tokens (padding on any side).
          positions: optional `[B, T]` positions (default: `default_positions`).
          segment_ids: optional `[B, T]` ids of packed segments.

        Returns:
          `[B, T]` float32 scalars.
        """
        hidden = self.backbone.hidden_states(
            input_ids, attention_mask, positions=positions, segment_ids=segment_ids
        )
        return self.head(hidden)

    def score(self, input_ids, attention_mask) -> jax.Array:
        """`[B]` float32 scalar at the last real token of each row (a sequence reward).

        Args:
          input_ids: `[B, T]` int token ids.
          attention_mask: `[B, T]` mask, 1 at real tokens (padding on any side); it also picks
            the last real token of each row (`last_valid`).

        Returns:
          `[B]` float32 scalars; 0 for a fully masked row.
        """
        return last_valid(self(input_ids, attention_mask), attention_mask)


def last_valid(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The value at the last position where `mask` is set, per row.

    .. math:: y_b = x_{b,\\,\\max\\{t : m_{b,t} = 1\\}}

    A fully masked row gives 0.

    Args:
      values: `[B, T]` per-token values.
      mask: `[B, T]` mask (1 = real token), padding on any side.

    Returns:
      `[B]` float32 values.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
      >>> m = jnp.array([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
      >>> print(last_valid(x, m))
      [2. 6. 0.]
    """
    check_rank(values, "values", 2, fn="last_valid")
    check_same_shape({"values": values, "mask": mask}, "values", fn="last_valid")
    m = jnp.asarray(mask).astype(bool)
    t = values.shape[1]
    idx = jnp.max(jnp.where(m, jnp.arange(t)[None, :], -1), axis=1)
    picked = jnp.take_along_axis(values, jnp.maximum(idx, 0)[:, None], axis=1)[:, 0]
    return jnp.where(idx >= 0, picked, 0.0).astype(jnp.float32)
