"""Returns, advantages, TD errors and soft Bellman operators as pure, jit-compiled scans.

Single-trajectory functions take time-major `[T]` arrays with rlax's names, argument order and
semantics (`lambda_returns`, `truncated_generalized_advantage_estimation`, `td_lambda`,
`retrace`, ...). Soft (entropy- and KL-regularised) values and backups, tabular solvers (soft
value iteration, soft policy evaluation, state visitation), the token-level MDP view of a
language model (Q, V and rewards from logits) and the PPO/RLHF token objectives complete the
package. Nothing here imports Flax.

Layouts. Each return and advantage function (`lambda_returns`, `discounted_returns`,
`n_step_bootstrapped_returns`, `truncated_generalized_advantage_estimation`) exists once, for
one trajectory, and two transforms apply it to batches, keeping its signature::

    time_major(lambda_returns)(r_t, discount_t, v_t, lambda_)             # [T, B] rollouts
    batch_major(lambda_returns)(r_t, discount_t, v_t, lambda_, mask=mask)  # [B, T] LM rows

`time_major(fn)` equals `jax.vmap(fn, in_axes=1, out_axes=1)` but scans the `[T, B]` arrays
directly with the in-place reverse loop, 1.1-1.6x faster on CPU than the vmapped scan.
`batch_major(fn)` removes masked steps from each row (the result equals compacting the row,
applying `fn` and scattering back, 0 at masked steps; masked values never reach the result or
its gradients) with one scan whose carry skips masked steps.

Why transforms: they replace per-function copies (`lambda_returns_time_major`, ...) with one
signature and one set of checks per function, two exported names instead of seven, and every
function in every layout (batch-major n-step returns are new). An `axis=` / `layout=` argument
on the single-trajectory functions would have left their rlax signatures carrying a mask and
an axis that rlax does not have; `jax.vmap` alone is not enough, because the time-major loop is
faster than a vmapped scan and a mask changes the recursion itself. The time-major and
batch-major paths compile to the same XLA programs as the former copies did. Other
per-trajectory functions (`td_lambda`, `retrace`, ...) batch with `jax.vmap`.
"""

from jaxpref.bellman._layouts import batch_major, time_major
from jaxpref.bellman._multistep import (
    discounted_returns,
    lambda_returns,
    n_step_bootstrapped_returns,
    truncated_generalized_advantage_estimation,
)
from jaxpref.bellman._ppo import (
    PPOAux,
    TokenAdvantages,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_whiten,
    ppo_clipped_surrogate_loss,
    ppo_clipped_value_loss,
    ppo_objective,
    rlhf_token_rewards,
    token_advantages,
)
from jaxpref.bellman._soft import (
    kl_regularized_bellman_backup,
    kl_regularized_policy,
    kl_regularized_q_learning,
    kl_regularized_value,
    soft_bellman_backup,
    soft_policy,
    soft_q_learning,
    soft_value,
)
from jaxpref.bellman._tabular import (
    SoftValueIterationResult,
    q_from_v,
    soft_bellman_operator,
    soft_bellman_residual,
    soft_policy_evaluation,
    soft_policy_evaluation_operator,
    soft_value_iteration,
    state_visitation,
)
from jaxpref.bellman._token_mdp import (
    TokenQDecomposition,
    token_implicit_rewards_from_logits,
    token_initial_values,
    token_q_decomposition,
    token_q_values,
    token_rewards_from_q,
    token_soft_bellman_residual,
    token_values,
)
from jaxpref.bellman._value_learning import (
    expected_sarsa,
    q_learning,
    retrace,
    td_lambda,
    td_learning,
)

__all__ = [
    "PPOAux",
    "SoftValueIterationResult",
    "TokenAdvantages",
    "TokenQDecomposition",
    "batch_major",
    "discounted_returns",
    "expected_sarsa",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_regularized_bellman_backup",
    "kl_regularized_policy",
    "kl_regularized_q_learning",
    "kl_regularized_value",
    "lambda_returns",
    "masked_whiten",
    "n_step_bootstrapped_returns",
    "ppo_clipped_surrogate_loss",
    "ppo_clipped_value_loss",
    "ppo_objective",
    "q_from_v",
    "q_learning",
    "retrace",
    "rlhf_token_rewards",
    "soft_bellman_backup",
    "soft_bellman_operator",
    "soft_bellman_residual",
    "soft_policy",
    "soft_policy_evaluation",
    "soft_policy_evaluation_operator",
    "soft_q_learning",
    "soft_value",
    "soft_value_iteration",
    "state_visitation",
    "td_lambda",
    "td_learning",
    "time_major",
    "token_advantages",
    "token_implicit_rewards_from_logits",
    "token_initial_values",
    "token_q_decomposition",
    "token_q_values",
    "token_rewards_from_q",
    "token_soft_bellman_residual",
    "token_values",
    "truncated_generalized_advantage_estimation",
]
