"""The bandit experiment runs end to end and DPO moves the policy toward the closed-form optimum."""

import json

import pytest

from experiments import bandit_dpo


def test_bandit_experiment_improves_on_reference(tmp_path):
    config = bandit_dpo.Config(
        losses=("sigmoid", "ipo"),
        seeds=2,
        task=bandit_dpo.BanditSpec(num_prompts=8, num_responses=6, num_pairs=2048),
        optim=bandit_dpo.TrainSpec(steps=300, batch_size=128),
        out=str(tmp_path),
    )
    report = bandit_dpo.main(config)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["results"] == report.results
    assert saved["schema_version"] == 1 and saved["experiment"] == "bandit_dpo"
    assert (tmp_path / "report.md").exists()
    assert "± " in (tmp_path / "report.md").read_text()
    assert (tmp_path / "kl_to_optimum.png").stat().st_size > 0
    sigmoid = report.results["losses"][0]
    assert sigmoid["loss_name"] == "sigmoid"
    assert sigmoid["gold_reward_policy"] > sigmoid["gold_reward_ref"]
    assert sigmoid["win_rate_vs_ref"] > 0.5
    assert sigmoid["kl_from_optimum_end"] < 0.5 * sigmoid["kl_from_optimum_start"]


def test_unknown_loss_fails_before_training(tmp_path):
    config = bandit_dpo.Config(losses=("sigmoidd",), out=str(tmp_path))
    with pytest.raises(ValueError, match="sigmoid"):
        bandit_dpo.main(config)
