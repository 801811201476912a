"""Language-model pieces of preference experiments: data, stages, evaluators, report parts.

* The synthetic token task of `jaxpref.envs` (a Markov reference language with a hidden
  per-token gold reward) as batches for SFT and DPO (`TokenTaskSpec`, `TokenTaskData`), pairs
  sampled from a model and labelled by the gold reward (`sample_token_pairs`), gold-reward
  evaluation of a policy (`TokenTaskEvaluator`) against the task's exact KL-regularised optimum
  (`token_task_optimum`, `token_task_markdown`).
* Real preference files (`PreferenceFileSpec`, `PreferenceFile`: read, checked, split,
  tokenized) and, without gold labels, `HeldOutEvaluator`.
* Stages on the `jaxpref.train` engine: `train_sft`, `train_preference`, and
  `run_preference_stage` (resume guard, phase timing, evaluation, summary); `EpochIterator`
  feeds a fixed set of examples with exact resume; `cached_reference_logps`.
* Plots: `plot_implicit_rewards` (why the chosen reward goes down), `plot_token_credit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref import decode, envs
from jaxpref.data import synthetic
from jaxpref.experiment._stats import spearman
from jaxpref.logprobs import masked_sum
from jaxpref.losses import LossConfig
from jaxpref.train import (
    IndexedIterator,
    TrainConfig,
    create_train_state,
    jit_step,
    make_preference_objective,
    make_sft_objective,
    make_step,
    make_token_logps_fn,
    train,
)

__all__ = [
    "ChosenRows",
    "EpochIterator",
    "HeldOutEvaluator",
    "ModelSpec",
    "PreferenceFile",
    "PreferenceFileSpec",
    "PreferenceStage",
    "TokenTaskData",
    "TokenTaskEvaluator",
    "TokenTaskSpec",
    "cached_reference_logps",
    "completion_logps_fn",
    "generate",
    "plot_implicit_rewards",
    "plot_token_credit",
    "reference_fit",
    "run_preference_stage",
    "sample_token_pairs",
    "token_task_markdown",
    "token_task_optimum",
    "train_preference",
    "train_sft",
]


@dataclasses.dataclass(frozen=True)
class TokenTaskSpec:
    """The synthetic token task.

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


class TokenTaskData:
    """The token task, its held-out prompts, and the batch layouts of SFT and preference pairs.

    Every key derives from `spec.seed`: `key_sft` (SFT sequences), `key_prompts` (training and
    held-out pair prompts), `key_pairs` / `key_eval_pairs` (pair sampling and labels),
    `key_eval_prompts` (the sampled-metric prompts `eval_prompts`, `[num_eval_prompts, P]`).

    Args:
      spec: the task's settings.
      sft_batch_size: sequences per SFT batch.
    """

    def __init__(self, spec: TokenTaskSpec, sft_batch_size: int):
        t = spec
        self.spec, self.sft_batch_size = spec, sft_batch_size
        keys = jax.random.split(jax.random.key(t.seed), 6)
        self.task = envs.make_token_task(
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
        """Sequences of the reference language; every next-token prediction is trained.

        Args:
          index: the batch's index (batch `i` is a pure function of `i`).
        """
        key = jax.random.fold_in(self.key_sft, index)
        ids = np.asarray(
            synthetic.sample_prompts(key, self.task, self.sft_batch_size, self.seq_len)
        )
        ones = np.ones_like(ids, dtype=np.int32)
        return {"input_ids": ids.astype(np.int32), "attention_mask": ones, "loss_mask": ones}

    def completion_mask(self, rows: int) -> np.ndarray:
        """`[rows, T]` int32 mask of the completion positions.

        Args:
          rows: rows of the batch.
        """
        mask = np.zeros((rows, self.seq_len), np.int32)
        mask[:, self.prompt_length :] = 1
        return mask

    def pair_rows(self, prompt, chosen, rejected) -> dict:
        """`[2B, T]` rows (chosen then rejected) of prompt + completion, completion trained.

        Args:
          prompt: `[B, P]` prompt tokens.
          chosen: `[B, L]` chosen completions.
          rejected: `[B, L]` rejected completions.
        """
        ids = np.concatenate(
            [np.concatenate([prompt, chosen], 1), np.concatenate([prompt, rejected], 1)], 0
        ).astype(np.int32)
        return {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids, dtype=np.int32),
            "loss_mask": self.completion_mask(ids.shape[0]),
        }


