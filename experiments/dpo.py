"""The DPO experiment: supervised reference, sampled preference pairs, DPO, and a gold-reward audit.

Default run (no flags), on the synthetic token task of `jaxpref.data.synthetic`, where a hidden
per-token reward gives every completion a gold reward and every token a gold credit:

1. **SFT**: a small GPT-2-style `jaxpref.models.Transformer` learns the task's reference language
   (a Markov chain over a small vocabulary) from sequences sampled from it. The result is the
   reference policy `pi_ref` and the initial policy.
2. **Pairs**: for each training prompt, two completions are sampled from `pi_ref` with
   `jaxpref.decode.sample` (KV cache) and labelled by a Bradley-Terry model on the gold reward.
3. **DPO**: the policy is trained on those pairs with any pairwise loss of the `jaxpref.losses`
   registry (`--loss.name`), by the `jaxpref.train` engine (checkpoints, resume, NaN guard,
   metrics), with the reference log-probs computed live or cached.
4. **Evaluation** on held-out prompts and pairs: gold reward of policy and reference samples, the
   gold win rate of the policy against the reference, a Monte Carlo KL to the reference, the
   implicit rewards `beta log pi/pi_ref` of chosen and rejected completions along training, and
   the rank correlation between per-token implicit rewards and the gold per-token credit. Exact
   numbers from the task (the KL-regularised optimum computed by backward soft Bellman recursion)
   are reported next to them.

Outputs in `--out` (printed at start): `config.json`, `sft/` and `dpo/` (checkpoints,
`metrics.jsonl`, TensorBoard events), `pairs.npz`, `report.json`, `report.md` and PNG plots.
Running the same command again on an existing run directory resumes it where it stopped (a
finished run only re-evaluates), and ends with the same parameters, bit for bit. A stage stopped
by SIGTERM saves a checkpoint and ends the run without a report (exit status 75, "try again");
the next run continues it. A DPO checkpoint trained against another reference or other pairs is
never resumed: the run stops and names the directory to remove.

Real data and weights: `--model.hf-path DIR --data.path FILE.jsonl --data.tokenizer
tokenizer.json` trains a local Hugging Face checkpoint (the reference) on a preference file in any
layout `jaxpref.data.read_preferences` reads; the gold-reward fields of the report are then null.

Run: `python -m experiments.dpo [--help]`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import pathlib
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

import jaxpref.losses as jl
from jaxpref import decode
from jaxpref.data import synthetic
from jaxpref.train import (
    CheckpointConfig,
    IndexedIterator,
    LoggingConfig,
    LoopConfig,
    OptimizerConfig,
    RefSyncConfig,
    TrainConfig,
    config_to_dict,
    create_train_state,
    jit_step,
    make_preference_objective,
    make_sft_objective,
    make_step,
    make_token_logps_fn,
    read_metrics,
    train,
)

# ------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """The synthetic token task (used when `--data.path` is not given).

    Args:
      vocab_size: tokens of the reference language.
      reward_scale: standard deviation of the gold per-token reward.
      ref_temperature: temperature of the reference chain (larger: flatter, more diverse).
      prompt_length: prompt tokens.
      completion_length: completion tokens.
      num_pairs: training preference pairs (two reference samples per prompt).
      label_temperature: Bradley-Terry temperature of the labeller.
      label_noise: probability that a label is flipped.
      num_eval_prompts: held-out prompts for the sampled metrics (gold reward, win rate, KL).
      num_eval_pairs: held-out labelled pairs for implicit rewards and token credit.
      seed: seed of the task, the prompts and the labels.
    """

    vocab_size: int = 16
    reward_scale: float = 1.0
    ref_temperature: float = 1.0
    prompt_length: int = 8
    completion_length: int = 16
    num_pairs: int = 4096
    label_temperature: float = 1.0
    label_noise: float = 0.0
    num_eval_prompts: int = 1024
    num_eval_pairs: int = 256
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The policy / reference network.

    Args:
      preset: `jaxpref.models.preset` name the architecture starts from.
      d_model: width (synthetic task and models trained from scratch).
      num_layers: transformer blocks.
      num_heads: attention heads.
      mlp_dim: MLP hidden width.
      dtype: compute dtype ("float32", "bfloat16").
      hf_path: a local Hugging Face checkpoint directory to start from instead (its weights are
        the reference; SFT is then skipped unless `--sft.mode on`).
      seed: initialisation seed.
    """

    preset: str = "gpt2-tiny"
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 256
    dtype: str = "float32"
    hf_path: str | None = None
    seed: int = 0

    def build(self, vocab_size: int, max_seq_len: int):
        """A freshly initialised `jaxpref.models.Transformer` of this shape."""
        from flax import nnx

        from jaxpref.models import Transformer, preset

        cfg = preset(
            self.preset,
            vocab_size=vocab_size,
            d_model=self.d_model,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            max_seq_len=max_seq_len,
            dtype=self.dtype,
        )
        return Transformer(cfg, rngs=nnx.Rngs(self.seed))


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A real preference file (optional; without it the synthetic task is used).

    Args:
      path: JSONL or Parquet preference file (explicit prompt/chosen/rejected, HH-RLHF, or
        conversational layouts).
      tokenizer: `tokenizer.json` of the model; default `<model.hf_path>/tokenizer.json`.
      bos_token: beginning-of-sequence token of the tokenizer, if the model uses one.
      eos_token: end-of-sequence token appended to completions and ending generation.
      pad_token: padding token (default: the eos token).
      max_length: tokens per row (prompt + completion); longer records are truncated.
      max_prompt_length: most prompt tokens (default `max_length // 2`).
      eval_pairs: records held out (after a seeded shuffle) for evaluation.
      max_new_tokens: completion length sampled for the KL estimate.
      on_error: "raise" on a malformed record, or "skip" it (counted and reported).
    """

    path: str | None = None
    tokenizer: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    max_length: int = 256
    max_prompt_length: int | None = None
    eval_pairs: int = 64
    max_new_tokens: int = 32
    on_error: Literal["raise", "skip"] = "raise"


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
class LossSpec:
    """The preference loss.

    Args:
      name: a `jaxpref.losses` registry name ("sigmoid" is DPO; "ipo", "hinge", "simpo", ...).
      beta: inverse temperature of the implicit reward.
      hparams: further loss hyperparameters as `key=value` (e.g. `label_smoothing=0.1`,
        `alpha=0.25` for AlphaPO).
    """

    name: str = "sigmoid"
    beta: float = 0.1
    hparams: tuple[str, ...] = ()

    def parsed_hparams(self) -> dict[str, Any]:
        """`hparams` as a dict of numbers / booleans, checked against the loss's signature."""
        info = jl.info(self.name)
        out: dict[str, Any] = {}
        for item in self.hparams:
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ValueError(f"--loss.hparams: expected key=value, got {item!r}.")
            if key == "beta":
                raise ValueError("--loss.hparams: set beta with --loss.beta.")
            if key not in info.hyperparameters:
                known = sorted(k for k in info.hyperparameters if k != "beta")
                raise ValueError(
                    f"--loss.hparams: loss {self.name!r} has no hyperparameter {key!r}; "
                    f"it takes {known}."
                )
            out[key] = _parse_value(value.strip())
        missing = [
            k
            for k, v in info.hyperparameters.items()
            if v is _REQUIRED and k not in out and k != "beta"
        ]
        if missing:
            raise ValueError(
                f"loss {self.name!r} requires {missing}; pass e.g. --loss.hparams {missing[0]}=..."
            )
        return out


