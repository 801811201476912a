r"""The token-level MDP view of a language model: Q, V and rewards read off the logits.

Token MDP: the state `s_t` is the prompt plus the completion tokens before position t, the
action is the token `a_t`, transitions are deterministic (`s_{t+1} = s_t + a_t`) and the episode
ends after the last completion token (EOS). Under KL-regularised maximum-entropy RL with weight
`beta` and reference policy `pi_ref`, the optimal soft Q-function and value satisfy
(Rafailov, Hejna, Park, Finn 2024, arXiv:2404.12358)

    Q*(s_t, a) = r(s_t, a) + beta log pi_ref(a | s_t) + V*(s_{t+1}),      V*(terminal) = 0
    V*(s_t)    = beta log sum_a exp(Q*(s_t, a) / beta)
    pi*(a|s_t) = exp((Q*(s_t, a) - V*(s_t)) / beta)

Definitions used here: the policy logits `l_t` at position t are read as `Q / beta` exactly,

    Q(s_t, a) = beta * l_t[a],     V(s_t) = beta * logsumexp(l_t),     Q = beta log pi + V

(`token_q_values`, `token_values`, `token_q_decomposition`). Logits are only defined up to a
per-state constant `c(s_t)`; shifting them changes V and Q by `beta c(s_t)` and the rewards
below by a potential-based shaping term, never the policy.

The per-token reward for which these logits are soft-optimal follows from the Bellman equation
(`token_rewards_from_q`):

    r_t = Q(s_t, a_t) - beta log pi_ref(a_t | s_t) - V(s_{t+1})
        = beta log(pi(a_t|s_t) / pi_ref(a_t|s_t)) + V(s_t) - V(s_{t+1}),

i.e. the per-token implicit reward `beta log pi/pi_ref` (`token_implicit_rewards_from_logits`)
plus a potential-shaping term. Summed over the valid tokens of a sequence it telescopes (V = 0
after the last valid token) into the identity

    sum_t m_t r_t = V(s_0) + sum_t m_t beta log(pi(a_t|s_t) / pi_ref(a_t|s_t)),

sequence reward = initial value + DPO implicit reward. This holds exactly for these
definitions of V and Q (whatever the logits); it is the statement that the DPO implicit reward
equals the sequence reward up to the prompt-dependent `V(s_0)`, which cancels in a
Bradley-Terry comparison of two completions of one prompt. When the logits are the optimal soft
Q-function of a true reward `r`, `token_rewards_from_q` recovers `r` and the soft Bellman
residual (`token_soft_bellman_residual`) of the sequence under `r` is zero.

Layout: `logits[b, t]` is the output at the state that generates `tokens[b, t]` (already shifted
so that position t predicts token t); `mask[b, t]` is nonzero at completion tokens. Masked
positions are removed from the sequence: "the next state" of a valid position is the next
valid one, `s_0` is the first valid one, and outputs are 0 at masked positions. Log-softmax and
all sums run in float32 whatever the logits' dtype. These functions take logits; for per-token
log-probs already gathered, `beta * (logp - ref_logp)` is the implicit reward.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = [
    "TokenQDecomposition",
    "token_implicit_rewards_from_logits",
    "token_initial_values",
    "token_q_decomposition",
    "token_q_values",
    "token_rewards_from_q",
    "token_soft_bellman_residual",
    "token_values",
]


def _check_logits(fn: str, logits, tokens=None, mask=None, name: str = "logits"):
    check_rank(logits, name, 3, fn=fn)
    check_floating({name: logits}, fn=fn)
    if tokens is not None:
        check_rank(tokens, "tokens", 2, fn=fn)
        if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
            raise TypeError(
                f"{fn}: `tokens` must be an integer array, got dtype {jnp.result_type(tokens)}."
            )
        if tuple(jnp.shape(tokens)) != tuple(jnp.shape(logits))[:2]:
            raise ValueError(
                f"{fn}: `tokens` must have shape {tuple(jnp.shape(logits))[:2]} (the [B, T] of "
                f"`{name}` {tuple(jnp.shape(logits))}), got {tuple(jnp.shape(tokens))}."
            )
        if mask is not None:
            check_same_shape({"tokens": tokens, "mask": mask}, "tokens", fn=fn)


def _log_softmax_selected(logits, tokens, valid=None):
    """`(log pi(a_t|s_t), logsumexp(l_t), l_t[a_t])` in float32 (float64 stays float64).

    With `valid`, logits at invalid positions are replaced by zeros first, so whatever they hold
    (even NaN) reaches neither the values nor the gradients.
    """
    logits = f32(logits)
    if valid is not None:
        logits = jnp.where(valid[..., None], logits, 0.0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    selected = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    return selected - lse, lse, selected


def _next_valid_values(v, valid):
    """`v` at the next valid position after each t (0 if none), for `[B, T]` arrays."""
    length = v.shape[-1]
    positions = jnp.broadcast_to(jnp.arange(length), v.shape)
    first_valid_from = jax.lax.cummin(jnp.where(valid, positions, length), axis=1, reverse=True)
    nxt = jnp.concatenate(
        [first_valid_from[:, 1:], jnp.full((v.shape[0], 1), length, first_valid_from.dtype)], axis=1
    )
    has_next = nxt < length
    gathered = jnp.take_along_axis(v, jnp.where(has_next, nxt, 0), axis=1)
    return jnp.where(has_next, gathered, 0.0)


def _valid(mask):
    return jnp.asarray(mask) != 0


def token_values(logits: ArrayLike, *, beta: float = 1.0) -> jax.Array:
    r"""Soft state values of a language model read off its logits.

        V(s_t) = beta * logsumexp_v(l_t[v])

    (the log-partition of the policy at each position, with logits read as `Q / beta`).

    Args:
      logits: `[B, T, V]` logits (any float dtype; computed in float32).
      beta: KL-regularisation weight (the token MDP's temperature).

    Returns:
      `[B, T]` float32 values.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> print(round(float(token_values(jnp.zeros((1, 1, 4)), beta=0.5)[0, 0]), 4))  # .5 log 4
      0.6931
    """
    _check_logits("token_values", logits)
    return beta * jax.nn.logsumexp(f32(logits), axis=-1)


def token_q_values(logits: ArrayLike, tokens: ArrayLike, *, beta: float = 1.0) -> jax.Array:
    r"""Soft action values of the generated tokens read off the logits.

        Q(s_t, a_t) = beta * l_t[a_t]

    Args:
      logits: `[B, T, V]` logits.
      tokens: `[B, T]` integer tokens `a_t`.
      beta: KL-regularisation weight.

    Returns:
      `[B, T]` float32 action values.

    References:
      Rafailov et al., arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> q = token_q_values(jnp.array([[[1.0, 3.0]]]), jnp.array([[1]]), beta=0.5)
      >>> print(round(float(q[0, 0]), 4))
      1.5
    """
    _check_logits("token_q_values", logits, tokens)
    _, _, selected = _log_softmax_selected(logits, jnp.asarray(tokens))
    return beta * selected


class TokenQDecomposition(NamedTuple):
    """`Q = advantage + V` for the generated tokens (all `[B, T]` float32).

    Attributes:
      q: `Q(s_t, a_t) = beta * l_t[a_t]`.
      v: `V(s_t) = beta * logsumexp(l_t)`.
      advantage: `beta * log pi(a_t | s_t) = Q - V` (<= 0).
    """

    q: jax.Array
    v: jax.Array
    advantage: jax.Array


def token_q_decomposition(
    logits: ArrayLike, tokens: ArrayLike, *, beta: float = 1.0
) -> TokenQDecomposition:
    r"""Decomposes the token action values into value plus (soft) advantage.

        Q(s_t, a_t) = beta * log pi(a_t | s_t) + V(s_t)

    Args:
      logits: `[B, T, V]` logits.
      tokens: `[B, T]` integer tokens.
      beta: KL-regularisation weight.

    Returns:
      `TokenQDecomposition(q, v, advantage)`.

    References:
      Rafailov et al., arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> d = token_q_decomposition(jnp.zeros((1, 1, 2)), jnp.array([[0]]), beta=1.0)
      >>> print(round(float(d.q[0, 0]), 4), round(float(d.v[0, 0]), 4),
      ...       round(float(d.advantage[0, 0]), 4))
      0.0 0.6931 -0.6931
    """
    _check_logits("token_q_decomposition", logits, tokens)
    logp, lse, selected = _log_softmax_selected(logits, jnp.asarray(tokens))
    return TokenQDecomposition(beta * selected, beta * lse, beta * logp)


def _check_pair(fn, policy_logits, ref_logits, tokens, mask):
    _check_logits(fn, policy_logits, tokens, mask, name="policy_logits")
    check_floating({"ref_logits": ref_logits}, fn=fn)
    check_same_shape(
        {"policy_logits": policy_logits, "ref_logits": ref_logits}, "policy_logits", fn=fn
    )


def token_implicit_rewards_from_logits(
    policy_logits: ArrayLike,
    ref_logits: ArrayLike,
    tokens: ArrayLike,
    mask: ArrayLike,
    *,
    beta: float = 0.1,
) -> jax.Array:
    r"""Per-token implicit rewards from policy and reference logits.

        r_hat_t = m_t * beta * (log pi(a_t | s_t) - log pi_ref(a_t | s_t))

    Masked positions give exactly 0 (also in gradient), whatever the logits hold there. Row
    sums are the sequence-level DPO implicit rewards.

    Args:
      policy_logits: `[B, T, V]` policy logits.
      ref_logits: `[B, T, V]` reference-model logits.
      tokens: `[B, T]` integer tokens.
      mask: `[B, T]` nonzero at completion tokens.
      beta: KL-regularisation weight.

    Returns:
      `[B, T]` float32 rewards.

    References:
      Rafailov et al., arXiv:2404.12358; Rafailov et al., arXiv:2305.18290 (DPO).

    Example:
      >>> import jax.numpy as jnp
      >>> pol = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))
      >>> ref = jnp.log(jnp.array([[[0.25, 0.75], [0.5, 0.5]]]))
      >>> r = token_implicit_rewards_from_logits(pol, ref, jnp.array([[0, 0]]),
      ...                                        jnp.array([[1, 0]]), beta=1.0)
      >>> print([round(float(x), 4) for x in r[0]])  # log 2, masked
      [0.6931, 0.0]
    """
    fn = "token_implicit_rewards_from_logits"
    _check_pair(fn, policy_logits, ref_logits, tokens, mask)
    tokens, valid = jnp.asarray(tokens), _valid(mask)
    logp, _, _ = _log_softmax_selected(policy_logits, tokens, valid)
    ref_logp, _, _ = _log_softmax_selected(ref_logits, tokens, valid)
    ratio = jnp.where(valid, logp, 0.0) - jnp.where(valid, ref_logp, 0.0)
    return beta * ratio


def token_initial_values(logits: ArrayLike, mask: ArrayLike, *, beta: float = 1.0) -> jax.Array:
    r"""Value `V(s_0)` of each row's first valid (completion) position.

        V(s_0) = beta * logsumexp(l_{t0}),   t0 = min{t : m_t != 0}

    The prompt-dependent term of the telescoping identity; 0 for a fully masked row.

    Args:
      logits: `[B, T, V]` policy logits.
      mask: `[B, T]` nonzero at completion tokens.
      beta: KL-regularisation weight.

    Returns:
      `[B]` float32 initial values.

    References:
      Rafailov et al., arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[[0.0, 0.0], [5.0, 5.0]]])
      >>> v0 = token_initial_values(logits, jnp.array([[0, 1]]), beta=1.0)
      >>> print(round(float(v0[0]), 4))  # 5 + log 2
      5.6931
    """
    fn = "token_initial_values"
    _check_logits(fn, logits)
    if tuple(jnp.shape(mask)) != tuple(jnp.shape(logits))[:2]:
        raise ValueError(
            f"{fn}: `mask` must have shape {tuple(jnp.shape(logits))[:2]} (the [B, T] of "
            f"`logits`), got {tuple(jnp.shape(mask))}."
        )
    valid = _valid(mask)
    logits = jnp.where(valid[..., None], f32(logits), 0.0)
    v = beta * jax.nn.logsumexp(logits, axis=-1)
    first = jnp.argmax(valid, axis=1)
    v0 = jnp.take_along_axis(v, first[:, None], axis=1)[:, 0]
    return jnp.where(jnp.any(valid, axis=1), v0, 0.0)


def token_rewards_from_q(
    policy_logits: ArrayLike,
    ref_logits: ArrayLike,
    tokens: ArrayLike,
    mask: ArrayLike,
    *,
    beta: float = 0.1,
) -> jax.Array:
    r"""Per-token rewards for which the policy logits are the optimal soft Q-function.

        r_t = Q(s_t, a_t) - beta log pi_ref(a_t | s_t) - V(s_{t+1})
            = beta log(pi(a_t|s_t) / pi_ref(a_t|s_t)) + V(s_t) - V(s_{t+1})

    with `Q = beta * logits`, `V = beta * logsumexp(logits)`, `s_{t+1}` the next valid position
    and `V = 0` after the last valid token (the episode ends there). The masked row sum equals
    `token_initial_values + sum(token_implicit_rewards_from_logits)` (telescoping).

    Args:
      policy_logits: `[B, T, V]` policy logits (read as `Q / beta`).
      ref_logits: `[B, T, V]` reference-model logits.
      tokens: `[B, T]` integer tokens.
      mask: `[B, T]` nonzero at completion tokens.
      beta: KL-regularisation weight.

    Returns:
      `[B, T]` float32 rewards, 0 at masked positions.

    References:
      Rafailov et al., arXiv:2404.12358 (sec. 4: token rewards as inverse soft Q-learning).

    Example:
      >>> import jax.numpy as jnp
      >>> pol = jnp.array([[[0.0, 0.0], [1.0, 1.0]]])
      >>> r = token_rewards_from_q(pol, jnp.zeros((1, 2, 2)), jnp.array([[0, 0]]),
      ...                          jnp.ones((1, 2)), beta=1.0)
      >>> # Q - beta log pi_ref - V(next): (0 + log 2 - (1 + log 2), 1 + log 2 - 0)
      >>> print([round(float(x), 4) for x in r[0]])
      [-1.0, 1.6931]
    """
    fn = "token_rewards_from_q"
    _check_pair(fn, policy_logits, ref_logits, tokens, mask)
    tokens, valid = jnp.asarray(tokens), _valid(mask)
    _, lse, selected = _log_softmax_selected(policy_logits, tokens, valid)
    ref_logp, _, _ = _log_softmax_selected(ref_logits, tokens, valid)
    q = jnp.where(valid, beta * selected, 0.0)
    v = jnp.where(valid, beta * lse, 0.0)
    ref_term = jnp.where(valid, beta * ref_logp, 0.0)
    rewards = q - ref_term - _next_valid_values(v, valid)
    return jnp.where(valid, rewards, 0.0)


def token_soft_bellman_residual(
    policy_logits: ArrayLike,
    ref_logits: ArrayLike,
    tokens: ArrayLike,
    rewards: ArrayLike,
    mask: ArrayLike,
    *,
    beta: float = 0.1,
) -> jax.Array:
    r"""Soft Bellman residual of a token sequence under given per-token rewards.

        delta_t = r_t + beta log pi_ref(a_t | s_t) + V(s_{t+1}) - Q(s_t, a_t)

    with `Q = beta * logits`, `V = beta * logsumexp(logits)`, `V = 0` after the last valid
    token. It is zero at every position iff the logits are the optimal soft Q-function for the
    rewards along the sequence; it equals `rewards - token_rewards_from_q(...)`. For RLHF's
    sparse reward pass the sequence score at the last valid token (`rlhf_token_rewards` with
    `kl_coef=0`).

    Args:
      policy_logits: `[B, T, V]` policy logits.
      ref_logits: `[B, T, V]` reference-model logits.
      tokens: `[B, T]` integer tokens.
      rewards: `[B, T]` per-token rewards `r(s_t, a_t)`.
      mask: `[B, T]` nonzero at completion tokens.
      beta: KL-regularisation weight.

    Returns:
      `[B, T]` float32 residuals, 0 at masked positions.

    References:
      Rafailov et al., arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> pol = jnp.array([[[0.0, 0.0], [1.0, 1.0]]])
      >>> d = token_soft_bellman_residual(pol, jnp.zeros((1, 2, 2)), jnp.array([[0, 0]]),
      ...                                 jnp.array([[-1.0, 1.6931]]), jnp.ones((1, 2)), beta=1.0)
      >>> print([round(abs(float(x)), 4) for x in d[0]])
      [0.0, 0.0]
    """
    fn = "token_soft_bellman_residual"
    _check_pair(fn, policy_logits, ref_logits, tokens, mask)
    check_floating({"rewards": rewards}, fn=fn)
    check_same_shape({"tokens": tokens, "rewards": rewards}, "tokens", fn=fn)
    valid = _valid(mask)
    implied = token_rewards_from_q(policy_logits, ref_logits, tokens, mask, beta=beta)
    return jnp.where(valid, f32(rewards), 0.0) - implied