def sample_token_pairs(data: TokenTaskData, model, key, prompts) -> dict[str, np.ndarray]:
    """Two samples of `model` per prompt, labelled by Bradley-Terry on the gold reward.

    Args:
      data: the task.
      model: the NNX language model to sample from (the reference).
      key: PRNG key of the samples and the labels.
      prompts: `[N, P]` prompt tokens.

    Returns:
      The fields of `jaxpref.data.synthetic.label_token_pairs` as NumPy arrays (`prompt`,
      `chosen`, `rejected` `[N, L]`, their gold rewards and per-token credits, ...).
    """
    t = data.spec
    key_sample, key_label = jax.random.split(key)
    both = np.concatenate([prompts, prompts], 0)
    out = generate(model, both, key_sample, data.length)
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


def generate(model, prompts, key, length: int, chunk: int = 4096) -> np.ndarray:
    """Samples `[N, length]` completions of `[N, P]` prompts (KV cache), `chunk` rows at a time.

    Chunk `i` uses `fold_in(key, i)`, so the result depends on `chunk`.

    Args:
      model: the NNX language model.
      prompts: `[N, P]` prompt tokens.
      key: PRNG key.
      length: tokens to sample.
      chunk: rows per call.
    """
    outs = []
    for i, start in enumerate(range(0, prompts.shape[0], chunk)):
        rows = jnp.asarray(prompts[start : start + chunk])
        gen = decode.sample(model, rows, jax.random.fold_in(key, i), max_new_tokens=length)
        outs.append(np.asarray(gen.tokens))
    return np.concatenate(outs, 0)


class EpochIterator(IndexedIterator):
    """Epochs over a fixed set of examples in a seeded order; batch `i` is a pure function of `i`.

    Resumes exactly (a `jaxpref.train.DataIterator`). Each epoch is a fresh permutation
    (`numpy` generator seeded by `[seed, epoch]`); the last `num % batch_size` examples of an
    epoch's order are left out of that epoch.

    Args:
      rows_fn: `indices [B] -> batch dict` of those examples.
      num_pairs: examples.
      batch_size: examples per batch.
      seed: seed of the orders.
      extra: name -> `[num_pairs, ...]` arrays added to each batch at the batch's indices
        (e.g. cached reference log-probs).
    """

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


def completion_logps_fn(token_fn, prompt_length: int, length: int):
    """`(params, batch) -> [R, L]` per-token log-probs of the completion tokens.

    Args:
      token_fn: `(params, batch) -> (token_logps [R, T-1], mask)` (`make_token_logps_fn`).
      prompt_length: prompt tokens `P`.
      length: completion tokens `L`.
    """

    def fn(params, batch):
        logps, _ = token_fn(params, batch)
        return logps[:, prompt_length - 1 : prompt_length - 1 + length]

    return jax.jit(fn)


