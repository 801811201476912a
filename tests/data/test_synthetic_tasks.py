"""Synthetic tasks with ground truth: token task, CPL control tasks, linear bandits and MDPs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import envs
from jaxpref.data import synthetic as syn


def _softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _bt_check(prob_higher_is_chosen, higher_chosen):
    """The chosen completion is the higher-reward one with the predicted probability."""
    n = len(higher_chosen)
    want = float(np.mean(prob_higher_is_chosen))
    got = float(np.mean(higher_chosen))
    assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / n) + 1e-3, (got, want)


# --------------------------------------------------------------------------------------------
# Token-level task.


@pytest.fixture(scope="module")
def small_task():
    return syn.make_token_task(jax.random.key(0), vocab_size=3, reward_scale=1.0)


def test_gold_credit_hand_computed():
    r = jnp.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    task = syn.TokenTask(jnp.zeros(3), jnp.zeros((3, 3)), r)
    credit = syn.token_gold_credit(task, jnp.array([2, 0]), jnp.array([[0, 1, 1], [2, 2, 0]]))
    # prev 2 -> 0 (6), 0 -> 1 (1), 1 -> 1 (4); prev 0 -> 2 (2), 2 -> 2 (8), 2 -> 0 (6)
    np.testing.assert_array_equal(credit, [[6.0, 1.0, 4.0], [2.0, 8.0, 6.0]])


def test_sequence_logprobs_markov_hand_computed():
    logits = jnp.log(jnp.array([[0.5, 0.5], [0.1, 0.9]]))
    lp = syn.sequence_logprobs_markov(logits, jnp.array([1]), jnp.array([[1, 0, 0]]))
    np.testing.assert_allclose(lp, np.log([[0.9, 0.1, 0.5]]), rtol=1e-6)
    time_dep = jnp.stack([logits, logits[::-1]])
    lp = syn.sequence_logprobs_markov(time_dep, jnp.array([0]), jnp.array([[1, 1]]))
    np.testing.assert_allclose(lp, np.log([[0.5, 0.5]]), rtol=1e-6)


def test_token_optimum_matches_brute_force(small_task):
    beta, length, prev = 0.7, 3, 1
    logits = syn.token_optimal_policy_logits(small_task, beta=beta, length=length)
    ref = _softmax(small_task.ref_logits)
    r = np.asarray(small_task.token_reward, np.float64)
    seqs = list(itertools.product(range(3), repeat=length))
    log_w = []
    for y in seqs:
        p, s, total = 0.0, prev, 0.0
        for tok in y:
            p += np.log(ref[s, tok])
            total += r[s, tok]
            s = tok
        log_w.append(p + total / beta)
    target = _softmax(np.array(log_w))
    got = np.exp(
        syn.sequence_logprobs_markov(logits, jnp.full((len(seqs),), prev), jnp.array(seqs)).sum(-1)
    )
    np.testing.assert_allclose(got, target, rtol=1e-4, atol=1e-6)
    # V_0(prev) = beta log sum_y pi_ref(y) exp(R(y) / beta)
    v0 = syn.token_optimal_values(small_task, beta=beta, length=length)[0, prev]
    want = beta * np.log(np.sum(np.exp(np.array(log_w) - max(log_w)))) + beta * max(log_w)
    np.testing.assert_allclose(v0, want, rtol=1e-5)


def test_token_optimum_value_identity_and_optimality(small_task):
    beta, length = 0.5, 5
    prev = jnp.arange(3)
    star = syn.token_optimal_policy_logits(small_task, beta=beta, length=length)
    objective = lambda logits: (
        syn.token_expected_reward(logits, small_task, prev, length)
        - beta * syn.token_kl_to_reference(logits, small_task, prev, length)
    )
    v0 = syn.token_optimal_values(small_task, beta=beta, length=length)[0]
    np.testing.assert_allclose(objective(star), v0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(objective)(star), objective(star), rtol=1e-6)
    ref = jnp.broadcast_to(small_task.ref_logits, star.shape)
    assert bool(jnp.all(objective(ref) < v0))
    for i in range(3):
        other = star + 0.5 * jax.random.normal(jax.random.key(i), star.shape)
        assert bool(jnp.all(objective(other) < v0 + 1e-6))
    np.testing.assert_allclose(
        syn.token_kl_to_reference(ref, small_task, prev, length), 0.0, atol=1e-6
    )


def test_sampled_rewards_match_exact_expectation(small_task):
    beta, length, n = 0.5, 4, 4000
    star = syn.token_optimal_policy_logits(small_task, beta=beta, length=length)
    prev = jnp.zeros((n,), jnp.int32)
    y = syn.markov_sampler(star)(jax.random.key(3), prev, length)
    rewards = np.asarray(syn.token_gold_credit(small_task, prev, y).sum(-1))
    exact = float(syn.token_expected_reward(star, small_task, jnp.array([0]), length)[0])
    assert abs(rewards.mean() - exact) < 4 * rewards.std() / np.sqrt(n)


@pytest.mark.parametrize("temperature,noise", [(1.0, 0.0), (0.5, 0.2)])
def test_token_pairs_follow_bradley_terry(temperature, noise):
    task = syn.make_token_task(jax.random.key(1), vocab_size=8, reward_scale=0.5)
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
        syn.token_gold_credit(task, pairs.prompt[:, -1], pairs.chosen),
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
    task = syn.make_token_task(jax.random.key(4), vocab_size=6, reward_scale=0.7)
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
    task = syn.make_token_task(jax.random.key(0), vocab_size=4)
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


def _np_soft_vi(r, p, gamma, alpha, iters=2000):
    v = np.zeros(r.shape[0])
    for _ in range(iters):
        q = r + gamma * p @ v
        m = q.max(-1)
        v = m + alpha * np.log(np.exp((q - m[:, None]) / alpha).sum(-1))
    return q, v


def test_soft_optimal_solution_matches_numpy():
    mdp = envs.random_mdp(jax.random.key(0), 6, 3, discount=0.8)
    sol = syn.soft_optimal_solution(mdp, alpha=0.5, num_iterations=300)
    r, p = np.asarray(mdp.reward, np.float64), np.asarray(mdp.transitions, np.float64)
    q, v = _np_soft_vi(r, p, 0.8, 0.5)
    np.testing.assert_allclose(sol.v, v, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sol.q, q, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sol.advantage, 0.5 * sol.policy_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.nn.logsumexp(sol.policy_logits, -1), 0.0, atol=1e-5)


def test_policy_return_matches_iterative_evaluation():
    mdp = envs.random_mdp(jax.random.key(1), 5, 2, discount=0.9)
    logits = jax.random.normal(jax.random.key(2), (5, 2))
    pi = _softmax(logits)
    r, p = np.asarray(mdp.reward, np.float64), np.asarray(mdp.transitions, np.float64)
    v = np.zeros(5)
    for _ in range(2000):
        v = (pi * r).sum(-1) + 0.9 * np.einsum("sa,sat,t->s", pi, p, v)
    np.testing.assert_allclose(
        syn.policy_return(mdp, logits), v @ np.asarray(mdp.initial_distribution), rtol=1e-4
    )


def test_gridworld_optimal_segments_take_the_shortest_path():
    m = envs.gridworld(3, 4, walls=[(1, 1)], step_reward=-0.1)
    goal = 11
    sol = syn.soft_optimal_solution(m, alpha=0.01, num_iterations=200)
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
    sol = syn.soft_optimal_solution(mdp, alpha=alpha)
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
        syn.soft_optimal_solution(mdp, alpha=0.5).advantage
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
    b = syn.make_linear_bandit(jax.random.key(0), num_contexts=4, num_actions=5, dim=3)
    np.testing.assert_allclose(
        b.rewards, np.einsum("xad,d->xa", b.features, b.theta), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(jnp.linalg.norm(b.theta), 1.0, rtol=1e-5)
    pb = syn.as_preference_bandit(b)
    star = syn.optimal_policy_logits(pb, beta=0.1)
    assert bool(jnp.all(jnp.argmax(star, -1) == jnp.argmax(b.rewards, -1)))
    pairs = syn.sample_preference_pairs(jax.random.key(1), pb, 2000)
    d = np.asarray(
        pb.gold_reward[pairs.prompt, pairs.chosen] - pb.gold_reward[pairs.prompt, pairs.rejected]
    )
    _bt_check(1 / (1 + np.exp(-np.abs(d))), d > 0)


def test_multitask_bandit_shares_a_low_rank_representation():
    m = syn.make_multitask_linear_bandit(jax.random.key(0), num_tasks=5, dim=6, rank=2)
    np.testing.assert_allclose(m.representation.T @ m.representation, np.eye(2), atol=1e-5)
    thetas = np.asarray(m.representation @ m.heads.T).T
    assert np.linalg.matrix_rank(thetas, tol=1e-5) == 2
    np.testing.assert_allclose(
        syn.multitask_rewards(m), np.einsum("xad,md->mxa", m.features, thetas), rtol=1e-4, atol=1e-5
    )


def test_linear_mdp_and_trajectory_preferences():
    mdp = syn.make_linear_mdp(jax.random.key(0), num_states=6, num_actions=2, dim=3)
    tab = syn.linear_mdp_to_tabular(mdp)
    assert bool(jnp.all(tab.transitions >= 0))
    np.testing.assert_allclose(tab.transitions.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        tab.reward, np.einsum("sad,d->sa", mdp.features, mdp.theta), rtol=1e-5, atol=1e-6
    )
    good = syn.soft_optimal_solution(tab, alpha=0.05).policy_logits
    prefs = syn.sample_trajectory_preferences(
        jax.random.key(1), mdp, jnp.zeros((6, 2)), good, 3000, 5
    )
    phi = np.asarray(mdp.features)
    manual = phi[np.asarray(prefs.states_1), np.asarray(prefs.actions_1)].sum(1)
    np.testing.assert_allclose(prefs.features_1, manual, rtol=1e-5, atol=1e-6)
    z = np.asarray((prefs.features_1 - prefs.features_0) @ mdp.theta)
    np.testing.assert_allclose(prefs.prob_1, 1 / (1 + np.exp(-z)), rtol=1e-5)
    _bt_check(np.asarray(prefs.prob_1), np.asarray(prefs.label) == 1)
