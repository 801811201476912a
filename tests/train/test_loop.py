"""The checkpointed loop: resume bit-identity, preemption, NaN guard, corrupt checkpoints, logs."""

import glob
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpref.train import (
    CheckpointConfig,
    CheckpointWarning,
    CorruptCheckpointError,
    DataIterator,
    IndexedIterator,
    LoggingConfig,
    LoopConfig,
    NonFiniteError,
    StopReason,
    TrainCheckpointer,
    TrainConfig,
    TrainResult,
    init_train_state,
    jit_step,
    make_step,
    read_metrics,
    state_checksums,
    train,
)
from tests.train._helpers import state_bytes

# A failed orbax restore abandons read coroutines and tensorstore callbacks that are reported
# later, from other threads, as unraisable exceptions; they are orbax-internal noise.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:(?s).*Event loop is closed:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:(?s).*_read_array_index_and_device_put:pytest.PytestUnraisableExceptionWarning"
    ),
]

ROOT = pathlib.Path(__file__).resolve().parents[2]
SIZE = 50_000  # large enough that orbax stores the array out of line (silent bit flips possible)
QUIET = LoggingConfig(every_steps=1, stdout=False, progress=False, tensorboard=False)


def _objective(params, batch, *, ref_params=None, rng=None):
    noise = jax.random.normal(rng, params["w"].shape) * 1e-3  # the RNG must be restored too
    residual = params["w"] * batch["x"] - batch["y"] + noise
    return jnp.mean(residual**2), {"residual": jnp.mean(jnp.abs(residual))}


def _batch(i, nan_at=None):
    rng = np.random.RandomState(i)
    x = rng.uniform(0.5, 1.5, SIZE).astype(np.float32)
    if i == nan_at:
        x[3] = np.nan
    return {"x": x, "y": (2.0 * x).astype(np.float32)}


TX = optax.adam(0.05)
STEP = jit_step(make_step(_objective, TX))


def _state():
    return init_train_state({"w": jnp.zeros(SIZE)}, TX, 7)


def _config(run_dir, steps, **checkpoint):
    ckpt = {"every_steps": 2, "keep": 3, **checkpoint}
    return TrainConfig(
        run_dir=str(run_dir),
        loop=LoopConfig(steps=steps),
        checkpoint=CheckpointConfig(**ckpt),
        logging=QUIET,
    )


def _saved_steps(directory):
    ckpt = TrainCheckpointer(directory)
    steps = ckpt.all_steps()
    ckpt.close()
    return steps


def _run(run_dir, steps, *, nan_at=None, callbacks=(), **checkpoint):
    data = IndexedIterator(lambda i: _batch(i, nan_at))
    return train(_config(run_dir, steps, **checkpoint), _state(), STEP, data, callbacks=callbacks)


class _Reference(NamedTuple):
    result: TrainResult
    run_dir: pathlib.Path


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 8-step run and its directory."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return _Reference(_run(run_dir, 8), run_dir)


def test_run_completes_saves_and_logs(reference_run):
    result = reference_run.result
    assert (result.step, result.start_step, result.stop_reason) == (8, 0, "completed")
    assert not result.restored
    losses = [r["loss"] for r in read_metrics(reference_run.run_dir, split="train")]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]
    assert _saved_steps(reference_run.run_dir / "checkpoints") == [4, 6, 8]
    assert STEP._cache_size() == 1


