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

import jaxpref.losses as jl
from experiments import dpo
from jaxpref import experiment as kit
from jaxpref.experiment import lm
from jaxpref.train import (
    CheckpointConfig,
    LoggingConfig,
    LoopConfig,
    OptimizerConfig,
    params_fingerprint,
    read_metrics,
)

CACHE = pathlib.Path(__file__).resolve().parents[2] / ".jax_cache"
QUIET = LoggingConfig(every_steps=1, stdout=False, progress=False, tensorboard=False)
CONSTANT = OptimizerConfig(learning_rate=3e-3, schedule="constant")


def tiny(out, **changes) -> dpo.Config:
    """A configuration that runs in seconds: small model, few pairs and steps."""
    base = dpo.Config(
        out=str(out),
        task=dpo.TokenTaskSpec(
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


def run(config: dpo.Config) -> dict:
    """The results of a run (the `results` section of its report)."""
    return dpo.main(config).results


_TINY_FLAGS = {
    "task.vocab-size": 8, "task.prompt-length": 4, "task.completion-length": 6,
    "task.num-pairs": 64, "task.num-eval-prompts": 32, "task.num-eval-pairs": 16,
    "model.d-model": 32, "model.num-layers": 1, "model.num-heads": 2, "model.mlp-dim": 64,
    "sft.steps": 3, "sft.batch-size": 16, "sft.optimizer.schedule": "constant",
    "batch-size": 16, "optimizer.schedule": "constant",
}  # fmt: skip
# The tiny run as command-line flags (the loop's steps are set by each test).
TINY_ARGS = [x for k, v in _TINY_FLAGS.items() for x in (f"--{k}", str(v))] + [
    "--checkpoint.no-async-save",
    "--logging.no-progress",
    "--logging.no-tensorboard",
]


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
    return out, run(tiny(out))


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
    assert saved["results"] == json.loads(json.dumps(report))
    assert saved["experiment"] == "dpo" and saved["config"]["loss"]["name"] == "sigmoid"
    assert {"sft", "pairs", "dpo", "evaluate"} <= set(saved["phases_s"])
    assert saved["environment"]["versions"]["jax"] and saved["environment"]["device_count"] >= 1
    for name in ("report.md", "training_curves.png", "implicit_rewards.png", "token_credit.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "![token credit](token_credit.png)" in md
    kl = f"| KL(policy \\|\\| reference), sampled | {report['kl_to_ref']:.4f} |"
    assert kl in md  # `||` escaped: the row keeps its value
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
    assert params_fingerprint(params) == report["final_params_fingerprint"]
    changed = dict(params)
    changed["embed"] = np.asarray(params["embed"]).copy()
    changed["embed"].flat[0] += 1e-6
    assert params_fingerprint(changed) != report["final_params_fingerprint"]


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
    again = run(tiny(out))
    assert again["final_params_fingerprint"] == report["final_params_fingerprint"]
    for key in ("gold_reward_policy", "win_rate_vs_ref", "kl_to_ref", "token_credit_spearman"):
        assert again[key] == report[key], key


def test_interrupted_run_resumes_bit_identically(tmp_path):
    full = run(tiny(tmp_path / "full", loop=LoopConfig(steps=4, eval_every=2)))
    part = tiny(tmp_path / "part", loop=LoopConfig(steps=2, eval_every=2))
    run(part)
    with pytest.warns(UserWarning, match="differs from the stored one"):
        resumed = run(dataclasses.replace(part, loop=LoopConfig(steps=4, eval_every=2), force=True))
    assert resumed["final_params_fingerprint"] == full["final_params_fingerprint"]


def test_sigkill_during_dpo_then_rerun_matches_an_uninterrupted_run(tmp_path):
    args = [*TINY_ARGS, "--loop.steps", "12", "--loop.eval-every", "12"]
    args += ["--checkpoint.every-steps", "1"]
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
    resumed = run(config)
    full = run(dataclasses.replace(config, out=str(tmp_path / "full")))
    assert resumed["final_params_fingerprint"] == full["final_params_fingerprint"]


@pytest.mark.parametrize("reference", ["cached"])
def test_cached_reference_gives_the_live_result(tiny_run, tmp_path, reference):
    _, live = tiny_run
    cached = run(tiny(tmp_path, reference=reference))
    # The same pairs, the same reference log-probs (computed once instead of every step).
    assert cached["reference_params_fingerprint"] == live["reference_params_fingerprint"]
    for key in ("implicit_reward_chosen_end", "implicit_reward_rejected_end", "kl_to_ref"):
        np.testing.assert_allclose(cached[key], live[key], rtol=1e-4, atol=1e-5)


def test_fsdp_sharded_run_matches_single_device(tiny_run, tmp_path):
    _, plain = tiny_run
    sharded = run(tiny(tmp_path, sharding="fsdp"))
    for key in ("implicit_reward_chosen_end", "implicit_reward_rejected_end", "kl_to_ref"):
        np.testing.assert_allclose(sharded[key], plain[key], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name,hparams", [("ipo", {}), ("simpo", {}), ("alphapo", {"alpha": 0.25})])
def test_other_losses_train(tmp_path, name, hparams):
    report = run(tiny(tmp_path, loss=jl.LossConfig(name=name, **hparams)))
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
        ({"loss": jl.LossConfig(name="sigmoidd")}, "sigmoid"),
        ({"loss": jl.LossConfig(name="alphapo")}, "requires \\['alpha'\\]"),
        ({"loss": jl.LossConfig(simpo_gamma=1.0)}, "no hyperparameter 'simpo_gamma'"),
        ({"compare": "alphapo"}, "--compare alphapo: .*requires"),
        ({"compare": "nope"}, "--compare: Unknown loss 'nope'"),
        ({"batch_size": 1000}, "num-pairs"),
        ({"reference": "cached", "ref_sync": dpo.RefSyncConfig(mode="hard")}, "reference live"),
        ({"sft": dpo.SFTSpec(mode="off")}, "SFT stage"),
        ({"model": dpo.ModelSpec(hf_path="/nonexistent")}, "needs --data.path"),
        ({"loss": jl.LossConfig(beta=0.0)}, "beta must be positive"),
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
        run(tiny(tmp_path / "run", **changes))
    assert not (tmp_path / "run").exists()


def test_help_lists_every_knob():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.dpo", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "usage: python -m experiments.dpo" in out and "experiments/dpo.py" not in out
    for flag in (
        "--loss.name",
        "--loss.label-smoothing",
        "--compare",
        "--force",
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
    report = run(config)
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
    with pytest.raises(kit.InputError, match="no tokenizer file"):
        run(dpo.tyro_config([*base, "--data.tokenizer", str(tmp_path / "none.json")]))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        run(dpo.tyro_config([*base, "--data.max-length", "128"]))
    with pytest.raises(ValueError, match=r"--data.eval-pairs"):
        run(dpo.tyro_config([*base, "--data.eval-pairs", "40"]))
    with pytest.raises(ValueError, match="fewer than --batch-size 64"):
        run(dpo.tyro_config(base))
    assert not (tmp_path / "x").exists()  # nothing written for a rejected command


def test_pair_iterator_visits_every_pair_once_per_epoch_and_resumes():
    rows = lambda idx: {"input_ids": np.stack([idx, idx], 1)}
    extra = {"ref_chosen_logps": -np.arange(10.0)}
    it = lm.EpochIterator(rows, num_pairs=10, batch_size=3, seed=0, extra=extra)
    epoch = [next(it) for _ in range(3)]
    seen = np.concatenate([b["index"] for b in epoch])
    assert len(set(seen.tolist())) == 9  # 10 // 3 batches, no repeats within an epoch
    np.testing.assert_array_equal(epoch[0]["ref_chosen_logps"], -epoch[0]["index"])
    following = [next(it)["index"] for _ in range(3)]
    assert not np.array_equal(np.concatenate(following), seen)  # a new order each epoch
    again = lm.EpochIterator(rows, num_pairs=10, batch_size=3, seed=0, extra=extra)
    again.set_state({"index": 4})
    np.testing.assert_array_equal(next(again)["index"], following[1])


def test_spearman_and_fingerprint_helpers():
    x = np.array([0.1, 0.5, 0.2, 0.9])
    assert kit.spearman(x, x**3) == pytest.approx(1.0)
    assert kit.spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(kit.spearman(x, np.ones(4)))
    as_list = {"layers": [{"w": np.ones(2, np.float32)}]}
    as_dict = {"layers": {"0": {"w": np.ones(2, np.float32)}}}
    assert params_fingerprint(as_list) == params_fingerprint(as_dict)
    assert params_fingerprint(as_list) != params_fingerprint(
        {"layers": [{"w": np.ones(2, np.float64)}]}
    )


def test_preempted_stage_stops_the_run_and_resumes_bit_identically(tiny_run, tmp_path, monkeypatch):
    _, uninterrupted = tiny_run
    original = lm.TokenTaskData.sft_batch

    def preempt_at_step_2(self, index):
        if index == 2:  # a real SIGTERM, handled by the engine between steps
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, index)

    monkeypatch.setattr(lm.TokenTaskData, "sft_batch", preempt_at_step_2)
    with pytest.raises(kit.RunStopped, match="SFT stage stopped at step") as stopped:
        run(tiny(tmp_path))
    assert (stopped.value.stage, stopped.value.reason) == ("SFT", "preempted")
    # No pairs, DPO or report from a half-trained reference.
    assert not (tmp_path / "pairs.npz").exists() and not (tmp_path / "dpo").exists()
    assert not (tmp_path / "report.json").exists()
    monkeypatch.setattr(lm.TokenTaskData, "sft_batch", original)
    resumed = run(tiny(tmp_path))
    assert resumed["final_params_fingerprint"] == uninterrupted["final_params_fingerprint"]


def test_dpo_checkpoints_of_other_inputs_are_never_resumed(tmp_path):
    run(tiny(tmp_path))
    stored = json.loads((tmp_path / "dpo" / "inputs.json").read_text())
    assert set(stored) == {"reference_fingerprint", "pairs_fingerprint"}
    # Other labels: the pairs are sampled again and the DPO stage refuses its old checkpoints.
    noisy = tiny(
        tmp_path, task=dataclasses.replace(tiny(tmp_path).task, label_noise=0.5), force=True
    )
    with (
        pytest.warns(UserWarning, match="made with another task"),
        pytest.raises(kit.InputError, match="another pairs_fingerprint"),
    ):
        run(noisy)
    # Another reference (one more SFT step): the same.
    longer = tiny(tmp_path, sft=dataclasses.replace(tiny(tmp_path).sft, steps=4), force=True)
    with pytest.warns(UserWarning), pytest.raises(kit.InputError, match="reference_fingerprint"):
        run(longer)


def test_checkpoint_directory_holds_one_subdirectory_per_stage(tmp_path):
    ckpt = tmp_path / "ckpt"
    config = tiny(
        tmp_path / "run",
        checkpoint=CheckpointConfig(every_steps=2, async_save=False, directory=str(ckpt)),
    )
    report = run(config)
    assert report["steps"] == 3
    assert sorted(p.name for p in ckpt.iterdir()) == ["dpo", "sft"]
    assert (ckpt / "dpo" / "3").is_dir() and (ckpt / "sft" / "3").is_dir()


# ------------------------------------------------------------------------------------------
# What a user sees: refused reruns and errors as one short message.


def test_rerun_with_another_loss_is_refused_and_changes_nothing(tiny_run):
    out, _ = tiny_run
    before = {name: (out / name).read_bytes() for name in ("config.json", "report.json")}
    for changes, line in (
        ({"loss": jl.LossConfig(name="ipo")}, "--loss.name: saved 'sigmoid', now 'ipo'"),
        ({"loss": jl.LossConfig(beta=0.9)}, "--loss.beta: saved 0.5, now 0.9"),
    ):
        with pytest.raises(kit.InputError, match="holds a run with another configuration") as err:
            run(tiny(out, **changes))
        assert line in str(err.value)
    assert {name: (out / name).read_bytes() for name in before} == before


def _cli(capsys, *args):
    code = kit.cli(dpo.Config, dpo.main, prog=dpo.PROG, args=list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--loss.name", "nonexistent"], "--loss.name: Unknown loss 'nonexistent'"),
        (["--batch-size", "0"], "--batch-size must be positive, got 0."),
        (["--data.path", "DATA"], "--data.path needs --data.tokenizer"),
        (["--data.path", "MISSING", "--data.tokenizer", "DATA"], "--data.path: no file at"),
        (["--out", "FILE"], "is a file, not a directory."),
        (["--out", "/sys/jaxpref-run"], "--out /sys/jaxpref-run: cannot write there"),
    ],
)
def test_configuration_and_input_errors_are_one_line_with_status_2(tmp_path, capsys, args, message):
    data, file = tmp_path / "prefs.jsonl", tmp_path / "file"
    data.write_text("{}\n")
    file.write_text("x")
    names = {"DATA": str(data), "MISSING": str(tmp_path / "none.jsonl"), "FILE": str(file)}
    args = [names.get(a, a) for a in args]
    if "--out" not in args:
        args = ["--out", str(tmp_path / "run"), *args]
    code, _, err = _cli(capsys, *TINY_ARGS, *args)
    assert code == 2
    assert err.startswith("python -m experiments.dpo: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_command_line_prints_no_traceback_for_a_bad_flag_value(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.dpo", "--out", str(tmp_path), "--loss.name", "nope"],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("python -m experiments.dpo: error: --loss.name: Unknown loss 'nope'")
    )


def test_non_finite_training_stops_with_its_message_once(tmp_path, capfd):
    args = ["--out", str(tmp_path / "run"), *TINY_ARGS, "--loop.steps", "3"]
    args += ["--optimizer.learning-rate", "1e30"]
    code = kit.cli(dpo.Config, dpo.main, prog=dpo.PROG, args=args)
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert code == 1 and "Traceback" not in text
    stops = [line for line in text.splitlines() if "non-finite" in line or " is nan" in line]
    assert len(stops) == 1, text


def _write_hh(path, rows, *, bad_line=None):
    import gzip

    lines = [json.dumps(r) for r in rows]
    if bad_line is not None:
        lines.insert(bad_line - 1, json.dumps({"chosen": "\n\nHuman: hi", "rejected": "x"}))
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


def _hh_rows(n, rng):
    words = ["apple", "pear", "plum", "good", "bad", "very", "fruit", "tree"]
    rows = []
    for _ in range(n):
        prompt = "\n\nHuman: " + " ".join(rng.choice(words, 3)) + "\n\nAssistant:"
        rows.append({
            "chosen": prompt + " " + " ".join(rng.choice(words[:4], 3)),
            "rejected": prompt + " " + " ".join(rng.choice(words[4:], 3)),
        })  # fmt: skip
    return rows


def test_bad_record_of_a_compressed_hh_file_raise_and_skip(real_fixtures, tmp_path, capsys):
    model_dir, _ = real_fixtures
    data = tmp_path / "train.jsonl.gz"
    _write_hh(data, _hh_rows(40, np.random.default_rng(0)), bad_line=7)
    args = [
        "--model.hf-path", str(model_dir), "--data.path", str(data),
        "--data.tokenizer", str(model_dir / "tokenizer.json"), "--data.eos-token", "<eos>",
        "--data.pad-token", "<pad>", "--data.max-length", "48", "--data.eval-pairs", "8",
        "--data.max-new-tokens", "4", "--batch-size", "8", "--loop.steps", "2",
        "--loop.eval-every", "2", "--logging.no-progress", "--logging.no-tensorboard",
        "--checkpoint.no-async-save",
    ]  # fmt: skip
    code, _, err = _cli(capsys, "--out", str(tmp_path / "raise"), *args)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{data}:7:" in err and "--data.on-error skip" in err
    assert not (tmp_path / "raise").exists()
    code, out, err = _cli(capsys, "--out", str(tmp_path / "skip"), *args, "--data.on-error", "skip")
    assert code == 0, err
    summary = [line for line in out.splitlines() if "skipped records:" in line]
    assert len(summary) == 1 and "1 " in summary[0]
    report = json.loads((tmp_path / "skip" / "report.json").read_text())["results"]
    assert sum(report["data"]["skipped"].values()) == 1
    assert report["data"]["records"] == 40 and report["data"]["train_pairs"] == 32
    md = (tmp_path / "skip" / "report.md").read_text()
    assert "skipped records: reason" in md


def test_compare_trains_a_second_loss_on_the_same_pairs(tiny_run):
    out, report = tiny_run
    again = run(tiny(out, compare="ipo"))  # added to the finished run: the main stage resumes
    assert again["final_params_fingerprint"] == report["final_params_fingerprint"]
    other = again["compare"]
    assert other["loss_name"] == "ipo" and other["beta"] == report["beta"]
    assert other["reference_params_fingerprint"] == report["reference_params_fingerprint"]
    assert other["final_params_fingerprint"] != report["final_params_fingerprint"]
    gap = report["exact"]["gold_reward_optimum"] - report["gold_reward_ref"]
    expected = (other["gold_reward_policy"] - other["gold_reward_ref"]) / gap
    assert other["gold_gap_closed"] == pytest.approx(expected, rel=1e-6)
    assert (out / "compare_ipo" / "metrics.jsonl").exists()
    md = (out / "report.md").read_text()
    assert "Comparison on the same pairs and reference" in md and "ipo closes" in md
