"""Language-model pieces of the kit: stages keep the caller's arrays usable."""

import jax
import numpy as np

import jaxpref.losses as jl
from jaxpref import experiment as kit
from jaxpref.experiment import lm
from jaxpref.train import (
    CheckpointConfig,
    IndexedIterator,
    LoggingConfig,
    LoopConfig,
    OptimizerConfig,
)


def test_train_preference_leaves_the_callers_reference_usable(tmp_path):
    spec = lm.TokenTaskSpec(vocab_size=6, prompt_length=3, completion_length=4, num_pairs=16)
    data = lm.TokenTaskData(spec, sft_batch_size=8)
    model = lm.ModelSpec(d_model=16, num_layers=1, num_heads=2, mlp_dim=32).build(6, 7)
    quiet = LoggingConfig(stdout=False, progress=False, tensorboard=False)

    def stage(name):
        return kit.stage_config(
            tmp_path / name,
            loop=LoopConfig(steps=2),
            optimizer=OptimizerConfig(learning_rate=1e-2, schedule="constant"),
            checkpoint=CheckpointConfig(every_steps=0, async_save=False),
            logging=quiet,
        )

    # The reference as a jitted SFT stage returns it: device arrays.
    model_def, ref_params, _ = lm.train_sft(
        model, IndexedIterator(data.sft_batch), stage("sft"), seed=0
    )
    before = jax.tree.map(np.asarray, ref_params)
    prompts = np.asarray(jax.random.randint(jax.random.key(0), (16, 3), 0, 6))
    comp = np.asarray(jax.random.randint(jax.random.key(1), (2, 16, 4), 0, 6))
    config = stage("dpo")
    rows = lambda idx: data.pair_rows(prompts[idx], comp[0][idx], comp[1][idx])
    result = lm.train_preference(
        model_def,
        ref_params,
        lm.EpochIterator(rows, 16, 8, seed=0),
        config,
        loss=jl.LossConfig(beta=0.5),
        reference="live",
        seed=0,
    )
    assert int(result.step) == 2
    after = jax.tree.map(np.asarray, ref_params)  # raised "Array has been deleted" before
    jax.tree.map(np.testing.assert_array_equal, before, after)
