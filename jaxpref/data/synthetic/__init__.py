"""Preference data sampled from testbeds with known ground truth (`jaxpref.data.synthetic`).

The testbeds themselves (their definitions, rewards and exact optima) live in `jaxpref.envs`;
this package only samples data from them, so every label has a known generating process:

* `sample_preference_pairs`: Bradley-Terry labelled pairs of a `jaxpref.envs.PreferenceBandit`.
* Token task (`jaxpref.envs.TokenTask`): prompts of the reference language (`sample_prompts`),
  completions from a Markov policy (`markov_sampler`), and pairs labelled by the gold reward
  with per-token gold credit (`sample_token_pairs`, `label_token_pairs`).
* Control tasks (`jaxpref.envs` tabular MDPs and gridworlds): behaviour segments
  (`sample_segments`) labelled by the regret (optimal advantage) preference model of CPL or by
  the reward model (`sample_segment_pairs`).
* Linear MDPs (`jaxpref.envs.LinearMDP`): trajectory preferences
  (`sample_trajectory_preferences`).
"""

from jaxpref.data.synthetic._bandit import (
    PreferencePairs,
    sample_preference_pairs,
)
from jaxpref.data.synthetic._control import (
    PreferenceModel,
    SegmentPairs,
    rollout_from_uniform,
    sample_segment_pairs,
    sample_segments,
    segment_scores,
)
from jaxpref.data.synthetic._linear import (
    TrajectoryPreferences,
    sample_trajectory_preferences,
)
from jaxpref.data.synthetic._token import (
    MarkovSampler,
    TokenPairs,
    label_token_pairs,
    markov_sampler,
    sample_prompts,
    sample_token_pairs,
)

__all__ = [
    "MarkovSampler",
    "PreferenceModel",
    "PreferencePairs",
    "SegmentPairs",
    "TokenPairs",
    "TrajectoryPreferences",
    "label_token_pairs",
    "markov_sampler",
    "rollout_from_uniform",
    "sample_preference_pairs",
    "sample_prompts",
    "sample_segment_pairs",
    "sample_segments",
    "sample_token_pairs",
    "sample_trajectory_preferences",
    "segment_scores",
]