@dataclasses.dataclass(frozen=True)
class Config:
    """The experiment: where it writes, what it trains on, and one config per concern.

    Args:
      out: run directory (created; an existing one is resumed).
      task: the synthetic token task.
      model: the network.
      data: a real preference file instead of the synthetic task.
      sft: supervised fine-tuning of the reference.
      loss: the preference loss.
      batch_size: preference pairs per DPO step.
      reference: "live" (reference forward pass in every step) or "cached" (reference log-probs
        of every training pair computed once before training). Reference-free losses (simpo,
        cpo, orpo, ...) skip the live forward pass; the report's implicit rewards always use
        the reference.
      sharding: "none" (one device), or a `jaxpref.parallel` rules table over all devices
        ("dp", "fsdp", "fsdp_tp").
      loop: DPO steps, evaluation period, seed.
      optimizer: DPO optimizer.
      checkpoint: checkpointing of both stages (a `directory` holds one subdirectory per
        stage, `sft/` and `dpo/`; default: inside each stage's run directory).
      logging: metric sinks of both stages.
      ref_sync: TR-DPO reference updates (live reference only).
    """

    out: str = "runs/dpo"
    task: TaskConfig = TaskConfig()
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    sft: SFTSpec = SFTSpec()
    loss: LossSpec = LossSpec()
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
        if self.sft.mode == "auto":
            return self.model.hf_path is None
        return self.sft.mode == "on"


_REQUIRED = inspect.Parameter.empty


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError as err:
        raise ValueError(f"--loss.hparams: {text!r} is not a number or a boolean.") from err


def _validate(config: Config) -> dict:
    hparams = config.loss.parsed_hparams()  # unknown loss names fail here, with suggestions
    if config.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {config.batch_size}.")
    if not config.loss.beta > 0:
        raise ValueError(f"--loss.beta must be positive, got {config.loss.beta}.")
    accum = config.loop.accum_steps
    if config.batch_size % accum:
        raise ValueError(
            f"--batch-size {config.batch_size} is not divisible into --loop.accum-steps {accum} "
            "microbatches."
        )
    if config.run_sft:
        if config.sft.batch_size <= 0 or config.sft.steps <= 0:
            raise ValueError(
                f"--sft.batch-size and --sft.steps must be positive, got "
                f"{config.sft.batch_size} and {config.sft.steps}."
            )
        if config.sft.batch_size % accum:
            raise ValueError(
                f"--sft.batch-size {config.sft.batch_size} is not divisible into "
                f"--loop.accum-steps {accum} microbatches (the SFT stage accumulates too)."
            )
    if config.reference == "cached" and config.ref_sync.enabled:
        raise ValueError("--ref-sync needs --reference live (a synced reference changes).")
    if config.synthetic:
        t = config.task
        if t.num_pairs < config.batch_size:
            raise ValueError(
                f"--task.num-pairs {t.num_pairs} is smaller than --batch-size {config.batch_size}."
            )
        if config.model.hf_path is not None:
            raise ValueError(
                "--model.hf-path needs --data.path (the synthetic task has its own vocabulary)."
            )
        if not config.run_sft:
            raise ValueError("the synthetic task needs the SFT stage (--sft.mode auto or on).")
    else:
        if config.reference == "cached":
            raise ValueError(
                "--reference cached is available on the synthetic task; with real "
                "data build a jaxpref.data.RefLogprobCache with the dataset."
            )
        if config.data.tokenizer is None and config.model.hf_path is None:
            raise ValueError(
                "--data.path needs --data.tokenizer (or --model.hf-path with a tokenizer.json)."
            )
    return hparams


# ------------------------------------------------------------------------------------------
# Small utilities.


def _path_name(path) -> str:
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "/".join(str(p) for p in parts)


