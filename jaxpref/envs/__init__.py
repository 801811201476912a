"""Testbeds with exact answers, written in JAX: environments, their rewards and optimal solutions.

* Tabular MDPs: random dense MDPs (`random_mdp`), gridworlds (`gridworld`), rollouts
  (`rollout`), the maximum-entropy optimum by soft value iteration (`soft_optimal_solution`) and
  exact policy returns (`policy_return`).
* `PreferenceBandit`: tabular contextual bandit with a closed-form DPO optimum
  (`optimal_policy_logits`), expected gold reward, win rates and KLs.
* `TokenTask`: a Markov reference language over a small vocabulary with a hidden per-token
  reward (every completion has a gold reward, every token a gold credit) and the exact
  KL-regularised token-level optimum (`token_optimal_policy_logits`, `token_optimal_values`).
* `LinearBandit`, `MultitaskLinearBandit`, `LinearMDP`: linear-feature tasks for randomized
  preference-based RL and multitask representation learning.

Pure functions and NamedTuples of arrays (no Flax, no state), so batches of environments are
`jax.vmap`-ed like any other array computation. Preference data (pairs, labels, segments,
prompts) is sampled from these testbeds by `jaxpref.data.synthetic`.
"""

from jaxpref.envs._bandit import (
    PreferenceBandit,
    expected_reward,
    kl_to_reference,
    make_preference_bandit,
    optimal_policy_logits,
    win_rate,
)
from jaxpref.envs._control import (
    SoftOptimal,
    policy_return,
    soft_optimal_solution,
)
from jaxpref.envs._linear import (
    LinearBandit,
    LinearMDP,
    MultitaskLinearBandit,
    as_preference_bandit,
    linear_mdp_to_tabular,
    make_linear_bandit,
    make_linear_mdp,
    make_multitask_linear_bandit,
    multitask_rewards,
    trajectory_features,
)
from jaxpref.envs._tabular import (
    TabularMDP,
    Trajectory,
    gridworld,
    random_mdp,
    rollout,
)
from jaxpref.envs._token import (
    TokenTask,
    make_token_task,
    sequence_logprobs_markov,
    token_expected_reward,
    token_gold_credit,
    token_kl_to_reference,
    token_optimal_policy_logits,
    token_optimal_values,
)

__all__ = [
    "LinearBandit",
    "LinearMDP",
    "MultitaskLinearBandit",
    "PreferenceBandit",
    "SoftOptimal",
    "TabularMDP",
    "TokenTask",
    "Trajectory",
    "as_preference_bandit",
    "expected_reward",
    "gridworld",
    "kl_to_reference",
    "linear_mdp_to_tabular",
    "make_linear_bandit",
    "make_linear_mdp",
    "make_multitask_linear_bandit",
    "make_preference_bandit",
    "make_token_task",
    "multitask_rewards",
    "optimal_policy_logits",
    "policy_return",
    "random_mdp",
    "rollout",
    "sequence_logprobs_markov",
    "soft_optimal_solution",
    "token_expected_reward",
    "token_gold_credit",
    "token_kl_to_reference",
    "token_optimal_policy_logits",
    "token_optimal_values",
    "trajectory_features",
    "win_rate",
]