def test_sigterm_saves_and_resume_is_bit_identical(reference_run, tmp_path):
    previous = signal.getsignal(signal.SIGTERM)

    def preempt(step_no, state, metrics):
        if step_no == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first = _run(tmp_path, 8, callbacks=[preempt], every_steps=100)
    assert (first.step, first.stop_reason) == (3, "preempted")
    assert signal.getsignal(signal.SIGTERM) is previous
    assert _saved_steps(tmp_path / "checkpoints") == [3]
    second = _run(tmp_path, 8, every_steps=100)
    assert (second.start_step, second.step, second.restored) == (3, 8, True)
    assert state_bytes(second.state) == state_bytes(reference_run.result.state)
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 9))
    assert STEP._cache_size() == 1


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "tests.train._tiny_run"]
    full = subprocess.Popen([*cmd, str(tmp_path / "a"), str(tmp_path / "a.bin")], cwd=ROOT, env=env)
    killed = subprocess.run(
        [*cmd, str(tmp_path / "b"), str(tmp_path / "b.bin"), "--kill-at", "7"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = _saved_steps(tmp_path / "b" / "checkpoints")
    assert saved == [3, 6]
    assert not (tmp_path / "b.bin").exists()
    resumed = subprocess.run(
        [*cmd, str(tmp_path / "b"), str(tmp_path / "b.bin")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "start_step=6 step=8 restored=True" in resumed.stdout
    assert full.wait(timeout=300) == 0
    assert (tmp_path / "b.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()
    steps = [r["step"] for r in read_metrics(tmp_path / "b", split="train")]
    assert steps == list(range(1, 9))


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError, match=r"step 5 .*last good checkpoint is step 4") as info:
        _run(tmp_path, 8, nan_at=4)
    assert info.value.step == 5 and info.value.last_checkpoint == 4
    assert not np.isfinite(info.value.metrics["loss"])
    assert info.value.paths == ("params['w']",)  # update 5 applied the NaN gradient
    ckpt = TrainCheckpointer(tmp_path / "checkpoints")
    assert ckpt.all_steps() == [2, 4]
    restored = ckpt.restore(_state())
    ckpt.close()
    assert restored.step == 4 and np.all(np.isfinite(restored.state.params["w"]))
    assert read_metrics(tmp_path)[-1]["nonfinite"] == 1


def _flip_byte_in_largest_array_file(step_dir):
    files = [f for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True) if os.path.isfile(f)]
    target = max(files, key=os.path.getsize)
    data = bytearray(pathlib.Path(target).read_bytes())
    data[len(data) // 2] ^= 0x5A
    pathlib.Path(target).write_bytes(bytes(data))


def _remove_state_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        # Compressed chunks: orbax's decoder fails, or the checksums differ.
        (_flip_byte_in_largest_array_file, "(DATA_LOSS|checksums differ)"),
        (_remove_state_metadata, "ValueError"),
    ],
)
def test_corrupt_latest_checkpoint_falls_back_to_previous(damage, reason, reference_run, tmp_path):
    first = _run(tmp_path, 6)
    assert first.step == 6
    ckpt_dir = tmp_path / "checkpoints"
    damage(str(ckpt_dir / "6"))
    with pytest.warns(CheckpointWarning) as record:
        resumed = _run(tmp_path, 8)
    messages = [str(w.message) for w in record]
    assert any(re.search(f"step 6 .* unusable .*{reason}", m) for m in messages), messages
    assert any("train.loop.steps: 6 -> 8" in m for m in messages), messages
    assert (resumed.start_step, resumed.step) == (4, 8)
    assert glob.glob(str(ckpt_dir / "6.corrupt-*"))
    assert _saved_steps(ckpt_dir) == [4, 6, 8]
    assert state_bytes(resumed.state) == state_bytes(reference_run.result.state)


def test_checksum_mismatch_is_detected_on_restore(tmp_path):
    state = _state()
    ckpt = TrainCheckpointer(tmp_path, async_save=False)
    ckpt.save(1, state)
    meta_path = tmp_path / "1" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["checksums"]["['params']['w']"] ^= 1
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(CheckpointWarning), pytest.raises(CorruptCheckpointError, match="params"):
        ckpt.restore(state)
    unchecked = TrainCheckpointer(tmp_path, verify=False)
    assert unchecked.restore(state).step == 1
    unchecked.close()
    ckpt.close()


def test_mismatched_template_fails_without_moving_checkpoints(tmp_path):
    _run(tmp_path, 4)
    other = init_train_state({"w": jnp.zeros(SIZE + 1)}, TX, 7)
    ckpt = TrainCheckpointer(tmp_path / "checkpoints")
    with pytest.warns(CheckpointWarning), pytest.raises(CorruptCheckpointError, match="step 4"):
        ckpt.restore(other)
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()
    assert not glob.glob(str(tmp_path / "checkpoints" / "*.corrupt-*"))


def test_checksums_detect_a_single_changed_word():
    x = jnp.arange(1000, dtype=jnp.float32).reshape(10, 100)
    base = state_checksums({"x": x, "k": jax.random.key(0), "h": x.astype(jnp.bfloat16)})
    for changed in (
        {"x": x.at[7, 42].set(jnp.nextafter(x[7, 42], 1e9))},
        {"x": x.T.T.at[0, 0].add(1.0)},
        {"h": x.astype(jnp.bfloat16).at[9, 99].add(8.0)},
        {"k": jax.random.key(1)},
    ):
        tree = {"x": x, "k": jax.random.key(0), "h": x.astype(jnp.bfloat16), **changed}
        assert state_checksums(tree) != base
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    assert state_checksums({"x": swapped})["['x']"] != state_checksums({"x": x})["['x']"]


def test_checksums_do_not_depend_on_sharding():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxpref.parallel import MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig(fsdp=8))
    x = jnp.arange(64 * 3, dtype=jnp.float32).reshape(64, 3)
    sharded = jax.device_put(x, NamedSharding(mesh, P("fsdp")))
    assert state_checksums({"x": sharded}) == state_checksums({"x": np.asarray(x)})


def test_eval_hook_tensorboard_and_jsonl(tmp_path):
    calls = []

    def evaluate(state):
        calls.append(int(state.step))
        return {"w_mean": jnp.mean(state.params["w"])}

    config = TrainConfig(
        run_dir=str(tmp_path),
        loop=LoopConfig(steps=5, eval_every=2),
        checkpoint=CheckpointConfig(every_steps=0, async_save=False),
        logging=LoggingConfig(every_steps=2, stdout=True, progress=False, tensorboard=True),
    )
    result = train(config, _state(), STEP, IndexedIterator(_batch), eval_fn=evaluate)
    assert calls == [2, 4, 5]
    assert result.eval_metrics["w_mean"] == pytest.approx(float(jnp.mean(result.state.params["w"])))
    train_steps = [r["step"] for r in read_metrics(tmp_path, split="train")]
    assert train_steps == [2, 4, 5]
    record = read_metrics(tmp_path, split="train")[-1]
    assert {"loss", "grad_norm", "residual", "perf/steps_per_s"} <= set(record)
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert _saved_steps(tmp_path / "checkpoints") == [5]


def test_finished_run_does_not_train_again(reference_run, tmp_path):
    first = _run(tmp_path, 4)
    again = _run(tmp_path, 4)
    assert (again.start_step, again.step, again.restored) == (4, 4, True)
    assert state_bytes(again.state) == state_bytes(first.state)


def test_a_fresh_run_refuses_a_directory_with_checkpoints(tmp_path):
    _run(tmp_path, 4)
    before = _saved_steps(tmp_path / "checkpoints")
    with pytest.raises(ValueError, match="already holds checkpoints \\(latest step 4\\)"):
        _run(tmp_path, 6, resume=False)
    assert _saved_steps(tmp_path / "checkpoints") == before
    assert _run(tmp_path / "fresh", 2, resume=False).step == 2  # an empty directory is fine


def test_exhausted_data_saves_and_reports(tmp_path):
    data = IndexedIterator(_batch, stop=3)
    result = train(_config(tmp_path, 10), _state(), STEP, data)
    assert (result.step, result.stop_reason) == (3, "data_exhausted")
    assert _saved_steps(tmp_path / "checkpoints") == [2, 3]


def test_stop_reason_is_a_string_enum(reference_run):
    reason = reference_run.result.stop_reason
    assert reason is StopReason.COMPLETED and isinstance(reason, str)
    assert json.dumps({"stop_reason": reason}) == '{"stop_reason": "completed"}'
    assert f"{reason}" == "completed"


def test_a_plain_iterator_trains_and_resumes_without_a_data_position(tmp_path):
    def plain():
        return (_batch(i) for i in range(100))

    assert isinstance(IndexedIterator(_batch), DataIterator)
    assert not isinstance(plain(), DataIterator)
    with pytest.warns(CheckpointWarning, match="no get_state/set_state"):
        first = train(_config(tmp_path, 2), _state(), STEP, plain())
    assert first.step == 2 and not (tmp_path / "checkpoints" / "2" / "data").exists()
    with pytest.warns(CheckpointWarning) as record:
        second = train(_config(tmp_path, 3, every_steps=0), _state(), STEP, plain())
    messages = [str(w.message) for w in record]
    assert any("no get_state/set_state" in m for m in messages), messages
    assert any("train.loop.steps: 2 -> 3" in m for m in messages), messages
    assert all(w.filename == __file__ for w in record)  # attributed to the caller of train
    # The parameters continue from step 2; the data stream starts again (batch 0 at step 3).
    assert (second.start_step, second.step, second.restored) == (2, 3, True)
    expected = train(
        _config(tmp_path / "by_index", 3, every_steps=0),
        _state(),
        STEP,
        IndexedIterator(lambda i: _batch(i if i < 2 else i - 2)),
    )
    assert state_bytes(second.state) == state_bytes(expected.state)


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory):
    """A finished `_tiny_run` (checkpoints 6 and 8) and a pristine copy of its directory."""
    base = tmp_path_factory.mktemp("tiny_run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "tests.train._tiny_run", str(base / "run"), str(base / "a.bin")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.copytree(base / "run", base / "pristine")
    return base


def _largest_array_file(step_dir):
    files = [f for f in glob.glob(f"{step_dir}/state/*/d/*") if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _btree_file(step_dir):
    (only,) = glob.glob(f"{step_dir}/state/d/*")  # OCDBT's index of the arrays
    return only


@pytest.mark.parametrize("pick", [_largest_array_file, _btree_file])
def test_truncated_checkpoint_file_is_one_readable_warning(tiny_run_dir, pick):
    run_dir = tiny_run_dir / "run"  # the same path as when saved: no configuration change
    shutil.rmtree(run_dir)
    shutil.copytree(tiny_run_dir / "pristine", run_dir)
    assert _saved_steps(run_dir / "checkpoints") == [6, 8]
    target = pick(run_dir / "checkpoints" / "8")
    with open(target, "wb"):
        pass  # truncated to 0 bytes
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "tests.train._tiny_run", str(run_dir), str(tiny_run_dir / "b")]
    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "start_step=6 step=8 restored=True" in resumed.stdout  # fell back to step 6
    assert (tiny_run_dir / "b").read_bytes() == (tiny_run_dir / "a.bin").read_bytes()
    stderr = resumed.stderr
    assert "Traceback" not in stderr, stderr[:3000]
    # One warning line; the only other line the warnings module may print is the indented
    # source line of the call that warned.
    lines = [line for line in stderr.splitlines() if line.strip()]
    unindented = [line for line in lines if not line.startswith(" ")]
    assert len(unindented) == 1 and len(lines) <= 2, stderr[:3000]
    warning = unindented[0]
    relative = os.path.relpath(target, run_dir / "checkpoints" / "8")
    expected = (
        f"CheckpointWarning: checkpoint step 8 in {run_dir / 'checkpoints'} is unusable "
        f"(file {relative} is empty (truncated)); resuming from step 6; moved it to "
    )
    assert expected in warning, warning
    assert glob.glob(str(run_dir / "checkpoints" / "8.corrupt-*"))


def test_unusable_reason_names_a_read_status_past_the_first_line(tmp_path):
    from etils import epath

    from jaxpref.train._checkpoint import _unusable_reason

    err = ValueError("Error reading array 'params.w'\nINTERNAL wrapper: DATA_LOSS: bad chunk")
    reason = _unusable_reason(epath.Path(tmp_path), err)
    assert reason == "ValueError: Error reading array 'params.w' (INTERNAL, DATA_LOSS)"
    assert _unusable_reason(epath.Path(tmp_path), ValueError("x")) == "ValueError: x"
