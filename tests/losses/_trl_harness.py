"""Runs TRL's real `DPOTrainer._compute_loss` on chosen per-token log-probs.

Only the language-model forward is replaced: a stand-in model returns the per-token
log-probs given to it (zero outside the completion, as TRL's fused LM head does), and reference
log-probs arrive precomputed through `inputs["ref_chosen_logps"]`. Everything from the sequence
sums to the loss and the logged metrics is TRL's own code.

Log-probs are multiples of 1/1024, so every sequence sum is exact in float32 and both sides see
bit-identical inputs.
"""

from __future__ import annotations

import collections
import types

import numpy as np
import torch
from trl.trainer.dpo_trainer import DPOTrainer


class Batch(types.SimpleNamespace):
    """Per-token arrays of a batch of `B` pairs (rows `[:B]` chosen, `[B:]` rejected)."""


def make_batch(
    seed: int, batch: int, seq_len: int = 9, *, ref_spread: int = 2, allow_empty: bool = False
) -> Batch:
    """Random batch with prompts of 1-3 tokens, completions after them, dyadic log-probs.

    Reference sums differ from the policy sums by at most `ref_spread` nats; with
    `allow_empty` every other rejected completion has no tokens.
    """
    rng = np.random.default_rng(seed)
    completion_mask = np.zeros((2 * batch, seq_len), np.int64)
    for row in range(2 * batch):
        prompt = int(rng.integers(1, 4))
        length = int(rng.integers(1, seq_len - prompt + 1))
        if allow_empty and row >= batch and row % 2:
            length = 0
        completion_mask[row, prompt : prompt + length] = 1
    shift_mask = completion_mask[:, 1:]
    per_token = -rng.integers(1, 4097, size=shift_mask.shape) / 1024.0 * shift_mask
    log_sum_sq = -rng.integers(0, 2049, size=shift_mask.shape) / 1024.0 * shift_mask
    sums = per_token.sum(axis=1)
    lengths = shift_mask.sum(axis=1)
    spread = 1024 * ref_spread
    ref = sums + rng.integers(-spread, spread + 1, size=sums.shape) / 1024.0
    return Batch(
        batch=batch,
        completion_mask=completion_mask,
        per_token_logps=per_token.astype(np.float32),
        log_sum_sq_probs=log_sum_sq.astype(np.float32),
        chosen_logps=sums[:batch].astype(np.float32),
        rejected_logps=sums[batch:].astype(np.float32),
        ref_chosen_logps=ref[:batch].astype(np.float32),
        ref_rejected_logps=ref[batch:].astype(np.float32),
        chosen_lengths=lengths[:batch].astype(np.int32),
        rejected_lengths=lengths[batch:].astype(np.int32),
    )


def select(data: Batch, index) -> Batch:
    """Sub-batch of the pairs in `index` (an int array)."""
    rows = np.concatenate([index, index + data.batch])
    return Batch(
        batch=len(index),
        completion_mask=data.completion_mask[rows],
        per_token_logps=data.per_token_logps[rows],
        log_sum_sq_probs=data.log_sum_sq_probs[rows],
        chosen_logps=data.chosen_logps[index],
        rejected_logps=data.rejected_logps[index],
        ref_chosen_logps=data.ref_chosen_logps[index],
        ref_rejected_logps=data.ref_rejected_logps[index],
        chosen_lengths=data.chosen_lengths[index],
        rejected_lengths=data.rejected_lengths[index],
    )


def wpo_weights(data: Batch) -> np.ndarray:
    """`[B]` WPO pair weights `w_w w_l`, `w = exp(mean_t(log p_t - log Σ_v p_v²))`."""
    mask = data.completion_mask[:, 1:].astype(np.float64)
    aligned = (data.per_token_logps.astype(np.float64) - data.log_sum_sq_probs) * mask
    w = np.exp(aligned.sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0))
    return (w[: data.batch] * w[data.batch :]).astype(np.float32)


class _GivenLogProbs:
    """Stand-in causal LM whose forward returns fixed per-token outputs."""

    def __init__(self, data: Batch):
        self.log_probs = torch.from_numpy(data.per_token_logps)
        self.log_sum_sq_probs = torch.from_numpy(data.log_sum_sq_probs)

    def __call__(self, *, input_ids, labels, **kwargs):
        assert labels.shape == input_ids.shape
        shape = self.log_probs.shape
        return types.SimpleNamespace(
            log_probs=self.log_probs.clone(),
            log_sum_sq_probs=self.log_sum_sq_probs.clone(),
            entropy=torch.zeros(shape),
            mean_logits=torch.zeros(shape),
            is_top1=torch.zeros(shape, dtype=torch.bool),
        )


def trl_compute_loss(
    data: Batch,
    loss_type,
    *,
    loss_weights=None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    use_weighting: bool = False,
):
    """Returns `(loss, metrics)` from `DPOTrainer._compute_loss` for this batch."""
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(
            device=torch.device("cpu"),
            gather=lambda t: t,
            gather_for_metrics=lambda t: t,
        ),
        args=types.SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False,
        beta=beta,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        f_divergence_type=f_divergence_type,
        label_smoothing=label_smoothing,
        ld_alpha=None,
        loss_types=loss_types,
        loss_weights=list(loss_weights) if loss_weights is not None else [1.0] * len(loss_types),
        precompute_ref_logps=True,
        use_weighting=use_weighting,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    mask = torch.from_numpy(data.completion_mask)
    inputs = {
        "input_ids": torch.ones_like(mask),
        "attention_mask": torch.ones_like(mask),
        "completion_mask": mask,
        "ref_chosen_logps": torch.from_numpy(data.ref_chosen_logps),
        "ref_rejected_logps": torch.from_numpy(data.ref_rejected_logps),
    }
    with torch.no_grad():
        loss = DPOTrainer._compute_loss(trainer, _GivenLogProbs(data), inputs, False)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss), metrics
