"""The DPO experiment: supervised reference, sampled preference pairs, DPO, and a gold-reward audit.

Default run (no flags), on the synthetic token task of `jaxpref.envs`, where a hidden
per-token reward gives every completion a gold reward and every token a gold credit:

1. **SFT**: a small GPT-2-style `jaxpref.models.Transformer` learns the task's reference language
   (a Markov chain over a small vocabulary) from sequences sampled from it. The result is the
   reference policy `pi_ref` and the initial policy.
2. **Pairs**: for each training prompt, two completions are sampled from `pi_ref` with
   `jaxpref.decode.sample` (KV cache) and labelled by a Bradley-Terry model on the gold reward.
3. **DPO**: the policy is trained on those pairs with any pairwise loss of the `jaxpref.losses`
   registry (`--loss.name`), by the `jaxpref.train` engine (checkpoints, resume, NaN guard,
   metrics), with the reference log-probs computed live or cached. `--compare NAME` trains a
   second loss on the same pairs for a side-by-side line in the report.
4. **Evaluation** on held-out prompts and pairs: gold reward of policy and reference samples, the
   fraction of the gold-reward gap to the exact KL-regularised optimum that the policy closes,
   the gold win rate against the reference, a Monte Carlo KL to the reference, the implicit
   rewards `beta log pi/pi_ref` of chosen and rejected completions along training, and the rank
   correlation between per-token implicit rewards and the gold per-token credit.

Outputs in `--out` (printed at start): `config.json`, `sft/` and `dpo/` (checkpoints,
`metrics.jsonl`, TensorBoard events), `pairs.npz`, `report.json`, `report.md` and PNG plots.
Running the same command again resumes the run where it stopped (a finished run only
re-evaluates) and ends with the same parameters, bit for bit; a command whose configuration
differs from the saved one is refused with the differences (`--force` to resume anyway). A stage
stopped by SIGTERM saves a checkpoint and ends the run without a report (exit status 75); the
next run continues it. A DPO checkpoint trained against another reference or other pairs is
never resumed.

Real data and weights: `--model.hf-path DIR --data.path FILE.jsonl[.gz] --data.tokenizer
tokenizer.json` trains a local Hugging Face checkpoint (the reference) on a preference file in
any layout `jaxpref.data.read_preferences` reads; the gold-reward fields are then null.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Mapping
from typing import Literal

import jax
import numpy as np

import jaxpref.losses as jl
from jaxpref import experiment as kit
from jaxpref.data import synthetic
from jaxpref.experiment import lm
from jaxpref.experiment.lm import ModelSpec, PreferenceFileSpec, TokenTaskSpec
from jaxpref.train import (
    CheckpointConfig,
    IndexedIterator,
    LoggingConfig,
    LoopConfig,
    OptimizerConfig,
    RefSyncConfig,
    config_to_dict,
    params_fingerprint,
)

PROG = "python -m experiments.dpo"


@dataclasses.dataclass(frozen=True)
class SFTSpec:
    """Supervised fine-tuning of the reference.

    Args:
      mode: "auto" (run unless `--model.hf-path` is given), "on" or "off".
      steps: optimizer steps.
      batch_size: sequences per step.
      optimizer: optimizer and schedule.
    """

    mode: Literal["auto", "on", "off"] = "auto"
    steps: int = 300
    batch_size: int = 64
    optimizer: OptimizerConfig = OptimizerConfig(
        learning_rate=3e-3, schedule="cosine", warmup_steps=20, final_lr_ratio=0.1
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """The experiment: where it writes, what it trains on, and one config per concern.

    Args:
      out: run directory (created; an existing one is resumed if its config matches).
      force: resume `out` even if its saved configuration differs (the new one replaces it).
      task: the synthetic token task.
      model: the network.
      data: a real preference file instead of the synthetic task.
      sft: supervised fine-tuning of the reference.
      loss: the preference loss (`--loss.name`) and its hyperparameters (`--loss.beta`,
        `--loss.label-smoothing`, ...; a hyperparameter the loss does not take is an error).
      compare: a second registry loss (same beta, default hyperparameters) trained on the same
        pairs from the same reference, reported beside the first (e.g. "ipo").
      batch_size: preference pairs per DPO step.
      reference: "live" (reference forward pass in every step) or "cached" (reference log-probs
        of every training pair computed once before training). Reference-free losses (simpo,
        cpo, orpo, ...) skip the live forward pass; the report's implicit rewards always use
        the reference.
      sharding: "none" (one device), or a `jaxpref.parallel` rules table over all devices
        ("dp", "fsdp", "fsdp_tp").
      loop: DPO steps, evaluation period, seed.
      optimizer: DPO optimizer.
      checkpoint: checkpointing of every stage (a `directory` holds one subdirectory per
        stage, `sft/`, `dpo/`; default: inside each stage's run directory).
      logging: metric sinks of every stage.
      ref_sync: TR-DPO reference updates (live reference only).
    """

    out: str = "runs/dpo"
    force: bool = False
    # Gold rewards small against beta: the exact optimum wins 0.875 of comparisons with the
    # reference, so the default run's win rate is informative rather than saturated at 1.
    task: TokenTaskSpec = TokenTaskSpec(reward_scale=0.25)
    model: ModelSpec = ModelSpec()
    data: PreferenceFileSpec = PreferenceFileSpec()
    sft: SFTSpec = SFTSpec()
    loss: jl.LossConfig = jl.LossConfig(beta=0.5)
    compare: str | None = None
    batch_size: int = 64
    reference: Literal["live", "cached"] = "live"
    sharding: Literal["none", "dp", "fsdp", "fsdp_tp"] = "none"
    loop: LoopConfig = LoopConfig(steps=400, eval_every=50)
    optimizer: OptimizerConfig = OptimizerConfig(
        learning_rate=1e-3, schedule="cosine", warmup_steps=20, final_lr_ratio=0.1
    )
    checkpoint: CheckpointConfig = CheckpointConfig(every_steps=100)
    logging: LoggingConfig = LoggingConfig(every_steps=20)
    ref_sync: RefSyncConfig = RefSyncConfig()

    @property
    def synthetic(self) -> bool:
        """Whether the run uses the synthetic token task (no `--data.path`)."""
        return self.data.path is None

    @property
    def run_sft(self) -> bool:
        """Whether the SFT stage runs."""
        return self.model.hf_path is None if self.sft.mode == "auto" else self.sft.mode == "on"


def _validate(config: Config) -> None:
    """Checks the configuration and the input paths before anything is written."""
    fail = kit.ConfigError
    _check_loss(config.loss, "--loss.name", "--loss")
    if config.compare is not None:
        _check_loss(_compare_loss(config), "--compare", f"--compare {config.compare}")
    accum = config.loop.accum_steps
    sizes = [("--batch-size", config.batch_size, "")]
    if config.run_sft:
        sizes.append(
            ("--sft.batch-size", config.sft.batch_size, " (the SFT stage accumulates too)")
        )
        if config.sft.steps <= 0:
            raise fail(f"--sft.steps must be positive, got {config.sft.steps}.")
    for flag, size, note in sizes:
        if size <= 0:
            raise fail(f"{flag} must be positive, got {size}.")
        if size % accum:
            msg = f"is not divisible into --loop.accum-steps {accum} microbatches{note}."
            raise fail(f"{flag} {size} {msg}")
    if config.reference == "cached" and config.ref_sync.enabled:
        raise fail("--ref-sync needs --reference live (a synced reference changes).")
    if config.synthetic:
        if config.task.num_pairs < config.batch_size:
            raise fail(
                f"--task.num-pairs {config.task.num_pairs} is smaller than --batch-size "
                f"{config.batch_size}."
            )
        if config.model.hf_path is not None:
            raise fail(
                "--model.hf-path needs --data.path (the synthetic task has its own vocabulary)."
            )
        if not config.run_sft:
            raise fail("the synthetic task needs the SFT stage (--sft.mode auto or on).")
        return
    if config.reference == "cached":
        raise fail(
            "--reference cached is available on the synthetic task; with real data "
            "build a jaxpref.data.RefLogprobCache with the dataset."
        )
    if not pathlib.Path(config.data.path).is_file():
        raise kit.InputError(f"--data.path: no file at {config.data.path!r}.")
    if config.model.hf_path is not None and not pathlib.Path(config.model.hf_path).is_dir():
        raise kit.InputError(f"--model.hf-path: no directory at {config.model.hf_path!r}.")
    if config.data.tokenizer is None and config.model.hf_path is None:
        raise fail("--data.path needs --data.tokenizer (or --model.hf-path with a tokenizer.json).")
    if not pathlib.Path(_tokenizer_path(config)).is_file():
        raise kit.InputError(f"--data.tokenizer: no tokenizer file at {_tokenizer_path(config)!r}.")


# ------------------------------------------------------------------------------------------
# Stages.


def _check_loss(loss: jl.LossConfig, name_flag: str, flag: str) -> None:
    try:
        loss.hyperparameters()
    except KeyError as err:
        raise kit.ConfigError(f"{name_flag}: {err.args[0]}") from None
    except ValueError as err:
        raise kit.ConfigError(f"{flag}: {err}") from None


def _stage(config: Config, stage_dir, *, steps, optimizer, eval_every, ref_sync=RefSyncConfig()):
    loop = dataclasses.replace(config.loop, steps=steps, eval_every=eval_every)
    return kit.stage_config(
        stage_dir,
        loop=loop,
        optimizer=optimizer,
        checkpoint=config.checkpoint,
        logging=config.logging,
        ref_sync=ref_sync,
    )


def run_sft(config: Config, model, batches, stage_dir: pathlib.Path, mesh=None, rules=None):
    """Trains `model` by next-token likelihood; returns `(model_def, params, result)`."""
    sft = config.sft
    stage = _stage(config, stage_dir, steps=sft.steps, optimizer=sft.optimizer, eval_every=0)
    extra = {"stage": "sft", "experiment": config_to_dict(config)}
    return lm.train_sft(
        model, batches, stage, seed=config.loop.seed, mesh=mesh, rules=rules, extra_config=extra
    )


def _preference_stage(config: Config, run: kit.RunDir, stage: str, batches, **shared):
    """Runs (or resumes) one preference stage; `shared` holds `model_def`, `ref_params`,
    `evaluator`, `inputs`, `mesh` and `rules` (see `lm.run_preference_stage`)."""
    train_config = _stage(
        config,
        run.path / stage,
        steps=config.loop.steps,
        optimizer=config.optimizer,
        eval_every=config.loop.eval_every,
        ref_sync=config.ref_sync,
    )
    extra = {"stage": "dpo", "experiment": config_to_dict(config)}
    return lm.run_preference_stage(
        run, stage, train_config, batches=batches, loss=config.loss, reference=config.reference,
        seed=config.loop.seed, extra_config=extra, **shared,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------
# Main.


def main(config: Config) -> kit.Report:
    """Runs (or resumes) the experiment; writes and returns the report."""
    _validate(config)
    real = None if config.synthetic else _load_real(config)
    # A comparison stage can be added to (or dropped from) an existing run: it has its own
    # stage directory and input guard.
    ignore = ("out", "force", "logging", "compare")
    run = kit.open_run_dir(config.out, config, experiment="dpo", ignore=ignore, force=config.force)
    run.log(f"run directory: {run.path.resolve()}")
    if real is None:
        results = _main_synthetic(config, run)
    else:
        results = _main_real(config, run, *real)
    return run.finish(results, _markdown(config, run.path, results))


def _main_synthetic(config: Config, run: kit.RunDir) -> dict:
    mesh, rules = kit.mesh_for(config.sharding)
    t = config.task
    data = lm.TokenTaskData(t, config.sft.batch_size)
    run.log(f"SFT of the reference: {config.sft.steps} steps of {config.sft.batch_size} sequences")
    model = config.model.build(t.vocab_size, t.prompt_length + t.completion_length)
    with run.phase("sft"):
        model_def, ref_params, sft_result = run_sft(
            config, model, IndexedIterator(data.sft_batch), run.path / "sft", mesh, rules
        )
    kit.require_completed(sft_result, "SFT", run.path)
    ref_params = jax.device_get(ref_params)
    ref_fp = params_fingerprint(ref_params)
    ref_model = model_def.merge(ref_params)
    run.log(f"sampling {t.num_pairs} training and {t.num_eval_pairs} held-out pairs")

    def make_pairs():
        prompts = {
            "train": synthetic.sample_prompts(
                data.key_prompts, data.task, t.num_pairs, t.prompt_length
            ),
            "eval": synthetic.sample_prompts(
                jax.random.fold_in(data.key_prompts, 1),
                data.task,
                t.num_eval_pairs,
                t.prompt_length,
            ),
        }
        keys = {"train": data.key_pairs, "eval": data.key_eval_pairs}
        return {
            f"{split}_{k}": v
            for split in ("train", "eval")
            for k, v in lm.sample_token_pairs(
                data, ref_model, keys[split], np.asarray(prompts[split])
            ).items()
        }

    pairs_key = {
        "reference_fingerprint": ref_fp,
        "task": json.dumps(config_to_dict(t), sort_keys=True),
    }
    with run.phase("pairs"):
        stored = kit.cached_arrays(run.path / "pairs.npz", pairs_key, make_pairs)
    train_pairs = {k[6:]: v for k, v in stored.items() if k.startswith("train_")}
    eval_pairs = {k[5:]: v for k, v in stored.items() if k.startswith("eval_")}
    beta = config.loss.beta
    evaluator = lm.TokenTaskEvaluator(data, model_def, ref_params, beta, eval_pairs)
    extra = {}
    if config.reference == "cached":
        run.log("caching reference log-probs of the training pairs")
        extra = lm.cached_reference_logps(data, evaluator.logps, ref_params, train_pairs)

    def rows(idx):
        return data.pair_rows(
            train_pairs["prompt"][idx], train_pairs["chosen"][idx], train_pairs["rejected"][idx]
        )

    def batches():
        return lm.EpochIterator(rows, t.num_pairs, config.batch_size, config.loop.seed, extra)

    run.log(
        f"{config.loss.name} (beta={beta}) for {config.loop.steps} steps of "
        f"{config.batch_size} pairs, reference {config.reference}"
    )
    inputs = {"reference_fingerprint": ref_fp, "pairs_fingerprint": params_fingerprint(stored)}
    shared = dict(model_def=model_def, ref_params=ref_params, evaluator=evaluator, inputs=inputs,
                  mesh=mesh, rules=rules)  # fmt: skip
    summary, params, trains, evals = _preference_stage(config, run, "dpo", batches(), **shared)
    optimum = lm.token_task_optimum(data, beta, eval_pairs)
    exact = {k: v for k, v in optimum.items() if k != "token_implicit_optimum"}
    results = {
        **summary,
        "gold_gap_closed": _gap_closed(summary, exact),
        "exact": exact,
        "reference_fit": lm.reference_fit(data, model_def, ref_params),
        "eval_samples": int(t.num_eval_prompts),
        "eval_pairs": int(t.num_eval_pairs),
    }
    results["acceptance"] = {
        "policy_gold_reward_above_ref": results["gold_reward_policy"] > results["gold_reward_ref"],
        "win_rate_vs_ref_in_[0.6,0.95]": 0.6 <= results["win_rate_vs_ref"] <= 0.95,
        "token_credit_spearman_ge_0.3": results["token_credit_spearman"] >= 0.3,
    }
    if config.compare is not None:
        other = dataclasses.replace(config, loss=_compare_loss(config))
        run.log(f"comparison: {config.compare} on the same pairs")
        cmp = _preference_stage(other, run, f"compare_{config.compare}", batches(), **shared)[0]
        results["compare"] = {**cmp, "gold_gap_closed": _gap_closed(cmp, exact)}
    with run.phase("plots"):
        _plot_curves(run.path, trains, evals, results)
        lm.plot_token_credit(
            run.path / "token_credit.png", eval_pairs, evaluator.token_implicit_rewards(params)
        )
    run.log(
        f"gold reward {results['gold_reward_ref']:+.3f} (ref) -> "
        f"{results['gold_reward_policy']:+.3f} (policy; optimum "
        f"{exact['gold_reward_optimum']:+.3f}; gap closed {results['gold_gap_closed']:.3f}), "
        f"win rate {results['win_rate_vs_ref']:.3f}, KL {results['kl_to_ref']:.3f}, token "
        f"credit spearman {results['token_credit_spearman']:.3f}"
    )
    return results


def _compare_loss(config: Config) -> jl.LossConfig:
    """The `--compare` loss: same beta, the loss's default hyperparameters."""
    return jl.LossConfig(name=config.compare, beta=config.loss.beta)


def _gap_closed(summary: Mapping, exact: Mapping) -> float:
    """`(policy - ref) / (optimum - ref)` of the expected gold reward (1 at the optimum)."""
    gap = exact["gold_reward_optimum"] - summary["gold_reward_ref"]
    return float((summary["gold_reward_policy"] - summary["gold_reward_ref"]) / gap)


# ------------------------------------------------------------------------------------------
# Real data.


def _tokenizer_path(config: Config) -> str:
    if config.data.tokenizer is not None:
        return config.data.tokenizer
    return str(pathlib.Path(config.model.hf_path) / "tokenizer.json")


def _real_model(config: Config, tokenizer):
    from jaxpref.models import from_hf

    m, d = config.model, config.data
    if m.hf_path is None:
        return m.build(tokenizer.vocab_size, d.max_length)
    model = from_hf(m.hf_path, dtype=m.dtype)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise kit.InputError(
            f"--data.tokenizer has {tokenizer.vocab_size} tokens but the model "
            f"at {m.hf_path!r} only {model.config.vocab_size}."
        )
    if model.config.max_seq_len < d.max_length:
        raise kit.ConfigError(
            f"--data.max-length {d.max_length} exceeds the model's context "
            f"{model.config.max_seq_len}."
        )
    return model


def _load_real(config: Config):
    """The model and the preference file of a real-data run, checked; writes nothing."""
    from jaxpref.data import HFTokenizer

    d = config.data
    tokenizer = HFTokenizer(
        _tokenizer_path(config), bos_token=d.bos_token, eos_token=d.eos_token, pad_token=d.pad_token
    )
    model = _real_model(config, tokenizer)
    data = lm.PreferenceFile(d, tokenizer, seed=config.loop.seed, batch_size=config.batch_size)
    return model, data


def _main_real(config: Config, run: kit.RunDir, model, data: lm.PreferenceFile) -> dict:
    mesh, rules = kit.mesh_for(config.sharding)
    if data.tokenizer.ignored_settings:
        run.log(
            f"ignoring the length settings in the tokenizer file: {data.tokenizer.ignored_settings}"
        )
    if config.run_sft:
        run.log(f"SFT on the chosen completions: {config.sft.steps} steps")
        sft_iter = lm.ChosenRows(iter(data.batches(data.train_records, config.sft.batch_size, 1)))
        with run.phase("sft"):
            model_def, ref_params, result = run_sft(
                config, model, sft_iter, run.path / "sft", mesh, rules
            )
        kit.require_completed(result, "SFT", run.path)
    else:
        from jaxpref.train import split_model

        model_def, ref_params = split_model(model)
    ref_params = jax.device_get(ref_params)
    evaluator = lm.HeldOutEvaluator(
        model_def,
        ref_params,
        config.loss.beta,
        data.eval_batch(),
        data.tokenizer,
        max_new_tokens=config.data.max_new_tokens,
        seed=config.loop.seed,
    )
    run.log(
        f"{config.loss.name} (beta={config.loss.beta}) on {len(data.train_records)} pairs of "
        f"{config.data.path} for {config.loop.steps} steps"
    )
    batches = iter(data.batches(data.train_records, config.batch_size, config.loop.seed))
    inputs = {
        "reference_fingerprint": params_fingerprint(ref_params),
        "data_sha256": kit.file_sha256(config.data.path),
        "data": json.dumps(config_to_dict(config.data), sort_keys=True),
    }
    shared = dict(model_def=model_def, ref_params=ref_params, evaluator=evaluator, inputs=inputs,
                  mesh=mesh, rules=rules)  # fmt: skip
    summary, _, trains, evals = _preference_stage(config, run, "dpo", batches, **shared)
    if data.skipped:
        run.log("skipped records: " + ", ".join(f"{n} {why}" for why, n in data.skipped.items()))
    results = {**summary, "data": data.summary()}
    _plot_curves(run.path, trains, evals, results)
    return results


# ------------------------------------------------------------------------------------------
# Plots and the markdown report.


def _plot_curves(out: pathlib.Path, trains, evals, results) -> None:
    def panel(title, recs, key, unit, hlines=()):
        xs = [r["step"] for r in recs if key in r]
        return kit.Panel(title, xs, [r[key] for r in recs if key in r], unit, hlines=hlines)

    sft = kit.stage_records(out / "sft")[0] if (out / "sft" / "metrics.jsonl").exists() else []
    exact = results.get("exact", {})
    gold = ()
    if exact:
        gold = (
            (results["gold_reward_ref"], "reference", "gray"),
            (exact["gold_reward_optimum"], "exact optimum", "green"),
        )
    kit.plot_panels(
        out / "training_curves.png",
        [
            panel("SFT loss", sft, "loss", "nats/token"),
            panel("DPO loss", trains, "loss", "loss"),
            panel("reward accuracy (train batch)", trains, "rewards/accuracies", "fraction"),
            panel(
                "reward margin (train batch)", trains, "rewards/margins", "beta log-ratio (nats)"
            ),
            panel(
                "gold reward of samples (held out)",
                evals,
                "gold_reward_policy",
                "gold reward",
                gold,
            ),
        ],
    )
    if evals:
        lm.plot_implicit_rewards(out / "implicit_rewards.png", evals, exact)


def _markdown(config: Config, out: pathlib.Path, r: dict) -> kit.Markdown:
    f = kit.fmt
    md = kit.Markdown(f"DPO experiment: {r['loss_name']}")
    start = r["implicit_reward_start_step"]
    md.table(
        ["metric", "value"],
        [
            ("loss", r["loss_name"]),
            ("beta", r["beta"]),
            ("DPO steps", r["steps"]),
            ("gold reward, reference samples", r["gold_reward_ref"]),
            ("gold reward, policy samples", r["gold_reward_policy"]),
            ("gold-reward gap to the exact optimum closed", r.get("gold_gap_closed")),
            ("gold win rate of policy vs reference", r["win_rate_vs_ref"]),
            ("KL(policy || reference), sampled", r["kl_to_ref"]),
            (
                f"implicit reward chosen (step {start} -> end)",
                f"{f(r['implicit_reward_chosen_start'])} -> {f(r['implicit_reward_chosen_end'])}",
            ),
            (
                f"implicit reward rejected (step {start} -> end)",
                f"{f(r['implicit_reward_rejected_start'])} -> "
                f"{f(r['implicit_reward_rejected_end'])}",
            ),
            ("implicit reward accuracy (held-out pairs)", r["implicit_reward_accuracy"]),
            ("token credit Spearman", r["token_credit_spearman"]),
            ("training tokens/s (median)", r["tokens_per_s"]),
            ("final parameters (sha256)", f"`{r['final_params_fingerprint'][:16]}...`"),
        ],
    )
    if "compare" in r:
        c = r["compare"]
        md.paragraph(
            f"**Comparison on the same pairs and reference:** {r['loss_name']} closes "
            f"{f(r['gold_gap_closed'])} of the gold-reward gap (win rate "
            f"{f(r['win_rate_vs_ref'])}, KL {f(r['kl_to_ref'])}); {c['loss_name']} "
            f"closes {f(c['gold_gap_closed'])} (win rate {f(c['win_rate_vs_ref'])}, KL "
            f"{f(c['kl_to_ref'])}). The exact optimum at this beta has KL "
            f"{f(r['exact']['kl_optimum_to_true_ref'])} to the reference: a fraction above 1 "
            "buys gold reward with more KL than the optimum spends."
        )
    if "data" in r:
        data = r["data"]
        md.paragraph(
            f"Data: {data['records']} records of `{data['path']}`, "
            f"{data['train_pairs']} training / {data['eval_pairs']} held-out pairs, "
            f"{data['truncated']} truncated to --data.max-length."
        )
        skipped = {**data["skipped"], **data["tokenizer_skipped"]}
        if skipped:
            md.table(["skipped records: reason", "count"], sorted(skipped.items()))
    exact = r.get("exact")
    if exact:
        lm.token_task_markdown(md, r)
    md.heading("Plots")
    md.image("training_curves.png", "training curves")
    md.image("implicit_rewards.png", "implicit rewards")
    if exact:
        md.paragraph(
            "Per-token implicit rewards of a few held-out pairs next to the gold "
            "per-token credit (implicit rewards at the optimum are the credit plus a "
            "potential-based shaping term `V*_{t+1}(y_t) - V*_t(y_{t-1})`):"
        )
        md.image("token_credit.png", "token credit")
    md.paragraph(f"Configuration: `{out / 'config.json'}`.")
    return md


def tyro_config(args=None) -> Config:
    """The `Config` of a command line (`sys.argv[1:]` when `args` is None)."""
    return kit.parse(Config, prog=PROG, description=__doc__.split("\n\n")[0], args=args)


if __name__ == "__main__":
    sys.exit(kit.cli(Config, main, prog=PROG, description=__doc__.split("\n\n")[0]))
