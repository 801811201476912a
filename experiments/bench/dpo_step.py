"""Benchmark: DPO training throughput and MFU, jaxpref vs TRL's `DPOTrainer` (PyTorch).

The step measured is one full DPO update on a fixed batch: policy forward and backward over the
`[2B, T]` chosen-then-rejected rows, reference log-probs, the sigmoid DPO loss (beta 0.1), global
gradient-norm clipping (1.0) and an AdamW update, all in the compute dtype of the config (fp32
by default). Two variants of each implementation are timed:

* **live reference**: the frozen reference model runs a forward pass every step;
* **cached reference**: the reference log-probs come with the batch (a precomputed cache), so
  there is no reference forward.

Default shape (`--preset tiny`): GPT-2 architecture, 4 layers, width 256, 4 heads, vocabulary 512,
prompt 32 + completion 32 tokens, 8 pairs per step (16 rows of 64 tokens = 1024 tokens per step).
`--preset gpt2-124m --dtype bfloat16` is the GPU configuration (GPT-2 small, bf16 compute with
fp32 parameters, prompt 256 + completion 256).

Implementations:

* jaxpref: `Transformer` + `create_train_state(with_reference=True)` +
  `make_preference_objective(model_def, "sigmoid", beta=0.1)` + `make_step` + `jit_step` (state
  donated), with `OptimizerConfig(name="adamw").build`. The log-prob path is chosen by `--logps`
  ("auto": plain `[2B, T, V]` logits when they are small, the chunked custom-VJP path otherwise).
* TRL: a real `trl.DPOTrainer` (`DPOConfig(bf16=False, gradient_checkpointing=False, ...)`) on a
  `GPT2LMHeadModel` with an explicit reference model, loaded from the very weights jaxpref starts
  from (written with `jaxpref.models.to_hf`). The timed step is exactly the per-update body of the
  Hugging Face `Trainer` loop: `trainer.training_step(model, batch)` (TRL's concatenated policy
  forward with its fused LM head, reference forward under `no_grad`, loss, metrics, backward),
  gradient clipping, `optimizer.step()` (TRL's default AdamW), `lr_scheduler.step()`,
  `model.zero_grad()`. The batch is built by TRL's own dataset preparation (a word-level tokenizer
  whose tokens spell the same ids) and collator. Its cached variant uses TRL's own
  `precompute_ref_log_probs` branch with `ref_chosen_logps` / `ref_rejected_logps` in the batch.
  Gradient checkpointing is off (TRL's default turns it on, which recomputes the forward pass
  during the backward pass); neither side rematerialises here.

Timing: every variant is compiled / warmed up first; then `windows` rounds, each timing
`steps_per_window` consecutive steps of every variant in turn (interleaved, so the load of a
shared machine hits all of them alike), with `block_until_ready` on the JAX state. Reported: the
median window's seconds per step (`step_ms`, from which `tokens_per_s = 2 * pairs * T / step_s`
and `mfu`), the best window's (`step_ms_min`, and the ratios of best windows), and the machine's
1-minute load average before and after: other processes on the same cores slow every variant,
PyTorch's step far more than XLA's (its OpenMP threads meet at a barrier in every operation), so
a loaded run favours jaxpref and the best-window ratio is the fairer reading then.

FLOPs (model FLOPs, not hardware FLOPs: recomputation and the optimizer are not counted):
`N` = parameters that enter matmuls (q, k, v, o and MLP kernels of every layer, plus the LM head
`D * V`, which for GPT-2 is the tied embedding; embedding lookups and biases / norms excluded).
Per token: `6 N` for the policy's forward and backward and `2 N` for the reference forward.
Attention scores and values: per layer and sequence, `2 * 2 * T^2 * d_attn` forward FLOPs for
`q k^T` and `p v` (the full `T x T` square, causal masking not discounted), times 3 for the
policy's forward and backward and times 1 for the reference forward.
`mfu = flops_per_step / step_s / peak`, where `peak` is this machine's matmul peak measured in the
same run: the best time of a jitted square matmul in the compute dtype over a few sizes, measured
before and after the timed rounds (the larger rate is used).

GEMM-only bound (`gemm_only`): every matrix product of the step (forward, both backward
products of each with the contraction dimensions autodiff gives them, attention included;
`step_gemms`) computed by one jitted program on random operands, nothing else, timed before
and after the timed rounds (the shorter best time is used). Its time is the floor for any
implementation built on these matmul kernels: `mfu_bound` is the MFU at that time,
`ratio_bound_vs_torch` TRL's best window over it, `jaxpref_non_gemm_ms` the rest of jaxpref's
best window (norms, softmax, GELU, log-probs, loss, optimizer, dispatch).

Run: `python -m experiments.bench.dpo_step [--help]`. Prints one JSON object. XLA flags are not
changed; the JAX default device is used, and torch runs on CUDA when available, else on the CPU
with `torch.set_num_threads(os.cpu_count())`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.bench._timing import best_time, cli, time_interleaved
from jaxpref.models import ModelConfig, Transformer, preset, to_hf
from jaxpref.train import (
    OptimizerConfig,
    create_train_state,
    init_train_state,
    jit_step,
    make_pair_logps_fn,
    make_preference_objective,
    make_step,
    make_token_logps_fn,
)

TARGET_MFU = 0.6
TARGET_RATIO = 1.25
# Above this many bytes of fp32 `[2B, T, V]` logits, "auto" uses the chunked log-prob path.
_LOGITS_BYTES_LIMIT = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class Shape:
    """Model and batch shape; None takes the preset's value."""

    num_layers: int | None = None
    """Transformer layers."""
    d_model: int | None = None
    """Model width."""
    num_heads: int | None = None
    """Attention heads."""
    vocab_size: int | None = None
    """Vocabulary size (its last token is EOS)."""
    pairs: int | None = None
    """Preference pairs per step (2 * pairs rows)."""
    prompt_len: int | None = None
    """Prompt tokens per row."""
    completion_len: int | None = None
    """Completion tokens per row."""