def params_fingerprint(params) -> str:
    """SHA-256 over every parameter's path, dtype, shape and bytes (sorted by path).

    Paths are written as `a/b/0/c`, so a parameter list and a dict keyed by position (as a
    checkpoint stores it) give the same fingerprint.
    """
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    h = hashlib.sha256()
    for name, leaf in sorted((_path_name(p), x) for p, x in leaves):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(name.encode())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def spearman(a, b) -> float:
    """Spearman rank correlation of two flat arrays (average ranks for ties)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _train_config(
    config: Config, run_dir: pathlib.Path, steps: int, optimizer, eval_every, ref_sync
) -> TrainConfig:
    checkpoint = config.checkpoint
    if checkpoint.directory is not None:  # one subdirectory per stage (sft/, dpo/)
        directory = str(pathlib.Path(checkpoint.directory) / run_dir.name)
        checkpoint = dataclasses.replace(checkpoint, directory=directory)
    return TrainConfig(
        run_dir=str(run_dir),
        loop=dataclasses.replace(config.loop, steps=steps, eval_every=eval_every),
        optimizer=optimizer,
        checkpoint=checkpoint,
        logging=config.logging,
        ref_sync=ref_sync,
    )


def _mesh(config: Config):
    if config.sharding == "none":
        return None, None
    from jaxpref.parallel import MeshConfig, make_mesh, sharding_rules

    sizes = {"dp": MeshConfig(data=-1, fsdp=1), "fsdp": MeshConfig(fsdp=-1)}
    if config.sharding == "fsdp_tp":
        tensor = 2 if jax.device_count() % 2 == 0 and jax.device_count() > 1 else 1
        mesh_config = MeshConfig(fsdp=-1, tensor=tensor)
    else:
        mesh_config = sizes[config.sharding]
    return make_mesh(mesh_config), sharding_rules(config.sharding)


def _batch_sharding(mesh, rules):
    if mesh is None:
        return None
    from jaxpref.parallel import batch_sharding

    return batch_sharding(mesh, rules, ndim=1)


def _dedup_by_step(records: list[dict]) -> list[dict]:
    """Keeps the last record of each step (a resumed run re-logs steps after its checkpoint)."""
    by_step: dict[int, dict] = {}
    for r in records:
        by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


# ------------------------------------------------------------------------------------------
# Models.


def _synthetic_model(config: Config):
    t = config.task
    return config.model.build(t.vocab_size, t.prompt_length + t.completion_length)


# ------------------------------------------------------------------------------------------
# The synthetic task: data.


class SyntheticData:
    """The token task, its training and held-out prompts, and the batch layouts of both stages."""

    def __init__(self, config: Config):
        t = config.task
        self.config = config
        keys = jax.random.split(jax.random.key(t.seed), 6)
        self.task = synthetic.make_token_task(
            keys[0],
            vocab_size=t.vocab_size,
            reward_scale=t.reward_scale,
            ref_temperature=t.ref_temperature,
        )
        self.key_sft, self.key_prompts, self.key_pairs = keys[1], keys[2], keys[3]
        self.key_eval_prompts, self.key_eval_pairs = keys[4], keys[5]
        self.prompt_length, self.length = t.prompt_length, t.completion_length
        self.seq_len = t.prompt_length + t.completion_length
        self.eval_prompts = np.asarray(
            synthetic.sample_prompts(
                self.key_eval_prompts, self.task, t.num_eval_prompts, t.prompt_length
            )
        )

    def sft_batch(self, index: int) -> dict:
        """Sequences of the reference language; every next-token prediction is trained."""
        key = jax.random.fold_in(self.key_sft, index)
        ids = np.asarray(
            synthetic.sample_prompts(key, self.task, self.config.sft.batch_size, self.seq_len)
        )
        ones = np.ones_like(ids, dtype=np.int32)
        return {"input_ids": ids.astype(np.int32), "attention_mask": ones, "loss_mask": ones}

    def completion_mask(self, rows: int) -> np.ndarray:
        mask = np.zeros((rows, self.seq_len), np.int32)
        mask[:, self.prompt_length :] = 1
        return mask

    def pair_rows(self, prompt, chosen, rejected) -> dict:
        """`[2B, T]` rows (chosen then rejected) of prompt + completion, completion trained."""
        ids = np.concatenate(
            [np.concatenate([prompt, chosen], 1), np.concatenate([prompt, rejected], 1)], 0
        ).astype(np.int32)
        return {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids, dtype=np.int32),
            "loss_mask": self.completion_mask(ids.shape[0]),
        }


def _sample_pairs(data: SyntheticData, model, key, prompts) -> dict[str, np.ndarray]:
    """Two reference samples per prompt, labelled by Bradley-Terry on the gold reward."""
    t = data.config.task
    key_sample, key_label = jax.random.split(key)
    both = np.concatenate([prompts, prompts], 0)
    out = _generate(model, both, key_sample, data.length)
    n = prompts.shape[0]
    pairs = synthetic.label_token_pairs(
        key_label,
        data.task,
        prompts,
        out[:n],
        out[n:],
        temperature=t.label_temperature,
        label_noise=t.label_noise,
    )
    return {k: np.asarray(v) for k, v in pairs._asdict().items()}


def _generate(model, prompts, key, length: int, chunk: int = 4096) -> np.ndarray:
    """Samples `[N, length]` completions in chunks of at most `chunk` rows."""
    outs = []
    for i, start in enumerate(range(0, prompts.shape[0], chunk)):
        rows = jnp.asarray(prompts[start : start + chunk])
        gen = decode.sample(model, rows, jax.random.fold_in(key, i), max_new_tokens=length)
        outs.append(np.asarray(gen.tokens))
    return np.concatenate(outs, 0)


def _load_or_sample_pairs(path: pathlib.Path, key: Mapping[str, str], make: Callable[[], dict]):
    """The pairs stored at `path` if they were made with `key`, else `make()` (then stored).

    `key` names what the pairs depend on (the reference's fingerprint, the task's settings).
    """
    if path.exists():
        with np.load(path) as f:
            stored = {k: f[k] for k in f.files}
        old = {k: str(stored.pop(k)) if k in stored else None for k in key}
        if old == dict(key):
            return stored
        differ = ", ".join(k for k in key if old[k] != key[k])
        warnings.warn(f"{path} was made with another {differ}; sampling again.", stacklevel=2)
    pairs = make()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in key.items()}, **pairs)
    tmp.replace(path)
    return pairs


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunStopped(RuntimeError):
    """A stage stopped before its last step (preemption); the run directory can be resumed."""

    def __init__(self, stage: str, step: int, reason: str, out: pathlib.Path):
        self.stage, self.step, self.reason = stage, step, reason
        super().__init__(
            f"the {stage} stage stopped at step {step} ({reason}); its checkpoint is saved. Run "
            f"the same command again (--out {out}) to resume."
        )


def _require_completed(result, stage: str, out: pathlib.Path) -> None:
    if result.stop_reason != "completed":
        raise RunStopped(stage, int(result.step), result.stop_reason, out)


def _guard_inputs(run_dir: pathlib.Path, checkpoint_dir: str, inputs: Mapping[str, Any]) -> None:
    """Refuses to resume a stage whose checkpoints were trained on other inputs.

    `inputs` (e.g. the reference's fingerprint and the pairs') is stored in
    `run_dir/inputs.json` when the stage starts; a later run with different inputs and existing
    checkpoints raises instead of silently continuing them.
    """
    path = run_dir / "inputs.json"
    ckpt = pathlib.Path(checkpoint_dir)
    has_checkpoints = ckpt.is_dir() and any(ckpt.iterdir())
    inputs = json.loads(json.dumps(dict(inputs)))
    if path.exists() and has_checkpoints:
        stored = json.loads(path.read_text())
        differ = sorted(k for k in set(stored) | set(inputs) if stored.get(k) != inputs.get(k))
        if differ:
            raise RuntimeError(
                f"{run_dir} holds checkpoints trained with another {', '.join(differ)} "
                f"(stored {[stored.get(k) for k in differ]}, now {[inputs.get(k) for k in differ]})"
                f". Remove {run_dir} and {ckpt} to train again with the new inputs, or use "
                "another --out."
            )
        return
    if has_checkpoints:
        warnings.warn(
            f"{run_dir}: checkpoints without a record of their inputs; assuming they match.",
            stacklevel=2,
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(inputs, indent=2))
    tmp.replace(path)


class PairIterator(IndexedIterator):
    """Epochs over a fixed set of pairs in a seeded order; batch `i` is a pure function of `i`."""

    def __init__(self, rows_fn: Callable, num_pairs: int, batch_size: int, seed: int, extra=None):
        self.rows_fn, self.num_pairs, self.batch_size = rows_fn, num_pairs, batch_size
        self.seed, self.extra = seed, extra or {}
        self.per_epoch = num_pairs // batch_size
        self._epoch, self._perm = -1, None
        super().__init__(self._batch)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.num_pairs)
        return self._perm

    def _batch(self, index: int) -> dict:
        epoch, j = divmod(index, self.per_epoch)
        idx = self._order(epoch)[j * self.batch_size : (j + 1) * self.batch_size]
        batch = self.rows_fn(idx)
        batch["index"] = idx.astype(np.int32)
        for name, values in self.extra.items():
            batch[name] = values[idx]
        return batch


# ------------------------------------------------------------------------------------------
# Evaluation.


def _completion_logps(token_fn, prompt_length: int, length: int):
    """`(params, batch) -> [R, L]` per-token log-probs of the completion tokens."""

    def fn(params, batch):
        logps, _ = token_fn(params, batch)
        return logps[:, prompt_length - 1 : prompt_length - 1 + length]

    return jax.jit(fn)


class SyntheticEvaluator:
    """Gold-reward metrics of a policy on held-out prompts and pairs of the token task."""

    def __init__(self, data: SyntheticData, model_def, ref_params, beta: float, eval_pairs):
        self.data, self.model_def, self.ref_params, self.beta = data, model_def, ref_params, beta
        self.pairs = eval_pairs
        self.logps = _completion_logps(
            make_token_logps_fn(model_def), data.prompt_length, data.length
        )
        self.pair_batch = data.pair_rows(
            eval_pairs["prompt"], eval_pairs["chosen"], eval_pairs["rejected"]
        )
        self.ref_pair_logps = np.asarray(self.logps(ref_params, self.pair_batch))
        self.gold_credit = np.concatenate(
            [eval_pairs["chosen_credit"], eval_pairs["rejected_credit"]], 0
        )
        self.key_policy, self.key_ref = jax.random.split(jax.random.key(data.config.task.seed + 1))
        ref_samples = self._samples(ref_params, self.key_ref)
        self.ref_rewards = self._gold(ref_samples)

    def _samples(self, params, key) -> np.ndarray:
        model = self.model_def.merge(params)
        return _generate(model, self.data.eval_prompts, key, self.data.length)

    def _gold(self, completions) -> np.ndarray:
        prev = self.data.eval_prompts[:, -1]
        return np.asarray(synthetic.token_gold_credit(self.data.task, prev, completions).sum(-1))

    def token_implicit_rewards(self, params) -> np.ndarray:
        """`[2B, L]` per-token `beta (log pi - log pi_ref)` of held-out chosen then rejected."""
        pol = np.asarray(self.logps(params, self.pair_batch))
        return self.beta * (pol - self.ref_pair_logps)

    def __call__(self, params) -> dict[str, float]:
        tok = self.token_implicit_rewards(params)
        n = self.pairs["chosen"].shape[0]
        seq = tok.sum(-1)
        samples = self._samples(params, self.key_policy)
        rewards = self._gold(samples)
        rows = self.data.pair_rows(self.data.eval_prompts, samples, samples)
        rows = {k: v[: samples.shape[0]] for k, v in rows.items()}
        pol_lp = np.asarray(self.logps(params, rows)).sum(-1)
        ref_lp = np.asarray(self.logps(self.ref_params, rows)).sum(-1)
        win = np.mean(rewards > self.ref_rewards) + 0.5 * np.mean(rewards == self.ref_rewards)
        return {
            "gold_reward_policy": float(rewards.mean()),
            "gold_reward_ref": float(self.ref_rewards.mean()),
            "win_rate_vs_ref": float(win),
            "kl_to_ref": float(np.mean(pol_lp - ref_lp)),
            "implicit_reward_chosen": float(seq[:n].mean()),
            "implicit_reward_rejected": float(seq[n:].mean()),
            "implicit_reward_accuracy": float(np.mean(seq[:n] > seq[n:])),
            "token_credit_spearman": spearman(tok, self.gold_credit),
        }


def _reference_fit(data: SyntheticData, model_def, ref_params, num: int = 512) -> dict:
    """Per-token NLL of fresh reference-language sequences under the SFT model and the chain."""
    key = jax.random.fold_in(data.key_sft, -1 % (2**31))
    ids = np.asarray(synthetic.sample_prompts(key, data.task, num, data.seq_len))
    ones = np.ones_like(ids, dtype=np.int32)
    logps, mask = jax.jit(make_token_logps_fn(model_def))(
        ref_params, {"input_ids": ids, "attention_mask": ones, "loss_mask": ones}
    )
    model_nll = -float(np.sum(np.asarray(logps)) / np.sum(np.asarray(mask)))
    true = synthetic.sequence_logprobs_markov(data.task.ref_logits, ids[:, 0], ids[:, 1:])
    return {"nll_per_token_sft": model_nll, "nll_per_token_true_chain": -float(np.mean(true))}


def _optimum_reference(data: SyntheticData, beta: float, eval_pairs) -> dict[str, Any]:
    """Exact quantities of the task's KL-regularised optimum relative to the true reference."""
    task, length = data.task, data.length
    star = synthetic.token_optimal_policy_logits(task, beta=beta, length=length)
    prev_eval = jnp.asarray(data.eval_prompts[:, -1])
    v0 = np.asarray(synthetic.token_optimal_values(task, beta=beta, length=length))[0]
    prev = eval_pairs["prompt"][:, -1]

    def implicit(y):
        lp_star = synthetic.sequence_logprobs_markov(star, prev, y)
        lp_ref = synthetic.sequence_logprobs_markov(task.ref_logits, prev, y)
        return beta * np.asarray(lp_star - lp_ref)

    tok = np.concatenate([implicit(eval_pairs["chosen"]), implicit(eval_pairs["rejected"])], 0)
    credit = np.concatenate([eval_pairs["chosen_credit"], eval_pairs["rejected_credit"]], 0)
    n = eval_pairs["chosen"].shape[0]
    return {
        "gold_reward_true_ref": float(
            synthetic.token_expected_reward(task.ref_logits, task, prev_eval, length).mean()
        ),
        "gold_reward_optimum": float(
            synthetic.token_expected_reward(star, task, prev_eval, length).mean()
        ),
        "kl_optimum_to_true_ref": float(
            synthetic.token_kl_to_reference(star, task, prev_eval, length).mean()
        ),
        "soft_value_optimum": float(v0[np.asarray(prev)].mean()),
        "implicit_reward_chosen_optimum": float(tok[:n].sum(-1).mean()),
        "implicit_reward_rejected_optimum": float(tok[n:].sum(-1).mean()),
        "token_credit_spearman_optimum": spearman(tok, credit),
        "token_implicit_optimum": tok,
    }


