"""The training config: paper defaults, presets, YAML + command-line overrides, clear errors."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from popi_sdk.errors import ConfigError
from popi_sdk.train.config import ACCELERATE_DIR, TrainConfig, load_config, parse_override, presets


def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert cfg.beta == 0.01 and cfg.loss_type == "dpo"
    s1 = cfg.stage1
    assert (s1.learning_rate, s1.batch_size, s1.num_generations) == (1e-6, 8, 8)
    assert cfg.summary.train_temperature == 0.6
    assert (s1.warmup_steps, s1.lr_scheduler) == (150, "cosine")
    assert cfg.stage2.learning_rate == 1e-6 and cfg.stage2.batch_size == 8
    assert cfg.kl == pytest.approx(0.002 * 0.01)


def test_one_default_summary_spec_for_training_and_the_sdk():
    from popi_sdk import Personalizer
    from popi_sdk.summary_spec import SummarySpec

    assert TrainConfig().summary == SummarySpec() == Personalizer(summarizer="hf", store=":memory:").summary_spec
    small, paper = load_config(preset="cpu-small").summary, load_config(preset="paper").summary
    assert (small.max_tokens, small.max_words) == (48, 60)
    assert (paper.max_tokens, paper.max_words, paper.train_temperature) == (128, 60, 0.6)


def test_moved_summary_fields_say_where_they_went():
    with pytest.raises(ConfigError) as e:
        load_config(preset="cpu-small", overrides=["stage1.max_summary_tokens=6", "prompt_dependent=true"])
    assert "stage1.max_summary_tokens: renamed. Fix: use summary.max_tokens" in str(e.value)
    assert "prompt_dependent: renamed. Fix: use summary.prompt_dependent" in str(e.value)


def test_kl_weight_follows_beta_and_loss_and_can_be_set():
    assert load_config(overrides=["beta=0.1"]).kl == pytest.approx(2e-4)
    assert load_config(overrides=["beta=0.1", "loss_type=ipo"]).kl == pytest.approx(0.002 * 2 / 0.1)
    assert load_config(overrides=["stage1.kl_weight=0"]).kl == 0.0


@pytest.mark.parametrize("name", ["cpu-small", "cpu-learn", "paper"])
def test_presets_validate(name):
    assert name in presets()
    cfg = load_config(preset=name)
    assert cfg.stage1.batch_size >= 1


def test_paper_preset_is_llama_3b_with_paper_hyperparameters():
    cfg = load_config(preset="paper")
    assert cfg.model == "meta-llama/Llama-3.2-3B-Instruct"
    assert cfg.beta == 0.01 and cfg.stage1.learning_rate == 1e-6
    assert cfg.stage1.num_generations == 8 and cfg.stage1.warmup_steps == 150


def test_cpu_small_is_short_and_uses_the_bundled_model():
    cfg = load_config(preset="cpu-small")
    assert cfg.model == "smollm2" and cfg.precision == "fp32"
    assert 0 < cfg.stage1.max_steps <= 20 and 0 < cfg.stage2.max_steps <= 20
    assert cfg.stage1.learning_rate > 1e-6


def test_overrides_are_dotted_yaml_values_and_max_steps_caps_both_stages(tmp_path):
    cfg = load_config(
        preset="cpu-small",
        overrides=["stage1.learning_rate=1e-4", "lora.enabled=true", "lora.target_modules=[q_proj, v_proj]",
                   "stage1.examples_per_summary=null"],
        max_steps=3, data=tmp_path, out=tmp_path / "run",
    )
    assert cfg.stage1.learning_rate == 1e-4
    assert cfg.lora.enabled is True and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.stage1.examples_per_summary is None
    assert cfg.stage1.max_steps == cfg.stage2.max_steps == 3
    assert cfg.data == str(tmp_path) and cfg.out == str(tmp_path / "run")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(preset="cpu-small", overrides=["loss_type=ipo", "summary.prompt_dependent=true"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_unknown_field_names_the_field_and_suggests_the_fix():
    with pytest.raises(ConfigError) as e:
        load_config(preset="paper", overrides=["stage1.learnig_rate=1e-5"])
    msg = str(e.value)
    assert "stage1.learnig_rate" in msg and "did you mean stage1.learning_rate" in msg


def test_bad_value_names_the_field_and_the_value():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["stage1.num_generations=1", "loss_type=kto"])
    msg = str(e.value)
    assert "stage1.num_generations" in msg and "greater than or equal to 2" in msg
    assert "loss_type" in msg and "'kto'" in msg


def test_bad_field_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("beta: -1\nstage2: {learning_rate: 0}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "field beta" in msg and "field stage2.learning_rate" in msg


def test_zero_max_steps_is_rejected_unless_a_warm_start_is_the_summarizer():
    with pytest.raises(ConfigError, match="stage1.max_steps = 0 trains no GRPO step.*warm_start_samples"):
        load_config(overrides=["stage1.max_steps=0"])
    with pytest.raises(ConfigError, match="stage2.max_steps"):
        load_config(overrides=["stage2.max_steps=0"])
    with pytest.raises(ConfigError, match="stage1.max_steps must be"):
        load_config(overrides=["stage1.max_steps=-2"])
    cfg = load_config(overrides=["stage1.max_steps=0", "stage1.warm_start_samples=2"])
    assert cfg.stage1.max_steps == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "gpu-huge"}, "unknown preset 'gpu-huge'; known presets: cpu-learn, cpu-small, paper"),
        ({"preset": "paper", "config": "x.yaml"}, "either --config FILE or --preset NAME"),
        ({"config": "/nonexistent/popi.yaml"}, "no such config file"),
        ({"overrides": ["beta"]}, "expected KEY=VALUE"),
    ],
)
def test_usage_errors_say_how_to_fix(kwargs, match):
    config = kwargs.pop("config", None)
    with pytest.raises(ConfigError, match=match):
        load_config(config, **kwargs)


def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- beta\n- 0.1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_parse_override_types():
    assert parse_override("beta=0.05") == ("beta", 0.05)
    assert parse_override("stage1.use_vllm=true") == ("stage1.use_vllm", True)
    assert parse_override("generator=") == ("generator", None)


def test_missing_data_and_out_are_named(tmp_path):
    cfg = load_config()
    with pytest.raises(ConfigError, match="--data DIR"):
        cfg.train_file()
    with pytest.raises(ConfigError, match="--out RUN"):
        cfg.run_dir()
    with pytest.raises(ConfigError, match="train.jsonl"):
        load_config(data=tmp_path).train_file()


def test_every_field_has_help_text():
    from pydantic import BaseModel

    def walk(model):
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(field.annotation)
            else:
                assert field.description, f"{model.__name__}.{name} has no help text"

    walk(TrainConfig)


def test_accelerate_configs_parse_and_fix_no_gpu_count():
    from accelerate.commands.config.config_args import load_config_from_file

    names = sorted(p.name for p in ACCELERATE_DIR.glob("*.yaml"))
    assert names == ["ddp.yaml", "fsdp.yaml", "zero3.yaml"]
    kinds = {}
    for name in names:
        cfg = load_config_from_file(str(ACCELERATE_DIR / name))
        # -1: accelerate asks for --num_processes at launch, so nothing assumes a GPU count
        assert cfg.num_processes == -1
        kinds[name] = str(cfg.distributed_type)
    assert "DEEPSPEED" in kinds["zero3.yaml"] and "FSDP" in kinds["fsdp.yaml"]
    zero3 = yaml.safe_load((ACCELERATE_DIR / "zero3.yaml").read_text())
    assert zero3["deepspeed_config"]["zero_stage"] == 3


def test_cli_show_prints_the_resolved_config():
    from popi_sdk.cli import app

    result = CliRunner().invoke(
        app, ["train", "show", "--preset", "paper", "--max-steps", "7", "--set", "beta=0.05"]
    )
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["beta"] == 0.05 and shown["stage1"]["max_steps"] == 7 == shown["stage2"]["max_steps"]


def test_cli_rejects_a_bad_field_before_loading_anything(tmp_path):
    from popi_sdk.cli import app

    (tmp_path / "train.jsonl").write_text("")
    result = CliRunner().invoke(
        app, ["train", "stage1", "--preset", "cpu-small", "--data", str(tmp_path),
              "--out", str(tmp_path / "run"), "--set", "stage1.temprature=0.7"],
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "stage1.temprature" in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_cli_missing_data_folder_is_named(tmp_path):
    from popi_sdk.cli import app

    result = CliRunner().invoke(
        app, ["train", "all", "--preset", "cpu-small", "--data", str(tmp_path / "nope"),
              "--out", str(tmp_path / "run")],
    )
    assert isinstance(result.exception, ConfigError)
    assert "train.jsonl" in str(result.exception)