class TokenTaskEvaluator:
    """Gold-reward metrics of a policy on held-out prompts and pairs of the token task.

    Calling it on parameters returns the gold reward of policy and reference samples on
    `data.eval_prompts`, the gold win rate against the reference, a sampled KL to the
    reference, the implicit rewards `beta log pi/pi_ref` of the held-out pairs and the Spearman
    correlation of per-token implicit rewards with the gold per-token credit.

    Args:
      data: the task.
      model_def: the policy's `jaxpref.train.ModelDef`.
      ref_params: the reference's parameters.
      beta: the implicit reward's inverse temperature.
      eval_pairs: held-out pairs (`sample_token_pairs` fields).
    """

    def __init__(self, data: TokenTaskData, model_def, ref_params, beta: float, eval_pairs):
        self.data, self.model_def, self.ref_params, self.beta = data, model_def, ref_params, beta
        self.pairs = eval_pairs
        self.logps = completion_logps_fn(
            make_token_logps_fn(model_def), data.prompt_length, data.length
        )
        self.pair_batch = data.pair_rows(
            eval_pairs["prompt"], eval_pairs["chosen"], eval_pairs["rejected"]
        )
        self.ref_pair_logps = np.asarray(self.logps(ref_params, self.pair_batch))
        self.gold_credit = np.concatenate(
            [eval_pairs["chosen_credit"], eval_pairs["rejected_credit"]], 0
        )
        self.key_policy, self.key_ref = jax.random.split(jax.random.key(data.spec.seed + 1))
        ref_samples = self._samples(ref_params, self.key_ref)
        self.ref_rewards = self._gold(ref_samples)

    def _samples(self, params, key) -> np.ndarray:
        model = self.model_def.merge(params)
        return generate(model, self.data.eval_prompts, key, self.data.length)

    def _gold(self, completions) -> np.ndarray:
        prev = self.data.eval_prompts[:, -1]
        return np.asarray(envs.token_gold_credit(self.data.task, prev, completions).sum(-1))

    def token_implicit_rewards(self, params) -> np.ndarray:
        """`[2B, L]` per-token `beta (log pi - log pi_ref)` of held-out chosen then rejected.

        Args:
          params: the policy's parameters.
        """
        pol = np.asarray(self.logps(params, self.pair_batch))
        return self.beta * (pol - self.ref_pair_logps)

    def __call__(self, params) -> dict[str, float]:
        """The metrics of the policy with parameters `params`.

        Args:
          params: the policy's parameters.
        """
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


def reference_fit(data: TokenTaskData, model_def, ref_params, num: int = 512) -> dict:
    """Per-token NLL of fresh reference-language sequences under the SFT model and the chain.

    Args:
      data: the task.
      model_def: the SFT model's static part.
      ref_params: its parameters.
      num: sequences sampled from the true chain.
    """
    key = jax.random.fold_in(data.key_sft, -1 % (2**31))
    ids = np.asarray(synthetic.sample_prompts(key, data.task, num, data.seq_len))
    ones = np.ones_like(ids, dtype=np.int32)
    logps, mask = jax.jit(make_token_logps_fn(model_def))(
        ref_params, {"input_ids": ids, "attention_mask": ones, "loss_mask": ones}
    )
    model_nll = -float(np.sum(np.asarray(logps)) / np.sum(np.asarray(mask)))
    true = envs.sequence_logprobs_markov(data.task.ref_logits, ids[:, 0], ids[:, 1:])
    return {"nll_per_token_sft": model_nll, "nll_per_token_true_chain": -float(np.mean(true))}


def token_task_optimum(data: TokenTaskData, beta: float, eval_pairs) -> dict[str, Any]:
    """Exact quantities of the task's KL-regularised optimum relative to the true reference.

    The optimum `pi* ∝ pi_ref exp(R/beta)` comes from the backward soft Bellman recursion of
    `jaxpref.envs`. Returns its expected gold reward and that of the true reference
    chain on `data.eval_prompts`, `KL(pi* || pi_ref)`, the mean soft value `V*(x)`, the implicit
    rewards of the held-out pairs under `pi*`, their token-credit Spearman, and
    `token_implicit_optimum` (`[2N, L]` per-token implicit rewards, chosen then rejected).

    Args:
      data: the task.
      beta: the KL coefficient of the optimum.
      eval_pairs: held-out pairs (`sample_token_pairs` fields).
    """
    task, length = data.task, data.length
    star = envs.token_optimal_policy_logits(task, beta=beta, length=length)
    prev_eval = jnp.asarray(data.eval_prompts[:, -1])
    v0 = np.asarray(envs.token_optimal_values(task, beta=beta, length=length))[0]
    prev = eval_pairs["prompt"][:, -1]

    def implicit(y):
        lp_star = envs.sequence_logprobs_markov(star, prev, y)
        lp_ref = envs.sequence_logprobs_markov(task.ref_logits, prev, y)
        return beta * np.asarray(lp_star - lp_ref)

    tok = np.concatenate([implicit(eval_pairs["chosen"]), implicit(eval_pairs["rejected"])], 0)
    credit = np.concatenate([eval_pairs["chosen_credit"], eval_pairs["rejected_credit"]], 0)
    n = eval_pairs["chosen"].shape[0]
    return {
        "gold_reward_true_ref": float(
            envs.token_expected_reward(task.ref_logits, task, prev_eval, length).mean()
        ),
        "gold_reward_optimum": float(
            envs.token_expected_reward(star, task, prev_eval, length).mean()
        ),
        "kl_optimum_to_true_ref": float(
            envs.token_kl_to_reference(star, task, prev_eval, length).mean()
        ),
        "soft_value_optimum": float(v0[np.asarray(prev)].mean()),
        "implicit_reward_chosen_optimum": float(tok[:n].sum(-1).mean()),
        "implicit_reward_rejected_optimum": float(tok[n:].sum(-1).mean()),
        "token_credit_spearman_optimum": spearman(tok, credit),
        "token_implicit_optimum": tok,
    }


