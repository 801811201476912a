"""Data sampled from the token, control and linear testbeds: Bradley-Terry labels, gold credit,
segments and trajectory preferences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import envs
from jaxpref.data import synthetic as syn


def _bt_check(prob_higher_is_chosen, higher_chosen):
    """The chosen completion is the higher-reward one with the predicted probability."""
    n = len(higher_chosen)
    want = float(np.mean(prob_higher_is_chosen))
    got = float(np.mean(higher_chosen))
    assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / n) + 1e-3, (got, want)


# --------------------------------------------------------------------------------------------
# Token task.


@pytest.fixture(scope="module")
def small_task():
    return envs.make_token_task(jax.random.key(0), vocab_size=3, reward_scale=1.0)


def test_sampled_rewards_match_exact_expectation(small_task):
    beta, length, n = 0.5, 4, 4000
    star = envs.token_optimal_policy_logits(small_task, beta=beta, length=length)
    prev = jnp.zeros((n,), jnp.int32)
    y = syn.markov_sampler(star)(jax.random.key(3), prev, length)
    rewards = np.asarray(envs.token_gold_credit(small_task, prev, y).sum(-1))
    exact = float(envs.token_expected_reward(star, small_task, jnp.array([0]), length)[0])
    assert abs(rewards.mean() - exact) < 4 * rewards.std() / np.sqrt(n)


@pytest.mark.parametrize("temperature,noise", [(1.0, 0.0), (0.5, 0.2)])
def test_token_pairs_follow_bradley_terry(temperature, noise):
    task = envs.make_token_task(jax.random.key(1), vocab_size=8, reward_scale=0.5)
    pairs = syn.sample_token_pairs(
        jax.random.key(2),
        task,
        syn.markov_sampler(task.ref_logits),
        4000,
        prompt_length=3,
        completion_length=6,
        temperature=temperature,
        label_noise=noise,
    )
    np.testing.assert_allclose(pairs.chosen_credit.sum(-1), pairs.chosen_reward, rtol=1e-5)
    np.testing.assert_allclose(
        pairs.chosen_credit,
        envs.token_gold_credit(task, pairs.prompt[:, -1], pairs.chosen),
        rtol=1e-6,
    )
    d = np.asarray(pairs.chosen_reward - pairs.rejected_reward)
    keep = np.abs(d) > 1e-6
    a = np.abs(d[keep]) / temperature
    p_high = (1 - noise) / (1 + np.exp(-a)) + noise / (1 + np.exp(a))
    _bt_check(p_high, d[keep] > 0)
    want_prob = (1 - noise) / (1 + np.exp(-d / temperature)) + noise / (1 + np.exp(d / temperature))
    np.testing.assert_allclose(pairs.prob_chosen, want_prob, rtol=1e-5)
    assert pairs.prompt.shape == (4000, 3) and pairs.chosen.dtype == jnp.int32


def test_label_token_pairs_labels_given_completions_by_bradley_terry():
    task = envs.make_token_task(jax.random.key(4), vocab_size=6, reward_scale=0.7)
    n, length = 4000, 5
    prompt = syn.sample_prompts(jax.random.key(5), task, n, 3)
    a = jax.random.randint(jax.random.key(6), (n, length), 0, 6)
    b = jax.random.randint(jax.random.key(7), (n, length), 0, 6)
    pairs = syn.label_token_pairs(jax.random.key(8), task, prompt, a, b, temperature=0.5)
    r = np.asarray(task.token_reward)
    prev = np.asarray(prompt[:, -1])

    def gold(y):
        y = np.asarray(y)
        prevs = np.concatenate([prev[:, None], y[:, :-1]], axis=1)
        return r[prevs, y].sum(-1)

    ra, rb = gold(a), gold(b)
    a_first = np.all(np.asarray(pairs.chosen) == np.asarray(a), axis=1)
    assert np.all(a_first | np.all(np.asarray(pairs.chosen) == np.asarray(b), axis=1))
    np.testing.assert_allclose(pairs.chosen_reward, np.where(a_first, ra, rb), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        pairs.rejected_reward, np.where(a_first, rb, ra), rtol=1e-5, atol=1e-5
    )
    d = ra - rb
    keep = np.abs(d) > 1e-6
    p_high = 1 / (1 + np.exp(-np.abs(d[keep]) / 0.5))
    _bt_check(p_high, (d[keep] > 0) == a_first[keep])


def test_label_token_pairs_rejects_bad_shapes_and_settings():
    task = envs.make_token_task(jax.random.key(0), vocab_size=4)
    prompt, y = jnp.zeros((3, 2), jnp.int32), jnp.zeros((3, 4), jnp.int32)
    with pytest.raises(ValueError, match="label_token_pairs"):
        syn.label_token_pairs(jax.random.key(0), task, prompt, y, y[:, :3])
    with pytest.raises(ValueError, match="2 prompts but 3"):
        syn.label_token_pairs(jax.random.key(0), task, prompt[:2], y, y)
    with pytest.raises(ValueError, match="label_noise"):
        syn.label_token_pairs(jax.random.key(0), task, prompt, y, y, label_noise=0.7)
    with pytest.raises(ValueError, match="temperature"):
        syn.label_token_pairs(jax.random.key(0), task, prompt, y, y, temperature=0.0)


# --------------------------------------------------------------------------------------------
# Control tasks.


def test_gridworld_optimal_segments_take_the_shortest_path():
    m = envs.gridworld(3, 4, walls=[(1, 1)], step_reward=-0.1)
    goal = 11
    sol = envs.soft_optimal_solution(m, alpha=0.01, num_iterations=200)
    greedy = jnp.where(sol.policy_logits == sol.policy_logits.max(-1, keepdims=True), 0.0, -1e9)
    states, actions = syn.sample_segments(jax.random.key(0), m, greedy, jnp.array([0, 0]), 7)
    assert (np.asarray(states[:, 5]) == goal).all()  # shortest path from (0, 0): 5 moves
    t = np.asarray(m.transitions)
    s, a = np.asarray(states), np.asarray(actions)
    assert (t[s[:, :-1], a[:, :-1], s[:, 1:]] == 1).all()


def test_segment_scores_and_cpl_identity():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    s, a = jnp.array([[0, 1, 1]]), jnp.array([[1, 0, 1]])
    np.testing.assert_allclose(
        syn.segment_scores(x, s, a, discount=0.5), [2.0 + 0.5 * 3.0 + 0.25 * 4.0]
    )
    mdp = envs.random_mdp(jax.random.key(4), 5, 3)
    alpha = 0.3
    sol = envs.soft_optimal_solution(mdp, alpha=alpha)
    pairs = syn.sample_segment_pairs(
        jax.random.key(5), mdp, jnp.zeros((5, 3)), 16, 4, alpha=alpha, solution=sol
    )
    logp = jax.nn.log_softmax(sol.policy_logits, -1)
    # regret score = sum_t A*(s_t, a_t) = alpha * sum_t log pi*(a_t | s_t)
    np.testing.assert_allclose(
        pairs.score_chosen,
        alpha * logp[pairs.states_chosen, pairs.actions_chosen].sum(-1),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("preference", ["regret", "reward"])
def test_segment_labels_follow_bradley_terry(preference):
    mdp = envs.gridworld(3, 3, slip=0.1, step_reward=-0.1)
    pairs = syn.sample_segment_pairs(
        jax.random.key(6),
        mdp,
        jnp.zeros((9, 4)),
        3000,
        5,
        preference=syn.PreferenceModel(preference),
        alpha=0.5,
        label_noise=0.1,
    )
    table = (
        envs.soft_optimal_solution(mdp, alpha=0.5).advantage
        if preference == "regret"
        else mdp.reward
    )
    np.testing.assert_allclose(
        pairs.score_rejected,
        syn.segment_scores(table, pairs.states_rejected, pairs.actions_rejected),
        rtol=1e-5,
    )
    d = np.asarray(pairs.score_chosen - pairs.score_rejected)
    keep = np.abs(d) > 1e-6
    a = np.abs(d[keep])
    _bt_check(0.9 / (1 + np.exp(-a)) + 0.1 / (1 + np.exp(a)), d[keep] > 0)
    # segments are real rollouts: every step follows a transition with positive probability
    s, act = np.asarray(pairs.states_chosen), np.asarray(pairs.actions_chosen)
    assert (np.asarray(mdp.transitions)[s[:, :-1], act[:, :-1], s[:, 1:]] > 0).all()


# --------------------------------------------------------------------------------------------
# Linear bandits and MDPs.


def test_linear_bandit_composes_with_preference_bandit():
    b = envs.make_linear_bandit(jax.random.key(0), num_contexts=4, num_actions=5, dim=3)
    np.testing.assert_allclose(
        b.rewards, np.einsum("xad,d->xa", b.features, b.theta), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(jnp.linalg.norm(b.theta), 1.0, rtol=1e-5)
    pb = envs.as_preference_bandit(b)
    star = envs.optimal_policy_logits(pb, beta=0.1)
    assert bool(jnp.all(jnp.argmax(star, -1) == jnp.argmax(b.rewards, -1)))
    pairs = syn.sample_preference_pairs(jax.random.key(1), pb, 2000)
    d = np.asarray(
        pb.gold_reward[pairs.prompt, pairs.chosen] - pb.gold_reward[pairs.prompt, pairs.rejected]
    )
    _bt_check(1 / (1 + np.exp(-np.abs(d))), d > 0)


def test_linear_mdp_and_trajectory_preferences():
    mdp = envs.make_linear_mdp(jax.random.key(0), num_states=6, num_actions=2, dim=3)
    tab = envs.linear_mdp_to_tabular(mdp)
    assert bool(jnp.all(tab.transitions >= 0))
    np.testing.assert_allclose(tab.transitions.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        tab.reward, np.einsum("sad,d->sa", mdp.features, mdp.theta), rtol=1e-5, atol=1e-6
    )
    good = envs.soft_optimal_solution(tab, alpha=0.05).policy_logits
    prefs = syn.sample_trajectory_preferences(
        jax.random.key(1), mdp, jnp.zeros((6, 2)), good, 3000, 5
    )
    phi = np.asarray(mdp.features)
    manual = phi[np.asarray(prefs.states_1), np.asarray(prefs.actions_1)].sum(1)
    np.testing.assert_allclose(prefs.features_1, manual, rtol=1e-5, atol=1e-6)
    z = np.asarray((prefs.features_1 - prefs.features_0) @ mdp.theta)
    np.testing.assert_allclose(prefs.prob_1, 1 / (1 + np.exp(-z)), rtol=1e-5)
    _bt_check(np.asarray(prefs.prob_1), np.asarray(prefs.label) == 1)
