"""Small MDPs written in JAX for tests and experiments: random dense MDPs, gridworlds, rollouts.

Pure functions and NamedTuples of arrays (no Flax, no state), so batches of environments are
`jax.vmap`-ed like any other array computation.
"""

from jaxpref.envs._tabular import (
    TabularMDP,
    Trajectory,
    gridworld,
    random_mdp,
    rollout,
)

__all__ = [
    "TabularMDP",
    "Trajectory",
    "gridworld",
    "random_mdp",
    "rollout",
]
