"""Tests of the reward-model losses: Bradley-Terry, Plackett-Luce, ranking hinge, λ-Harmonic."""

import collections
import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxpref.losses import (
    bradley_terry_loss,
    harmonic_reward,
    plackett_luce_loss,
    ranking_hinge_loss,
)

B = 6

# Plackett-Luce under jit: one compilation per shape instead of one per primitive.
_pl = jax.jit(plackett_luce_loss)


def _np_logsig(z):
    return -np.logaddexp(0.0, -np.asarray(z, np.float64))


def _rewards(seed=0, b=B):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(0.0, 2.0, size=b).astype(np.float32),
        rng.normal(0.0, 2.0, size=b).astype(np.float32),
    )


def _np_pl(scores, order, present):
    """Plackett-Luce NLL of one list by direct enumeration of the present items."""
    ranked = [scores[i] for i in order if present[i]]
    total = 0.0
    for j in range(len(ranked)):
        tail = np.asarray(ranked[j:], np.float64)
        total -= ranked[j] - (np.max(tail) + np.log(np.sum(np.exp(tail - np.max(tail)))))
    return total


# ------------------------------------------------------------------------------- Bradley-Terry


def test_bt_hand_values():
    rw, rl = _rewards(1)
    margin = np.linspace(0.0, 1.0, B).astype(np.float32)
    got = bradley_terry_loss(rw, rl, margin=margin, center_rewards_coefficient=0.01)
    want = (
        -_np_logsig(rw.astype(np.float64) - rl - margin) + 0.01 * (rw.astype(np.float64) + rl) ** 2
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got.dtype == jnp.float32 and got.shape == (B,)
    np.testing.assert_allclose(
        bradley_terry_loss(rw, rl, margin=0.5),
        -_np_logsig(rw.astype(np.float64) - rl - 0.5),
        rtol=1e-5,
        atol=1e-7,
    )


def test_bt_limit_no_margin_no_centering():
    rw, rl = _rewards(2)
    want = -_np_logsig(rw.astype(np.float64) - rl)
    np.testing.assert_allclose(bradley_terry_loss(rw, rl), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        bradley_terry_loss(rw, rl, margin=0.0, center_rewards_coefficient=None), want, rtol=1e-5
    )


def test_bt_large_gaps_stable():
    rw = np.array([200.0, -200.0], np.float32)
    rl = np.zeros(2, np.float32)
    got = bradley_terry_loss(rw, rl)
    np.testing.assert_allclose(got, [0.0, 200.0], rtol=1e-6, atol=1e-30)
    g = jax.grad(lambda a: jnp.sum(bradley_terry_loss(a, rl)))(rw)
    np.testing.assert_allclose(g, [0.0, -1.0], atol=1e-30)


def _trl_reward_loss(rw, rl, margin, center):
    """Runs TRL's real `RewardTrainer.compute_loss` on a "model" that returns given rewards."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.trainer.reward_trainer import RewardTrainer

    rewards = torch.tensor(np.concatenate([rw, rl]))

    def model(input_ids, **_):
        # Row i of the batch scores as rewards[input_ids[i, 0]].
        return types.SimpleNamespace(logits=rewards[input_ids[:, 0]][:, None])

    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(center_rewards_coefficient=center),
        accelerator=types.SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    n = 2 * len(rw)
    inputs = {
        "input_ids": torch.arange(n)[:, None].repeat(1, 3),
        "attention_mask": torch.ones(n, 3, dtype=torch.long),
    }
    if margin is not None:
        inputs["margin"] = torch.tensor(margin)
    return float(RewardTrainer.compute_loss(trainer, model, inputs))


@pytest.mark.parametrize("with_margin,center", [(False, None), (True, None), (True, 0.01)])
def test_bt_matches_trl(with_margin, center):
    rw, rl = _rewards(3, b=10)
    margin = np.random.default_rng(4).uniform(0, 1, 10).astype(np.float32) if with_margin else None
    want = _trl_reward_loss(rw, rl, margin, center)
    got = bradley_terry_loss(rw, rl, margin=margin, center_rewards_coefficient=center)
    np.testing.assert_allclose(float(jnp.mean(got)), want, rtol=1e-5)


# ------------------------------------------------------------------------------- Plackett-Luce


def test_pl_literal_value():
    # scores [2, 0, 1], order [0, 2, 1]: -(2 - lse(2,1,0)) - (1 - lse(1,0)) - 0
    got = _pl(jnp.array([[2.0, 0.0, 1.0]]), jnp.array([[0, 2, 1]]))
    want = -(2 - np.log(np.exp(2) + np.exp(1) + 1)) - (1 - np.log(np.exp(1) + 1))
    np.testing.assert_allclose(got, [want], rtol=1e-6)


def test_pl_hand_values_random():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(4, 5)).astype(np.float32)
    order = np.stack([rng.permutation(5) for _ in range(4)]).astype(np.int32)
    present = np.ones((4, 5), bool)
    want = [_np_pl(scores[b], order[b], present[b]) for b in range(4)]
    np.testing.assert_allclose(_pl(scores, order), want, rtol=1e-5)
    np.testing.assert_allclose(_pl(scores, order, present), want, rtol=1e-5)


def test_pl_is_a_distribution_over_rankings():
    scores = np.array([[0.3, -1.2, 2.0, 0.7]], np.float32)
    perms = np.array(list(itertools.permutations(range(4))), np.int32)
    losses = jax.vmap(lambda o: _pl(scores, o[None])[0])(perms)
    np.testing.assert_allclose(np.sum(np.exp(-np.asarray(losses, np.float64))), 1.0, rtol=1e-5)


def test_pl_two_items_is_bradley_terry():
    rw, rl = _rewards(6)
    scores = np.stack([rw, rl], axis=1)
    order = np.tile(np.array([[0, 1]], np.int32), (B, 1))
    np.testing.assert_allclose(_pl(scores, order), bradley_terry_loss(rw, rl), rtol=1e-5, atol=1e-7)
    # Same lists with the chosen item stored second.
    flipped = np.stack([rl, rw], axis=1)
    np.testing.assert_allclose(
        _pl(flipped, order[:, ::-1]),
        bradley_terry_loss(rw, rl),
        rtol=1e-5,
        atol=1e-7,
    )


def test_pl_ragged_masked_equals_filtered():
    rng = np.random.default_rng(7)
    k = 5
    scores = rng.normal(0, 2, size=(4, k)).astype(np.float32)
    order = np.stack([rng.permutation(k) for _ in range(4)]).astype(np.int32)
    present = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
    # Absent items get garbage scores: they must not matter.
    scores = np.where(present, scores, 1e4).astype(np.float32)
    got = _pl(scores, order, present)
    for b in range(4):
        keep = [i for i in order[b] if present[b, i]]
        sub_scores = scores[b, keep][None]
        sub_order = np.arange(len(keep), dtype=np.int32)[None]
        np.testing.assert_allclose(got[b], _pl(sub_scores, sub_order)[0], rtol=1e-5)
        np.testing.assert_allclose(got[b], _np_pl(scores[b], order[b], present[b]), rtol=1e-5)


def test_pl_empty_and_single_item_rows_zero_with_finite_grads():
    scores = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0], [1.0, 1.0, 1.0]], np.float32)
    order = np.array([[2, 1, 0], [0, 1, 2], [1, 0, 2]], np.int32)
    present = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 1]], bool)
    out = _pl(scores, order, present)
    np.testing.assert_array_equal(np.asarray(out)[:2], 0.0)
    assert np.isfinite(out[2]) and out[2] > 0
    g = jax.jit(jax.grad(lambda s: jnp.sum(_pl(s, order, present))))(scores)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[:2], 0.0)
    # Equal scores: each of the 3! rankings has probability 1/6.
    np.testing.assert_allclose(out[2], np.log(6.0), rtol=1e-6)


def test_pl_gradient_hand_values():
    # d/ds_i of -sum_j [s_(j) - lse_{k>=j}]: -1[i ranked] + sum_{j: i in tail_j} softmax_tail_j(i)
    scores = np.array([[0.5, -0.3, 1.2]], np.float64)
    order = [1, 2, 0]
    g = jax.jit(jax.grad(lambda s: _pl(s, jnp.array([order]))[0]))(scores.astype(np.float32))
    want = np.zeros(3)
    for j in range(3):
        tail = order[j:]
        p = np.exp(scores[0, tail]) / np.exp(scores[0, tail]).sum()
        want[order[j]] -= 1.0
        for t, idx in enumerate(tail):
            want[idx] += p[t]
    np.testing.assert_allclose(g[0], want, rtol=1e-5, atol=1e-6)


def test_pl_large_scores_stable():
    scores = np.array([[1e4, -1e4, 0.0]], np.float32)
    out = _pl(scores, np.array([[1, 0, 2]], np.int32))
    # ranked [-1e4, 1e4, 0]: -(-1e4 - 1e4) - (1e4 - 1e4) - 0 = 2e4 (lse terms are exact here)
    np.testing.assert_allclose(out, [2e4], rtol=1e-6)
    g = jax.jit(jax.grad(lambda s: _pl(s, jnp.array([[1, 0, 2]]))[0]))(scores)
    # item 0 dominates every tail it is in: +1 (first tail) - 1 + 1 (second); item 1: -1 + 0
    np.testing.assert_allclose(g, [[1.0, -1.0, 0.0]], atol=1e-6)


# ------------------------------------------------------------------------------ ranking hinge


def test_ranking_hinge_hand_values():
    rng = np.random.default_rng(8)
    e = rng.normal(0, 0.01, size=B).astype(np.float32)
    p = rng.normal(0, 0.01, size=B).astype(np.float32)
    np.testing.assert_allclose(
        ranking_hinge_loss(e, p),
        np.maximum(0.0, e.astype(np.float64) - p + 1e-3),
        rtol=1e-5,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        ranking_hinge_loss(e, p, margin=0.02),
        np.maximum(0.0, e.astype(np.float64) - p + 0.02),
        rtol=1e-5,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        ranking_hinge_loss(jnp.array([0.02, -0.03]), jnp.array([0.01, 0.0])),
        [0.011, 0.0],
        rtol=1e-5,
    )
    g = jax.grad(lambda a, b: jnp.sum(ranking_hinge_loss(a, b)), argnums=(0, 1))(
        jnp.array([0.02, -0.03]), jnp.array([0.01, 0.0])
    )
    np.testing.assert_array_equal(g[0], [1.0, 0.0])
    np.testing.assert_array_equal(g[1], [-1.0, 0.0])


# ----------------------------------------------------------------------------- λ-Harmonic reward


def test_harmonic_reward_hand_values_and_limits():
    rng = np.random.default_rng(9)
    i = rng.uniform(0.05, 1.0, size=(3, 4)).astype(np.float32)
    t = rng.uniform(0.05, 1.0, size=(3, 4)).astype(np.float32)
    for lam in (0.0, 0.3, 0.5, 1.0):
        want = 1.0 / (lam / i.astype(np.float64) + (1 - lam) / t.astype(np.float64))
        np.testing.assert_allclose(harmonic_reward(i, t, lam=lam), want, rtol=1e-5)
    np.testing.assert_allclose(harmonic_reward(i, t, lam=1.0), i, rtol=1e-6)
    np.testing.assert_allclose(harmonic_reward(i, t, lam=0.0), t, rtol=1e-6)
    # Weighted harmonic mean <= weighted arithmetic mean, and lies between the two scores.
    r = np.asarray(harmonic_reward(i, t, lam=0.3))
    assert np.all(r <= 0.3 * i + 0.7 * t + 1e-6)
    assert np.all(r >= np.minimum(i, t) - 1e-6) and np.all(r <= np.maximum(i, t) + 1e-6)
    np.testing.assert_allclose(
        harmonic_reward(jnp.array(0.8), jnp.array(0.6), lam=0.3), 0.48 / 0.74, rtol=1e-6
    )


def test_harmonic_reward_zero_scores_finite():
    i = jnp.array([0.0, 0.0, 0.5])
    t = jnp.array([0.0, 0.7, 0.0])
    out = harmonic_reward(i, t, lam=0.4)
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])
    g = jax.grad(lambda a, b: jnp.sum(harmonic_reward(a, b, lam=0.4)), argnums=(0, 1))(i, t)
    assert all(np.all(np.isfinite(x)) for x in g)


# ------------------------------------------------------------------------- generic properties


def _case_args(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=B).astype(np.float32)
    b = rng.normal(size=B).astype(np.float32)
    return a, b


_PL_ORDER = np.array([[2, 0, 1, 5, 3, 4], [1, 2, 0, 4, 5, 3]], np.int32)
_PL_MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]], bool)

_CASES = {
    "bt": lambda a, b: bradley_terry_loss(a, b, margin=0.3, center_rewards_coefficient=0.05),
    "pl": lambda a, b: plackett_luce_loss(jnp.stack([a, b]), _PL_ORDER, _PL_MASK),
    "hinge": lambda a, b: ranking_hinge_loss(a, b, margin=0.1),
    "harmonic": lambda a, b: harmonic_reward(jnp.abs(a), jnp.abs(b), lam=0.3),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_jit_equals_eager(name):
    fn = _CASES[name]
    args = _case_args(10)
    np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_vmap_equals_loop(name):
    fn = _CASES[name]
    stacked = [np.stack(z) for z in zip(*[_case_args(20 + i) for i in range(3)], strict=True)]
    got = jax.vmap(fn)(*stacked)
    jfn = jax.jit(fn)
    want = np.stack([jfn(*[x[i] for x in stacked]) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_gradients_match_finite_differences(name):
    fn = _CASES[name]
    a, b = _case_args(11)
    check_grads(
        jax.jit(lambda x, y: jnp.sum(fn(x, y))),
        (jnp.asarray(a), jnp.asarray(b)),
        order=1,
        modes=("rev",),
    )


@pytest.mark.parametrize("name", sorted(_CASES))
def test_bf16_inputs_give_float32(name):
    fn = _CASES[name]
    a, b = _case_args(12)
    got = fn(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))
    assert got.dtype == jnp.float32
    up = lambda x: jnp.asarray(jnp.asarray(x, jnp.bfloat16), jnp.float32)
    np.testing.assert_allclose(got, fn(up(a), up(b)), rtol=1e-6, atol=1e-7)


def test_shape_and_type_errors():
    a, b = _case_args(13)
    with pytest.raises(ValueError, match=r"bradley_terry_loss: `rejected_rewards` must have"):
        bradley_terry_loss(a, b[:2])
    with pytest.raises(ValueError, match=r"bradley_terry_loss: `margin` must have the shape"):
        bradley_terry_loss(a, b, margin=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"plackett_luce_loss: `scores` must have rank 2"):
        plackett_luce_loss(a, np.arange(B))
    with pytest.raises(ValueError, match=r"plackett_luce_loss: `order` must have the shape"):
        plackett_luce_loss(a.reshape(2, 3), np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match=r"plackett_luce_loss: `mask` must have the shape"):
        plackett_luce_loss(a.reshape(2, 3), np.zeros((2, 3), np.int32), np.ones((2, 2), bool))
    with pytest.raises(TypeError, match=r"plackett_luce_loss: `order` must be an integer"):
        plackett_luce_loss(a.reshape(2, 3), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"ranking_hinge_loss: `policy_delta` must have"):
        ranking_hinge_loss(a, b[:1])
    with pytest.raises(ValueError, match=r"harmonic_reward: `text_alignment` must have"):
        harmonic_reward(a, b[:1], lam=0.5)
