"""The DPO experiment end to end on tiny settings: report, resume, real-data path, bad input."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import dpo
from jaxpref.train import (
    CheckpointConfig,
    LoggingConfig,
    LoopConfig,
    OptimizerConfig,
    read_metrics,
)

CACHE = pathlib.Path(__file__).resolve().parents[2] / ".jax_cache"
QUIET = LoggingConfig(every_steps=1, stdout=False, progress=False, tensorboard=False)
CONSTANT = OptimizerConfig(learning_rate=3e-3, schedule="constant")


def tiny(out, **changes) -> dpo.Config:
    """A configuration that runs in seconds: small model, few pairs and steps."""
    base = dpo.Config(
        out=str(out),
        task=dpo.TaskConfig(
            vocab_size=8,
            prompt_length=4,
            completion_length=6,
            num_pairs=64,
            num_eval_prompts=32,
            num_eval_pairs=16,
        ),
        model=dpo.ModelSpec(d_model=32, num_layers=1, num_heads=2, mlp_dim=64),
        sft=dpo.SFTSpec(steps=3, batch_size=16, optimizer=CONSTANT),
        batch_size=16,
        loop=LoopConfig(steps=3, eval_every=2),
        optimizer=CONSTANT,
        checkpoint=CheckpointConfig(every_steps=2, async_save=False),
        logging=QUIET,
    )
    return dataclasses.replace(base, **changes)


REPORT_KEYS = {
    "loss_name",
    "steps",
    "gold_reward_ref",
    "gold_reward_policy",
    "win_rate_vs_ref",
    "kl_to_ref",
    "implicit_reward_chosen_start",
    "implicit_reward_chosen_end",
    "implicit_reward_rejected_start",
    "implicit_reward_rejected_end",
    "token_credit_spearman",
    "tokens_per_s",
    "final_params_fingerprint",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_tiny")
    return out, dpo.main(tiny(out))


def _checkpoint_state(run_dir, step):
    import orbax.checkpoint as ocp

    path = run_dir / "dpo" / "checkpoints" / str(step) / "state"
    return ocp.StandardCheckpointer().restore(path)


def _checkpoint_params(run_dir, step):
    return _checkpoint_state(run_dir, step)["params"]


def test_tiny_run_writes_a_complete_report(tiny_run):
    out, report = tiny_run
    assert REPORT_KEYS <= set(report)
    assert report["loss_name"] == "sigmoid" and report["steps"] == 3
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for name in ("report.md", "training_curves.png", "implicit_rewards.png", "token_credit.png"):
        assert (out / name).stat().st_size > 0, name
    assert "![token credit](token_credit.png)" in (out / "report.md").read_text()
    for key in REPORT_KEYS - {"loss_name", "final_params_fingerprint"}:
        assert np.isfinite(report[key]), key
    assert 0.0 <= report["win_rate_vs_ref"] <= 1.0
    assert -1.0 <= report["token_credit_spearman"] <= 1.0
    exact = report["exact"]
    assert exact["gold_reward_optimum"] > exact["gold_reward_true_ref"]
    # At the optimum, implicit rewards are R(y) - V*(x): below zero for reference samples.
    assert exact["implicit_reward_chosen_optimum"] < 0
    assert exact["implicit_reward_chosen_optimum"] > exact["implicit_reward_rejected_optimum"]


def test_fingerprint_is_the_hash_of_the_final_checkpoint(tiny_run):
    out, report = tiny_run
    params = _checkpoint_params(out, 3)
    assert dpo.params_fingerprint(params) == report["final_params_fingerprint"]
    changed = dict(params)
    changed["embed"] = np.asarray(params["embed"]).copy()
    changed["embed"].flat[0] += 1e-6
    assert dpo.params_fingerprint(changed) != report["final_params_fingerprint"]


def test_metrics_and_checkpoints_of_both_stages(tiny_run):
    out, _ = tiny_run
    from jaxpref.train import read_metrics

    dpo_records = read_metrics(out / "dpo")
    assert [r["step"] for r in dpo_records if r["split"] == "eval"] == [2, 3]
    assert {"loss", "rewards/accuracies", "rewards/margins"} <= set(dpo_records[0])
    assert read_metrics(out / "sft")[-1]["step"] == 3
    assert sorted(os.listdir(out / "dpo" / "checkpoints")) == ["2", "3"]
    with np.load(out / "pairs.npz") as pairs:
        assert pairs["train_chosen"].shape == (64, 6)
        np.testing.assert_allclose(
            pairs["train_chosen_credit"].sum(-1), pairs["train_chosen_reward"], rtol=1e-5, atol=1e-5
        )


def test_running_again_resumes_and_reproduces_the_report(tiny_run, tmp_path):
    out, report = tiny_run
    again = dpo.main(tiny(out))
    assert again["final_params_fingerprint"] == report["final_params_fingerprint"]
    for key in ("gold_reward_policy", "win_rate_vs_ref", "kl_to_ref", "token_credit_spearman"):
        assert again[key] == report[key], key


def test_interrupted_run_resumes_bit_identically(tmp_path):
    full = dpo.main(tiny(tmp_path / "full", loop=LoopConfig(steps=4, eval_every=2)))
    part = tiny(tmp_path / "part", loop=LoopConfig(steps=2, eval_every=2))
    dpo.main(part)
    with pytest.warns(UserWarning, match="differs from the stored one"):
        resumed = dpo.main(dataclasses.replace(part, loop=LoopConfig(steps=4, eval_every=2)))
    assert resumed["final_params_fingerprint"] == full["final_params_fingerprint"]


def test_sigkill_during_dpo_then_rerun_matches_an_uninterrupted_run(tmp_path):
    flags = {
        "task.vocab-size": 8, "task.prompt-length": 4, "task.completion-length": 6,
        "task.num-pairs": 64, "task.num-eval-prompts": 32, "task.num-eval-pairs": 16,
        "model.d-model": 32, "model.num-layers": 1, "model.num-heads": 2, "model.mlp-dim": 64,
        "sft.steps": 3, "sft.batch-size": 16, "sft.optimizer.schedule": "constant",
        "batch-size": 16, "loop.steps": 12, "loop.eval-every": 12,
        "optimizer.schedule": "constant", "checkpoint.every-steps": 1,
    }  # fmt: skip
    args = [x for k, v in flags.items() for x in (f"--{k}", str(v))]
    args += ["--checkpoint.no-async-save", "--logging.no-progress", "--logging.no-tensorboard"]
    killed = tmp_path / "killed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(CACHE)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.dpo", "--out", str(killed), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = killed / "dpo" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and len([p for p in os.listdir(ckpts) if p.isdigit()]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = max(int(p) for p in os.listdir(ckpts) if p.isdigit())
    assert 1 <= steps_done < 12
    config = dpo.tyro_config(["--out", str(killed), *args])
    resumed = dpo.main(config)
    full = dpo.main(dataclasses.replace(config, out=str(tmp_path / "full")))
    assert resumed["final_params_fingerprint"] == full["final_params_fingerprint"]


@pytest.mark.parametrize("reference", ["cached"])
def test_cached_reference_gives_the_live_result(tiny_run, tmp_path, reference):
    _, live = tiny_run
    cached = dpo.main(tiny(tmp_path, reference=reference))
    # The same pairs, the same reference log-probs (computed once instead of every step).
    assert cached["reference_params_fingerprint"] == live["reference_params_fingerprint"]
    for key in ("implicit_reward_chosen_end", "implicit_reward_rejected_end", "kl_to_ref"):
        np.testing.assert_allclose(cached[key], live[key], rtol=1e-4, atol=1e-5)


def test_fsdp_sharded_run_matches_single_device(tiny_run, tmp_path):
    _, plain = tiny_run
    sharded = dpo.main(tiny(tmp_path, sharding="fsdp"))
    for key in ("implicit_reward_chosen_end", "implicit_reward_rejected_end", "kl_to_ref"):
        np.testing.assert_allclose(sharded[key], plain[key], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name,hparams", [("ipo", ()), ("simpo", ()), ("alphapo", ("alpha=0.25",))])
def test_other_losses_train(tmp_path, name, hparams):
    report = dpo.main(tiny(tmp_path, loss=dpo.LossSpec(name=name, hparams=hparams)))
    assert report["loss_name"] == name
    assert np.isfinite(report["implicit_reward_chosen_end"])
    train_records = [r for r in read_metrics(tmp_path / "dpo") if r.get("split") == "train"]
    r = train_records[-1]
    state = _checkpoint_state(tmp_path, report["steps"])
    if name == "ipo":  # implicit rewards against the live reference
        assert r["rewards/chosen"] != pytest.approx(0.1 * r["logps/chosen"])
        assert "ref_params" in state
    else:  # reference-free: no reference forward pass, rewards are beta log pi
        assert r["rewards/chosen"] == pytest.approx(0.1 * r["logps/chosen"], rel=1e-5)
        assert "ref_params" not in state


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"loss": dpo.LossSpec(name="sigmoidd")}, "sigmoid"),
        ({"loss": dpo.LossSpec(name="alphapo")}, "requires \\['alpha'\\]"),
        ({"loss": dpo.LossSpec(hparams=("gamma=1",))}, "no hyperparameter 'gamma'"),
        ({"loss": dpo.LossSpec(hparams=("label_smoothing",))}, "key=value"),
        ({"loss": dpo.LossSpec(name="robust", hparams=("label_smoothing=x",))}, "not a number"),
        ({"batch_size": 1000}, "num-pairs"),
        ({"reference": "cached", "ref_sync": dpo.RefSyncConfig(mode="hard")}, "reference live"),
        ({"sft": dpo.SFTSpec(mode="off")}, "SFT stage"),
        ({"model": dpo.ModelSpec(hf_path="/nonexistent")}, "needs --data.path"),
        ({"loss": dpo.LossSpec(beta=0.0)}, "beta must be positive"),
        ({"loop": LoopConfig(steps=3, accum_steps=3)}, "--batch-size 16 is not divisible"),
        ({"sft": dpo.SFTSpec(batch_size=0)}, "sft.batch-size"),
        (
            {"batch_size": 6, "loop": LoopConfig(steps=3, accum_steps=4)},
            "--batch-size 6 is not divisible",
        ),
        (
            {"sft": dpo.SFTSpec(batch_size=6), "loop": LoopConfig(steps=3, accum_steps=4)},
            "SFT stage accumulates",
        ),
    ],
)
def test_bad_configurations_fail_before_any_work(tmp_path, changes, match):
    with pytest.raises((ValueError, KeyError), match=match):
        dpo.main(tiny(tmp_path / "run", **changes))
    assert not (tmp_path / "run").exists()


def test_help_lists_every_knob():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.dpo", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    for flag in (
        "--loss.name",
        "--loss.hparams",
        "--model.hf-path",
        "--data.path",
        "--data.tokenizer",
        "--out",
        "--reference",
        "--loop.steps",
        "--optimizer.learning-rate",
        "--checkpoint.every-steps",
        "--sft.steps",
        "--task.num-pairs",
        "--ref-sync.mode",
        "--sharding",
    ):
        assert flag in out, flag


# ------------------------------------------------------------------------------------------
# Real data and weights.


@pytest.fixture(scope="module")
def real_fixtures(tmp_path_factory):
    """A random GPT-2 saved by transformers, a BPE tokenizer trained here, a TRL-layout JSONL."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("real")
    words = ["apple", "pear", "plum", "good", "bad", "very", "fruit", "tree", "red", "green"]
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(words, 8)) for _ in range(200)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    model_dir = root / "model"
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=2,
        eos_token_id=2,
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    tok.save(str(model_dir / "tokenizer.json"))
    data = root / "prefs.jsonl"
    with open(data, "w") as f:
        for _ in range(40):
            prompt = [{"role": "user", "content": " ".join(rng.choice(words, 3))}]
            good = " ".join(rng.choice(words[:4], 3))
            bad = " ".join(rng.choice(words[4:], 3))
            row = {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
            }
            f.write(json.dumps(row) + "\n")
    return model_dir, data


