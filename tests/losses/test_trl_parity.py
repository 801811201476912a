"""Parity with TRL's `DPOTrainer._compute_loss` (the real method, on given log-probs)."""

import inspect
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

import jax
import jax.numpy as jnp
from trl.trainer.dpo_trainer import DPOTrainer

from jaxpref import losses as jl
from tests.losses import _trl_harness as harness
from tests.losses.test_registry import TRL_NAMES

CASES = [
    ("sigmoid", {}),
    ("sigmoid", {"beta": 0.5}),
    ("hinge", {}),
    ("hinge", {"beta": 0.5}),
    ("ipo", {}),
    ("ipo", {"beta": 0.5}),
    ("exo_pair", {"label_smoothing": 1e-3}),
    ("exo_pair", {"beta": 0.5, "label_smoothing": 0.2}),
    ("nca_pair", {"beta": 0.5}),
    ("robust", {"label_smoothing": 0.1}),
    ("robust", {"beta": 0.5, "label_smoothing": 0.3}),
    ("bco_pair", {"beta": 0.5}),
    ("sppo_hard", {}),
    ("sppo_hard", {"beta": 0.5}),
    ("aot", {"beta": 0.5}),
    ("aot", {"label_smoothing": 0.1}),
    ("aot_unpaired", {"beta": 0.5}),
    ("aot_unpaired", {"beta": 0.3, "label_smoothing": 0.1}),
    ("apo_zero", {"beta": 0.5}),
    ("apo_down", {"beta": 0.5}),
    ("discopop", {}),
    ("discopop", {"beta": 0.5, "discopop_tau": 0.3}),
    ("sft", {}),
    ("sigmoid_norm", {}),
    ("sigmoid_norm", {"beta": 0.5}),
]

RTOL, ATOL = 1e-5, 1e-6
METRIC_KEYS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def _ours(data, loss, **kwargs):
    return jl.preference_objective(
        loss,
        jnp.asarray(data.chosen_logps),
        jnp.asarray(data.rejected_logps),
        jnp.asarray(data.ref_chosen_logps),
        jnp.asarray(data.ref_rejected_logps),
        chosen_lengths=jnp.asarray(data.chosen_lengths),
        rejected_lengths=jnp.asarray(data.rejected_lengths),
        **kwargs,
    )