# ------------------------------------------------------------------------------------------
# Stages.


def _log(message: str) -> None:
    print(f"[dpo] {message}", flush=True)


def run_sft(config: Config, model, batches, run_dir: pathlib.Path, mesh=None, rules=None):
    """Trains `model` by next-token likelihood; returns `(model_def, params, result)`."""
    sft = config.sft
    tx = sft.optimizer.build(sft.steps)
    model_def, state, sharding = create_train_state(
        model, tx, config.loop.seed, mesh=mesh, rules=rules
    )
    train_config = _train_config(config, run_dir, sft.steps, sft.optimizer, 0, RefSyncConfig())
    step = jit_step(
        make_step(make_sft_objective(model_def), tx, **train_config.step_options()),
        state_sharding=sharding,
        batch_sharding=_batch_sharding(mesh, rules),
    )
    result = train(
        train_config,
        state,
        step,
        batches,
        extra_config={"stage": "sft", "experiment": config_to_dict(config)},
    )
    return model_def, result.state.params, result


def run_dpo(
    config: Config,
    model_def,
    init_params,
    batches,
    run_dir: pathlib.Path,
    hparams: Mapping,
    *,
    eval_fn=None,
    mesh=None,
    rules=None,
    inputs: Mapping[str, Any] | None = None,
):
    """Trains the policy from `init_params` against the frozen reference `init_params`.

    `inputs` (what the run depends on: reference and data fingerprints) guards the resume: see
    `_guard_inputs`.
    """
    tx = config.optimizer.build(config.loop.steps)
    model = model_def.merge(init_params)
    # Reference-free losses (simpo, cpo, orpo, ...) train without the reference forward pass;
    # their `rewards/*` training metrics are then `beta log pi` (as TRL's CPOTrainer logs them).
    needs_ref = jl.info(config.loss.name).needs_reference or config.ref_sync.enabled
    live = config.reference == "live" and needs_ref
    model_def, state, sharding = create_train_state(
        model, tx, config.loop.seed, with_reference=live, mesh=mesh, rules=rules
    )
    objective = make_preference_objective(
        model_def, config.loss.name, beta=config.loss.beta, **hparams
    )
    train_config = _train_config(
        config,
        run_dir,
        config.loop.steps,
        config.optimizer,
        config.loop.eval_every,
        config.ref_sync,
    )
    step = jit_step(
        make_step(objective, tx, **train_config.step_options()),
        state_sharding=sharding,
        batch_sharding=_batch_sharding(mesh, rules),
    )
    if inputs is not None:
        _guard_inputs(run_dir, train_config.checkpoint_dir, inputs)
    hook = None if eval_fn is None else (lambda s: eval_fn(s.params))
    return train(
        train_config,
        state,
        step,
        batches,
        eval_fn=hook,
        extra_config={"stage": "dpo", "experiment": config_to_dict(config)},
    )