def test_real_data_and_weights(real_fixtures, tmp_path):
    model_dir, data = real_fixtures
    config = dpo.tyro_config(
        [
            "--out",
            str(tmp_path),
            "--model.hf-path",
            str(model_dir),
            "--data.path",
            str(data),
            "--data.tokenizer",
            str(model_dir / "tokenizer.json"),
            "--data.eos-token",
            "<eos>",
            "--data.pad-token",
            "<pad>",
            "--data.max-length",
            "48",
            "--data.eval-pairs",
            "8",
            "--data.max-new-tokens",
            "6",
            "--batch-size",
            "8",
            "--loop.steps",
            "3",
            "--loop.eval-every",
            "3",
            "--logging.no-progress",
            "--logging.no-tensorboard",
            "--checkpoint.no-async-save",
        ]
    )
    report = dpo.main(config)
    assert report["steps"] == 3 and report["data"]["train_pairs"] == 32
    assert report["gold_reward_policy"] is None and report["token_credit_spearman"] is None
    for key in ("kl_to_ref", "implicit_reward_chosen_end", "implicit_reward_rejected_end"):
        assert np.isfinite(report[key]), key
    assert not (tmp_path / "sft").exists()  # a loaded checkpoint is the reference
    assert report["reference_params_fingerprint"] != report["final_params_fingerprint"]
    assert (tmp_path / "report.md").exists() and (tmp_path / "implicit_rewards.png").exists()


