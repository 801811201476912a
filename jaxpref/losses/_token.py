"""Token-level implicit rewards of a DPO-trained policy, credit maps and RTO token rewards.

In the token MDP (state = prompt plus the tokens so far, action = next token) the DPO policy
defines a dense per-token reward `r_t = beta * (log pi(a_t | s_t) - log pi_ref(a_t | s_t))`. It
equals the true token reward up to the potential-based shaping term `V*(s_t) - V*(s_{t+1})`,
which telescopes and cancels in the Bradley-Terry comparison of two responses to one prompt, so
summing token rewards reproduces the sequence-level DPO reward and margin exactly.

All functions take per-token log-probs `[B, T]` (as gathered from the logits, no second forward
pass) with a completion mask and compute in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxpref._checks import check_floating, check_rank, check_same_shape, f32

__all__ = [
    "implicit_reward_margins",
    "paired_implicit_reward_margins",
    "rto_token_rewards",
    "sequence_implicit_rewards",
    "token_credit",
    "token_implicit_rewards",
]


def _check_tokens(fn: str, arrays: dict, mask, first: str) -> None:
    check_rank(arrays[first], first, 2, fn=fn)
    check_floating(arrays, fn=fn)
    check_same_shape({**arrays, "mask": mask}, first, fn=fn)


def _masked_log_ratio(logps, ref_logps, mask) -> tuple[jax.Array, jax.Array]:
    """Returns `(ratio, weight)`; the ratio is 0 at masked tokens in value and gradient."""
    weight = f32(mask)
    keep = weight != 0
    weight = jnp.where(keep, weight, 0.0)
    logps = jnp.where(keep, f32(logps), 0.0)
    ref_logps = jnp.where(keep, f32(ref_logps), 0.0)
    return (logps - ref_logps) * weight, weight


def token_implicit_rewards(
    policy_token_logps: ArrayLike,
    ref_token_logps: ArrayLike,
    mask: ArrayLike,
    *,
    beta: float = 0.1,
) -> jax.Array:
    r"""Per-token implicit reward `beta * (log pi(a_t | s_t) - log pi_ref(a_t | s_t))`.

        r_t = m_t * beta * (log pi_theta(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))

    Masked tokens (prompt, padding) get exactly 0 whatever the inputs hold there. The row sum is
    the sequence-level DPO implicit reward (`sequence_implicit_rewards`).

    Args:
      policy_token_logps: `[B, T]` per-token log-probs of the policy (e.g. DPO-trained).
      ref_token_logps: `[B, T]` per-token log-probs of the reference policy.
      mask: `[B, T]` 1 for completion tokens, 0 elsewhere.
      beta: KL-regularisation strength the policy was trained with.

    Returns:
      `[B, T]` float32 token rewards.

    References:
      Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
      arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> r = token_implicit_rewards(jnp.array([[-1.0, -2.0]]), jnp.array([[-2.0, -1.0]]),
      ...                            jnp.array([[1, 0]]), beta=0.5)
      >>> print([round(float(v), 4) for v in r[0]])
      [0.5, 0.0]
    """
    fn = "token_implicit_rewards"
    _check_tokens(
        fn,
        {"policy_token_logps": policy_token_logps, "ref_token_logps": ref_token_logps},
        mask,
        "policy_token_logps",
    )
    ratio, _ = _masked_log_ratio(policy_token_logps, ref_token_logps, mask)
    return beta * ratio


def sequence_implicit_rewards(
    policy_token_logps: ArrayLike,
    ref_token_logps: ArrayLike,
    mask: ArrayLike,
    *,
    beta: float = 0.1,
) -> jax.Array:
    r"""Sequence implicit reward: the masked sum of token implicit rewards.

        R(x, y) = beta * sum_t m_t (log pi_theta(y_t | s_t) - log pi_ref(y_t | s_t))
                = beta * (log pi_theta(y | x) - log pi_ref(y | x))

    Args:
      policy_token_logps: `[B, T]` per-token log-probs of the policy.
      ref_token_logps: `[B, T]` per-token log-probs of the reference policy.
      mask: `[B, T]` completion mask.
      beta: KL-regularisation strength.

    Returns:
      `[B]` float32 sequence rewards (the "rewards/chosen" or "rewards/rejected" of DPO logs).

    References:
      Rafailov et al., arXiv:2305.18290 (DPO); arXiv:2404.12358 (token-level view).

    Example:
      >>> import jax.numpy as jnp
      >>> r = sequence_implicit_rewards(jnp.array([[-1.0, -2.0]]), jnp.array([[-2.0, -1.5]]),
      ...                               jnp.ones((1, 2)), beta=0.5)
      >>> print(round(float(r[0]), 4))  # 0.5 * (-3 - (-3.5))
      0.25
    """
    rewards = token_implicit_rewards(policy_token_logps, ref_token_logps, mask, beta=beta)
    return jnp.sum(rewards, axis=-1)


def implicit_reward_margins(
    policy_token_logps: ArrayLike,
    ref_token_logps: ArrayLike,
    mask: ArrayLike,
    *,
    beta: float = 0.1,
) -> jax.Array:
    r"""DPO reward margins from the concatenated layout (chosen rows, then rejected rows).

        margin_i = R(x_i, y_w,i) - R(x_i, y_l,i)
                 = beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)))

    Row `i` of the first half is the chosen completion paired with row `B + i` of the second
    half, the layout of a `[2B, T]` forward pass over chosen and rejected sequences.

    Args:
      policy_token_logps: `[2B, T]` per-token policy log-probs, chosen rows first.
      ref_token_logps: `[2B, T]` per-token reference log-probs, same layout.
      mask: `[2B, T]` completion mask.
      beta: KL-regularisation strength.

    Returns:
      `[B]` float32 margins `beta * h` (the argument of DPO's `-log sigmoid`).

    References:
      Rafailov et al., arXiv:2305.18290; arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> pol = jnp.array([[-1.0], [-3.0]]); ref = jnp.array([[-2.0], [-2.0]])
      >>> h = implicit_reward_margins(pol, ref, jnp.ones((2, 1)), beta=0.5)
      >>> print(round(float(h[0]), 4))  # 0.5 * (1 - (-1))
      1.0
    """
    fn = "implicit_reward_margins"
    _check_tokens(
        fn,
        {"policy_token_logps": policy_token_logps, "ref_token_logps": ref_token_logps},
        mask,
        "policy_token_logps",
    )
    rows = jnp.shape(policy_token_logps)[0]
    if rows % 2:
        raise ValueError(
            f"{fn}: `policy_token_logps` must have an even number of rows (chosen then "
            f"rejected), got shape {tuple(jnp.shape(policy_token_logps))}."
        )
    rewards = sequence_implicit_rewards(policy_token_logps, ref_token_logps, mask, beta=beta)
    return rewards[: rows // 2] - rewards[rows // 2 :]


def paired_implicit_reward_margins(
    chosen_token_logps: ArrayLike,
    rejected_token_logps: ArrayLike,
    ref_chosen_token_logps: ArrayLike,
    ref_rejected_token_logps: ArrayLike,
    chosen_mask: ArrayLike,
    rejected_mask: ArrayLike,
    *,
    beta: float = 0.1,
) -> jax.Array:
    r"""DPO reward margins from separate chosen and rejected arrays.

        margin = beta * ((sum_t lw_t - sum_t ref_w,t) - (sum_t ll_t - sum_t ref_l,t))

    Chosen and rejected completions may be padded to different lengths `Tw` and `Tl`.

    Args:
      chosen_token_logps: `[B, Tw]` per-token policy log-probs of chosen completions.
      rejected_token_logps: `[B, Tl]` per-token policy log-probs of rejected completions.
      ref_chosen_token_logps: `[B, Tw]` per-token reference log-probs of chosen completions.
      ref_rejected_token_logps: `[B, Tl]` per-token reference log-probs of rejected completions.
      chosen_mask: `[B, Tw]` completion mask of chosen rows.
      rejected_mask: `[B, Tl]` completion mask of rejected rows.
      beta: KL-regularisation strength.

    Returns:
      `[B]` float32 margins `beta * h`.

    References:
      Rafailov et al., arXiv:2305.18290; arXiv:2404.12358.

    Example:
      >>> import jax.numpy as jnp
      >>> h = paired_implicit_reward_margins(
      ...     jnp.array([[-1.0, -1.0]]), jnp.array([[-3.0]]),
      ...     jnp.array([[-1.5, -1.5]]), jnp.array([[-2.0]]),
      ...     jnp.ones((1, 2)), jnp.ones((1, 1)), beta=0.5)
      >>> print(round(float(h[0]), 4))  # 0.5 * ((-2 + 3) - (-3 + 2))
      1.0
    """
    fn = "paired_implicit_reward_margins"
    _check_tokens(
        fn,
        {
            "chosen_token_logps": chosen_token_logps,
            "ref_chosen_token_logps": ref_chosen_token_logps,
        },
        chosen_mask,
        "chosen_token_logps",
    )
    _check_tokens(
        fn,
        {
            "rejected_token_logps": rejected_token_logps,
            "ref_rejected_token_logps": ref_rejected_token_logps,
        },
        rejected_mask,
        "rejected_token_logps",
    )
    if jnp.shape(chosen_token_logps)[0] != jnp.shape(rejected_token_logps)[0]:
        raise ValueError(
            f"{fn}: `rejected_token_logps` must have the batch size of `chosen_token_logps` "
            f"({jnp.shape(chosen_token_logps)[0]}), got {jnp.shape(rejected_token_logps)[0]}."
        )
    chosen = sequence_implicit_rewards(
        chosen_token_logps, ref_chosen_token_logps, chosen_mask, beta=beta
    )
    rejected = sequence_implicit_rewards(
        rejected_token_logps, ref_rejected_token_logps, rejected_mask, beta=beta
    )
    return chosen - rejected


def token_credit(token_rewards: ArrayLike, mask: ArrayLike) -> jax.Array:
    r"""Per-row normalised credit map for heat maps: `r_t / max_t |r_t|` over valid tokens.

    ::

        c_t = m_t * r_t / max_{s: m_s = 1} |r_s|

    Values lie in `[-1, 1]` with the sign of the token reward, so one colour scale fits every
    row; the most credited (or blamed) token of each row has magnitude 1. Rows whose valid
    rewards are all zero, and fully masked rows, map to 0 (with finite gradients).

    Args:
      token_rewards: `[B, T]` token rewards, e.g. from `token_implicit_rewards`.
      mask: `[B, T]` completion mask.

    Returns:
      `[B, T]` float32 credit map, 0 where masked.

    References:
      Rafailov, Hejna, Park, Finn, arXiv:2404.12358 (credit assignment).

    Example:
      >>> import jax.numpy as jnp
      >>> c = token_credit(jnp.array([[0.5, -2.0, 1.0, 9.0]]), jnp.array([[1, 1, 1, 0]]))
      >>> print([round(float(v), 4) for v in c[0]])
      [0.25, -1.0, 0.5, 0.0]
    """
    fn = "token_credit"
    _check_tokens(fn, {"token_rewards": token_rewards}, mask, "token_rewards")
    keep = f32(mask) != 0
    r = jnp.where(keep, f32(token_rewards), 0.0)
    scale = jnp.max(jnp.abs(r), axis=-1, keepdims=True)
    nonzero = scale > 0
    safe = jnp.where(nonzero, scale, 1.0)
    return jnp.where(nonzero, r / safe, 0.0)


def rto_token_rewards(
    dpo_token_logps: ArrayLike,
    ref_token_logps: ArrayLike,
    mask: ArrayLike,
    *,
    beta: float = 0.05,
    clip: float | None = 0.05,
) -> jax.Array:
    r"""RTO dense token reward: clipped DPO log-ratio, `clip(beta * log(pi_dpo / pi_ref))`.

        r_t = m_t * clip(beta * (log pi_dpo(a_t | s_t) - log pi_ref(a_t | s_t)), -c, c)

    Scaling comes first, then clipping to `[-clip, clip]`; `clip=None` disables clipping. This
    is only the DPO-derived part of the PPO reward in Reinforced Token Optimization; the KL
    penalty against the reference and the terminal reward-model score are added by the PPO reward
    composition, not here. Both log-prob arrays come from frozen models, so the result is meant
    as a constant reward (the gradient through the clip is zero outside the clip range).

    Args:
      dpo_token_logps: `[B, T]` per-token log-probs of the DPO-trained policy on sampled tokens.
      ref_token_logps: `[B, T]` per-token log-probs of the reference (SFT) policy.
      mask: `[B, T]` 1 for generated (action) tokens.
      beta: reward scale `beta_1` (0.05 in the reference scripts).
      clip: positive clip bound `c` (0.05 in the reference scripts), or None for no clipping.

    Returns:
      `[B, T]` float32 token rewards, 0 where masked.

    References:
      Zhong et al., "DPO Meets PPO: Reinforced Token Optimization for RLHF", arXiv:2404.18922.

    Example:
      >>> import jax.numpy as jnp
      >>> r = rto_token_rewards(jnp.array([[-1.0, -3.0, -2.0]]), jnp.array([[-2.0, -2.0, -2.1]]),
      ...                       jnp.ones((1, 3)), beta=0.05, clip=0.02)
      >>> print([round(float(v), 4) for v in r[0]])
      [0.02, -0.02, 0.005]
    """
    fn = "rto_token_rewards"
    _check_tokens(
        fn,
        {"dpo_token_logps": dpo_token_logps, "ref_token_logps": ref_token_logps},
        mask,
        "dpo_token_logps",
    )
    if clip is not None and isinstance(clip, int | float) and clip <= 0:
        raise ValueError(f"{fn}: `clip` must be positive or None, got {clip}.")
    weight = f32(mask)
    keep = weight != 0
    weight = jnp.where(keep, weight, 0.0)
    ratio = jnp.where(keep, f32(dpo_token_logps), 0.0) - jnp.where(keep, f32(ref_token_logps), 0.0)
    rewards = beta * ratio
    if clip is not None:
        rewards = jnp.clip(rewards, -clip, clip)
    return rewards * weight
