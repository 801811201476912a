"""The engine on the grain pipeline of the data layer: real `PairBatch`es, iterator checkpoints."""

import os
import signal

import numpy as np
import pytest

from jaxpref.train import (
    CheckpointConfig,
    LoggingConfig,
    LoopConfig,
    OptimizerConfig,
    TrainConfig,
    create_train_state,
    jit_step,
    make_preference_objective,
    make_step,
    read_metrics,
    train,
)
from tests.train._helpers import state_bytes, tiny_transformer

pytest.importorskip("grain")
pytest.importorskip("tokenizers")

WORDS = 40


def _pipeline():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from jaxpref.data import HFTokenizer, PreferencePair, TokenizeConfig, preference_pipeline

    vocab = {"<eos>": 0, **{f"w{i}": i for i in range(1, WORDS)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = np.random.RandomState(0)

    def text(n, parity):
        return " " + " ".join(f"w{2 * k + parity}" for k in rng.randint(1, WORDS // 2, n))

    records = [
        PreferencePair(text(3, 1), text(rng.randint(2, 5), 0), text(rng.randint(2, 5), 1))
        for _ in range(24)
    ]
    return preference_pipeline(
        records,
        batch_size=4,
        tokenizer=HFTokenizer(raw),
        config=TokenizeConfig(max_length=16, buckets=(16,)),
        seed=3,
        num_epochs=None,
    )


def test_grain_pipeline_trains_and_resumes_bit_identically(tmp_path):
    cfg = OptimizerConfig(learning_rate=5e-3)
    tx = cfg.build(6)
    model_def, _, _ = create_train_state(tiny_transformer(), tx, 0, with_reference=True)
    step = jit_step(make_step(make_preference_objective(model_def, "sigmoid", beta=0.5), tx))

    def run(run_dir, callbacks=()):
        config = TrainConfig(
            run_dir=str(run_dir),
            loop=LoopConfig(steps=6),
            optimizer=cfg,
            checkpoint=CheckpointConfig(every_steps=3),
            logging=LoggingConfig(every_steps=1, stdout=False, progress=False, tensorboard=False),
        )
        _, state, _ = create_train_state(tiny_transformer(), tx, 0, with_reference=True)
        return train(config, state, step, iter(_pipeline()), callbacks=callbacks)

    def preempt(step_no, state, metrics):
        if step_no == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    full = run(tmp_path / "full")
    first = run(tmp_path / "resumed", [preempt])
    second = run(tmp_path / "resumed")
    assert (first.stop_reason, first.step, second.start_step, second.step) == ("preempted", 3, 3, 6)
    assert state_bytes(second.state) == state_bytes(full.state)
    records = read_metrics(tmp_path / "full")
    assert records[-1]["loss"] < records[0]["loss"]
    assert "perf/tokens_per_s" not in records[0]  # the first step includes compilation
    assert all(r["perf/tokens_per_s"] > 0 for r in records[1:])
    assert step._cache_size() == 1
