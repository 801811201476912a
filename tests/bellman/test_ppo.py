"""RLHF token rewards, KL estimators, token GAE and PPO clipped losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

import jaxpref.bellman as jb

B, T = 4, 6


def _mask():
    m = np.ones((B, T), np.float32)
    m[1, 4:] = 0
    m[2, :2] = 0
    m[3] = 0
    return m


def test_kl_estimators_by_hand_and_in_expectation():
    assert float(jb.kl_k1(-1.0, -1.5)) == pytest.approx(0.5)
    assert float(jb.kl_k2(-1.0, -1.5)) == pytest.approx(0.125)
    assert float(jb.kl_k3(-1.0, -1.5)) == pytest.approx(np.exp(-0.5) - 1 + 0.5, abs=1e-7)
    rng = np.random.default_rng(0)
    pi, ref = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
    kl = float((pi * np.log(pi / ref)).sum())
    logp, ref_logp = np.log(pi).astype(np.float32), np.log(ref).astype(np.float32)
    # k1 and k3 are unbiased: their expectation under pi is the exact KL
    assert float((pi * jb.kl_k1(logp, ref_logp)).sum()) == pytest.approx(kl, abs=1e-5)
    assert float((pi * jb.kl_k3(logp, ref_logp)).sum()) == pytest.approx(kl, abs=1e-5)
    assert np.all(np.asarray(jb.kl_k2(logp, ref_logp)) >= 0)
    assert np.all(np.asarray(jb.kl_k3(logp, ref_logp)) >= 0)


def test_rlhf_token_rewards():
    rng = np.random.default_rng(1)
    mask = _mask()
    logp = rng.normal(size=(B, T)).astype(np.float32)
    ref = rng.normal(size=(B, T)).astype(np.float32)
    scores = rng.normal(size=B).astype(np.float32)
    dense = rng.normal(size=(B, T)).astype(np.float32)
    for estimator in (jb.kl_k1, jb.kl_k2, jb.kl_k3):
        out = jb.rlhf_token_rewards(
            logp, ref, scores, mask, kl_coef=0.2, kl_estimator=estimator, dense_rewards=dense
        )
        expected = (-0.2 * np.asarray(estimator(logp, ref)) + dense) * mask
        for b, last in ((0, T - 1), (1, 3), (2, T - 1)):
            expected[b, last] += scores[b]
        np.testing.assert_allclose(out, expected, atol=1e-6)
    plain = jb.rlhf_token_rewards(logp, ref, scores, mask, kl_coef=0.0)
    np.testing.assert_allclose(np.asarray(plain).sum(1), scores * (mask.sum(1) > 0), atol=1e-6)


def _np_trl_gae(rewards, values, mask, gamma, lam):
    """Right-padded rows: the loop of a PPO trainer over full length with zeroed padding."""
    rewards, values = rewards * mask, values * mask
    adv = np.zeros_like(rewards, dtype=np.float64)
    last = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        nxt = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv * mask, (adv + values) * mask


def test_token_advantages_against_trainer_loop():
    rng = np.random.default_rng(2)
    mask = np.ones((B, T), np.float32)
    mask[1, 4:] = 0
    mask[2, 1:] = 0  # right padding only, as a trainer loop assumes
    rewards = rng.normal(size=(B, T)).astype(np.float32)
    values = rng.normal(size=(B, T)).astype(np.float32)
    out = jb.token_advantages(rewards, values, mask, gamma=0.99, lambda_=0.9)
    adv, ret = _np_trl_gae(rewards, values, mask, 0.99, 0.9)
    np.testing.assert_allclose(out.advantages, adv, atol=1e-5)
    np.testing.assert_allclose(out.returns, ret, atol=1e-5)
    g = jax.grad(lambda v: jb.token_advantages(rewards, v, mask).advantages.sum())(values)
    np.testing.assert_array_equal(g, 0.0)  # constants for PPO


def test_masked_whiten():
    rng = np.random.default_rng(3)
    mask = _mask()
    x = rng.normal(size=(B, T)).astype(np.float32)
    vals = x[mask != 0].astype(np.float64)
    expected = np.where(mask != 0, (x - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8), 0.0)
    np.testing.assert_allclose(jb.masked_whiten(x, mask), expected, atol=1e-5)
    unshifted = np.where(mask != 0, expected + vals.mean(), 0.0)
    np.testing.assert_allclose(jb.masked_whiten(x, mask, shift_mean=False), unshifted, atol=1e-5)


def test_surrogate_matches_rlax_on_valid_tokens():
    rng = np.random.default_rng(4)
    mask = _mask()
    logp = rng.normal(scale=0.3, size=(B, T)).astype(np.float32)
    old = rng.normal(scale=0.3, size=(B, T)).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    per_token = jb.ppo_clipped_surrogate_loss(logp, old, adv, mask, epsilon=0.2)
    np.testing.assert_array_equal(np.asarray(per_token)[mask == 0], 0.0)
    keep = mask != 0
    ratio = np.exp(logp[keep] - old[keep])
    theirs = rlax.clipped_surrogate_pg_loss(ratio, adv[keep], 0.2)
    assert float(np.asarray(per_token).sum() / keep.sum()) == pytest.approx(float(theirs), abs=1e-6)
    # gradient w.r.t. logp agrees too
    g_ours = jax.grad(
        lambda lp: jb.ppo_clipped_surrogate_loss(lp, old, adv, mask).sum() / keep.sum()
    )(logp)
    g_theirs = jax.grad(
        lambda lp: rlax.clipped_surrogate_pg_loss(jnp.exp(lp - old[keep]), adv[keep], 0.2)
    )(logp[keep])
    np.testing.assert_allclose(np.asarray(g_ours)[keep], g_theirs, atol=1e-6)


def test_value_loss_by_hand():
    v = np.array([[1.0, 0.1, -2.0]], np.float32)
    old = np.array([[0.0, 0.0, 0.0]], np.float32)
    ret = np.array([[1.0, 0.0, 0.0]], np.float32)
    loss = jb.ppo_clipped_value_loss(v, old, ret, np.ones((1, 3)), epsilon=0.5)
    # (1) max(0, (0.5 - 1)^2) / 2 ; (2) max(0.01, 0.01) / 2 ; (3) max(4, 0.25) / 2
    np.testing.assert_allclose(loss, [[0.125, 0.005, 2.0]], atol=1e-6)


def test_ppo_objective_masked_equals_filtered_and_empty():
    rng = np.random.default_rng(5)
    mask = _mask()
    arrays = [rng.normal(scale=0.5, size=(B, T)).astype(np.float32) for _ in range(6)]
    objective = jax.jit(lambda *a: jb.ppo_objective(*a, value_coef=0.3))
    loss, aux = objective(*arrays, mask)
    keep = mask != 0
    flat = [x[keep][None, :] for x in arrays]
    loss_f, aux_f = objective(*flat, np.ones_like(flat[0]))
    assert float(loss) == pytest.approx(float(loss_f), abs=1e-6)
    for a, b in zip(aux, aux_f, strict=True):
        assert float(a) == pytest.approx(float(b), abs=1e-6)
    assert 0.0 <= float(aux.clip_fraction) <= 1.0
    # garbage at masked positions changes nothing; an empty batch gives 0 and zero gradients
    bad = [np.where(keep, x, np.nan).astype(np.float32) for x in arrays]
    assert float(objective(*bad, mask)[0]) == pytest.approx(float(loss), abs=1e-6)
    empty = np.zeros_like(mask)
    value, grads = jax.jit(
        jax.value_and_grad(
            lambda lp, v: jb.ppo_objective(lp, *bad[1:3], v, *bad[4:], empty)[0], argnums=(0, 1)
        )
    )(bad[0], bad[3])
    assert float(value) == 0.0
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


def test_errors():
    z = jnp.zeros((B, T))
    with pytest.raises(ValueError, match=r"`scores` must have shape \(4,\)"):
        jb.rlhf_token_rewards(z, z, jnp.zeros(3), z)
    with pytest.raises(ValueError, match=r"`dense_rewards` must have the shape of `logp`"):
        jb.rlhf_token_rewards(z, z, jnp.zeros(B), z, dense_rewards=jnp.zeros((B, T + 1)))
    with pytest.raises(ValueError, match=r"`old_logp` must have the shape of `logp`"):
        jb.ppo_clipped_surrogate_loss(z, jnp.zeros((B, T - 1)), z, z)
