"""Modifiers of pairwise preference losses: f-divergence links, WPO weights, LD-DPO, multi-loss.

These reproduce the switches of TRL's `DPOTrainer` as composable functions:
`f_divergence_type` (`with_f_divergence` and the `*_link` functions), `use_weighting`
(`wpo_weights`, `log_sum_squared_probs`), `ld_alpha` (`ld_sequence_logps`) and
`loss_type` lists with `loss_weights` (`combine_losses`). All computation is float32.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = [
    "alpha_divergence_link",
    "combine_losses",
    "f_divergence_link",
    "forward_kl_link",
    "js_divergence_link",
    "ld_sequence_logps",
    "log_sum_squared_probs",
    "reverse_kl_link",
    "with_f_divergence",
    "wpo_weights",
]

_LOG2 = math.log(2.0)
# Largest exponent kept by the alpha-divergence link (TRL's float32/bfloat16 clamp).
_ALPHA_EXP_MAX = 80.0


def reverse_kl_link(logratios: jax.Array) -> jax.Array:
    r"""Reverse-KL link `f'(u) = log u` applied to the log-ratio: the identity (standard DPO).

    .. math:: f'(u) = \log u, \qquad u = \pi_\theta(y|x) / \pi_{ref}(y|x)

    Args:
      logratios: `[...]` log-ratios `log pi_theta(y|x) - log pi_ref(y|x)`.

    Returns:
      `[...]` float32 scores (equal to `logratios`).

    References:
      Wang et al., "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
      Divergence Constraints", arXiv 2309.16240.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(reverse_kl_link(jnp.array(-0.5))), 4))
      -0.5
    """
    check_floating({"logratios": logratios}, fn="reverse_kl_link")
    return f32(logratios)


def forward_kl_link(logratios: jax.Array) -> jax.Array:
    r"""Forward-KL link `f'(u) = 1 - 1/u` of the f-DPO family.

    .. math:: f'(u) = 1 - u^{-1} = 1 - e^{-\log u}

    The constant 1 (TRL's form) cancels in the chosen-minus-rejected margin.

    Args:
      logratios: `[...]` log-ratios `log pi_theta(y|x) - log pi_ref(y|x)`.

    Returns:
      `[...]` float32 scores.

    References:
      Wang et al., "Beyond Reverse KL", arXiv 2309.16240.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(forward_kl_link(jnp.array(0.5))), 4))
      0.3935
    """
    check_floating({"logratios": logratios}, fn="forward_kl_link")
    return -jnp.expm1(-f32(logratios))


def js_divergence_link(logratios: jax.Array) -> jax.Array:
    r"""Jensen-Shannon link `f'(u) = log(2u / (1 + u))` of the f-DPO family.

    .. math:: f'(u) = \log\frac{2u}{1+u} = \log 2 + \log\sigma(\log u)

    Args:
      logratios: `[...]` log-ratios `log pi_theta(y|x) - log pi_ref(y|x)`.

    Returns:
      `[...]` float32 scores.

    References:
      Wang et al., "Beyond Reverse KL", arXiv 2309.16240.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(js_divergence_link(jnp.array(0.0))), 4))
      0.0
    """
    check_floating({"logratios": logratios}, fn="js_divergence_link")
    return _LOG2 + jax.nn.log_sigmoid(f32(logratios))


def alpha_divergence_link(logratios: jax.Array, *, coef: float = 0.5) -> jax.Array:
    r"""α-divergence link `f'(u) = (u^{α-1} - 1) / (α - 1)` of the f-DPO family.

    .. math:: f'(u) = \frac{e^{\min((\alpha-1)\log u,\ 80)} - 1}{\alpha - 1}

    As in TRL, the exponent is clamped at 80 so the result stays finite, and for
    `|α - 1| < 1e-6` the limit `log u` (reverse KL) is returned.

    Args:
      logratios: `[...]` log-ratios `log pi_theta(y|x) - log pi_ref(y|x)`.
      coef: the α coefficient (TRL `f_alpha_divergence_coef`, default 0.5).

    Returns:
      `[...]` float32 scores.

    References:
      Wang et al., "Beyond Reverse KL", arXiv 2309.16240.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(alpha_divergence_link(jnp.array(1.0), coef=0.5)), 4))
      0.7869
    """
    check_floating({"logratios": logratios}, fn="alpha_divergence_link")
    u = f32(logratios)
    if abs(coef - 1.0) < 1e-6:
        return u
    t = jnp.minimum((coef - 1.0) * u, _ALPHA_EXP_MAX)
    return jnp.expm1(t) / (coef - 1.0)


# TRL's `f_divergence_type` names; the only place a link name is mapped to its function.
_LINKS: dict[str, Callable[..., jax.Array]] = {
    "reverse_kl": reverse_kl_link,
    "forward_kl": forward_kl_link,
    "js_divergence": js_divergence_link,
    "alpha_divergence": alpha_divergence_link,
}


def f_divergence_link(name: str, *, alpha: float = 0.5) -> Callable[[jax.Array], jax.Array]:
    r"""Looks up an f-divergence link by TRL's `f_divergence_type` name (for configs).

    .. math:: \text{reverse\_kl}: \log u,\quad \text{forward\_kl}: 1 - u^{-1},\quad
       \text{js\_divergence}: \log\tfrac{2u}{1+u},\quad
       \text{alpha\_divergence}: \tfrac{u^{\alpha-1}-1}{\alpha-1}

    Library code calls the `*_link` functions directly; this maps a config string to one.

    Args:
      name: `"reverse_kl"`, `"forward_kl"`, `"js_divergence"` or `"alpha_divergence"`.
      alpha: α coefficient, used only by `"alpha_divergence"` (TRL `f_alpha_divergence_coef`).

    Returns:
      A function mapping `[...]` log-ratios to `[...]` float32 scores.

    Raises:
      ValueError: for an unknown name.

    Example:
      >>> import jax.numpy as jnp
      >>> link = f_divergence_link("alpha_divergence", alpha=0.5)
      >>> print(round(float(link(jnp.array(1.0))), 4))
      0.7869
    """
    link = _LINKS.get(name) if isinstance(name, str) else None
    if link is None:
        raise ValueError(
            f"f_divergence_link: unknown f-divergence {name!r}; expected one of {tuple(_LINKS)}."
        )
    if link is alpha_divergence_link:
        return functools.partial(alpha_divergence_link, coef=alpha)
    return link


def with_f_divergence(
    loss_fn: Callable[..., jax.Array],
    link: str | Callable[[jax.Array], jax.Array],
    *,
    alpha: float = 0.5,
) -> Callable[..., jax.Array]:
    r"""Wraps a reference-based pair loss so it sees f-divergence scores instead of log-ratios.

    .. math:: h = f'(u_w) - f'(u_l), \qquad \log u = \log\pi_\theta(y|x) - \log\pi_{ref}(y|x)

    The returned function has the signature of `loss_fn`,
    `(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *args, **kwargs)`; it
    calls `loss_fn(link(chosen_logratio), link(rejected_logratio), 0, 0, *args, **kwargs)`. For
    losses of the margin `h` (TRL `sigmoid`, `hinge`, `ipo`, `exo_pair`, `robust`, `discopop`,
    `sigmoid_norm`) this is exactly TRL's `f_divergence_type`; TRL rejects a non-default
    divergence for the other loss types, while this wrapper applies the link to both log-ratios.

    Args:
      loss_fn: pair loss taking chosen/rejected policy then reference log-probs, `[B]` each.
      link: a name accepted by `f_divergence_link` or a function of the log-ratio.
      alpha: α coefficient when `link == "alpha_divergence"`.

    Returns:
      The wrapped loss function, returning what `loss_fn` returns.

    References:
      Wang et al., "Beyond Reverse KL", arXiv 2309.16240.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> def sigmoid_loss(c, r, rc, rr, *, beta):
      ...     return -jax.nn.log_sigmoid(beta * ((c - rc) - (r - rr)))
      >>> js = with_f_divergence(sigmoid_loss, "js_divergence")
      >>> loss = js(jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([-1.5]), jnp.array([-1.0]),
      ...           beta=1.0)
      >>> print(round(float(loss[0]), 4))
      0.3591
    """
    link_fn = f_divergence_link(link, alpha=alpha) if isinstance(link, str) else link
    if not callable(link_fn):
        raise TypeError(f"with_f_divergence: `link` must be a name or a callable, got {link!r}.")
    if not callable(loss_fn):
        raise TypeError(f"with_f_divergence: `loss_fn` must be callable, got {loss_fn!r}.")
    link_name = link if isinstance(link, str) else getattr(link, "__name__", "link")

    def f_divergence_loss(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *args, **kwargs
    ):
        check_same_shape(
            {
                "chosen_logps": chosen_logps,
                "rejected_logps": rejected_logps,
                "ref_chosen_logps": ref_chosen_logps,
                "ref_rejected_logps": ref_rejected_logps,
            },
            "chosen_logps",
            fn="with_f_divergence",
        )
        chosen_scores = link_fn(f32(chosen_logps) - f32(ref_chosen_logps))
        rejected_scores = link_fn(f32(rejected_logps) - f32(ref_rejected_logps))
        zeros = jnp.zeros_like(chosen_scores)
        return loss_fn(chosen_scores, rejected_scores, zeros, zeros, *args, **kwargs)

    base = getattr(loss_fn, "__name__", "loss")
    f_divergence_loss.__name__ = f"{base}_{link_name}"
    f_divergence_loss.__qualname__ = f_divergence_loss.__name__
    f_divergence_loss.__doc__ = (
        f"`{base}` with the `{link_name}` f-divergence link applied to the log-ratios."
    )
    return f_divergence_loss


def log_sum_squared_probs(logits: jax.Array) -> jax.Array:
    r"""`log sum_v p_v^2` of the softmax over the last axis, computed stably in float32.

    .. math:: \log\sum_v \mathrm{softmax}(z)_v^2 = \mathrm{logsumexp}(2z)
       - 2\,\mathrm{logsumexp}(z)

    Args:
      logits: `[..., V]` unnormalised logits (e.g. `[B, T, V]`).

    Returns:
      `[...]` float32 values (e.g. `[B, T]`), each in `[-log V, 0]`.

    References:
      Zhou et al., "WPO: Enhancing RLHF with Weighted Preference Optimization",
      arXiv 2406.11827.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(log_sum_squared_probs(jnp.zeros(4))), 4))
      -1.3863
    """
    fn = "log_sum_squared_probs"
    check_rank(logits, "logits", tuple(range(1, 9)), fn=fn)
    check_floating({"logits": logits}, fn=fn)
    z = f32(logits)
    return jax.nn.logsumexp(2.0 * z, axis=-1) - 2.0 * jax.nn.logsumexp(z, axis=-1)


def wpo_weights(
    per_token_logps: jax.Array,
    log_sum_sq_probs: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    r"""WPO sequence weights: length-normalised aligned probability, without gradient.

    .. math:: w(y) = \mathrm{sg}\Big[\exp\Big(\frac{1}{|y|}\sum_t m_t
       \big(\log\pi(y_t|s_t) - \log\sum_v \pi(v|s_t)^2\big)\Big)\Big]

    A pair loss is multiplied by `w(y_w) * w(y_l)` (TRL `use_weighting=True`). `|y|` is clamped
    at 1, so a fully masked row gets weight 1.

    Args:
      per_token_logps: `[B, T]` per-token log-probs of the completion under the policy.
      log_sum_sq_probs: `[B, T]` `log sum_v p_v^2` per position (`log_sum_squared_probs`).
      mask: `[B, T]` completion-token mask.

    Returns:
      `[B]` float32 weights with stopped gradients.

    References:
      Zhou et al., "WPO: Enhancing RLHF with Weighted Preference Optimization",
      arXiv 2406.11827.

    Example:
      >>> import jax.numpy as jnp
      >>> w = wpo_weights(jnp.array([[-1.0, -2.0]]), jnp.array([[-1.0, -1.0]]),
      ...                 jnp.array([[1, 1]]))
      >>> print(round(float(w[0]), 4))
      0.6065
    """
    fn = "wpo_weights"
    check_rank(per_token_logps, "per_token_logps", 2, fn=fn)
    check_same_shape(
        {"per_token_logps": per_token_logps, "log_sum_sq_probs": log_sum_sq_probs, "mask": mask},
        "per_token_logps",
        fn=fn,
    )
    check_floating(
        {"per_token_logps": per_token_logps, "log_sum_sq_probs": log_sum_sq_probs}, fn=fn
    )
    m = jnp.asarray(mask).astype(bool)
    aligned = jnp.where(m, f32(per_token_logps) - f32(log_sum_sq_probs), 0.0)
    lengths = jnp.maximum(jnp.sum(m.astype(jnp.float32), axis=-1), 1.0)
    return jax.lax.stop_gradient(jnp.exp(jnp.sum(aligned, axis=-1) / lengths))


def ld_sequence_logps(
    chosen_token_logps: jax.Array,
    rejected_token_logps: jax.Array,
    chosen_mask: jax.Array,
    rejected_mask: jax.Array,
    *,
    ld_alpha: float,
) -> tuple[jax.Array, jax.Array]:
    r"""LD-DPO sequence log-probs: the tail beyond the shared length is down-weighted by α.

    .. math:: \log\pi(y) = \sum_{t \le \ell_s} \log\pi(y_t|s_t)
       + \alpha\sum_{t > \ell_s} \log\pi(y_t|s_t), \qquad \ell_s = \min(|y_w|, |y_l|)

    `t` counts completion tokens (positions where the mask is set), so left- and right-padded
    rows behave alike. `ld_alpha = 1` gives the plain masked sums; `ld_alpha = 0` truncates both
    completions to the shared length. Matches TRL `DPOTrainer` with `ld_alpha`; apply it to the
    policy and the reference token log-probs alike.

    Args:
      chosen_token_logps: `[B, T]` per-token log-probs of the chosen completions.
      rejected_token_logps: `[B, T']` per-token log-probs of the rejected completions.
      chosen_mask: `[B, T]` completion mask of the chosen rows.
      rejected_mask: `[B, T']` completion mask of the rejected rows.
      ld_alpha: weight α in `[0, 1]` of the verbose tail.

    Returns:
      `(chosen_logps, rejected_logps)`, each `[B]` float32.

    References:
      Liu et al., "Length Desensitization in Direct Preference Optimization",
      arXiv 2409.06411.

    Example:
      >>> import jax.numpy as jnp
      >>> c, r = ld_sequence_logps(jnp.array([[-1.0, -1.0, -1.0]]), jnp.array([[-2.0, 0.0, 0.0]]),
      ...                          jnp.array([[1, 1, 1]]), jnp.array([[1, 0, 0]]), ld_alpha=0.5)
      >>> print(round(float(c[0]), 4), round(float(r[0]), 4))
      -2.0 -2.0
    """
    fn = "ld_sequence_logps"
    check_rank(chosen_token_logps, "chosen_token_logps", 2, fn=fn)
    check_rank(rejected_token_logps, "rejected_token_logps", 2, fn=fn)
    check_same_shape(
        {"chosen_token_logps": chosen_token_logps, "chosen_mask": chosen_mask},
        "chosen_token_logps",
        fn=fn,
    )
    check_same_shape(
        {"rejected_token_logps": rejected_token_logps, "rejected_mask": rejected_mask},
        "rejected_token_logps",
        fn=fn,
    )
    if jnp.shape(chosen_token_logps)[0] != jnp.shape(rejected_token_logps)[0]:
        raise ValueError(
            f"{fn}: `rejected_token_logps` must have the batch size of `chosen_token_logps` "
            f"({jnp.shape(chosen_token_logps)[0]}), got shape {jnp.shape(rejected_token_logps)}."
        )
    check_floating(
        {"chosen_token_logps": chosen_token_logps, "rejected_token_logps": rejected_token_logps},
        fn=fn,
    )
    mc = jnp.asarray(chosen_mask).astype(bool)
    mr = jnp.asarray(rejected_mask).astype(bool)
    pos_c = jnp.cumsum(mc.astype(jnp.int32), axis=-1)
    pos_r = jnp.cumsum(mr.astype(jnp.int32), axis=-1)
    shared = jnp.minimum(pos_c[:, -1], pos_r[:, -1])[:, None]

    def weighted_sum(token_logps, m, pos):
        weights = jnp.where(pos <= shared, 1.0, ld_alpha)
        return jnp.sum(jnp.where(m, weights * f32(token_logps), 0.0), axis=-1)

    return (
        weighted_sum(chosen_token_logps, mc, pos_c),
        weighted_sum(rejected_token_logps, mr, pos_r),
    )


def combine_losses(
    *terms: tuple[Callable[..., jax.Array], float],
) -> Callable[..., jax.Array]:
    r"""Weighted sum of several per-pair losses that share the same arguments.

    .. math:: \mathcal L = \sum_k w_k\,\mathcal L_k

    TRL's `loss_type=[...]` with `loss_weights=[...]` (e.g. MPO: 0.8 `sigmoid` + 0.2
    `bco_pair` + 1.0 `sft`). Every loss is called with the same positional and keyword
    arguments; bind per-loss hyperparameters with `functools.partial` first.

    Args:
      *terms: `(loss_fn, weight)` pairs; each `loss_fn` returns `[B]` per-pair losses.

    Returns:
      A function with the shared signature returning the `[B]` float32 weighted sum.

    References:
      Wang et al., "Enhancing the Reasoning Ability of Multimodal Large Language Models via
      Mixed Preference Optimization", arXiv 2411.10442.

    Example:
      >>> import jax.numpy as jnp
      >>> sq = lambda c, r: (c - r) ** 2
      >>> ab = lambda c, r: jnp.abs(c - r)
      >>> loss = combine_losses((sq, 0.5), (ab, 2.0))(jnp.array([1.0]), jnp.array([3.0]))
      >>> print(round(float(loss[0]), 4))
      6.0
    """
    if not terms:
        raise ValueError("combine_losses: at least one `(loss_fn, weight)` term is required.")
    checked = []
    for i, term in enumerate(terms):
        if not (isinstance(term, tuple) and len(term) == 2):
            raise TypeError(
                f"combine_losses: term {i} must be a `(loss_fn, weight)` tuple, got {term!r}."
            )
        fn, weight = term
        if not callable(fn):
            raise TypeError(f"combine_losses: term {i} loss_fn must be callable, got {fn!r}.")
        if not isinstance(weight, numbers.Real):
            raise TypeError(
                f"combine_losses: term {i} weight must be a real number, got {weight!r}."
            )
        checked.append((fn, float(weight)))
    checked = tuple(checked)

    def combined_loss(*args, **kwargs):
        total = None
        for fn, weight in checked:
            value = weight * f32(fn(*args, **kwargs))
            total = value if total is None else total + value
        return total

    names = " + ".join(f"{w:g}*{getattr(fn, '__name__', 'loss')}" for fn, w in checked)
    combined_loss.__doc__ = f"Weighted sum of per-pair losses: {names}."
    return combined_loss
