"""POPI in rounds: round 2's stage 1 is rewarded by round 1's stage-2 generator, and round 2's
stage 2 continues from it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")


def _user(i: int) -> dict:
    good, bad = ("Lovely, five stars.", "Awful, one star.") if i % 2 == 0 else (
        "Awful, one star.", "Lovely, five stars.")
    return {
        "user_id": f"u{i}",
        "signals": {"pairs": [{"prompt": "Review a lamp.", "chosen": good, "rejected": bad}]},
        "examples": [{"prompt": f"Review item {j}.", "chosen": good, "rejected": bad} for j in range(2)],
    }


def _cfg(tiny_dir, tmp_path, **overrides):
    from popi_sdk.train.config import load_config

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(4)))
    base = {
        "model": str(tiny_dir), "precision": "fp32", "save_steps": 1, "lora.enabled": False,
        "stage1.max_steps": 1, "stage2.max_steps": 1, "stage1.kl_weight": 0,
        "stage1.batch_size": 2, "stage1.num_generations": 2, "summary.max_tokens": 4,
        "stage1.gradient_accumulation_steps": 1,
        "stage2.batch_size": 2, "stage2.gradient_accumulation_steps": 1,
        "stage2.warmup_steps": 0, "stage1.warmup_steps": 0,
    }
    base.update(overrides)
    return load_config(preset="cpu-small", overrides=base, data=data, out=tmp_path / "run")


def test_round_two_starts_from_round_one_and_scores_with_its_generator(tiny_dir, tmp_path):
    from popi_sdk.train.rounds import round_config

    cfg = _cfg(tiny_dir, tmp_path)
    sub = round_config(cfg, 2, "RUN/stage1", "RUN/stage2")
    assert sub.model == "RUN/stage1" and sub.generator_model == "RUN/stage2"
    assert sub.run_dir() == cfg.run_dir() / "round-2" and sub.stage2.summarizer is None
    assert sub.stage1 == cfg.stage1 and cfg.model == str(tiny_dir)  # the original is unchanged


def test_rounds_need_stage2_to_train_on_this_runs_summaries(tiny_dir, tmp_path):
    from popi_sdk.errors import ConfigError
    from popi_sdk.train.rounds import train_rounds

    with pytest.raises(ConfigError, match="stage2.summarizer is set"):
        train_rounds(_cfg(tiny_dir, tmp_path, **{"stage2.summarizer": str(tiny_dir)}), 2)
    with pytest.raises(ConfigError, match="at least 1"):
        train_rounds(_cfg(tiny_dir, tmp_path), 0)


@pytest.mark.slow
def test_popi_train_all_two_rounds(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from popi_sdk.cli import app
    from popi_sdk.train.config import load_config

    cfg = _cfg(tiny_dir, tmp_path)
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.to_yaml())
    result = CliRunner().invoke(app, ["train", "all", "--config", str(config), "--rounds", "2"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for folder in (run / "stage1", run / "stage2", run / "round-2" / "stage1", run / "round-2" / "stage2"):
        assert (folder / "popi_stage.json").exists(), folder
    second = load_config(run / "round-2" / "config.yaml")
    assert second.model == str(run / "stage1") and second.generator == str(run / "stage2")
    assert "Round 2:" in result.output and str(run / "round-2" / "stage2") in result.output