def train_and_summarise(
    config: Config,
    model_def,
    ref_params,
    batches,
    out: pathlib.Path,
    hparams,
    evaluator,
    *,
    inputs: Mapping[str, Any],
    **mesh,
) -> tuple[dict, Any, list, list]:
    """Runs (or resumes) DPO, evaluates the final policy, and summarises the run.

    Returns:
      `(summary, final_params, train_records, eval_records)`: the report fields both the
      synthetic and the real-data runs share (gold-reward fields None), then the final
      parameters and the deduplicated metric records of the DPO stage.
    """
    result = run_dpo(config, model_def, ref_params, batches, out / "dpo", hparams,
                     eval_fn=evaluator, inputs=inputs, **mesh)  # fmt: skip
    _require_completed(result, "DPO", out)
    params = jax.device_get(result.state.params)
    _log("evaluating")
    final = evaluator(params)
    records = read_metrics(out / "dpo")
    evals = _dedup_by_step([r for r in records if r.get("split") == "eval"])
    trains = _dedup_by_step([r for r in records if r.get("split") == "train"])
    first = evals[0] if evals else final
    rates = [r["perf/tokens_per_s"] for r in trains if "perf/tokens_per_s" in r]
    summary = {
        "loss_name": config.loss.name,
        "beta": config.loss.beta,
        "steps": int(result.step),
        "gold_reward_ref": final.get("gold_reward_ref"),
        "gold_reward_policy": final.get("gold_reward_policy"),
        "win_rate_vs_ref": final.get("win_rate_vs_ref"),
        "kl_to_ref": final["kl_to_ref"],
        "implicit_reward_chosen_start": first["implicit_reward_chosen"],
        "implicit_reward_chosen_end": final["implicit_reward_chosen"],
        "implicit_reward_rejected_start": first["implicit_reward_rejected"],
        "implicit_reward_rejected_end": final["implicit_reward_rejected"],
        "implicit_reward_start_step": int(first.get("step", result.step)),
        "implicit_reward_accuracy": final["implicit_reward_accuracy"],
        "token_credit_spearman": final.get("token_credit_spearman"),
        "tokens_per_s": float(np.median(rates)) if rates else None,
        "final_params_fingerprint": params_fingerprint(params),
        "reference_params_fingerprint": params_fingerprint(ref_params),
    }
    return summary, params, trains, evals


# ------------------------------------------------------------------------------------------
# Main.