def test_real_data_errors_name_the_problem(real_fixtures, tmp_path):
    model_dir, data = real_fixtures
    base = [
        "--out",
        str(tmp_path / "x"),
        "--model.hf-path",
        str(model_dir),
        "--data.path",
        str(data),
        "--data.eval-pairs",
        "8",
        "--data.max-length",
        "48",
    ]
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        dpo.main(dpo.tyro_config([*base, "--data.tokenizer", str(tmp_path / "none.json")]))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        dpo.main(dpo.tyro_config([*base, "--data.max-length", "128"]))
    with pytest.raises(ValueError, match=r"--data.eval-pairs"):
        dpo.main(dpo.tyro_config([*base, "--data.eval-pairs", "40"]))
    with pytest.raises(ValueError, match="fewer than --batch-size 64"):
        dpo.main(dpo.tyro_config(base))


def test_pair_iterator_visits_every_pair_once_per_epoch_and_resumes():
    rows = lambda idx: {"input_ids": np.stack([idx, idx], 1)}
    extra = {"ref_chosen_logps": -np.arange(10.0)}
    it = dpo.PairIterator(rows, num_pairs=10, batch_size=3, seed=0, extra=extra)
    epoch = [next(it) for _ in range(3)]
    seen = np.concatenate([b["index"] for b in epoch])
    assert len(set(seen.tolist())) == 9  # 10 // 3 batches, no repeats within an epoch
    np.testing.assert_array_equal(epoch[0]["ref_chosen_logps"], -epoch[0]["index"])
    following = [next(it)["index"] for _ in range(3)]
    assert not np.array_equal(np.concatenate(following), seen)  # a new order each epoch
    again = dpo.PairIterator(rows, num_pairs=10, batch_size=3, seed=0, extra=extra)
    again.set_state({"index": 4})
    np.testing.assert_array_equal(next(again)["index"], following[1])


