"""Token-level MDP view: ground truth from a small token tree solved by soft value iteration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpref.bellman as jb

VOCAB, BETA = 3, 0.7


def _np_lse(x):
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


class TokenTree:
    """All prefixes of length < depth over a small vocabulary, with a random reward and reference.

    Solves the KL-regularised soft Bellman equations backwards (float64):
    Qt(s, a) = r(s, a) + V(s + a), V(s) = beta log sum_a pi_ref(a|s) exp(Qt(s, a) / beta), V = 0
    after `depth` tokens. The optimal policy's logits are `Qt / beta + log pi_ref`, i.e.
    `Q* / beta` with Q* = Qt + beta log pi_ref.
    """

    def __init__(self, depth, seed):
        rng = np.random.default_rng(seed)
        self.depth = depth
        self.reward, self.log_ref, self.value, self.logits = {}, {}, {}, {}
        for n in range(depth):
            for prefix in itertools.product(range(VOCAB), repeat=n):
                self.reward[prefix] = rng.normal(size=VOCAB)
                self.log_ref[prefix] = np.log(rng.dirichlet(np.ones(VOCAB)))
        for n in reversed(range(depth)):
            for prefix in itertools.product(range(VOCAB), repeat=n):
                nxt = np.array(
                    [
                        self.value.get((*prefix, a), 0.0) if n + 1 < depth else 0.0
                        for a in range(VOCAB)
                    ]
                )
                q_tilde = self.reward[prefix] + nxt
                self.logits[prefix] = q_tilde / BETA + self.log_ref[prefix]
                self.value[prefix] = BETA * _np_lse(self.logits[prefix])

    def sequence(self, tokens, *, ref_shift=0.0):
        """Per-position policy logits, reference logits, true rewards along `tokens`."""
        logits, ref, rewards = [], [], []
        for t, a in enumerate(tokens):
            prefix = tuple(tokens[:t])
            logits.append(self.logits[prefix])
            ref.append(self.log_ref[prefix] + ref_shift * (t + 1))  # unnormalised is fine
            rewards.append(self.reward[prefix][a])
        return np.array(logits), np.array(ref), np.array(rewards)


def _batch(tree, sequences):
    parts = [tree.sequence(list(s), ref_shift=0.3) for s in sequences]
    logits, ref, rewards = (np.stack(x).astype(np.float32) for x in zip(*parts, strict=True))
    tokens = np.array(sequences, np.int32)
    return logits, ref, tokens, rewards


def test_recovers_true_rewards_and_zero_residual():
    tree = TokenTree(depth=3, seed=0)
    seqs = [(0, 1, 2), (2, 2, 0), (1, 0, 1)]
    logits, ref, tokens, rewards = _batch(tree, seqs)
    mask = np.ones(tokens.shape, np.float32)
    implied = jb.token_rewards_from_q(logits, ref, tokens, mask, beta=BETA)
    np.testing.assert_allclose(implied, rewards, atol=1e-5)
    residual = jb.token_soft_bellman_residual(logits, ref, tokens, rewards, mask, beta=BETA)
    np.testing.assert_allclose(residual, 0.0, atol=1e-5)
    # a wrong reward gives a nonzero residual exactly where it is wrong
    wrong = rewards.copy()
    wrong[1, 1] += 0.25
    residual = jb.token_soft_bellman_residual(logits, ref, tokens, wrong, mask, beta=BETA)
    expected = np.zeros_like(wrong)
    expected[1, 1] = 0.25
    np.testing.assert_allclose(residual, expected, atol=1e-5)


def test_telescoping_identity_on_tree():
    """Sequence reward = V*(s_0) + sum of per-token implicit rewards (the DPO reward)."""
    tree = TokenTree(depth=3, seed=1)
    seqs = [(0, 0, 0), (2, 1, 0)]
    logits, ref, tokens, rewards = _batch(tree, seqs)
    mask = np.ones(tokens.shape, np.float32)
    implicit = jb.token_implicit_rewards_from_logits(logits, ref, tokens, mask, beta=BETA)
    v0 = jb.token_initial_values(logits, mask, beta=BETA)
    np.testing.assert_allclose(v0, tree.value[()], atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(v0) + np.asarray(implicit).sum(1), rewards.sum(1), atol=1e-5
    )
    # Bradley-Terry on two completions of one prompt: V*(s_0) cancels
    margin = np.asarray(implicit).sum(1)
    np.testing.assert_allclose(
        margin[0] - margin[1], rewards.sum(1)[0] - rewards.sum(1)[1], atol=1e-5
    )


def test_telescoping_identity_random_logits_with_masks():
    """Holds for any logits (V from logsumexp, V = 0 after the last valid token)."""
    rng = np.random.default_rng(2)
    b, t, v = 4, 7, 5
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
    ref = rng.normal(size=(b, t, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, t)).astype(np.int32)
    mask = np.ones((b, t), np.float32)
    mask[0, 5:] = 0
    mask[1, :2] = 0
    mask[2, [1, 3]] = 0
    mask[3] = 0
    rewards = jb.token_rewards_from_q(logits, ref, tokens, mask, beta=BETA)
    implicit = jb.token_implicit_rewards_from_logits(logits, ref, tokens, mask, beta=BETA)
    v0 = jb.token_initial_values(logits, mask, beta=BETA)
    lhs = np.asarray(rewards).sum(1)
    np.testing.assert_allclose(lhs, np.asarray(v0) + np.asarray(implicit).sum(1), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(rewards)[mask == 0], 0.0)
    assert float(v0[3]) == 0.0 and float(lhs[3]) == 0.0


def test_q_decomposition():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 4, 6)).astype(np.float32)
    tokens = rng.integers(0, 6, size=(2, 4)).astype(np.int32)
    d = jb.token_q_decomposition(logits, tokens, beta=BETA)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(d.advantage, BETA * picked, atol=1e-5)
    np.testing.assert_allclose(d.q, d.advantage + d.v, atol=1e-5)
    np.testing.assert_allclose(d.q, jb.token_q_values(logits, tokens, beta=BETA), atol=1e-6)
    np.testing.assert_allclose(d.v, jb.token_values(logits, beta=BETA), atol=1e-6)
    # the soft value is the soft_value of Q over the vocabulary
    np.testing.assert_allclose(d.v, jb.soft_value(BETA * logits, tau=BETA), atol=1e-5)


def test_logit_shift_is_potential_shaping():
    """Adding c_t to position t's logits shifts r_t by beta (c_t - c_{t+1}), c = 0 after the end."""
    tree = TokenTree(depth=3, seed=4)
    logits, ref, tokens, _ = _batch(tree, [(1, 2, 1)])
    mask = np.ones(tokens.shape, np.float32)
    c = np.array([0.5, -1.0, 2.0], np.float32)
    base = jb.token_rewards_from_q(logits, ref, tokens, mask, beta=BETA)
    shifted = jb.token_rewards_from_q(logits + c[None, :, None], ref, tokens, mask, beta=BETA)
    np.testing.assert_allclose(
        np.asarray(shifted - base)[0], BETA * (c - np.append(c[1:], 0.0)), atol=1e-5
    )
    np.testing.assert_allclose(
        jb.token_implicit_rewards_from_logits(
            logits + c[None, :, None], ref, tokens, mask, beta=BETA
        ),
        jb.token_implicit_rewards_from_logits(logits, ref, tokens, mask, beta=BETA),
        atol=1e-5,
    )


