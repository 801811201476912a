"""Synthetic preference tasks with known ground truth (`jaxpref.data.synthetic`).

Seeded generators whose answers are exact, so experiments can be scored against the truth:

* `PreferenceBandit`: tabular contextual bandit with a closed-form DPO optimum, win rates and KLs.
* `TokenTask`: a Markov reference language over a small vocabulary with a hidden per-token reward
  (every completion has a gold reward, every token a gold credit), Bradley-Terry labelled pairs
  sampled from any policy, and the exact KL-regularised token-level optimum.
* Control tasks (`jaxpref.envs` tabular MDPs and gridworlds): behaviour segments labelled by the
  regret (optimal advantage) preference model of CPL or by the reward model.
* `LinearBandit`, `MultitaskLinearBandit`, `LinearMDP`: linear-feature tasks for randomized
  preference-based RL and multitask representation learning.
"""

from jaxpref.data.synthetic._bandit import *  # noqa: F403
from jaxpref.data.synthetic._control import *  # noqa: F403
from jaxpref.data.synthetic._linear import *  # noqa: F403
from jaxpref.data.synthetic._token import *  # noqa: F403
