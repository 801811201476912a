"""The NaN/inf guard on the train state: updates that make parameters or optimizer state
non-finite while the loss and gradient norm stay finite, and resuming from a non-finite
checkpoint."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpref.train import (
    CheckpointConfig,
    CheckpointWarning,
    IndexedIterator,
    LoggingConfig,
    LoopConfig,
    NonFiniteError,
    TrainCheckpointer,
    TrainConfig,
    init_train_state,
    jit_step,
    make_step,
    read_metrics,
    train,
)

QUIET = LoggingConfig(every_steps=1, stdout=False, progress=False, tensorboard=False)


def _objective(params, batch, *, ref_params=None, rng=None):
    return jnp.sum((params["w"] - batch["y"]) ** 2) + jnp.sum(params["b"] ** 2), {}


def _data():
    return IndexedIterator(lambda i: {"y": np.full(4, 3.0, np.float32)})


def _params():
    return {"w": jnp.zeros(4), "b": jnp.ones(3)}


def _config(run_dir, *, steps=8, every_steps=2, log_every=1, **loop):
    return TrainConfig(
        run_dir=str(run_dir),
        loop=LoopConfig(steps=steps, **loop),
        checkpoint=CheckpointConfig(every_steps=every_steps, keep=5, async_save=False),
        logging=dataclasses.replace(QUIET, every_steps=log_every),
    )


def _run(run_dir, tx, params=None, objective=_objective, **config):
    state = init_train_state(_params() if params is None else params, tx, 0)
    return train(_config(run_dir, **config), state, jit_step(make_step(objective, tx)), _data())


def _nan_update_of_b_at(update: int) -> optax.GradientTransformation:
    """SGD whose `update`-th update (1-based) of `b` is NaN; `w` is never touched."""
    poison = optax.scale_by_schedule(lambda count: jnp.where(count == update - 1, jnp.nan, 1.0))
    return optax.chain(optax.sgd(0.1), optax.masked(poison, {"w": False, "b": True}))


def _saved(run_dir, tx):
    """The checkpoint steps on disk and the latest one restored (None if none)."""
    ckpt = TrainCheckpointer(run_dir / "checkpoints")
    steps = ckpt.all_steps()
    restored = ckpt.restore(init_train_state(_params(), tx, 0))
    ckpt.close()
    return steps, restored


def test_update_that_makes_a_parameter_nan_stops_before_it_is_saved(tmp_path):
    tx = _nan_update_of_b_at(4)
    with pytest.raises(NonFiniteError) as info:
        _run(tmp_path, tx)
    err = info.value
    # Step 4's loss and gradient norm come from the parameters before update 4: finite.
    assert np.isfinite(err.metrics["loss"]) and np.isfinite(err.metrics["grad_norm"])
    assert err.step == 4 and err.paths == ("params['b']",) and err.last_checkpoint == 2
    assert "step 4" in str(err) and "params['b']" in str(err)
    assert "last good checkpoint is step 2" in str(err)
    steps, restored = _saved(tmp_path, tx)
    assert steps == [2]  # step 4 (a save step) was not written
    assert restored.step == 2
    for leaf in jax.tree.leaves((restored.state.params, restored.state.opt_state)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # Two SGD steps on sum(b^2) from b = 1: b <- 0.8 b each step.
    np.testing.assert_allclose(restored.state.params["b"], np.full(3, 0.64), rtol=1e-6)
    assert read_metrics(tmp_path)[-1]["nonfinite"] == 1


def test_params_are_checked_at_the_cadence_not_only_on_save(tmp_path):
    # No periodic save, logs every 10 steps, params checked every 3 steps: the NaN of update 4
    # is found at step 6.
    tx = _nan_update_of_b_at(4)
    with pytest.raises(NonFiniteError) as info:
        _run(
            tmp_path,
            tx,
            objective=lambda p, b, **_: (jnp.sum((p["w"] - b["y"]) ** 2), {}),  # b unused
            every_steps=0,
            log_every=10,
            nan_check_every=3,
            steps=20,
        )
    assert info.value.step == 6 and info.value.paths == ("params['b']",)
    assert info.value.last_checkpoint is None
    assert "no checkpoint known to be good" in str(info.value)
    assert _saved(tmp_path, tx) == ([], None)


def test_adam_with_zero_eps_and_an_unused_parameter(tmp_path):
    # A zero gradient gives Adam 0 / (sqrt(0) + 0) = NaN; the loss never sees the parameter.
    def objective(params, batch, **_):
        return jnp.sum((params["w"] - batch["y"]) ** 2), {}

    tx = optax.adam(0.1, eps=0.0)
    with pytest.raises(NonFiniteError, match=r"step 1 .*params\['b'\]") as info:
        _run(tmp_path, tx, objective=objective, every_steps=1)
    assert info.value.paths == ("params['b']",) and info.value.last_checkpoint is None
    assert _saved(tmp_path, tx) == ([], None)


class _OverflowState(NamedTuple):
    scale: jax.Array


def _overflowing_state() -> optax.GradientTransformation:
    """Leaves updates unchanged; its state is multiplied by 1e20 per update (inf at update 2)."""

    def init(params):
        return _OverflowState(jnp.ones([], jnp.float32))

    def update(updates, state, params=None):
        return updates, _OverflowState(state.scale * jnp.float32(1e20))

    return optax.GradientTransformation(init, update)


def test_non_finite_optimizer_state_is_not_saved(tmp_path):
    tx = optax.chain(optax.sgd(0.1), _overflowing_state())
    with pytest.raises(NonFiniteError, match=r"step 2 .*opt_state\[1\]\.scale") as info:
        _run(tmp_path, tx, every_steps=1)
    assert info.value.step == 2 and info.value.paths == ("opt_state[1].scale",)
    assert info.value.last_checkpoint == 1
    steps, restored = _saved(tmp_path, tx)
    assert steps == [1] and restored.step == 1
    np.testing.assert_allclose(float(restored.state.opt_state[1].scale), 1e20, rtol=1e-6)


def test_resuming_a_non_finite_checkpoint_fails_and_leaves_it(tmp_path):
    tx = optax.sgd(0.1)
    bad = init_train_state({"w": jnp.zeros(4), "b": jnp.array([1.0, np.inf, 1.0])}, tx, 0)
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
    ckpt.save(3, bad._replace(step=jnp.asarray(3, jnp.int32)))
    ckpt.close()
    with (
        pytest.raises(NonFiniteError, match=r"resumed checkpoint .*params\['b'\]") as info,
        pytest.warns(CheckpointWarning, match="differs from the stored one"),
    ):
        _run(tmp_path, tx)
    assert info.value.step == 3 and info.value.paths == ("params['b']",)
    assert info.value.last_checkpoint is None
    steps, restored = _saved(tmp_path, tx)  # left in place
    assert steps == [3] and float(restored.state.params["b"][1]) == np.inf


@pytest.mark.parametrize("progress", [False, True])
def test_the_exception_is_the_one_report_of_a_stop(tmp_path, capfd, progress):
    tx = _nan_update_of_b_at(3)
    logging = LoggingConfig(every_steps=1, stdout=True, progress=progress, tensorboard=False)
    config = dataclasses.replace(_config(tmp_path), logging=logging)
    state = init_train_state(_params(), tx, 0)
    with pytest.raises(NonFiniteError) as info:
        train(config, state, jit_step(make_step(_objective, tx)), _data())
    out, err = capfd.readouterr()
    message = str(info.value)
    assert "non-finite params after the update at step 3" in message
    printed = out + err
    assert "[train] step 2:" in out  # the loop did print its metric lines up to the stop
    assert printed.count("non-finite") == 0, printed  # but not the stop itself: zero copies
    assert "nonfinite" not in printed and "step 3" not in printed, printed
    assert read_metrics(tmp_path)[-1]["nonfinite"] == 1  # still recorded in the metrics file