PRESET_SHAPES = {
    "tiny": Shape(4, 256, 4, 512, 8, 32, 32),
    "gpt2-124m": Shape(12, 768, 12, 50257, 8, 256, 256),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark settings."""

    preset: Literal["tiny", "gpt2-124m"] = "tiny"
    """Model and batch shape: 'tiny' (CPU) or 'gpt2-124m' (GPT-2 small, for a GPU)."""
    shape: Shape = Shape()
    """Fields of the preset's shape to override."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype (parameters stay float32)."""
    logps: Literal["auto", "logits", "chunked"] = "auto"
    """Log-prob path: 'auto' (plain logits up to 256 MiB of fp32 logits, else chunked)."""
    beta: float = 0.1
    """DPO beta."""
    learning_rate: float = 1e-4
    """AdamW learning rate (both implementations)."""
    warmup_steps: int = 3
    """Untimed steps of every variant before the timed windows."""
    windows: int = 10
    """Timed rounds; each times `steps_per_window` consecutive steps of every variant in turn."""
    steps_per_window: int = 3
    """Consecutive steps per timed window."""
    torch: bool = True
    """Also time TRL's DPOTrainer (needs torch, transformers, trl)."""
    matmul_sizes: tuple[int, ...] = (256, 512, 1024, 1536, 2048)
    """Sizes n of the square matmuls timed for the matmul peak."""
    matmul_repeats: int = 10
    """Timings per matmul size (best taken)."""
    gemm_repeats: int = 10
    """Timings of the GEMM-only program (best taken)."""
    seed: int = 0
    """Seed of the model's parameters and of the batch."""

    @property
    def resolved_shape(self) -> Shape:
        """The preset's shape with the given fields overridden."""
        base = PRESET_SHAPES[self.preset]
        given = {k: v for k, v in dataclasses.asdict(self.shape).items() if v is not None}
        return dataclasses.replace(base, **given)

    @property
    def seq_len(self) -> int:
        s = self.resolved_shape
        return s.prompt_len + s.completion_len

    @property
    def tokens_per_step(self) -> int:
        return 2 * self.resolved_shape.pairs * self.seq_len


def model_config(config: Config) -> ModelConfig:
    """The jaxpref GPT-2 `ModelConfig` of the benchmark (fp32 parameters, compute dtype given)."""
    s = config.resolved_shape
    positions = max(config.seq_len, 1024 if config.preset == "gpt2-124m" else 0)
    return preset(
        "gpt2", vocab_size=s.vocab_size, d_model=s.d_model, num_layers=s.num_layers,
        num_heads=s.num_heads, mlp_dim=4 * s.d_model, max_seq_len=positions, dtype=config.dtype,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# FLOP count


def matmul_params(cfg: ModelConfig) -> int:
    """`N`: parameters that enter matmuls (attention and MLP kernels, LM head; no lookups)."""
    d, h = cfg.d_model, cfg.head_size
    attn = d * cfg.num_heads * h * 2 + d * cfg.kv_heads * h * 2  # q, o; k, v
    mlp = (3 if cfg.family == "llama" else 2) * d * cfg.mlp_dim
    return cfg.num_layers * (attn + mlp) + d * cfg.vocab_size


def flops_per_step(cfg: ModelConfig, rows: int, seq: int, *, live_reference: bool) -> int:
    """Model FLOPs of one DPO step on `rows` sequences of `seq` tokens (see the module doc)."""
    n = matmul_params(cfg)
    tokens = rows * seq
    attn_fwd = rows * cfg.num_layers * 2 * 2 * seq * seq * cfg.num_heads * cfg.head_size
    flops = 6 * n * tokens + 3 * attn_fwd
    if live_reference:
        flops += 2 * n * tokens + attn_fwd
    return flops


FLOPS_FORMULA = (
    "per step = tokens * (6N + 2N[live reference]) + rows * L * (2*2*T^2*d_attn) * (3 + 1[live "
    "reference]); N = L*(4*D*d_attn + 2*D*F) + D*V"
)
FLOPS_NOTES = {
    "N": "parameters in matmuls: q, k, v, o and MLP kernels of every layer plus the LM head D*V "
    "(the tied embedding); embedding lookups, position embeddings, biases and norms excluded",
    "attention": "per layer and sequence, forward 2*2*T^2*d_attn FLOPs for q k^T and p v over the "
    "full T x T square (causal masking not discounted); x3 for the policy's forward and "
    "backward, x1 for the reference forward",
    "not_counted": "optimizer, norms, softmax, GELU and other elementwise work",
}


# ------------------------------------------------------------------------------------------------
# GEMM-only bound


def step_gemms(cfg: ModelConfig, rows: int, seq: int, *, live_reference: bool):
    """`(equation, lhs shape, rhs shape)` of every matrix product of one DPO step.

    Forward products of each layer (q, k, v, o, MLP kernels; attention scores and values) and the
    LM head; for the policy also both backward products of each (`dX = dY W^T` and
    `dW = X^T dY`, written with the contraction dimensions autodiff gives them, and four for
    attention); the reference adds one more forward. Their FLOPs sum to `flops_per_step`.
    """
    m, d, t = rows * seq, cfg.d_model, seq
    n, k, h = cfg.num_heads, cfg.kv_heads, cfg.head_size
    dense = [(d, n * h), (d, k * h), (d, k * h), (n * h, d)]
    dense += [(d, cfg.mlp_dim)] * (3 if cfg.family == "llama" else 1) + [(cfg.mlp_dim, d)]
    fwd, bwd = [], []
    for _ in range(cfg.num_layers):
        for c, o in dense:
            fwd.append(("mc,co->mo", (m, c), (c, o)))
            bwd.append(("mo,co->mc", (m, o), (c, o)))  # dX = dY W^T
            bwd.append(("mc,mo->co", (m, c), (m, o)))  # dW = X^T dY
        q, kv, p = (rows, n, t, h), (rows, n, t, h), (rows, n, t, t)
        fwd.append(("bnth,bnsh->bnts", q, kv))  # scores
        fwd.append(("bnts,bnsh->bnth", p, kv))  # values
        bwd.append(("bnth,bnsh->bnts", q, kv))  # dP = dO V^T
        bwd.append(("bnts,bnth->bnsh", p, q))  # dV = P^T dO
        bwd.append(("bnts,bnsh->bnth", p, kv))  # dQ = dS K
        bwd.append(("bnts,bnth->bnsh", p, q))  # dK = dS^T Q
    head = (m, d), (d, cfg.vocab_size)
    fwd.append(("mc,co->mo", *head))
    bwd.append(("mo,co->mc", (m, cfg.vocab_size), head[1]))
    bwd.append(("mc,mo->co", head[0], (m, cfg.vocab_size)))
    return fwd * (2 if live_reference else 1) + bwd


def gemm_flops(gemms) -> int:
    """FLOPs of `step_gemms`' products: 2 per multiply-add."""
    total = 0
    for eq, a, b in gemms:
        lhs, rhs = eq.split("->")[0].split(",")
        sizes = dict(zip(lhs, a, strict=True)) | dict(zip(rhs, b, strict=True))
        total += 2 * math.prod(sizes[c] for c in set(lhs + rhs))
    return total


def time_gemms(gemms, dtype, *, repeats: int, seed: int = 0) -> float:
    """Best seconds of one jitted program computing exactly `gemms` (distinct random operands)."""
    key = jax.random.key(seed)
    operands = []
    for i, (_, a, b) in enumerate(gemms):
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        operands.append(
            (jax.random.normal(ka, a, jnp.float32).astype(dtype),
             jax.random.normal(kb, b, jnp.float32).astype(dtype))
        )  # fmt: skip
    equations = [eq for eq, _, _ in gemms]

    @jax.jit
    def run(ops):
        return [jnp.einsum(eq, x, y) for eq, (x, y) in zip(equations, ops, strict=True)]

    return best_time(run, operands, repeats=repeats)


# ------------------------------------------------------------------------------------------------
# Matmul peak


def matmul_peak(sizes, dtype, *, repeats: int) -> dict:
    """Best rate (GFLOP/s) of a jitted `n x n` matmul in `dtype` for each size `n`."""
    out = {}
    key = jax.random.key(0)
    for n in sizes:
        a = jax.random.normal(key, (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32).astype(dtype)
        best = best_time(jax.jit(lambda x, y: x @ y), a, b, repeats=repeats)
        out[n] = 2 * n**3 / best / 1e9
    return out


# ------------------------------------------------------------------------------------------------
# Data


def make_token_batch(config: Config) -> dict[str, np.ndarray]:
    """Random `[2B, T]` pair batch: shared prompts, distinct completions ending with EOS.

    Token `V - 1` is EOS; other tokens are drawn from `[0, V - 1)`. Rows are unpadded, so the
    batch holds exactly `2 B T` tokens.
    """
    s = config.resolved_shape
    rng = np.random.default_rng(config.seed)
    eos = s.vocab_size - 1
    prompts = rng.integers(0, eos, (s.pairs, s.prompt_len))
    chosen = rng.integers(0, eos, (s.pairs, s.completion_len))
    rejected = rng.integers(0, eos, (s.pairs, s.completion_len))
    chosen[:, -1] = eos
    rejected[:, -1] = eos
    ids = np.concatenate(
        [np.concatenate([prompts, chosen], 1), np.concatenate([prompts, rejected], 1)], 0
    ).astype(np.int32)
    loss_mask = np.zeros(ids.shape, np.int32)
    loss_mask[:, s.prompt_len :] = 1
    return {
        "input_ids": ids,
        "attention_mask": np.ones(ids.shape, np.int32),
        "loss_mask": loss_mask,
    }


# ------------------------------------------------------------------------------------------------
# jaxpref


def use_logits_path(config: Config) -> bool:
    """Whether the plain-logits log-prob path is used (else the chunked one)."""
    if config.logps != "auto":
        return config.logps == "logits"
    s = config.resolved_shape
    return config.tokens_per_step * s.vocab_size * 4 <= _LOGITS_BYTES_LIMIT


def build_jaxpref(config: Config, model: Transformer, batch: dict) -> dict:
    """Jitted live- and cached-reference steps, their states and batches."""
    opt = OptimizerConfig(name="adamw", learning_rate=config.learning_rate, grad_clip_norm=1.0)
    tx = opt.build(1_000_000)
    model_def, state, _ = create_train_state(model, tx, config.seed, with_reference=True)
    logps_fn = make_token_logps_fn(model_def, chunked=not use_logits_path(config))
    objective = make_preference_objective(model_def, "sigmoid", beta=config.beta, logps_fn=logps_fn)
    live_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    ref_fn = jax.jit(make_pair_logps_fn(model_def, chunked=not use_logits_path(config)))
    ref_chosen, ref_rejected = ref_fn(state.ref_params, live_batch)
    cached_batch = dict(live_batch, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    # The cached variant trains its own copy of the parameters (each state is donated per step).
    cached_state = init_train_state(jax.tree.map(jnp.copy, state.params), tx, config.seed)
    return {
        "step": jit_step(make_step(objective, tx)),
        "states": {"live": state, "cached": cached_state},
        "batches": {"live": live_batch, "cached": cached_batch},
        "ref_logps": (np.asarray(ref_chosen), np.asarray(ref_rejected)),
    }


# ------------------------------------------------------------------------------------------------
# TRL


def build_trl(config: Config, checkpoint: str, batch: dict, workdir: str) -> dict:
    """A `trl.DPOTrainer` on the checkpoint's weights, its timed step and collated batches."""
    import datasets
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(os.cpu_count() or 1)
    s = config.resolved_shape
    eos = s.vocab_size - 1
    words = [f"t{i}" for i in range(eos)] + ["<eos>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>"
    )

    def text(ids):
        return " ".join(words[i] for i in ids)

    b, p = s.pairs, s.prompt_len
    ids = batch["input_ids"]
    # TRL appends EOS to each completion itself, so the text stops one token short.
    data = datasets.Dataset.from_dict(
        {
            "prompt": [text(ids[i, :p]) for i in range(b)],
            "chosen": [" " + text(ids[i, p:-1]) for i in range(b)],
            "rejected": [" " + text(ids[b + i, p:-1]) for i in range(b)],
        }
    )
    bf16 = config.dtype == "bfloat16"
    args = DPOConfig(
        output_dir=workdir, per_device_train_batch_size=b, learning_rate=config.learning_rate,
        beta=config.beta, loss_type=["sigmoid"], max_length=config.seq_len, bf16=bf16,
        gradient_checkpointing=False, max_grad_norm=1.0, use_cpu=not cuda, report_to="none",
        eval_strategy="no", save_strategy="no", logging_steps=10**9, disable_tqdm=True,
        dataloader_num_workers=0, seed=config.seed,
    )  # fmt: skip
    policy = transformers.GPT2LMHeadModel.from_pretrained(checkpoint)
    reference = transformers.GPT2LMHeadModel.from_pretrained(checkpoint)
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1_000_000)
    trainer.current_gradient_accumulation_steps = 1
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(b)])
    collated = trainer._prepare_inputs(collated)
    if not np.array_equal(collated["input_ids"].cpu().numpy(), ids):
        raise RuntimeError("dpo_step: TRL's tokenised batch differs from the jaxpref batch.")
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, collated)
    cached = dict(collated, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    model = trainer.model

    def step(inputs, precomputed):
        trainer.precompute_ref_logps = precomputed
        trainer.training_step(model, inputs)
        grad_norm = trainer._clip_grad_norm(model)
        trainer._get_grad_norm(model, grad_norm=grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        if cuda:
            torch.cuda.synchronize()

    return {
        "trainer": trainer,
        "steps": {
            "live": lambda: step(collated, False),
            "cached": lambda: step(cached, True),
        },
        "ref_logps": (
            ref_chosen.float().cpu().numpy(),
            ref_rejected.float().cpu().numpy(),
        ),
        "torch_threads": torch.get_num_threads(),
        "torch_device": "cuda" if cuda else "cpu",
        "attn_implementation": model.config._attn_implementation,
        "optimizer": type(trainer.optimizer).__name__,
        "optim": str(args.optim),
    }


# ------------------------------------------------------------------------------------------------


def _summary(times: list[float], tokens: int, flops: int, peak_gflops: float) -> dict:
    step_s = statistics.median(times)
    return {
        "step_ms": round(step_s * 1e3, 2),
        "step_ms_min": round(min(times) * 1e3, 2),
        "tokens_per_s": round(tokens / step_s, 1),
        "model_gflops_per_s": round(flops / step_s / 1e9, 2),
        "mfu": round(flops / step_s / (peak_gflops * 1e9), 4),
        "mfu_best_window": round(flops / min(times) / (peak_gflops * 1e9), 4),
    }


def main(config: Config) -> dict:
    """Runs the benchmark and returns the JSON-ready report."""
    cfg = model_config(config)
    s = config.resolved_shape
    rows, seq, tokens = 2 * s.pairs, config.seq_len, config.tokens_per_step
    flops = {
        "live": flops_per_step(cfg, rows, seq, live_reference=True),
        "cached": flops_per_step(cfg, rows, seq, live_reference=False),
    }
    load_start = os.getloadavg()[0]
    peak_start = matmul_peak(
        config.matmul_sizes, cfg.compute_jnp_dtype, repeats=config.matmul_repeats
    )

    def gemm_times():
        return {
            kind: time_gemms(
                step_gemms(cfg, rows, seq, live_reference=kind == "live"),
                cfg.compute_jnp_dtype,
                repeats=config.gemm_repeats,
                seed=config.seed,
            )
            for kind in ("live", "cached")
        }

    gemm_start = gemm_times()

    batch = make_token_batch(config)
    model = Transformer(cfg, rngs=nnx.Rngs(config.seed))
    jx = build_jaxpref(config, model, batch)
    timed: dict[str, Callable[[], None]] = {}

    def jax_step(kind):
        def run():
            jx["states"][kind], _ = jx["step"](jx["states"][kind], jx["batches"][kind])
            return jx["states"][kind]  # the timing waits for it

        return run

    timed["jaxpref_live"] = jax_step("live")
    timed["jaxpref_cached"] = jax_step("cached")

    trl = None
    trl_error = None
    with tempfile.TemporaryDirectory() as workdir:
        if config.torch:
            try:
                checkpoint = os.path.join(workdir, "init")
                to_hf(model, checkpoint)
                trl = build_trl(config, checkpoint, batch, os.path.join(workdir, "trl"))
            except ImportError as e:
                trl_error = f"torch/transformers/trl not importable: {e}"
        if trl is not None:
            timed["torch_trl_live"] = trl["steps"]["live"]
            timed["torch_trl_cached"] = trl["steps"]["cached"]
        samples = time_interleaved(
            timed,
            rounds=config.windows,
            warmup=config.warmup_steps,
            calls=config.steps_per_window,
        )
    peak_end = matmul_peak(
        config.matmul_sizes, cfg.compute_jnp_dtype, repeats=config.matmul_repeats
    )
    peak = max(max(peak_start.values()), max(peak_end.values()))
    gemm_end = gemm_times()
    gemm_s = {kind: min(gemm_start[kind], gemm_end[kind]) for kind in gemm_start}
    load_end = os.getloadavg()[0]

    results = {
        name: _summary(t, tokens, flops["live" if name.endswith("live") else "cached"], peak)
        for name, t in samples.items()
    }
    report = {
        "benchmark": "dpo_step",
        "config": dataclasses.asdict(config) | {"resolved_shape": dataclasses.asdict(s)},
        "model": {
            "family": cfg.family,
            "num_layers": cfg.num_layers,
            "d_model": cfg.d_model,
            "num_heads": cfg.num_heads,
            "mlp_dim": cfg.mlp_dim,
            "vocab_size": cfg.vocab_size,
            "dtype": cfg.dtype,
            "param_dtype": cfg.param_dtype,
        },
        "jax_device": str(jax.devices()[0].device_kind),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # 1-minute load average of the machine before and after (other processes competing for
        # the same cores slow the timed steps; the windows are interleaved to share that alike)
        "load_average": {"start": round(load_start, 2), "end": round(load_end, 2)},
        "tokens_per_step": tokens,
        "jaxpref_logps_path": "logits" if use_logits_path(config) else "chunked",
        "flops": {
            "formula": FLOPS_FORMULA,
            **FLOPS_NOTES,
            "matmul_params_N": matmul_params(cfg),
            "per_step_live": flops["live"],
            "per_step_cached": flops["cached"],
            "per_token_live": flops["live"] / tokens,
            "per_token_cached": flops["cached"] / tokens,
        },
        "matmul_peak_gflops": {
            "peak": round(peak, 2),
            "start": {str(k): round(v, 2) for k, v in peak_start.items()},
            "end": {str(k): round(v, 2) for k, v in peak_end.items()},
        },
        **results,
        # The step's matrix products alone (same shapes and contraction dims, nothing else) as
        # one jitted program: the MFU no implementation of this step can exceed with these
        # matmul kernels, and the step time left for everything else.
        "gemm_only": {
            kind: {
                "step_ms": round(gemm_s[kind] * 1e3, 2),
                "mfu_bound": round(flops[kind] / gemm_s[kind] / (peak * 1e9), 4),
                "jaxpref_non_gemm_ms": round(
                    results[f"jaxpref_{kind}"]["step_ms_min"] - gemm_s[kind] * 1e3, 2
                ),
            }
            for kind in ("live", "cached")
        },
    }
    if trl is not None:
        report["torch_trl_setup"] = {
            k: trl[k] for k in ("torch_device", "torch_threads", "attn_implementation", "optim")
        } | {"step": "trainer.training_step + clip + optimizer.step + lr_scheduler.step"}
        report["ref_logps_max_abs_diff_jaxpref_vs_trl"] = float(
            max(
                np.max(np.abs(a - b))
                for a, b in zip(jx["ref_logps"], trl["ref_logps"], strict=True)
            )
        )
        ratio = {
            kind: round(
                results[f"jaxpref_{kind}"]["tokens_per_s"]
                / results[f"torch_trl_{kind}"]["tokens_per_s"],
                3,
            )
            for kind in ("live", "cached")
        }
        report["ratio_jaxpref_over_torch"] = ratio
        for kind in ("live", "cached"):
            # TRL's best window over the GEMM-only time: the ratio a jaxpref step could reach
            # if all of its non-matmul work were free.
            report["gemm_only"][kind]["ratio_bound_vs_torch"] = round(
                results[f"torch_trl_{kind}"]["step_ms_min"] / (gemm_s[kind] * 1e3), 3
            )
        report["ratio_jaxpref_over_torch_best_window"] = {
            kind: round(
                results[f"torch_trl_{kind}"]["step_ms_min"]
                / results[f"jaxpref_{kind}"]["step_ms_min"],
                3,
            )
            for kind in ("live", "cached")
        }
    else:
        report["torch_trl_error"] = trl_error or "disabled (--no-torch)"
        ratio = None
    report["targets"] = {"mfu_min": TARGET_MFU, "ratio_vs_torch_min": TARGET_RATIO}
    mfu_ok = results["jaxpref_live"]["mfu"] >= TARGET_MFU
    ratio_ok = None if ratio is None else ratio["live"] >= TARGET_RATIO
    report["meets_targets"] = {
        "mfu": mfu_ok,
        "ratio": ratio_ok,
        "all": bool(mfu_ok and ratio_ok),
    }
    return report


if __name__ == "__main__":
    cli(main, Config, description=__doc__.splitlines()[0])