class ChosenRows:
    """SFT batches from a pair pipeline: the chosen rows, their completions trained.

    Wraps a `jaxpref.data.preference_pipeline` iterator and keeps its resumable state.

    Args:
      it: the pair pipeline's iterator (`[2B, T]` batches, chosen rows first).
    """

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
        """The wrapped pipeline's resumable state."""
        return self.it.get_state()

    def set_state(self, state):
        """Restores the wrapped pipeline's state.

        Args:
          state: a state from `get_state`.
        """
        self.it.set_state(state)


class HeldOutEvaluator:
    """Implicit rewards on held-out pairs and a sampled KL to the reference, without gold labels.

    Args:
      model_def: the policy's `jaxpref.train.ModelDef`.
      ref_params: the reference's parameters.
      beta: the implicit reward's inverse temperature.
      eval_batch: one `jaxpref.data` pair batch of the held-out records.
      tokenizer: the `jaxpref.data` tokenizer (its eos and pad ids end and pad samples).
      max_new_tokens: completion length sampled for the KL estimate.
      seed: seed of the samples.
    """

    def __init__(
        self, model_def, ref_params, beta, eval_batch, tokenizer, *, max_new_tokens: int, seed: int
    ):
        self.model_def, self.ref_params, self.beta = model_def, ref_params, beta
        self.max_new_tokens, self.tokenizer = max_new_tokens, tokenizer
        token_fn = make_token_logps_fn(model_def)
        self.seq_logps = jax.jit(lambda p, b: masked_sum(*token_fn(p, b)))
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
        self.key = jax.random.key(seed + 1)

    def __call__(self, params) -> dict[str, float]:
        """The metrics of the policy with parameters `params`.

        Args:
          params: the policy's parameters.
        """
        seq = self.beta * (np.asarray(self.seq_logps(params, self.batch)) - self.ref_seq)
        half = seq.shape[0] // 2
        chosen, rejected = seq[:half][self.pair_mask], seq[half:][self.pair_mask]
        model = self.model_def.merge(params)
        gen = decode.sample(
            model,
            jnp.asarray(self.prompt_ids),
            self.key,
            max_new_tokens=self.max_new_tokens,
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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A decoder LM trained from scratch, or a local Hugging Face checkpoint to start from.

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
        """A freshly initialised `jaxpref.models.Transformer` of this shape.

        Args:
          vocab_size: tokens of the vocabulary.
          max_seq_len: longest sequence (positions).
        """
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


def _batch_sharding(mesh, rules):
    if mesh is None:
        return None
    from jaxpref.parallel import batch_sharding

    return batch_sharding(mesh, rules, ndim=1)


def train_sft(
    model, batches, config: TrainConfig, *, seed: int, mesh=None, rules=None, extra_config=None
):
    """Trains `model` by next-token likelihood with `jaxpref.train` (checkpoints, resume).

    Args:
      model: the NNX language model.
      batches: an iterator of `{"input_ids", "attention_mask", "loss_mask"}` batches.
      config: the stage's `TrainConfig` (see `jaxpref.experiment.stage_config`).
      seed: seed of the train state.
      mesh: optional device mesh; with `rules`, the state and batches are sharded.
      rules: `jaxpref.parallel` sharding rules.
      extra_config: JSON stored with the checkpoints.

    Returns:
      `(model_def, params, result)`: the model's static part, the trained parameters and the
      `jaxpref.train.TrainResult`.
    """
    tx = config.optimizer.build(config.loop.steps)
    model_def, state, sharding = create_train_state(model, tx, seed, mesh=mesh, rules=rules)
    step = jit_step(
        make_step(make_sft_objective(model_def), tx, **config.step_options()),
        state_sharding=sharding,
        batch_sharding=_batch_sharding(mesh, rules),
    )
    result = train(config, state, step, batches, extra_config=extra_config)
    return model_def, result.state.params, result


def train_preference(
    model_def,
    ref_params,
    batches,
    config: TrainConfig,
    *,
    loss: LossConfig,
    reference: str,
    seed: int,
    evaluator: Callable | None = None,
    mesh=None,
    rules=None,
    extra_config=None,
):
    """Trains a policy from `ref_params` with a registry loss against the frozen reference.

    Reference-free losses (simpo, cpo, orpo, ...) train without the reference forward pass
    (their `rewards/*` training metrics are then `beta log pi`, as TRL's CPOTrainer logs them).

    Args:
      model_def: the model's static part (`jaxpref.train.split_model`).
      ref_params: the reference's parameters, also the policy's start.
      batches: an iterator of `[2B, T]` pair batches (cached reference log-probs included when
        `reference` is "cached").
      config: the stage's `TrainConfig`.
      loss: the loss and its hyperparameters.
      reference: "live" (reference forward pass each step) or "cached".
      seed: seed of the train state.
      evaluator: `params -> metrics`, run every `config.loop.eval_every` steps.
      mesh: optional device mesh.
      rules: `jaxpref.parallel` sharding rules.
      extra_config: JSON stored with the checkpoints.

    Returns:
      The `jaxpref.train.TrainResult`.
    """
    tx = config.optimizer.build(config.loop.steps)
    needs_ref = loss.info.needs_reference or config.ref_sync.enabled
    model_def, state, sharding = create_train_state(
        model_def.merge(ref_params),
        tx,
        seed,
        with_reference=reference == "live" and needs_ref,
        mesh=mesh,
        rules=rules,
    )
    objective = make_preference_objective(model_def, loss)
    step = jit_step(
        make_step(objective, tx, **config.step_options()),
        state_sharding=sharding,
        batch_sharding=_batch_sharding(mesh, rules),
    )
    hook = None if evaluator is None else (lambda s: evaluator(s.params))
    return train(config, state, step, batches, eval_fn=hook, extra_config=extra_config)


def cached_reference_logps(data: TokenTaskData, logps_fn, ref_params, pairs, chunk=1024) -> dict:
    """Sequence log-probs of every pair under the reference, for `reference="cached"` training.

    Args:
      data: the task (its pair layout).
      logps_fn: `(params, batch) -> [2R, L]` completion log-probs (`completion_logps_fn`).
      ref_params: the reference's parameters.
      pairs: `prompt`, `chosen`, `rejected` arrays of `N` pairs.
      chunk: pairs per forward pass.

    Returns:
      `ref_chosen_logps`, `ref_rejected_logps`: `[N]` float32.
    """
    chosen, rejected = [], []
    for start in range(0, pairs["chosen"].shape[0], chunk):
        sl = slice(start, start + chunk)
        rows = data.pair_rows(pairs["prompt"][sl], pairs["chosen"][sl], pairs["rejected"][sl])
        lp = np.asarray(logps_fn(ref_params, rows)).sum(-1)
        chosen.append(lp[: lp.shape[0] // 2])
        rejected.append(lp[lp.shape[0] // 2 :])
    return {
        "ref_chosen_logps": np.concatenate(chosen).astype(np.float32),
        "ref_rejected_logps": np.concatenate(rejected).astype(np.float32),
    }


def plot_token_credit(path, eval_pairs, token_rewards, num_pairs: int = 4) -> None:
    """Heat maps of per-token implicit rewards next to the gold per-token credit (PNG).

    Args:
      path: the PNG file.
      eval_pairs: held-out pairs (`sample_token_pairs` fields).
      token_rewards: `[2N, L]` per-token implicit rewards, chosen rows then rejected.
      num_pairs: pairs shown.
    """
    from jaxpref.experiment._plots import figure, save_figure

    n = eval_pairs["chosen"].shape[0]
    rows_imp, rows_gold, labels = [], [], []
    for i in range(min(num_pairs, n)):
        for name, offset in (("chosen", 0), ("rejected", n)):
            rows_imp.append(token_rewards[offset + i])
            rows_gold.append(eval_pairs[f"{name}_credit"][i])
            labels.append(f"pair {i} {name} (R={eval_pairs[f'{name}_reward'][i]:+.2f})")
    fig = figure(figsize=(12, 0.45 * len(labels) + 1.6))
    axes = fig.subplots(1, 2)
    for ax, mat, title in (
        (axes[0], np.array(rows_imp), "per-token implicit reward beta log pi/pi_ref"),
        (axes[1], np.array(rows_gold), "gold per-token credit r(y_t-1, y_t)"),
    ):
        lim = float(np.abs(mat).max()) or 1.0
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("completion token")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03, label="nats")
    save_figure(fig, path)


@dataclasses.dataclass(frozen=True)
class PreferenceFileSpec:
    """A real preference file and how to tokenize it.

    Args:
      path: JSONL (plain, .gz, .bz2 or .xz) or Parquet preference file (explicit
        prompt/chosen/rejected, HH-RLHF, or conversational layouts).
      tokenizer: `tokenizer.json` of the model; default `<model.hf_path>/tokenizer.json`.
      bos_token: beginning-of-sequence token of the tokenizer, if the model uses one.
      eos_token: end-of-sequence token appended to completions and ending generation.
      pad_token: padding token (default: the eos token).
      max_length: tokens per row (prompt + completion); longer records are truncated (counted).
      max_prompt_length: most prompt tokens (default `max_length // 2`).
      eval_pairs: records held out (after a seeded shuffle) for evaluation.
      max_new_tokens: completion length sampled for the KL estimate.
      on_error: "raise" stops at the first malformed record (file, line, reason); "skip" skips
        malformed records and counts them by reason in the report.
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


class PreferenceFile:
    """A preference file read, split into training and held-out records, and tokenized.

    Reading checks everything before a run writes anything: the file's records (a malformed
    one under `on_error="raise"` becomes an `InputError` naming file, line, reason and the flag
    that skips it), and enough records for the held-out split and one training batch.

    Args:
      spec: the file and its tokenization.
      tokenizer: the `jaxpref.data` tokenizer.
      seed: seed of the train / held-out split.
      batch_size: pairs per training batch (at least that many training records are needed).

    Attributes:
      train_records: records of the training split.
      eval_records: the `spec.eval_pairs` held-out records.
      read_report: the `ReadReport` of reading the file.
      token_report: the `ReadReport` of tokenization (records skipped or truncated).
    """

    def __init__(self, spec: PreferenceFileSpec, tokenizer, *, seed: int, batch_size: int):
        from jaxpref.data import DataError, ReadReport, TokenizeConfig, read_preferences
        from jaxpref.experiment._errors import InputError

        self.spec, self.tokenizer = spec, tokenizer
        try:
            records, self.read_report = read_preferences(spec.path, on_error=spec.on_error)
        except DataError as err:
            hint = (
                ""
                if err.reason == "malformed_file"
                else " (pass --data.on-error skip to skip such records; they are counted)"
            )
            raise InputError(f"--data.path {err}{hint}") from None
        if len(records) <= spec.eval_pairs:
            raise InputError(
                f"--data.path {spec.path}: {len(records)} usable records, not more than "
                f"--data.eval-pairs {spec.eval_pairs}."
            )
        order = np.random.default_rng(seed).permutation(len(records))
        self.eval_records = [records[i] for i in order[: spec.eval_pairs]]
        self.train_records = [records[i] for i in order[spec.eval_pairs :]]
        if len(self.train_records) < batch_size:
            raise InputError(
                f"--data.path {spec.path}: {len(self.train_records)} training records, fewer "
                f"than --batch-size {batch_size}."
            )
        self.token_report = ReadReport()
        self._tokenize = TokenizeConfig(
            max_length=spec.max_length,
            max_prompt_length=spec.max_prompt_length,
            buckets=(spec.max_length,),
        )

    def batches(self, records, batch_size: int, seed: int, *, shuffle=True, epochs=None):
        """A resumable `jaxpref.data.preference_pipeline` over `records` (`[2B, T]` batches).

        Args:
          records: the records to tokenize and batch.
          batch_size: pairs per batch.
          seed: seed of the shuffle.
          shuffle: shuffle each epoch.
          epochs: epochs (None: forever).
        """
        from jaxpref.data import preference_pipeline

        return preference_pipeline(
            records,
            batch_size=batch_size,
            tokenizer=self.tokenizer,
            config=self._tokenize,
            seed=seed,
            shuffle=shuffle,
            num_epochs=epochs,
            on_error=self.spec.on_error,
            report=self.token_report,
            shard_index=0,
            shard_count=1,
        )

    def eval_batch(self):
        """All held-out pairs as one batch, in file order."""
        it = self.batches(self.eval_records, len(self.eval_records), 0, shuffle=False, epochs=1)
        return next(iter(it))

    @property
    def skipped(self) -> dict[str, int]:
        """Records skipped so far, by reason (reading and tokenization)."""
        return {**self.read_report.skipped, **self.token_report.skipped}

    def summary(self) -> dict[str, Any]:
        """The data section of a report: records, split sizes, skips by reason, truncations."""
        return {
            "path": self.spec.path,
            "records": self.read_report.num_records,
            "skipped": dict(self.read_report.skipped),
            "train_pairs": len(self.train_records),
            "eval_pairs": len(self.eval_records),
            "tokenizer_skipped": dict(self.token_report.skipped),
            "truncated": int(self.token_report.num_truncated),
        }


class PreferenceStage(NamedTuple):
    """What `run_preference_stage` returns.

    Attributes:
      summary: the stage's report fields (see `run_preference_stage`).
      params: the final parameters (host arrays).
      train_records: training metric records, one per logged step.
      eval_records: evaluation records, one per evaluated step.
    """

    summary: dict[str, Any]
    params: Any
    train_records: list[dict]
    eval_records: list[dict]


def run_preference_stage(
    run,
    stage: str,
    config: TrainConfig,
    model_def,
    ref_params,
    batches,
    evaluator: Callable,
    *,
    loss: LossConfig,
    reference: str,
    seed: int,
    inputs: dict[str, Any],
    extra_config=None,
    mesh=None,
    rules=None,
) -> PreferenceStage:
    """Runs (or resumes) one preference-training stage in a run directory and summarises it.

    Refuses checkpoints trained on other `inputs` (`jaxpref.experiment.guard_inputs`), trains
    with `train_preference` (timed as phase `stage`), raises `RunStopped` if the stage stopped
    early, evaluates the final policy (phase "evaluate") and reads the stage's metrics.

    Args:
      run: the experiment's `RunDir`; the stage writes to `run.path / stage`.
      stage: the stage's name.
      config: its `TrainConfig` (`jaxpref.experiment.stage_config`).
      model_def: the model's static part.
      ref_params: the reference's parameters, also the policy's start.
      batches: the pair batches.
      evaluator: `params -> metrics` with `kl_to_ref`, `implicit_reward_{chosen,rejected}`,
        `implicit_reward_accuracy` and optionally gold-reward metrics (`TokenTaskEvaluator`,
        `HeldOutEvaluator`).
      loss: the loss.
      reference: "live" or "cached".
      seed: seed of the train state.
      inputs: what the stage depends on (fingerprints), stored and compared on resume.
      extra_config: JSON stored with the checkpoints.
      mesh: optional device mesh.
      rules: `jaxpref.parallel` sharding rules.

    Returns:
      A `PreferenceStage`. Its summary holds the loss and beta, the steps, the final metrics
      (gold reward of reference and policy, win rate, KL; None where the evaluator has no gold
      reward), the implicit rewards at the first evaluation and at the end, the median
      training tokens/s, and the `params_fingerprint`s of the final and reference parameters.
    """
    from jaxpref.experiment._run_dir import guard_inputs
    from jaxpref.experiment._stages import require_completed, stage_records
    from jaxpref.train import params_fingerprint

    stage_dir = run.path / stage
    guard_inputs(stage_dir, config.checkpoint_dir, inputs)
    with run.phase(stage):
        result = train_preference(
            model_def,
            ref_params,
            batches,
            config,
            loss=loss,
            reference=reference,
            seed=seed,
            evaluator=evaluator,
            extra_config=extra_config,
            mesh=mesh,
            rules=rules,
        )
    require_completed(result, stage.upper(), run.path)
    params = jax.device_get(result.state.params)
    with run.phase("evaluate"):
        final = evaluator(params)
    trains, evals = stage_records(stage_dir)
    first = evals[0] if evals else final
    rates = [r["perf/tokens_per_s"] for r in trains if "perf/tokens_per_s" in r]
    summary = {
        "loss_name": loss.name,
        "beta": loss.beta,
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
    return PreferenceStage(summary, params, trains, evals)


def token_task_markdown(md, results: dict[str, Any]) -> None:
    """Adds the token task's exact reference points and "why the chosen reward goes down".

    Args:
      md: the report's `jaxpref.experiment.Markdown`.
      results: a run's results with `beta`, `exact` (`token_task_optimum` without the
        per-token array), `reference_fit` and `acceptance`.
    """
    from jaxpref.experiment._report import fmt as f

    exact, fit = results["exact"], results["reference_fit"]
    md.heading("Exact reference points (token task)")
    md.table(
        ["quantity", "value"],
        [
            (
                "expected gold reward of the task's true reference chain",
                exact["gold_reward_true_ref"],
            ),
            (
                f"expected gold reward of the KL-regularised optimum (beta={results['beta']})",
                exact["gold_reward_optimum"],
            ),
            ("KL(optimum || true reference)", exact["kl_optimum_to_true_ref"]),
            (
                "implicit reward of held-out chosen / rejected at the optimum",
                f"{f(exact['implicit_reward_chosen_optimum'])} / "
                f"{f(exact['implicit_reward_rejected_optimum'])}",
            ),
            ("token credit Spearman at the optimum", exact["token_credit_spearman_optimum"]),
            (
                "NLL per token of fresh reference-language text: SFT model / true chain",
                f"{f(fit['nll_per_token_sft'])} / {f(fit['nll_per_token_true_chain'])}",
            ),
        ],
    )
    checks = ", ".join(f"{k}: {f(v)}" for k, v in results["acceptance"].items())
    md.paragraph("Acceptance: " + checks)
    md.heading("Why the chosen reward goes down")
    md.paragraph(
        "The implicit reward of a completion is `beta log pi(y|x)/pi_ref(y|x)`. At the "
        "KL-regularised optimum that DPO targets, it equals `R(y) - V*(x)`, where "
        "`V*(x) = beta log E_{y~pi_ref}[exp(R(y)/beta)]` is the soft maximum of the gold "
        "reward over completions of the reference. The pairs were sampled from the reference, "
        "so a typical chosen completion is below that soft maximum (mean `V*(x)` over held-out "
        f"prompts: {f(exact['soft_value_optimum'])}): the target implicit reward of the chosen "
        "completion can be negative as well, and its likelihood has to fall while probability "
        "moves to better completions that never appeared in the data. The dotted lines in "
        "`implicit_rewards.png` are these exact targets for the held-out pairs."
    )


def plot_implicit_rewards(path, eval_records: list[dict], exact: dict | None = None) -> None:
    """Implicit rewards of held-out chosen and rejected completions along training (PNG).

    The "why does the chosen reward go down?" diagnostic: both curves start at 0 (the policy
    is the reference) and, where the exact optimum is known, dotted lines mark its values.

    Args:
      path: the PNG file.
      eval_records: evaluation records with `step`, `implicit_reward_chosen`,
        `implicit_reward_rejected`.
      exact: optional `implicit_reward_{chosen,rejected}_optimum` values.
    """
    from jaxpref.experiment._plots import figure, save_figure

    exact = exact or {}
    fig = figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    xs = [0] + [r["step"] for r in eval_records]
    for which, color in (("chosen", "tab:blue"), ("rejected", "tab:red")):
        key = f"implicit_reward_{which}"
        ax.plot(xs, [0.0] + [r[key] for r in eval_records], color=color, marker=".", label=which)
        if f"{key}_optimum" in exact:
            ax.axhline(exact[f"{key}_optimum"], color=color, ls=":", label=f"{which} at optimum")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set(xlabel="step", ylabel="beta log pi/pi_ref (nats, held-out pairs)")
    ax.set_title("implicit rewards of chosen and rejected", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)