def test_spearman_and_fingerprint_helpers():
    x = np.array([0.1, 0.5, 0.2, 0.9])
    assert dpo.spearman(x, x**3) == pytest.approx(1.0)
    assert dpo.spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(dpo.spearman(x, np.ones(4)))
    as_list = {"layers": [{"w": np.ones(2, np.float32)}]}
    as_dict = {"layers": {"0": {"w": np.ones(2, np.float32)}}}
    assert dpo.params_fingerprint(as_list) == dpo.params_fingerprint(as_dict)
    assert dpo.params_fingerprint(as_list) != dpo.params_fingerprint(
        {"layers": [{"w": np.ones(2, np.float64)}]}
    )


def test_preempted_stage_stops_the_run_and_resumes_bit_identically(tiny_run, tmp_path, monkeypatch):
    _, uninterrupted = tiny_run
    original = dpo.SyntheticData.sft_batch

    def preempt_at_step_2(self, index):
        if index == 2:  # a real SIGTERM, handled by the engine between steps
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, index)

    monkeypatch.setattr(dpo.SyntheticData, "sft_batch", preempt_at_step_2)
    with pytest.raises(dpo.RunStopped, match="SFT stage stopped at step") as stopped:
        dpo.main(tiny(tmp_path))
    assert (stopped.value.stage, stopped.value.reason) == ("SFT", "preempted")
    # No pairs, DPO or report from a half-trained reference.
    assert not (tmp_path / "pairs.npz").exists() and not (tmp_path / "dpo").exists()
    assert not (tmp_path / "report.json").exists()
    monkeypatch.setattr(dpo.SyntheticData, "sft_batch", original)
    resumed = dpo.main(tiny(tmp_path))
    assert resumed["final_params_fingerprint"] == uninterrupted["final_params_fingerprint"]


def test_dpo_checkpoints_of_other_inputs_are_never_resumed(tmp_path):
    dpo.main(tiny(tmp_path))
    stored = json.loads((tmp_path / "dpo" / "inputs.json").read_text())
    assert set(stored) == {"reference_fingerprint", "pairs_fingerprint"}
    # Other labels: the pairs are sampled again and the DPO stage refuses its old checkpoints.
    noisy = tiny(tmp_path, task=dataclasses.replace(tiny(tmp_path).task, label_noise=0.5))
    with (
        pytest.warns(UserWarning, match="made with another task"),
        pytest.raises(RuntimeError, match="another pairs_fingerprint"),
    ):
        dpo.main(noisy)
    # Another reference (one more SFT step): the same.
    longer = tiny(tmp_path, sft=dataclasses.replace(tiny(tmp_path).sft, steps=4))
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="reference_fingerprint"):
        dpo.main(longer)


def test_checkpoint_directory_holds_one_subdirectory_per_stage(tmp_path):
    ckpt = tmp_path / "ckpt"
    config = tiny(
        tmp_path / "run",
        checkpoint=CheckpointConfig(every_steps=2, async_save=False, directory=str(ckpt)),
    )
    report = dpo.main(config)
    assert report["steps"] == 3
    assert sorted(p.name for p in ckpt.iterdir()) == ["dpo", "sft"]
    assert (ckpt / "dpo" / "3").is_dir() and (ckpt / "sft" / "3").is_dir()