def main(config: Config) -> dict:
    """Runs (or resumes) the experiment; writes and returns the report."""
    hparams = _validate(config)
    out = pathlib.Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _log(f"run directory: {out.resolve()}")
    (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))
    if config.synthetic:
        report = _main_synthetic(config, out, hparams)
    else:
        report = _main_real(config, out, hparams)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _write_markdown(config, out, report)
    _log(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return report


def _main_synthetic(config: Config, out: pathlib.Path, hparams: Mapping) -> dict:
    t0 = time.perf_counter()
    mesh, rules = _mesh(config)
    data = SyntheticData(config)
    t = config.task

    _log(f"SFT of the reference: {config.sft.steps} steps of {config.sft.batch_size} sequences")
    sft_iter = IndexedIterator(data.sft_batch)
    model_def, ref_params, sft_result = run_sft(
        config, _synthetic_model(config), sft_iter, out / "sft", mesh, rules
    )
    _require_completed(sft_result, "SFT", out)
    ref_params = jax.device_get(ref_params)
    ref_fp = params_fingerprint(ref_params)
    ref_model = model_def.merge(ref_params)

    _log(
        f"sampling {t.num_pairs} training and {t.num_eval_pairs} held-out pairs from the reference"
    )

    def make_pairs():
        train_prompts = np.asarray(
            synthetic.sample_prompts(data.key_prompts, data.task, t.num_pairs, t.prompt_length)
        )
        eval_prompts = np.asarray(
            synthetic.sample_prompts(
                jax.random.fold_in(data.key_prompts, 1),
                data.task,
                t.num_eval_pairs,
                t.prompt_length,
            )
        )
        train_pairs = _sample_pairs(data, ref_model, data.key_pairs, train_prompts)
        eval_pairs = _sample_pairs(data, ref_model, data.key_eval_pairs, eval_prompts)
        return {
            **{f"train_{k}": v for k, v in train_pairs.items()},
            **{f"eval_{k}": v for k, v in eval_pairs.items()},
        }

    pairs_key = {
        "reference_fingerprint": ref_fp,
        "task": json.dumps(config_to_dict(t), sort_keys=True),
    }
    stored = _load_or_sample_pairs(out / "pairs.npz", pairs_key, make_pairs)
    train_pairs = {k[6:]: v for k, v in stored.items() if k.startswith("train_")}
    eval_pairs = {k[5:]: v for k, v in stored.items() if k.startswith("eval_")}

    beta = config.loss.beta
    evaluator = SyntheticEvaluator(data, model_def, ref_params, beta, eval_pairs)
    extra = {}
    if config.reference == "cached":
        _log("caching reference log-probs of the training pairs")
        extra = _cached_reference(data, evaluator, ref_params, train_pairs)

    def rows(idx):
        return data.pair_rows(
            train_pairs["prompt"][idx], train_pairs["chosen"][idx], train_pairs["rejected"][idx]
        )

    batches = PairIterator(rows, t.num_pairs, config.batch_size, config.loop.seed, extra)
    _log(
        f"{config.loss.name} (beta={beta}) for {config.loop.steps} steps of "
        f"{config.batch_size} pairs, reference {config.reference}"
    )
    inputs = {"reference_fingerprint": ref_fp, "pairs_fingerprint": params_fingerprint(stored)}
    summary, params, trains, evals = train_and_summarise(
        config, model_def, ref_params, batches, out, hparams, evaluator,
        inputs=inputs, mesh=mesh, rules=rules,
    )  # fmt: skip
    optimum = _optimum_reference(data, beta, eval_pairs)
    token_rewards = evaluator.token_implicit_rewards(params)
    report = {
        **summary,
        "exact": {k: v for k, v in optimum.items() if k != "token_implicit_optimum"},
        "reference_fit": _reference_fit(data, model_def, ref_params),
        "eval_samples": int(t.num_eval_prompts),
        "eval_pairs": int(t.num_eval_pairs),
        "wall_s_this_session": round(time.perf_counter() - t0, 1),
        "acceptance": {
            "policy_gold_reward_above_ref": summary["gold_reward_policy"]
            > summary["gold_reward_ref"],
            "win_rate_vs_ref_ge_0.65": summary["win_rate_vs_ref"] >= 0.65,
            "token_credit_spearman_ge_0.3": summary["token_credit_spearman"] >= 0.3,
        },
    }
    _plots_synthetic(out, config, trains, evals, report, eval_pairs, token_rewards, optimum)
    _log(
        f"gold reward {report['gold_reward_ref']:+.3f} (ref) -> "
        f"{report['gold_reward_policy']:+.3f} (policy; optimum "
        f"{report['exact']['gold_reward_optimum']:+.3f}), win rate "
        f"{report['win_rate_vs_ref']:.3f}, KL {report['kl_to_ref']:.3f}, token credit "
        f"spearman {report['token_credit_spearman']:.3f}"
    )
    return report


def _cached_reference(data: SyntheticData, evaluator, ref_params, pairs) -> dict:
    chosen, rejected = [], []
    n = pairs["chosen"].shape[0]
    for start in range(0, n, 1024):
        sl = slice(start, start + 1024)
        rows = data.pair_rows(pairs["prompt"][sl], pairs["chosen"][sl], pairs["rejected"][sl])
        lp = np.asarray(evaluator.logps(ref_params, rows)).sum(-1)
        m = lp.shape[0] // 2
        chosen.append(lp[:m])
        rejected.append(lp[m:])
    return {
        "ref_chosen_logps": np.concatenate(chosen).astype(np.float32),
        "ref_rejected_logps": np.concatenate(rejected).astype(np.float32),
    }


# ------------------------------------------------------------------------------------------
# Real data.


def _real_tokenizer(config: Config):
    from jaxpref.data import HFTokenizer

    d = config.data
    path = d.tokenizer
    if path is None:
        path = str(pathlib.Path(config.model.hf_path) / "tokenizer.json")
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"--data.tokenizer: no tokenizer file at {path!r}.")
    return HFTokenizer(path, bos_token=d.bos_token, eos_token=d.eos_token, pad_token=d.pad_token)


def _real_model(config: Config, tokenizer):

    from jaxpref.models import from_hf

    m, d = config.model, config.data
    if m.hf_path is not None:
        model = from_hf(m.hf_path, dtype=m.dtype)
        vocab = model.config.vocab_size
        if tokenizer.vocab_size > vocab:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model at "
                f"{m.hf_path!r} only {vocab}."
            )
        if model.config.max_seq_len < d.max_length:
            raise ValueError(
                f"--data.max-length {d.max_length} exceeds the model's context "
                f"{model.config.max_seq_len}."
            )
        return model
    return m.build(tokenizer.vocab_size, d.max_length)


