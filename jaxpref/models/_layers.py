"""Building blocks of the decoder: projections, norms, rotary positions, attention, MLP, block.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds *logical* axis names
(`'vocab'`, `'embed'`, `'mlp'`, `'heads'`, `'kv_heads'`, `'head_dim'`, `'seq'`, `'norm'`);
`jaxpref.parallel` maps them to mesh axes. Eager sharding is off: placement happens once, under
`jax.jit` with explicit output shardings.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpref.models._config import ModelConfig

__all__ = [
    "Attention",
    "Block",
    "Dense",
    "LayerNorm",
    "Mlp",
    "RMSNorm",
    "apply_rope",
    "constant_param",
    "make_norm",
    "normal_param",
]

_NEG = float(jnp.finfo(jnp.float32).min)


def _logical(value: jax.Array, axes: tuple[str | None, ...], dtype) -> nnx.Param:
    return nnx.Param(value.astype(dtype), out_sharding=tuple(axes), eager_sharding=False)


def _check_axes(axes: tuple[str | None, ...], shape: tuple[int, ...], *, fn: str) -> None:
    if len(axes) != len(shape):
        raise ValueError(f"{fn}: {len(axes)} axis names {axes} for shape {shape}.")


def normal_param(
    rngs: nnx.Rngs,
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    dtype,
    *,
    stddev: float = 0.02,
) -> nnx.Param:
    """Creates an `nnx.Param` drawn from N(0, stddev^2), carrying logical axis names.

    Args:
      rngs: random streams (one key of the `params` stream is used).
      shape: parameter shape.
      axes: one logical axis name (or None) per dimension of `shape`.
      dtype: storage dtype (drawn in float32, then cast).
      stddev: standard deviation.

    Returns:
      The parameter, with `out_sharding=axes` and eager sharding off.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> p = normal_param(nnx.Rngs(0), (2, 3), ("embed", "mlp"), jnp.bfloat16)
      >>> print(p.get_metadata()["out_sharding"], p[...].dtype)
      ('embed', 'mlp') bfloat16
    """
    _check_axes(axes, shape, fn="normal_param")
    value = stddev * jax.random.normal(rngs.params(), shape, jnp.float32)
    return _logical(value, axes, dtype)


def constant_param(
    shape: tuple[int, ...], axes: tuple[str | None, ...], dtype, *, value: float
) -> nnx.Param:
    """Creates an `nnx.Param` filled with `value` (norm scales, biases), carrying logical axes.

    Args:
      shape: parameter shape.
      axes: one logical axis name (or None) per dimension of `shape`.
      dtype: storage dtype.
      value: the fill value (0 for biases, 1 for norm scales).

    Returns:
      The parameter, with `out_sharding=axes` and eager sharding off.

    Example:
      >>> import jax.numpy as jnp
      >>> p = constant_param((2, 3), ("embed", "mlp"), jnp.float32, value=1.0)
      >>> print(p.get_metadata()["out_sharding"], float(p[...].sum()))
      ('embed', 'mlp') 6.0
    """
    _check_axes(axes, shape, fn="constant_param")
    return _logical(jnp.full(shape, value, jnp.float32), axes, dtype)


@functools.cache
def _matmul_split(equation: str) -> tuple[int, int] | None:
    """`(leading x dims, contracted dims)` if `equation` is `"AC,CO->AO"`, else None.

    `A` (batch-like dims of `x`), `C` (dims contracted with the leading dims of the kernel) and
    `O` (the kernel's output dims) are disjoint, non-empty runs of letters.
    """
    inputs, out = equation.replace(" ", "").split("->")
    xs, ws = inputs.split(",")
    for c in range(1, min(len(xs), len(ws))):
        lead, contract, rest = xs[: len(xs) - c], xs[len(xs) - c :], ws[c:]
        if (
            lead
            and rest
            and ws[:c] == contract
            and out == lead + rest
            and len(set(xs + rest)) == len(xs) + len(rest)
        ):
            return len(lead), c
    return None


class Dense(nnx.Module):
    """A linear map written as an einsum over named dimensions, with an optional bias.

    .. math:: y = \\mathrm{einsum}(x, W) + b

    Matmuls run in the compute dtype; the result is cast back to it.

    Args:
      kernel_shape: shape of `W`.
      kernel_axes: logical axis names of `W`.
      bias_axes: logical axis names of `b` (the trailing output dims of `W`); None: no bias.
      bias_shape: shape of `b`.
      dtype: compute dtype.
      param_dtype: storage dtype.
      rngs: random streams.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> d = Dense((4, 2), ("embed", "mlp"), bias_shape=(2,), bias_axes=("mlp",),
      ...           rngs=nnx.Rngs(0))
      >>> print(d("btd,df->btf", jnp.ones((1, 3, 4))).shape)
      (1, 3, 2)
    """

    def __init__(
        self,
        kernel_shape: tuple[int, ...],
        kernel_axes: tuple[str | None, ...],
        *,
        bias_shape: tuple[int, ...] | None = None,
        bias_axes: tuple[str | None, ...] | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = jnp.dtype(dtype)
        self.kernel = normal_param(rngs, kernel_shape, kernel_axes, param_dtype)
        self.bias = (
            constant_param(bias_shape, bias_axes, param_dtype, value=0.0)
            if bias_axes is not None
            else None
        )

    def __call__(self, equation: str, x: jax.Array) -> jax.Array:
        """Applies `einsum(equation, x, W) + b` in the compute dtype.

        Args:
          equation: einsum equation with two operands, `x` then the kernel `W` (e.g.
            `"btd,df->btf"`); the bias is broadcast against the trailing axes of the result.
          x: input array whose axes match the first operand of `equation` (e.g. `[B, T, D]`
            activations); cast to the compute dtype.

        Returns:
          The result of `equation` (e.g. `[B, T, F]`) in the compute dtype.
        """
        x = x.astype(self.dtype)
        w = self.kernel[...].astype(self.dtype)
        split = _matmul_split(equation)
        if split is None:
            y = jnp.einsum(equation, x, w)
        else:
            # `x[A, C] @ W[C, O]` as one 2D matmul `[prod A, prod C] @ [prod C, prod O]`: XLA then
            # needs fewer layout copies (transposes) of the operands, forward and backward.
            lead, contract = split
            k = math.prod(w.shape[:contract])
            y = jnp.matmul(x.reshape(-1, k), w.reshape(k, -1))
            y = y.reshape(*x.shape[:lead], *w.shape[contract:])
        if self.bias is not None:
            b = self.bias[...].astype(self.dtype)
            y = y + b.reshape((1,) * (y.ndim - b.ndim) + b.shape)
        return y


def _normalise(x, scale, bias, eps, dtype):
    """`scale * x / sqrt(mean(x^2) + eps) (+ bias)` over the last axis of float32 `x`."""
    y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    lead = (1,) * (y.ndim - 1)
    y = y * scale[...].astype(jnp.float32).reshape((*lead, -1))
    if bias is not None:
        y = y + bias[...].astype(jnp.float32).reshape((*lead, -1))
    return y.astype(dtype)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis (the llama family).

    .. math:: \\mathrm{RMS}(x) = \\gamma \\frac{x}{\\sqrt{\\overline{x^2} + \\epsilon}}

    Statistics are computed in float32; the output has the compute dtype.

    Args:
      dim: normalised width `D`.
      eps: epsilon.
      dtype: compute dtype.
      param_dtype: storage dtype.

    References:
      Zhang and Sennrich, "Root Mean Square Layer Normalization", arXiv 1910.07467.

    Example:
      >>> import jax.numpy as jnp
      >>> y = RMSNorm(2, eps=0.0)(jnp.array([[3.0, 4.0]]))
      >>> print([round(float(v), 4) for v in y[0]])
      [0.8485, 1.1314]
    """

    def __init__(self, dim: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32):
        self.eps = eps
        self.dtype = jnp.dtype(dtype)
        self.scale = constant_param((dim,), ("norm",), param_dtype, value=1.0)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises `[..., D]` inputs.

        Args:
          x: `[..., D]` inputs (any float dtype; statistics in float32).

        Returns:
          `[..., D]` normalised values in the compute dtype.
        """
        return _normalise(x.astype(jnp.float32), self.scale, None, self.eps, self.dtype)


class LayerNorm(RMSNorm):
    """LayerNorm over the last axis (the gpt2 family): `RMSNorm` of the centred input, plus a bias.

    .. math:: \\mathrm{LN}(x) = \\gamma \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta

    Args:
      dim, eps, dtype, param_dtype: as `RMSNorm`.

    References:
      Ba, Kiros and Hinton, "Layer Normalization", arXiv 1607.06450.

    Example:
      >>> import jax.numpy as jnp
      >>> y = LayerNorm(2, eps=0.0)(jnp.array([[1.0, 3.0]]))
      >>> print([round(float(v), 4) for v in y[0]])
      [-1.0, 1.0]
    """

    def __init__(self, dim: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(dim, eps=eps, dtype=dtype, param_dtype=param_dtype)
        self.bias = constant_param((dim,), ("norm",), param_dtype, value=0.0)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises `[..., D]` inputs.

        Args:
          x: `[..., D]` inputs (any float dtype; centred and normalised in float32).

        Returns:
          `[..., D]` normalised values in the compute dtype.
        """
        x = x.astype(jnp.float32)
        x = x - jnp.mean(x, axis=-1, keepdims=True)
        return _normalise(x, self.scale, self.bias, self.eps, self.dtype)


def make_norm(config: ModelConfig) -> LayerNorm | RMSNorm:
    """The norm of `config`'s family: `LayerNorm` (gpt2) or `RMSNorm` (llama), width `d_model`.

    Args:
      config: architecture (`family`, `d_model`, `norm_eps`, dtypes).

    Returns:
      A new norm module.

    Example:
      >>> from jaxpref.models import preset
      >>> print(type(make_norm(preset("gpt2-tiny"))).__name__)
      LayerNorm
    """
    norm = LayerNorm if config.family == "gpt2" else RMSNorm
    return norm(
        config.d_model,
        eps=config.norm_eps,
        dtype=config.compute_jnp_dtype,
        param_dtype=config.param_jnp_dtype,
    )


def apply_rope(x: jax.Array, positions: jax.Array, *, theta: float) -> jax.Array:
    """Rotary position embedding in the half-split ("rotate_half") layout of Llama checkpoints.

    .. math:: x' = [x_1 \\cos\\phi - x_2 \\sin\\phi,\\; x_2 \\cos\\phi + x_1 \\sin\\phi],
       \\quad \\phi_{t,i} = p_t\\,\\theta^{-2i/H}

    Args:
      x: `[B, T, N, H]` queries or keys (H even).
      positions: `[B, T]` integer positions.
      theta: base frequency.

    Returns:
      `[B, T, N, H]` rotated values in the dtype of `x` (computed in float32).

    References:
      Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
      arXiv 2104.09864.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((1, 1, 1, 2))
      >>> y = apply_rope(x, jnp.array([[1]]), theta=10000.0)[0, 0, 0]
      >>> print([round(float(v), 4) for v in y])
      [-0.3012, 1.3818]
    """
    h = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : h // 2], xf[..., h // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _activation(name: str):
    return {
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "silu": jax.nn.silu,
        "relu": jax.nn.relu,
    }[name]


class Attention(nnx.Module):
    """Multi-head causal self-attention with grouped-query heads and an optional KV cache.

    .. math:: \\mathrm{softmax}\\big(q k^\\top / \\sqrt{H} + \\text{mask}\\big)\\, v

    Query head `n` reads key/value head `n // G` (`G = N // K`), the layout of Hugging Face
    checkpoints. Scores and softmax are float32. A query whose keys are all masked gets a
    uniform (finite) distribution instead of NaN.

    Args:
      config: architecture.
      rngs: random streams.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import preset
      >>> attn = Attention(preset("llama-tiny"), rngs=nnx.Rngs(0))
      >>> x, pos = jnp.ones((1, 3, 32)), jnp.arange(3)[None]
      >>> mask = jnp.tril(jnp.ones((3, 3), bool))[None]
      >>> y, _ = jax.eval_shape(attn, x, pos, mask)
      >>> print(y.shape)
      (1, 3, 32)
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        d, n, k, h = c.d_model, c.num_heads, c.kv_heads, c.head_size
        kw = dict(dtype=c.compute_jnp_dtype, param_dtype=c.param_jnp_dtype, rngs=rngs)

        def proj(heads, head_axis):
            return Dense(
                (d, heads, h), ("embed", head_axis, "head_dim"), bias_shape=(heads, h),
                bias_axes=(head_axis, "head_dim") if c.qkv_bias else None, **kw,
            )  # fmt: skip

        self.q = proj(n, "heads")
        self.k = proj(k, "kv_heads")
        self.v = proj(k, "kv_heads")
        self.o = Dense(
            (n, h, d), ("heads", "head_dim", "embed"), bias_shape=(d,),
            bias_axes=("embed",) if c.out_bias else None, **kw,
        )  # fmt: skip
        self.num_groups = c.num_groups
        self.use_rope = c.family == "llama"
        self.rope_theta = c.rope_theta
        self.dtype = c.compute_jnp_dtype

    def __call__(self, x, positions, mask, kv=None):
        """Attends `[B, T, D]` inputs.

        Args:
          x: `[B, T, D]` normalised inputs.
          positions: `[B, T]` integer positions (rotary family only).
          mask: `[B, T, S]` bool, True where query `t` may read key slot `s`.
          kv: None, or `(k_cache, v_cache, index)` with caches `[B, S, K, H]`: the new keys and
            values are written at slots `index .. index + T - 1` and attention reads all `S` slots.

        Returns:
          `([B, T, D] output, (k_cache, v_cache) or None)`.
        """
        q = self.q("btd,dnh->btnh", x)
        k = self.k("btd,dkh->btkh", x)
        v = self.v("btd,dkh->btkh", x)
        if self.use_rope:
            q = apply_rope(q, positions, theta=self.rope_theta)
            k = apply_rope(k, positions, theta=self.rope_theta)
        new_kv = None
        if kv is not None:
            k_cache, v_cache, index = kv
            start = (0, index, 0, 0)
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
            new_kv = (k, v)
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        b, t, n, h = q.shape
        groups = self.num_groups
        q = q.reshape(b, t, n // groups, groups, h)
        scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
        scores = scores * (1.0 / jnp.sqrt(jnp.float32(h)))
        scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n, h)
        return self.o("btnh,nhd->btd", out), new_kv


class Mlp(nnx.Module):
    """Position-wise MLP: `down(act(up x))` (gpt2) or `down(act(gate x) * up x)` (llama).

    .. math:: \\mathrm{MLP}(x) = W_d\\,\\big(\\phi(W_g x) \\odot W_u x\\big)

    Args:
      config: architecture.
      rngs: random streams.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import preset
      >>> mlp = Mlp(preset("gpt2-tiny"), rngs=nnx.Rngs(0))
      >>> print(jax.eval_shape(mlp, jnp.ones((1, 2, 32))).shape)
      (1, 2, 32)
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        d, f = c.d_model, c.mlp_dim
        kw = dict(dtype=c.compute_jnp_dtype, param_dtype=c.param_jnp_dtype, rngs=rngs)
        fb = ("mlp",) if c.mlp_bias else None
        db = ("embed",) if c.mlp_bias else None
        self.gated = c.family == "llama"
        self.gate = (
            Dense((d, f), ("embed", "mlp"), bias_shape=(f,), bias_axes=fb, **kw)
            if self.gated
            else None
        )
        self.up = Dense((d, f), ("embed", "mlp"), bias_shape=(f,), bias_axes=fb, **kw)
        self.down = Dense((f, d), ("mlp", "embed"), bias_shape=(d,), bias_axes=db, **kw)
        self.activation = c.activation

    def __call__(self, x):
        """Applies the MLP to `[B, T, D]` inputs.

        Args:
          x: `[B, T, D]` normalised activations.

        Returns:
          `[B, T, D]` outputs in the compute dtype.
        """
        act = _activation(self.activation)
        up = self.up("btd,df->btf", x)
        hidden = act(self.gate("btd,df->btf", x)) * up if self.gated else act(up)
        return self.down("btf,fd->btd", hidden)


class Block(nnx.Module):
    """Pre-norm transformer block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

    Args:
      config: architecture.
      rngs: random streams.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxpref.models import preset
      >>> blk = Block(preset("gpt2-tiny"), rngs=nnx.Rngs(0))
      >>> mask = jnp.tril(jnp.ones((2, 2), bool))[None]
      >>> y, _ = jax.eval_shape(blk, jnp.ones((1, 2, 32)), jnp.arange(2)[None], mask)
      >>> print(y.shape)
      (1, 2, 32)
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.attn_norm = make_norm(c)
        self.attn = Attention(c, rngs=rngs)
        self.mlp_norm = make_norm(c)
        self.mlp = Mlp(c, rngs=rngs)

    def __call__(self, x, positions, mask, kv=None):
        """Runs the block; see `Attention.__call__` for the arguments and the cache.

        Args:
          x: `[B, T, D]` residual-stream activations (not normalised; the block normalises).
          positions: `[B, T]` integer positions (rotary family only).
          mask: `[B, T, S]` bool, True where query `t` may read key slot `s`.
          kv: None, or `(k_cache, v_cache, index)` with caches `[B, S, K, H]`, as in
            `Attention.__call__`.

        Returns:
          `([B, T, D] output, (k_cache, v_cache) or None)`.
        """
        h, new_kv = self.attn(self.attn_norm(x), positions, mask, kv)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, new_kv
