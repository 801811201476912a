"""Linear-feature bandits and linear MDPs.

* `LinearBandit`: reward `r(x, a) = <phi(x, a), theta>`; `as_preference_bandit` turns it into a
  `PreferenceBandit`, so pair sampling, the closed-form DPO optimum and win rates apply.
* `MultitaskLinearBandit`: `M` tasks sharing a low-rank representation,
  `theta_m = B w_m` with `B` `[d, k]` orthonormal (shared) and heads `w_m` `[k]`.
* `LinearMDP`: `P(s' | s, a) = <phi(s, a), mu(s')>`, `r(s, a) = <phi(s, a), theta>`, with every
  `phi(s, a)` on the simplex and every row of `mu` a distribution, so `P` is a valid kernel.
  Trajectory features are `phi(tau) = sum_h gamma^h phi(s_h, a_h)`; trajectory preferences
  `o ~ Bernoulli(sigmoid(<theta, phi(tau_1) - phi(tau_0)>))` are sampled by
  `jaxpref.data.synthetic.sample_trajectory_preferences`.

References:
  Wu, Sun, "Making RL with Preference-based Feedback Efficient via Randomization",
  arXiv 2310.14554; Lu et al., "Provable General Function Class Representation Learning in
  Multitask Bandits and MDPs", arXiv 2205.15701; Jin et al., "Provably Efficient Reinforcement
  Learning with Linear Function Approximation", arXiv 1907.05388.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref.envs._bandit import PreferenceBandit
from jaxpref.envs._tabular import TabularMDP

__all__ = [
    "LinearBandit",
    "LinearMDP",
    "MultitaskLinearBandit",
    "as_preference_bandit",
    "linear_mdp_to_tabular",
    "make_linear_bandit",
    "make_linear_mdp",
    "make_multitask_linear_bandit",
    "multitask_rewards",
    "trajectory_features",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class LinearBandit(NamedTuple):
    """A linear contextual bandit.

    Attributes:
      features: `[X, A, d]` features `phi(x, a)`.
      theta: `[d]` reward parameter.
    """

    features: jax.Array
    theta: jax.Array

    @property
    def rewards(self) -> jax.Array:
        """`[X, A]` rewards `<phi(x, a), theta>`."""
        return jnp.einsum("xad,d->xa", self.features, self.theta, precision=_HIGHEST)


class MultitaskLinearBandit(NamedTuple):
    """`M` linear bandits sharing features and a rank-`k` representation.

    Attributes:
      features: `[X, A, d]` features.
      representation: `[d, k]` shared representation `B` (orthonormal columns).
      heads: `[M, k]` task heads `w_m`.
    """

    features: jax.Array
    representation: jax.Array
    heads: jax.Array


class LinearMDP(NamedTuple):
    """A linear MDP with simplex features.

    Attributes:
      features: `[S, A, d]` features `phi(s, a)`, each on the probability simplex.
      mu: `[d, S]` next-state measures, each row a distribution.
      theta: `[d]` reward parameter.
      initial_distribution: `[S]` initial-state distribution.
      discount: scalar discount.
    """

    features: jax.Array
    mu: jax.Array
    theta: jax.Array
    initial_distribution: jax.Array
    discount: jax.Array


def _unit(v):
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("num_contexts", "num_actions", "dim"))
def make_linear_bandit(
    key, *, num_contexts: int = 32, num_actions: int = 8, dim: int = 4, theta_norm: float = 1.0
) -> LinearBandit:
    """Gaussian features `N(0, 1)` and `theta` uniform on the sphere of radius `theta_norm`.

    Args:
      key: PRNG key.
      num_contexts: number of contexts `X` (static).
      num_actions: number of actions `A` per context (static).
      dim: feature dimension `d` (static).
      theta_norm: Euclidean norm of `theta`.

    Returns:
      `LinearBandit` with `features` `[X, A, d]` and `theta` `[d]`.

    References:
      Wu, Sun, "Making RL with Preference-based Feedback Efficient via Randomization",
      arXiv 2310.14554.

    Example:
      >>> import jax
      >>> b = make_linear_bandit(jax.random.key(0), num_contexts=3, num_actions=4, dim=2)
      >>> print(b.rewards.shape)
      (3, 4)
    """
    z = jax.random.normal(key, (num_contexts * num_actions + 1, dim))
    return LinearBandit(
        features=z[:-1].reshape(num_contexts, num_actions, dim),
        theta=theta_norm * _unit(z[-1]),
    )


def as_preference_bandit(bandit: LinearBandit, ref_logits=None) -> PreferenceBandit:
    """The `PreferenceBandit` with gold reward `<phi, theta>` and reference `ref_logits`.

    Args:
      bandit: the linear bandit.
      ref_logits: `[X, A]` reference logits; None is uniform.

    Returns:
      `PreferenceBandit`.

    References:
      Wu, Sun, "Making RL with Preference-based Feedback Efficient via Randomization",
      arXiv 2310.14554.

    Example:
      >>> import jax.numpy as jnp
      >>> b = LinearBandit(jnp.array([[[1.0, 0.0], [0.0, 1.0]]]), jnp.array([2.0, -1.0]))
      >>> print(as_preference_bandit(b).gold_reward)
      [[ 2. -1.]]
    """
    rewards = bandit.rewards
    ref = jnp.zeros_like(rewards) if ref_logits is None else jnp.asarray(ref_logits)
    return PreferenceBandit(gold_reward=rewards, ref_logits=ref)


@functools.partial(
    jax.jit, static_argnames=("num_tasks", "num_contexts", "num_actions", "dim", "rank")
)
def make_multitask_linear_bandit(
    key,
    *,
    num_tasks: int = 4,
    num_contexts: int = 16,
    num_actions: int = 6,
    dim: int = 8,
    rank: int = 2,
) -> MultitaskLinearBandit:
    """Shared Gaussian features, an orthonormal `[d, k]` representation, Gaussian unit heads.

    Features `phi(x, a) ~ N(0, I_d)` are shared by every task; the representation `B` is the Q
    factor of a Gaussian `[d, k]` matrix (orthonormal columns); each head `w_m` is uniform on the
    unit sphere of `R^k`. Task `m` has the unit-norm parameter `theta_m = B w_m` and reward
    `<phi(x, a), theta_m>` (`multitask_rewards`).

    Args:
      key: PRNG key.
      num_tasks: number of tasks `M` (static).
      num_contexts: number of contexts `X` (static).
      num_actions: number of actions `A` per context (static).
      dim: feature dimension `d` (static).
      rank: rank `k` of the shared representation, `1 <= k <= d` (static).

    Returns:
      `MultitaskLinearBandit` with `features` `[X, A, d]`, `representation` `[d, k]` and
      `heads` `[M, k]`.

    Raises:
      ValueError: if `rank` is not in `[1, dim]`.

    References:
      Lu et al., "Provable General Function Class Representation Learning in Multitask Bandits and
      MDPs", arXiv 2205.15701.

    Example:
      >>> import jax
      >>> m = make_multitask_linear_bandit(jax.random.key(0), num_tasks=3, dim=5, rank=2)
      >>> print(multitask_rewards(m).shape)
      (3, 16, 6)
    """
    if not 1 <= rank <= dim:
        raise ValueError(f"make_multitask_linear_bandit: need 1 <= rank <= dim, got {rank}, {dim}.")
    n_f, n_b = num_contexts * num_actions * dim, dim * rank
    z = jax.random.normal(key, (n_f + n_b + num_tasks * rank,))
    b, _ = jnp.linalg.qr(z[n_f : n_f + n_b].reshape(dim, rank))
    return MultitaskLinearBandit(
        features=z[:n_f].reshape(num_contexts, num_actions, dim),
        representation=b,
        heads=_unit(z[n_f + n_b :].reshape(num_tasks, rank)),
    )


@jax.jit
def multitask_rewards(bandit: MultitaskLinearBandit):
    """`[M, X, A]` rewards `<phi(x, a), B w_m>` of every task.

    Args:
      bandit: the multitask bandit.

    Returns:
      `[M, X, A]` float32 rewards; `[m]` is the reward table of task `m`.

    References:
      Lu et al., "Provable General Function Class Representation Learning in Multitask Bandits and
      MDPs", arXiv 2205.15701.

    Example:
      >>> import jax.numpy as jnp
      >>> m = MultitaskLinearBandit(jnp.ones((1, 1, 2)), jnp.eye(2), jnp.array([[1.0, 2.0]]))
      >>> print(multitask_rewards(m))
      [[[3.]]]
    """
    thetas = jnp.einsum("dk,mk->md", bandit.representation, bandit.heads, precision=_HIGHEST)
    return jnp.einsum("xad,md->mxa", bandit.features, thetas, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("num_states", "num_actions", "dim"))
def make_linear_mdp(
    key,
    *,
    num_states: int = 10,
    num_actions: int = 3,
    dim: int = 4,
    discount: float = 0.9,
    temperature: float = 1.0,
) -> LinearMDP:
    """A random linear MDP with simplex features, rewards in `(-1, 1)` and a uniform start.

    Features `phi(s, a) = softmax(z / temperature)` and measures `mu_i = softmax(z' / temperature)`
    from Gaussian `z, z'`, and `theta = tanh(N(0, I))` (so rewards lie in `(-1, 1)`).

    Args:
      key: PRNG key.
      num_states: number of states `S` (static).
      num_actions: number of actions `A` (static).
      dim: feature dimension `d` (static).
      discount: discount stored in the MDP.
      temperature: softmax temperature of features and measures (smaller = peakier).

    Returns:
      `LinearMDP` with `features` `[S, A, d]`, `mu` `[d, S]`, `theta` `[d]`,
      `initial_distribution` `[S]` and a scalar `discount`.

    References:
      Jin et al., "Provably Efficient Reinforcement Learning with Linear Function Approximation",
      arXiv 1907.05388; Wu, Sun, arXiv 2310.14554 (trajectory preferences).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = make_linear_mdp(jax.random.key(0), num_states=5, num_actions=2, dim=3)
      >>> print(bool(jnp.allclose(linear_mdp_to_tabular(m).transitions.sum(-1), 1.0, atol=1e-5)))
      True
    """
    n_f, n_m = num_states * num_actions * dim, dim * num_states
    z = jax.random.normal(key, (n_f + n_m + dim,))
    features = jax.nn.softmax(z[:n_f].reshape(num_states, num_actions, dim) / temperature, -1)
    mu = jax.nn.softmax(z[n_f : n_f + n_m].reshape(dim, num_states) / temperature, -1)
    return LinearMDP(
        features=features,
        mu=mu,
        theta=jnp.tanh(z[n_f + n_m :]),
        initial_distribution=jnp.full((num_states,), 1.0 / num_states),
        discount=jnp.asarray(discount, jnp.float32),
    )


@jax.jit
def linear_mdp_to_tabular(mdp: LinearMDP) -> TabularMDP:
    """The tabular form: `reward = phi theta` `[S, A]`, `transitions = phi mu` `[S, A, S]`.

    Args:
      mdp: the linear MDP.

    Returns:
      `TabularMDP` with `reward` `[S, A]`, `transitions` `[S, A, S]`, and the initial
      distribution and discount of `mdp`.

    References:
      Jin et al., "Provably Efficient Reinforcement Learning with Linear Function Approximation",
      arXiv 1907.05388; Wu, Sun, arXiv 2310.14554 (trajectory preferences).

    Example:
      >>> import jax.numpy as jnp
      >>> m = LinearMDP(jnp.ones((1, 1, 1)), jnp.ones((1, 1)), jnp.array([0.5]), jnp.ones(1),
      ...               jnp.asarray(0.9))
      >>> print(linear_mdp_to_tabular(m).reward)
      [[0.5]]
    """
    return TabularMDP(
        reward=jnp.einsum("sad,d->sa", mdp.features, mdp.theta, precision=_HIGHEST),
        transitions=jnp.einsum("sad,dt->sat", mdp.features, mdp.mu, precision=_HIGHEST),
        initial_distribution=mdp.initial_distribution,
        discount=mdp.discount,
    )


@jax.jit
def trajectory_features(mdp: LinearMDP, states, actions, *, discount: float = 1.0):
    """`[N, d]` trajectory features `sum_h gamma^h phi(s_h, a_h)`.

    Args:
      mdp: the linear MDP.
      states: `[N, H]` int states.
      actions: `[N, H]` int actions.
      discount: `gamma`.

    Returns:
      `[N, d]` float32 features.

    References:
      Jin et al., "Provably Efficient Reinforcement Learning with Linear Function Approximation",
      arXiv 1907.05388; Wu, Sun, arXiv 2310.14554 (trajectory preferences).

    Example:
      >>> import jax.numpy as jnp
      >>> m = LinearMDP(jnp.eye(2)[None], jnp.ones((2, 1)), jnp.zeros(2), jnp.ones(1), 0.9)
      >>> print(trajectory_features(m, jnp.array([[0, 0]]), jnp.array([[0, 1]])))
      [[1. 1.]]
    """
    phi = mdp.features[states, actions]  # [N, H, d]
    weights = discount ** jnp.arange(phi.shape[1], dtype=jnp.float32)
    return jnp.einsum("nhd,h->nd", phi, weights, precision=_HIGHEST)
