"""Returns, advantages, TD errors and soft Bellman operators as pure, jit-compiled scans.

Single-trajectory functions take time-major `[T]` arrays with rlax's names, argument order and
semantics (`lambda_returns`, `truncated_generalized_advantage_estimation`, `td_lambda`,
`retrace`, ...); `*_time_major` variants scan `[T, B]` rollouts directly and `*_batch_major`
variants take language-model rows `[B, T]` with a mask. Soft (entropy- and KL-regularised)
values and backups, tabular solvers (soft value iteration, soft policy evaluation, state
visitation), the token-level MDP view of a language model (Q, V and rewards from logits) and
the PPO/RLHF token objectives complete the package. Nothing here imports Flax.
"""

from jaxpref.bellman._layouts import (
    discounted_returns_batch_major,
    discounted_returns_time_major,
    lambda_returns_batch_major,
    lambda_returns_time_major,
    n_step_bootstrapped_returns_time_major,
    truncated_generalized_advantage_estimation_batch_major,
    truncated_generalized_advantage_estimation_time_major,
)
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
    "discounted_returns",
    "discounted_returns_batch_major",
    "discounted_returns_time_major",
    "expected_sarsa",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_regularized_bellman_backup",
    "kl_regularized_policy",
    "kl_regularized_q_learning",
    "kl_regularized_value",
    "lambda_returns",
    "lambda_returns_batch_major",
    "lambda_returns_time_major",
    "masked_whiten",
    "n_step_bootstrapped_returns",
    "n_step_bootstrapped_returns_time_major",
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
    "token_advantages",
    "token_implicit_rewards_from_logits",
    "token_initial_values",
    "token_q_decomposition",
    "token_q_values",
    "token_rewards_from_q",
    "token_soft_bellman_residual",
    "token_values",
    "truncated_generalized_advantage_estimation",
    "truncated_generalized_advantage_estimation_batch_major",
    "truncated_generalized_advantage_estimation_time_major",
]
