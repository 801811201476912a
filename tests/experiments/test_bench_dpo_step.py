"""The DPO step benchmark runs in a tiny configuration, reports its fields, counts FLOPs right."""

import math

import jax
import numpy as np
import pytest
import tyro
from flax import nnx

from experiments.bench import dpo_step
from jaxpref.models import Transformer

TINY = dpo_step.Shape(
    num_layers=1, d_model=32, num_heads=2, vocab_size=64, pairs=2, prompt_len=4, completion_len=4
)


def _tiny_config(**overrides):
    kw = dict(
        shape=TINY,
        windows=2,
        steps_per_window=1,
        warmup_steps=1,
        matmul_sizes=(32, 64),
        matmul_repeats=2,
        gemm_repeats=2,
        torch=False,
    )
    kw.update(overrides)
    return dpo_step.Config(**kw)


def _params(cfg):
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_flop_count_matches_a_hand_count():
    config = _tiny_config()
    cfg = dpo_step.model_config(config)
    params = _params(cfg)
    # Matmul parameters counted from the actual parameter shapes: every kernel, plus the tied
    # embedding used as the LM head; position embeddings, biases and norm scales excluded.
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    kernels = sum(
        math.prod(leaf.shape)
        for path, leaf in leaves
        if jax.tree_util.keystr(path).endswith("kernel']")
    )
    n = kernels + math.prod(params["embed"].shape)
    # By hand: q, k, v, o 4 * 32 * 32 = 4096; MLP 2 * 32 * 128 = 8192; LM head 32 * 64 = 2048.
    assert n == 4096 + 8192 + 2048 == dpo_step.matmul_params(cfg)
    rows, seq = 4, 8
    tokens = rows * seq
    attn_fwd = rows * 1 * 2 * 2 * seq * seq * 32  # per sequence and layer: q k^T and p v
    live = dpo_step.flops_per_step(cfg, rows, seq, live_reference=True)
    cached = dpo_step.flops_per_step(cfg, rows, seq, live_reference=False)
    assert live == (6 + 2) * n * tokens + (3 + 1) * attn_fwd == 3_801_088
    assert cached == 6 * n * tokens + 3 * attn_fwd == 2_850_816


def test_gpu_preset_is_gpt2_small_in_bfloat16():
    config = tyro.cli(dpo_step.Config, args=["--preset", "gpt2-124m", "--dtype", "bfloat16"])
    cfg = dpo_step.model_config(config)
    assert (cfg.dtype, cfg.param_dtype, config.tokens_per_step) == ("bfloat16", "float32", 8192)
    # GPT-2 small has 124,439,808 parameters (Radford et al. 2019; Hugging Face `gpt2`).
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(_params(cfg)))
    assert total == 124_439_808
    assert dpo_step.matmul_params(cfg) == 12 * (4 * 768**2 + 2 * 768 * 3072) + 768 * 50257
    assert not dpo_step.use_logits_path(config)  # 8192 x 50257 fp32 logits: chunked path


def test_batch_layout():
    config = _tiny_config()
    batch = dpo_step.make_token_batch(config)
    ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    assert ids.shape == (4, 8)
    np.testing.assert_array_equal(ids[:2, :4], ids[2:, :4])  # shared prompts
    np.testing.assert_array_equal(ids[:, -1], 63)  # completions end with EOS
    assert loss_mask.sum() == 4 * 4 and not loss_mask[:, :4].any()
    assert batch["attention_mask"].all()


def test_benchmark_reports_its_fields():
    config = _tiny_config()
    report = dpo_step.main(config)
    assert report["tokens_per_step"] == 32
    assert report["jaxpref_logps_path"] == "logits"
    cfg = dpo_step.model_config(config)
    assert report["flops"]["per_step_live"] == dpo_step.flops_per_step(
        cfg, 4, 8, live_reference=True
    )
    assert report["flops"]["per_token_cached"] == report["flops"]["per_step_cached"] / 32
    peak = report["matmul_peak_gflops"]["peak"]
    assert peak > 0
    for name, kind in (("jaxpref_live", "live"), ("jaxpref_cached", "cached")):
        r = report[name]
        assert r["tokens_per_s"] == pytest.approx(32 / (r["step_ms"] / 1e3), rel=1e-2)
        flops = report["flops"][f"per_step_{kind}"]
        assert r["mfu"] == pytest.approx(flops / (r["step_ms"] / 1e3) / (peak * 1e9), rel=1e-2)
    assert report["meets_targets"]["ratio"] is None
    for kind in ("live", "cached"):
        g = report["gemm_only"][kind]
        assert g["step_ms"] > 0 and 0 < g["mfu_bound"]
        assert g["jaxpref_non_gemm_ms"] == pytest.approx(
            report[f"jaxpref_{kind}"]["step_ms_min"] - g["step_ms"], abs=0.02
        )
    assert report["meets_targets"]["mfu"] == (report["jaxpref_live"]["mfu"] >= 0.6)
    assert "torch_trl_live" not in report


@pytest.mark.slow
def test_trl_baseline_runs_on_the_same_weights_and_batch():
    # Importing torch, transformers and trl takes several seconds; the step itself is tiny.
    pytest.importorskip("trl")
    report = dpo_step.main(_tiny_config(torch=True))
    for name in ("torch_trl_live", "torch_trl_cached"):
        assert report[name]["tokens_per_s"] > 0
    # TRL's reference log-probs from the exported weights equal jaxpref's (fp32).
    assert report["ref_logps_max_abs_diff_jaxpref_vs_trl"] < 1e-4
    ratio = report["ratio_jaxpref_over_torch"]["live"]
    expected = report["jaxpref_live"]["tokens_per_s"] / report["torch_trl_live"]["tokens_per_s"]
    assert ratio == pytest.approx(expected, rel=1e-2)
    assert report["meets_targets"]["ratio"] == (ratio >= 1.25)
    assert report["gemm_only"]["live"]["ratio_bound_vs_torch"] > 0


@pytest.mark.parametrize("preset", ["tiny", "gpt2-124m"])
def test_step_gemms_sum_to_the_flop_count(preset):
    config = dpo_step.Config(preset=preset)
    cfg = dpo_step.model_config(config)
    rows, seq = 2 * config.resolved_shape.pairs, config.seq_len
    for live in (True, False):
        gemms = dpo_step.step_gemms(cfg, rows, seq, live_reference=live)
        assert dpo_step.gemm_flops(gemms) == dpo_step.flops_per_step(
            cfg, rows, seq, live_reference=live
        )


def test_gemm_only_program_computes_each_product():
    # Hand count: the dW product X^T dY of a [3, 2] x and [3, 4] dY is [2, 4] with 2*3*2*4 FLOPs.
    gemms = [("mc,mo->co", (3, 2), (3, 4))]
    assert dpo_step.gemm_flops(gemms) == 48
    assert dpo_step.time_gemms(gemms, jax.numpy.float32, repeats=2) > 0