def test_trl_loss_names_are_registered_with_trl_f_divergence_support():
    source = inspect.getsource(DPOTrainer._compute_loss)
    listed = re.search(r"Should be one of \[(.*?)\]", source, re.S).group(1)
    trl_names = tuple(re.findall(r"'(\w+)'", listed))
    assert trl_names == TRL_NAMES
    assert jl.names()[: len(TRL_NAMES)] == TRL_NAMES
    # TRL accepts a non-default f-divergence exactly for the margin-based losses (plus "sft",
    # which ignores the log-ratios altogether).
    init = inspect.getsource(DPOTrainer.__init__)
    f_set = re.search(r"f_divergence_loss_types = \{(.*?)\}", init, re.S).group(1)
    trl_f_losses = set(re.findall(r'"(\w+)"', f_set))
    ours = {n for n in TRL_NAMES if jl.info(n).margin_based}
    assert ours == trl_f_losses - {"sft"}


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=lambda c: str(c))
def test_batch_loss_and_metrics_match_trl(name, hparams):
    data = harness.make_batch(seed=len(name) * 7 + len(hparams), batch=6, ref_spread=6)
    trl_loss, trl_metrics = harness.trl_compute_loss(data, name, **hparams)
    loss, aux = _ours(data, name, **hparams)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), trl_loss, rtol=RTOL, atol=ATOL)
    ours = aux.as_dict()
    for key in METRIC_KEYS:
        np.testing.assert_allclose(float(ours[key]), trl_metrics[key], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_batches_exercise_the_sort(name):
    # The parity batches must reorder pairs, otherwise AOT would coincide with plain DPO.
    data = harness.make_batch(seed=len(name) * 7 + 1, batch=6, ref_spread=6)
    aot, _ = harness.trl_compute_loss(data, name, beta=0.5)
    sigmoid, _ = harness.trl_compute_loss(data, "sigmoid", beta=0.5)
    assert abs(aot - sigmoid) > 1e-3


ELEMENTWISE = [c for c in CASES if c[0] not in ("aot", "aot_unpaired", "sft")]


@pytest.mark.parametrize(("name", "hparams"), ELEMENTWISE[::2], ids=lambda c: str(c))
def test_per_pair_loss_matches_trl_on_single_pairs(name, hparams):
    data = harness.make_batch(seed=3, batch=4, ref_spread=3)
    per_pair = jl.call(
        name,
        data.chosen_logps,
        data.rejected_logps,
        data.ref_chosen_logps,
        data.ref_rejected_logps,
        chosen_lengths=data.chosen_lengths,
        rejected_lengths=data.rejected_lengths,
        **hparams,
    )
    expected = [
        harness.trl_compute_loss(harness.select(data, np.array([i])), name, **hparams)[0]
        for i in range(data.batch)
    ]
    np.testing.assert_allclose(np.asarray(per_pair), expected, rtol=RTOL, atol=ATOL)


MULTI = [
    ([("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0)], {}),
    ([("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0)], {"beta": 0.5}),
    (
        [("ipo", 0.3), ("hinge", 1.2), ("discopop", 0.5), ("robust", 0.7), ("aot", 0.4)],
        {"beta": 0.3, "label_smoothing": 0.1, "discopop_tau": 0.2},
    ),
    ([("sigmoid_norm", 1.0), ("exo_pair", 2.0), ("sppo_hard", 0.1)], {"label_smoothing": 0.05}),
]


@pytest.mark.parametrize(("spec", "hparams"), MULTI, ids=lambda c: str(c))
def test_multi_loss_weights_match_trl(spec, hparams):
    data = harness.make_batch(seed=11, batch=5, ref_spread=4)
    names, weights = zip(*spec, strict=True)
    trl_loss, _ = harness.trl_compute_loss(data, names, loss_weights=weights, **hparams)
    loss, _ = jl.multi_objective(
        spec,
        data.chosen_logps,
        data.rejected_logps,
        data.ref_chosen_logps,
        data.ref_rejected_logps,
        chosen_lengths=data.chosen_lengths,
        rejected_lengths=data.rejected_lengths,
        **hparams,
    )
    np.testing.assert_allclose(float(loss), trl_loss, rtol=RTOL, atol=ATOL)


def _f_prime(log_ratio, kind, alpha):
    """f'(u) of the f-DPO divergences at u = π/π_ref, as a function of log u."""
    if kind == "forward_kl":
        return 1.0 - jnp.exp(-log_ratio)
    if kind == "js_divergence":
        return jnp.log(2.0) + jax.nn.log_sigmoid(log_ratio)
    if kind == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:
            return log_ratio
        return (jnp.exp(jnp.minimum((alpha - 1.0) * log_ratio, 80.0)) - 1.0) / (alpha - 1.0)
    raise ValueError(kind)


F_DIVERGENCES = [
    ("forward_kl", 0.5),
    ("js_divergence", 0.5),
    ("alpha_divergence", 0.5),
    ("alpha_divergence", 0.2),
    ("alpha_divergence", 1.0),
]
MARGIN_CASES = [
    ("sigmoid", {"beta": 0.5}),
    ("hinge", {"beta": 0.5}),
    ("ipo", {}),
    ("exo_pair", {"label_smoothing": 0.01}),
    ("robust", {"label_smoothing": 0.1}),
    ("discopop", {"beta": 0.5}),
    ("sigmoid_norm", {"beta": 0.5}),
]


@pytest.mark.parametrize(("kind", "alpha"), F_DIVERGENCES)
@pytest.mark.parametrize(("name", "hparams"), MARGIN_CASES, ids=lambda c: str(c))
def test_margin_based_losses_on_f_divergence_scores_match_trl(name, hparams, kind, alpha):
    # A margin-based loss sees the log-ratios only through per-response scores, so feeding it
    # scores f'(u) with zero reference reproduces TRL's `f_divergence_type`.
    assert jl.info(name).margin_based
    data = harness.make_batch(seed=5, batch=6, ref_spread=2)
    trl_loss, _ = harness.trl_compute_loss(
        data, name, f_divergence_type=kind, f_alpha_divergence_coef=alpha, **hparams
    )
    score_c = _f_prime(jnp.asarray(data.chosen_logps - data.ref_chosen_logps), kind, alpha)
    score_r = _f_prime(jnp.asarray(data.rejected_logps - data.ref_rejected_logps), kind, alpha)
    zeros = jnp.zeros_like(score_c)
    loss, _ = jl.preference_objective(
        name,
        score_c,
        score_r,
        zeros,
        zeros,
        chosen_lengths=data.chosen_lengths,
        rejected_lengths=data.rejected_lengths,
        **hparams,
    )
    np.testing.assert_allclose(float(loss), trl_loss, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "spec", [[("sigmoid", 1.0)], [("ipo", 1.0)], [("sigmoid", 0.8), ("bco_pair", 0.2)]]
)
def test_per_pair_weights_match_trl_wpo_weighting(spec):
    # ("sft" is left out: TRL 1.16 fails on it with `use_weighting`, writing in place into the
    # broadcast SFT tensor.)
    data = harness.make_batch(seed=2, batch=5, ref_spread=2)
    names, weights = zip(*spec, strict=True)
    trl_loss, _ = harness.trl_compute_loss(
        data, names, loss_weights=weights, use_weighting=True, beta=0.5
    )
    loss, _ = jl.multi_objective(
        spec,
        data.chosen_logps,
        data.rejected_logps,
        data.ref_chosen_logps,
        data.ref_rejected_logps,
        beta=0.5,
        chosen_lengths=data.chosen_lengths,
        rejected_lengths=data.rejected_lengths,
        weights=harness.wpo_weights(data),
    )
    np.testing.assert_allclose(float(loss), trl_loss, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["ipo", "sigmoid_norm", "sigmoid", "sft"])
def test_empty_rejected_completions_match_trl(name):
    data = harness.make_batch(seed=4, batch=8, allow_empty=True)
    assert (data.rejected_lengths == 0).any()
    trl_loss, _ = harness.trl_compute_loss(data, name, beta=0.5)
    loss, _ = _ours(data, name, beta=0.5)
    np.testing.assert_allclose(float(loss), trl_loss, rtol=RTOL, atol=ATOL)
