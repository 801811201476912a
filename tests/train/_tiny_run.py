"""A tiny DPO run for the resume tests: `python -m tests.train._tiny_run RUN_DIR OUT [--kill-at N]`.

It runs on the platform `JAX_PLATFORMS` selects (the tests set "cpu").

Trains the tiny transformer with gradient accumulation on index-keyed batches, checkpointing every
3 steps, and writes every byte of the final train state to OUT. With `--kill-at N` the process
waits until the latest periodic checkpoint before step N is on disk, then sends itself SIGKILL
right after step N.
"""

import argparse
import os
import pathlib
import signal
import time

import jax

_CACHE = pathlib.Path(__file__).resolve().parents[2] / ".jax_cache"
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

from jaxpref.train import (  # noqa: E402
    CheckpointConfig,
    IndexedIterator,
    LoggingConfig,
    LoopConfig,
    OptimizerConfig,
    TrainConfig,
    create_train_state,
    jit_step,
    make_preference_objective,
    make_step,
    train,
)
from tests.train._helpers import pair_batch, state_bytes, tiny_transformer  # noqa: E402

STEPS = 8
EVERY = 3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()

    config = TrainConfig(
        run_dir=args.run_dir,
        loop=LoopConfig(steps=STEPS, accum_steps=2),
        optimizer=OptimizerConfig(learning_rate=3e-3, schedule="cosine", warmup_steps=2),
        checkpoint=CheckpointConfig(every_steps=EVERY, keep=2),
        logging=LoggingConfig(every_steps=1, stdout=False, progress=False, tensorboard=False),
    )
    tx = config.optimizer.build(STEPS)
    model_def, state, _ = create_train_state(tiny_transformer(), tx, 0, with_reference=True)
    objective = make_preference_objective(model_def, "sigmoid", beta=0.5)
    step = jit_step(make_step(objective, tx, accum_steps=config.loop.accum_steps))
    data = IndexedIterator(lambda i: pair_batch(100 + i))

    def kill(step_no, state, metrics):
        if step_no == args.kill_at:
            finalized = pathlib.Path(args.run_dir, "checkpoints", str(step_no // EVERY * EVERY))
            deadline = time.time() + 60
            while not finalized.exists() and time.time() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

    result = train(config, state, step, data, callbacks=[kill])
    pathlib.Path(args.out).write_bytes(state_bytes(result.state))
    print(f"start_step={result.start_step} step={result.step} restored={result.restored}")


if __name__ == "__main__":
    main()
