"""Configs: schedules against closed forms, optimizers against hand-computed updates, CLI."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpref.train import (
    CheckpointConfig,
    LoopConfig,
    OptimizerConfig,
    RefSyncConfig,
    TrainConfig,
    config_to_dict,
)


def test_cosine_schedule_with_warmup_matches_closed_form():
    cfg = OptimizerConfig(learning_rate=2e-3, schedule="cosine", warmup_steps=4, final_lr_ratio=0.1)
    lr = cfg.learning_rate_schedule(20)
    for t in range(21):
        if t < 4:
            want = 2e-3 * t / 4
        else:
            frac = (t - 4) / 16
            want = 2e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        np.testing.assert_allclose(float(lr(t)), want, rtol=1e-5, atol=1e-9)


def test_linear_and_constant_schedules():
    lin = OptimizerConfig(learning_rate=1.0, schedule="linear", final_lr_ratio=0.5)
    np.testing.assert_allclose([float(lin.learning_rate_schedule(10)(t)) for t in (0, 5, 10)],
                               [1.0, 0.75, 0.5], rtol=1e-6)  # fmt: skip
    const = OptimizerConfig(learning_rate=0.3, warmup_steps=3).learning_rate_schedule(10)
    np.testing.assert_allclose([float(const(t)) for t in (0, 1, 3, 9)], [0.0, 0.1, 0.3, 0.3],
                               rtol=1e-6)  # fmt: skip


def test_first_updates_and_clipping():
    g = {"w": jnp.array([3.0, -4.0])}  # norm 5
    zeros = {"w": jnp.zeros(2)}
    sgd = OptimizerConfig(name="sgd", learning_rate=0.1, b1=0.0, grad_clip_norm=1.0).build(5)
    updates, _ = sgd.update(g, sgd.init(zeros), zeros)
    np.testing.assert_allclose(updates["w"], [-0.1 * 3 / 5, 0.1 * 4 / 5], rtol=1e-6)
    # Adam / AdamW: the same transformation as optax's, and about -lr * sign(g) at step 1.
    adam = OptimizerConfig(name="adam", learning_rate=0.01, b2=0.99, grad_clip_norm=None).build(5)
    updates, _ = adam.update(g, adam.init(zeros), zeros)
    oracle, _ = optax.adam(0.01, b2=0.99).update(g, optax.adam(0.01).init(zeros), zeros)
    np.testing.assert_allclose(updates["w"], oracle["w"], rtol=1e-7)
    np.testing.assert_allclose(updates["w"], [-0.01, 0.01], rtol=1e-4)
    params = {"w": jnp.array([2.0, 2.0])}
    cfg = OptimizerConfig(
        learning_rate=0.01, weight_decay=0.5, decay_vectors=True, grad_clip_norm=None
    )
    adamw = cfg.build(5)
    updates, _ = adamw.update(g, adamw.init(params), params)
    tx = optax.adamw(0.01, weight_decay=0.5)
    oracle, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], oracle["w"], rtol=1e-7)
    np.testing.assert_allclose(updates["w"], [-0.01 - 0.01, 0.01 - 0.01], atol=1e-6)


def test_weight_decay_skips_vectors_unless_asked():
    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
    zero = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}  # Adam's own step is 0 for zero grads
    for decay_vectors, b_update in ((False, 0.0), (True, -0.1 * 0.5 * 2.0)):
        cfg = OptimizerConfig(learning_rate=0.1, weight_decay=0.5, decay_vectors=decay_vectors)
        tx = cfg.build(3)
        updates, _ = tx.update(zero, tx.init(params), params)
        np.testing.assert_allclose(updates["w"], np.full((2, 2), -0.1 * 0.5 * 2.0), rtol=1e-6)
        np.testing.assert_allclose(updates["b"], np.full(2, b_update), rtol=1e-6)


def test_step_options_follow_the_config():
    cfg = TrainConfig(
        loop=LoopConfig(steps=10, accum_steps=2),
        optimizer=OptimizerConfig(learning_rate=0.5, schedule="linear"),
        ref_sync=RefSyncConfig(mode="soft"),
    )
    opts = cfg.step_options()
    assert opts["accum_steps"] == 2 and opts["ref_sync"].mode == "soft"
    np.testing.assert_allclose(float(opts["learning_rate"](5)), 0.25, rtol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lion", "adafactor"])
def test_every_optimizer_builds_and_descends(name):
    tx = OptimizerConfig(name=name, learning_rate=0.05).build(10)
    params = {"w": jnp.full((4, 4), 2.0)}
    state = tx.init(params)
    for _ in range(3):
        grads = {"w": 2 * params["w"]}  # gradient of sum(w^2)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(jnp.sum(params["w"] ** 2)) < 64.0


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: OptimizerConfig(name="rmsprop"), "unknown optimizer"),
        (lambda: OptimizerConfig(learning_rate=0.0), "learning_rate"),
        (lambda: OptimizerConfig(final_lr_ratio=2.0), "final_lr_ratio"),
        (lambda: RefSyncConfig(mode="soft", alpha=1.5), "alpha"),
        (lambda: RefSyncConfig(every_steps=0), "every_steps"),
        (lambda: LoopConfig(accum_steps=0), "accum_steps"),
        (lambda: CheckpointConfig(keep=0), "keep"),
        (lambda: OptimizerConfig(name="adam", eps=0.0), r"`eps` must be positive, got 0\.0"),
        (lambda: OptimizerConfig(name="adamw", eps=-1e-8), r"`eps` must be positive, got -1e-08"),
        (lambda: OptimizerConfig(name="sgd", eps=-1.0), r"`eps` must be non-negative, got -1\.0"),
        (lambda: OptimizerConfig(b1=1.0), r"`b1` must be in \[0, 1\), got 1\.0"),
        (lambda: OptimizerConfig(name="sgd", b1=-0.5), r"`b1` must be in \[0, 1\), got -0\.5"),
        (lambda: OptimizerConfig(b2=1.0), r"`b2` must be in \[0, 1\), got 1\.0"),
        (lambda: OptimizerConfig(name="lion", b2=1.5), r"`b2` must be in \[0, 1\), got 1\.5"),
        (lambda: OptimizerConfig(b2=float("nan")), r"`b2` must be in \[0, 1\), got nan"),
        (lambda: OptimizerConfig(name="sgd", weight_decay=0.1), r"`weight_decay` \(0\.1\).*'sgd'"),
        (lambda: OptimizerConfig(name="adam", weight_decay=0.1), r"`weight_decay`.*'adam'"),
    ],
)
def test_invalid_configs_are_rejected(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_adam_with_b2_one_or_eps_zero_would_write_nan():
    # Why the limits: optax's Adam at b2 = 1, or at eps = 0 with a zero gradient, updates to NaN.
    params, grads = {"w": jnp.ones(2)}, {"w": jnp.array([0.0, 1.0])}
    for tx in (optax.adam(0.1, b2=1.0), optax.adam(0.1, eps=0.0)):
        updates, _ = tx.update(grads, tx.init(params), params)
        assert np.isnan(np.asarray(updates["w"][0]))
    tx = OptimizerConfig(name="adam", learning_rate=0.1, b2=0.0, grad_clip_norm=None).build(3)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [0.0, -0.1], rtol=1e-6)  # 0 / (0 + eps) = 0


def test_edge_values_and_decaying_optimizers_are_accepted():
    OptimizerConfig(name="sgd", b1=0.0, eps=0.0)
    OptimizerConfig(name="adam", b1=0.0, b2=0.0, eps=1e-30)
    params = {"w": jnp.full((2, 2), 2.0)}
    zero = {"w": jnp.zeros((2, 2))}
    # weight_decay is allowed exactly where build applies it: the update with zero gradients
    # differs from the one without decay.
    for name in ("adamw", "lion", "adafactor"):
        moved = []
        for wd in (0.0, 0.5):
            cfg = OptimizerConfig(
                name=name, learning_rate=0.1, weight_decay=wd, grad_clip_norm=None
            )
            tx = cfg.build(3)
            updates, _ = tx.update(zero, tx.init(params), params)
            moved.append(np.asarray(updates["w"]))
        np.testing.assert_allclose(moved[0], 0.0, atol=1e-12)
        assert np.all(moved[1] < 0), name


def test_configs_are_frozen_and_serialisable():
    cfg = TrainConfig(run_dir="/tmp/x", ref_sync=RefSyncConfig(mode="hard"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run_dir = "/tmp/y"
    d = config_to_dict(cfg)
    assert d["ref_sync"] == {"mode": "hard", "alpha": 0.6, "every_steps": 512}
    assert d["optimizer"]["grad_clip_norm"] == 1.0
    assert cfg.checkpoint_dir == "/tmp/x/checkpoints"
    assert TrainConfig(checkpoint=CheckpointConfig(directory="/c")).checkpoint_dir == "/c"
    assert RefSyncConfig(mode="hard", alpha=0.2).mixing == 1.0


def test_tyro_builds_the_config_from_flags():
    tyro = pytest.importorskip("tyro")
    cfg = tyro.cli(
        TrainConfig,
        args=["--run-dir", "/tmp/r", "--loop.steps", "7", "--optimizer.learning-rate", "0.02",
              "--ref-sync.mode", "soft", "--optimizer.grad-clip-norm", "None"],
    )  # fmt: skip
    assert (cfg.run_dir, cfg.loop.steps, cfg.optimizer.learning_rate) == ("/tmp/r", 7, 0.02)
    assert cfg.ref_sync.mode == "soft" and cfg.optimizer.grad_clip_norm is None