def test_masked_equals_filtered_and_nan_padding():
    tree = TokenTree(depth=2, seed=5)
    logits, ref, tokens, rewards = _batch(tree, [(2, 1)])
    # embed at positions 1 and 3 of a length-5 row: left pad, a gap, right pad (NaN logits there)
    t = 5
    big_logits = np.full((1, t, VOCAB), np.nan, np.float32)
    big_ref = np.full((1, t, VOCAB), np.nan, np.float32)
    big_tokens = np.zeros((1, t), np.int32)
    mask = np.zeros((1, t), np.float32)
    for src, dst in ((0, 1), (1, 3)):
        big_logits[0, dst], big_ref[0, dst] = logits[0, src], ref[0, src]
        big_tokens[0, dst], mask[0, dst] = tokens[0, src], 1.0

    @jax.jit
    def everything(pl, rl):
        return (
            jb.token_rewards_from_q(pl, rl, big_tokens, mask, beta=BETA),
            jb.token_implicit_rewards_from_logits(pl, rl, big_tokens, mask, beta=BETA),
            jb.token_initial_values(pl, mask, beta=BETA),
        )

    r_big, imp_big, v0_big = everything(big_logits, big_ref)
    np.testing.assert_allclose(np.asarray(r_big)[0, [1, 3]], rewards[0], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(r_big)[0, [0, 2, 4]], 0.0)
    np.testing.assert_allclose(v0_big, tree.value[()], atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(imp_big)[0, [1, 3]],
        jb.token_implicit_rewards_from_logits(logits, ref, tokens, np.ones((1, 2)), beta=BETA)[0],
        atol=1e-6,
    )
    grads = jax.jit(
        jax.grad(lambda pl, rl: sum(jnp.sum(x) for x in everything(pl, rl)), argnums=(0, 1))
    )(big_logits, big_ref)
    for g in grads:
        assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(np.asarray(g)[0, [0, 2, 4]], 0.0)


def test_bf16_logits_computed_in_float32():
    rng = np.random.default_rng(6)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.bfloat16)
    ref = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.bfloat16)
    tokens = jnp.asarray(rng.integers(0, 4, size=(2, 3)), jnp.int32)
    mask = jnp.ones((2, 3))
    out = jb.token_rewards_from_q(logits, ref, tokens, mask, beta=BETA)
    assert out.dtype == jnp.float32
    ref_out = jb.token_rewards_from_q(
        logits.astype(jnp.float32), ref.astype(jnp.float32), tokens, mask, beta=BETA
    )
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    assert jb.token_values(logits).dtype == jnp.float32


def test_matches_log_prob_implicit_rewards_of_losses():
    jl = pytest.importorskip("jaxpref.losses")
    if not hasattr(jl, "token_implicit_rewards"):
        pytest.skip("jaxpref.losses.token_implicit_rewards not available")
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 4, 5)).astype(np.float32)
    ref = rng.normal(size=(2, 4, 5)).astype(np.float32)
    tokens = rng.integers(0, 5, size=(2, 4)).astype(np.int32)
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], np.float32)
    logp = np.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
    ref_logp = np.take_along_axis(jax.nn.log_softmax(ref), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        jb.token_implicit_rewards_from_logits(logits, ref, tokens, mask, beta=BETA),
        jl.token_implicit_rewards(logp, ref_logp, mask, beta=BETA),
        atol=1e-6,
    )


def test_errors():
    z = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"`tokens` must have shape \(2, 3\)"):
        jb.token_q_values(z, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"`ref_logits` must have the shape of `policy_logits`"):
        jb.token_rewards_from_q(
            z, jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3))
        )
    with pytest.raises(ValueError, match=r"`mask` must have the shape of `tokens`"):
        jb.token_implicit_rewards_from_logits(z, z, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 2)))
    with pytest.raises(TypeError, match=r"`tokens` must be an integer"):
        jb.token_q_values(z, jnp.zeros((2, 3)))