class _ChosenRows:
    """SFT batches from a pair pipeline: the chosen rows, their completions trained."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        b = next(self.it)
        half = b.input_ids.shape[0] // 2
        return {
            "input_ids": b.input_ids[:half],
            "attention_mask": b.attention_mask[:half],
            "loss_mask": b.loss_mask[:half] * b.pair_mask[:, None],
            "positions": b.positions[:half],
        }

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def _main_real(config: Config, out: pathlib.Path, hparams: Mapping) -> dict:
    from jaxpref.data import ReadReport, TokenizeConfig, preference_pipeline, read_preferences

    t0 = time.perf_counter()
    d = config.data
    mesh, rules = _mesh(config)
    tokenizer = _real_tokenizer(config)
    model = _real_model(config, tokenizer)
    records, read_report = read_preferences(d.path, on_error=d.on_error)
    if len(records) <= d.eval_pairs:
        raise ValueError(
            f"{d.path}: {len(records)} usable records, not more than --data.eval-pairs "
            f"{d.eval_pairs}."
        )
    order = np.random.default_rng(config.loop.seed).permutation(len(records))
    eval_records = [records[i] for i in order[: d.eval_pairs]]
    train_records = [records[i] for i in order[d.eval_pairs :]]
    if len(train_records) < config.batch_size:
        raise ValueError(
            f"{d.path}: {len(train_records)} training records, fewer than "
            f"--batch-size {config.batch_size}."
        )
    tok_config = TokenizeConfig(
        max_length=d.max_length, max_prompt_length=d.max_prompt_length, buckets=(d.max_length,)
    )
    tok_report = ReadReport()

    def pipeline(recs, batch_size, seed, shuffle=True, epochs=None):
        return preference_pipeline(
            recs,
            batch_size=batch_size,
            tokenizer=tokenizer,
            config=tok_config,
            seed=seed,
            shuffle=shuffle,
            num_epochs=epochs,
            on_error=d.on_error,
            report=tok_report,
            shard_index=0,
            shard_count=1,
        )

    if config.run_sft:
        _log(f"SFT on the chosen completions: {config.sft.steps} steps")
        sft_iter = _ChosenRows(iter(pipeline(train_records, config.sft.batch_size, 1)))
        model_def, ref_params, sft_result = run_sft(
            config, model, sft_iter, out / "sft", mesh, rules
        )
        _require_completed(sft_result, "SFT", out)
    else:
        from jaxpref.train import split_model

        model_def, ref_params = split_model(model)
    ref_params = jax.device_get(ref_params)
    eval_batch = next(iter(pipeline(eval_records, len(eval_records), 0, False, 1)))
    evaluator = RealEvaluator(model_def, ref_params, config, eval_batch, tokenizer)
    _log(
        f"{config.loss.name} (beta={config.loss.beta}) on {len(train_records)} pairs of "
        f"{d.path} for {config.loop.steps} steps"
    )
    batches = iter(pipeline(train_records, config.batch_size, config.loop.seed))
    inputs = {
        "reference_fingerprint": params_fingerprint(ref_params),
        "data_sha256": _file_sha256(d.path),
        "data": json.dumps(config_to_dict(d), sort_keys=True),
    }
    summary, _, trains, evals = train_and_summarise(
        config, model_def, ref_params, batches, out, hparams, evaluator,
        inputs=inputs, mesh=mesh, rules=rules,
    )  # fmt: skip
    report = {
        **summary,
        "data": {
            "path": d.path,
            "records": read_report.num_records,
            "skipped": dict(read_report.skipped),
            "train_pairs": len(train_records),
            "eval_pairs": len(eval_records),
            "tokenizer_skipped": dict(tok_report.skipped),
        },
        "wall_s_this_session": round(time.perf_counter() - t0, 1),
    }
    _plots_common(out, trains, evals, report)
    return report


class RealEvaluator:
    """Implicit rewards on held-out pairs and a sampled KL to the reference, without gold labels."""

    def __init__(self, model_def, ref_params, config: Config, eval_batch, tokenizer):
        self.model_def, self.ref_params, self.beta = model_def, ref_params, config.loss.beta
        self.config, self.tokenizer = config, tokenizer
        token_fn = make_token_logps_fn(model_def)
        self.seq_logps = jax.jit(lambda p, b: _masked_rows(*token_fn(p, b)))
        self.batch = {k: np.asarray(v) for k, v in eval_batch._asdict().items()}
        self.pair_mask = self.batch["pair_mask"].astype(bool)
        self.ref_seq = np.asarray(self.seq_logps(ref_params, self.batch))
        ids, att, loss = (
            self.batch["input_ids"],
            self.batch["attention_mask"],
            self.batch["loss_mask"],
        )
        half = ids.shape[0] // 2
        prompt_mask = (att[:half] * (np.cumsum(loss[:half], axis=1) == 0)).astype(bool)
        self.prompt_ids = np.where(prompt_mask, ids[:half], tokenizer.pad_id)
        self.prompt_mask = prompt_mask[self.pair_mask]
        self.prompt_ids = self.prompt_ids[self.pair_mask]
        self.key = jax.random.key(config.loop.seed + 1)

    def __call__(self, params) -> dict[str, float]:
        seq = self.beta * (np.asarray(self.seq_logps(params, self.batch)) - self.ref_seq)
        half = seq.shape[0] // 2
        chosen, rejected = seq[:half][self.pair_mask], seq[half:][self.pair_mask]
        model = self.model_def.merge(params)
        gen = decode.sample(
            model,
            jnp.asarray(self.prompt_ids),
            self.key,
            max_new_tokens=self.config.data.max_new_tokens,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
            prompt_mask=jnp.asarray(self.prompt_mask),
        )
        seqs = np.asarray(gen.sequences)
        seq_mask = np.asarray(gen.sequence_mask).astype(np.int32)
        loss_mask = np.zeros_like(seq_mask)
        loss_mask[:, self.prompt_ids.shape[1] :] = np.asarray(gen.mask)
        rows = {"input_ids": seqs, "attention_mask": seq_mask, "loss_mask": loss_mask}
        pol = np.asarray(gen.logprobs).sum(-1)
        ref = np.asarray(self.seq_logps(self.ref_params, rows))
        return {
            "kl_to_ref": float(np.mean(pol - ref)),
            "implicit_reward_chosen": float(chosen.mean()),
            "implicit_reward_rejected": float(rejected.mean()),
            "implicit_reward_accuracy": float(np.mean(chosen > rejected)),
        }


def _masked_rows(logps, mask):
    return jnp.sum(jnp.where(mask > 0, logps, 0.0), axis=-1)


# ------------------------------------------------------------------------------------------
# Plots and the markdown report.


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plots_common(out: pathlib.Path, trains, evals, report) -> None:
    plt = _plt()
    sft = []
    if (out / "sft" / "metrics.jsonl").exists():
        sft = _dedup_by_step([r for r in read_metrics(out / "sft") if r.get("split") == "train"])
    panels = [
        ("DPO loss", trains, "loss"),
        ("reward accuracy (train batch)", trains, "rewards/accuracies"),
        ("reward margin (train batch)", trains, "rewards/margins"),
    ]
    if sft:
        panels.insert(0, ("SFT loss (nats/token)", sft, "loss"))
    if evals and "gold_reward_policy" in evals[0]:
        panels.append(("gold reward of samples (held out)", evals, "gold_reward_policy"))
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, recs, key) in zip(axes.flat, panels, strict=False):
        xs = [r["step"] for r in recs if key in r]
        ax.plot(xs, [r[key] for r in recs if key in r], marker="." if len(xs) < 30 else None)
        if key == "gold_reward_policy":
            ax.axhline(report["gold_reward_ref"], color="gray", ls="--", label="reference")
            ax.axhline(
                report["exact"]["gold_reward_optimum"], color="green", ls=":", label="exact optimum"
            )
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)

    if evals:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        xs = [0] + [r["step"] for r in evals]
        for key, color in (
            ("implicit_reward_chosen", "tab:blue"),
            ("implicit_reward_rejected", "tab:red"),
        ):
            ax.plot(
                xs,
                [0.0] + [r[key] for r in evals],
                color=color,
                marker=".",
                label=key.split("_")[-1],
            )
            exact = report.get("exact", {}).get(f"{key}_optimum")
            if exact is not None:
                ax.axhline(exact, color=color, ls=":", label=f"{key.split('_')[-1]} at optimum")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("beta log pi/pi_ref (held-out pairs)")
        ax.set_title("implicit rewards of chosen and rejected", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "implicit_rewards.png", dpi=110)
        plt.close(fig)


def _plots_synthetic(out, config, trains, evals, report, eval_pairs, token_rewards, optimum):
    _plots_common(out, trains, evals, report)
    plt = _plt()
    n_show = min(4, eval_pairs["chosen"].shape[0])
    n = eval_pairs["chosen"].shape[0]
    rows_imp, rows_gold, labels = [], [], []
    for i in range(n_show):
        for name, offset in (("chosen", 0), ("rejected", n)):
            rows_imp.append(token_rewards[offset + i])
            rows_gold.append(eval_pairs[f"{name}_credit"][i])
            labels.append(f"pair {i} {name} (R={eval_pairs[f'{name}_reward'][i]:+.2f})")
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(labels) + 1.6))
    for ax, mat, title in (
        (axes[0], np.array(rows_imp), "per-token implicit reward beta log pi/pi_ref"),
        (axes[1], np.array(rows_gold), "gold per-token credit r(y_t-1, y_t)"),
    ):
        lim = float(np.abs(mat).max()) or 1.0
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("completion token")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(out / "token_credit.png", dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def _write_markdown(config: Config, out: pathlib.Path, r: dict) -> None:
    rows = [
        ("loss", r["loss_name"]),
        ("beta", r["beta"]),
        ("DPO steps", r["steps"]),
        ("gold reward, reference samples", r["gold_reward_ref"]),
        ("gold reward, policy samples", r["gold_reward_policy"]),
        ("gold win rate of policy vs reference", r["win_rate_vs_ref"]),
        ("KL(policy || reference), sampled", r["kl_to_ref"]),
        (
            f"implicit reward chosen (step {r['implicit_reward_start_step']} -> end)",
            f"{_fmt(r['implicit_reward_chosen_start'])} -> {_fmt(r['implicit_reward_chosen_end'])}",
        ),
        (
            f"implicit reward rejected (step {r['implicit_reward_start_step']} -> end)",
            f"{_fmt(r['implicit_reward_rejected_start'])} -> "
            f"{_fmt(r['implicit_reward_rejected_end'])}",
        ),
        ("implicit reward accuracy (held-out pairs)", r["implicit_reward_accuracy"]),
        ("token credit Spearman", r["token_credit_spearman"]),
        ("training tokens/s (median)", r["tokens_per_s"]),
        ("final parameters (sha256)", f"`{r['final_params_fingerprint'][:16]}...`"),
    ]
    md = [f"# DPO experiment: {r['loss_name']}", "", "| metric | value |", "|---|---|"]
    md += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    exact = r.get("exact")
    if exact:
        md += [
            "",
            "## Exact reference points (token task)",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| expected gold reward of the task's true reference chain | "
            f"{_fmt(exact['gold_reward_true_ref'])} |",
            f"| expected gold reward of the KL-regularised optimum (beta={r['beta']}) | "
            f"{_fmt(exact['gold_reward_optimum'])} |",
            f"| KL(optimum || true reference) | {_fmt(exact['kl_optimum_to_true_ref'])} |",
            f"| implicit reward of held-out chosen / rejected at the optimum | "
            f"{_fmt(exact['implicit_reward_chosen_optimum'])} / "
            f"{_fmt(exact['implicit_reward_rejected_optimum'])} |",
            f"| token credit Spearman at the optimum | "
            f"{_fmt(exact['token_credit_spearman_optimum'])} |",
            f"| NLL per token of fresh reference-language text: SFT model / true chain | "
            f"{_fmt(r['reference_fit']['nll_per_token_sft'])} / "
            f"{_fmt(r['reference_fit']['nll_per_token_true_chain'])} |",
            "",
            "Acceptance: " + ", ".join(f"{k}: {_fmt(v)}" for k, v in r["acceptance"].items()),
            "",
            "## Why the chosen reward goes down",
            "",
            "The implicit reward of a completion is `beta log pi(y|x)/pi_ref(y|x)`. At the "
            "KL-regularised optimum that DPO targets, it equals `R(y) - V*(x)`, where "
            "`V*(x) = beta log E_{y~pi_ref}[exp(R(y)/beta)]` is the soft maximum of the gold "
            "reward over completions of the reference. The pairs were sampled from the "
            "reference, so a typical chosen completion is far below that soft maximum "
            f"(mean `V*(x)` over held-out prompts: {_fmt(exact['soft_value_optimum'])}): the "
            "target implicit reward of the chosen completion is negative as well, and its "
            "likelihood has to fall while probability moves to better completions that never "
            "appeared in the data. The dotted lines in `implicit_rewards.png` are these exact "
            "targets for the held-out pairs. With a reference closer to the optimum (or pairs "
            "sampled from the policy), `V*(x)` sits nearer the chosen rewards and the effect "
            "shrinks.",
        ]
    md += [
        "",
        "## Plots",
        "",
        "![training curves](training_curves.png)",
        "",
        "![implicit rewards](implicit_rewards.png)",
    ]
    if exact:
        md += [
            "",
            "Per-token implicit rewards of a few held-out pairs next to the gold per-token "
            "credit (implicit rewards at the optimum are the credit plus a potential-based "
            "shaping term `V*_{t+1}(y_t) - V*_t(y_{t-1})`):",
            "",
            "![token credit](token_credit.png)",
        ]
    md += ["", f"Configuration: `{out / 'config.json'}`."]
    (out / "report.md").write_text("\n".join(md) + "\n")


def tyro_config(args=None) -> Config:
    """The `Config` of a command line (`sys.argv[1:]` when `args` is None)."""
    import tyro

    return tyro.cli(Config, args=args, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    import sys

    try:
        main(tyro_config())
    except RunStopped as stopped:
        _log(str(stopped))
        sys.exit(75)  # EX_TEMPFAIL: run again to continue
