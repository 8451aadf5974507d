"""The shipped trained summarizer: hf:popi = the embedded model + the POPI LoRA adapter."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_merge_adds_the_scaled_low_rank_product_to_each_target():
    from popi_sdk.backends.adapters import merged_state_dict

    w = torch.randn(6, 5)
    a, b = torch.randn(2, 5), torch.randn(6, 2)
    base = {"model.layers.0.mlp.up_proj.weight": w, "model.norm.weight": torch.ones(5)}
    adapter = {
        "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": a,
        "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": b,
    }
    out = merged_state_dict(base, adapter, {"r": 2, "lora_alpha": 4})
    assert torch.allclose(out["model.layers.0.mlp.up_proj.weight"], w + 2.0 * b @ a)
    assert out["model.norm.weight"] is base["model.norm.weight"]
    assert torch.equal(base["model.layers.0.mlp.up_proj.weight"], w)  # the input is not changed


def test_merge_refuses_an_adapter_for_another_model():
    from popi_sdk.backends.adapters import merged_state_dict
    from popi_sdk.errors import InputError

    adapter = {"base_model.model.model.layers.9.mlp.up_proj.lora_A.weight": torch.zeros(1, 2),
               "base_model.model.model.layers.9.mlp.up_proj.lora_B.weight": torch.zeros(2, 1)}
    with pytest.raises(InputError, match="no weight model.layers.9.mlp.up_proj.weight"):
        merged_state_dict({"model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}, adapter,
                          {"r": 1, "lora_alpha": 1})
    with pytest.raises(InputError, match="no LoRA weights"):
        merged_state_dict({}, {}, {"r": 1, "lora_alpha": 1})


def test_the_package_ships_an_adapter_with_its_summary_spec():
    from safetensors.torch import load_file

    from popi_sdk.backends.adapters import CONFIG, POPI, WEIGHTS
    from popi_sdk.summary_spec import SummarySpec

    config = json.loads((POPI.folder / CONFIG).read_text())
    weights = load_file(POPI.folder / WEIGHTS)
    assert config["r"] > 0 and config["lora_alpha"] > 0
    assert weights and all(v.dtype == torch.float16 for v in weights.values())
    assert (POPI.folder / WEIGHTS).stat().st_size < 12_000_000  # a few MB
    spec = SummarySpec.from_checkpoint(POPI.folder)
    assert spec.template == "quote"


def test_export_writes_the_shipped_form_and_names_what_is_missing(tmp_path):
    from safetensors.torch import load_file, save_file

    from popi_sdk.backends.adapters import export_adapter
    from popi_sdk.errors import InputError
    from popi_sdk.summary_spec import SummarySpec

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "stage1"
    for step, value in ((2, 1.0), (10, 3.0)):  # the newest checkpoint is the one exported
        folder = ckpt / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"base_model.model.x.lora_A.weight": torch.full((1, 2), value)},
                  folder / "adapter_model.safetensors")
        (folder / "adapter_config.json").write_text(json.dumps(
            {"r": 1, "lora_alpha": 2, "target_modules": ["v", "q"], "base_model_name_or_path": "/x"}))
    with pytest.raises(InputError, match="popi_summary.json"):
        export_adapter(run, tmp_path / "out")
    (run / "stage1").mkdir()
    SummarySpec(template="quote").save(run / "stage1")
    dest = export_adapter(run, tmp_path / "out")
    assert load_file(dest / "adapter_model.safetensors")["base_model.model.x.lora_A.weight"].tolist() == [[3.0, 3.0]]
    assert json.loads((dest / "adapter_config.json").read_text()) == {
        "r": 1, "lora_alpha": 2, "target_modules": ["q", "v"]}
    assert SummarySpec.from_checkpoint(dest).template == "quote"
    with pytest.raises(InputError, match="holds no stage-1 LoRA adapter"):
        export_adapter(tmp_path / "nothing", tmp_path / "out2")


def test_export_of_a_stage2_run_writes_the_generator_without_a_summary_spec(tmp_path):
    from safetensors.torch import load_file, save_file

    from popi_sdk.backends.adapters import export_adapter
    from popi_sdk.errors import InputError

    run = tmp_path / "run"
    (run / "stage2" / "adapter").mkdir(parents=True)
    save_file({"base_model.model.x.lora_A.weight": torch.ones(1, 2)},
              run / "stage2" / "adapter" / "adapter_model.safetensors")
    (run / "stage2" / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 1, "lora_alpha": 2}))
    with pytest.raises(InputError, match="holds no stage-1 LoRA adapter"):
        export_adapter(run, tmp_path / "summarizer")  # stage 1 is the default
    dest = export_adapter(run, tmp_path / "generator", "stage2")
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert load_file(dest / "adapter_model.safetensors")["base_model.model.x.lora_A.weight"].dtype == torch.float16
    with pytest.raises(InputError, match="stage must be 'stage1'"):
        export_adapter(run, tmp_path / "x", "stage3")


def test_the_package_ships_the_trained_generator_beside_the_summarizer():
    from safetensors.torch import load_file

    from popi_sdk.backends.adapters import CONFIG, POPI, POPI_GENERATOR, WEIGHTS, shipped_adapter
    from popi_sdk.summary_spec import SPEC_FILE

    folder = POPI_GENERATOR.folder
    weights = load_file(folder / WEIGHTS)
    assert json.loads((folder / CONFIG).read_text())["r"] > 0
    assert weights and all(v.dtype == torch.float16 for v in weights.values())
    assert (folder / WEIGHTS).stat().st_size < 12_000_000
    assert not (folder / SPEC_FILE).exists()  # a generator, not a summarizer: no summary spec
    assert shipped_adapter("POPI-Generator") is POPI_GENERATOR and shipped_adapter("popi") is POPI
    assert shipped_adapter("smollm2") is None and shipped_adapter(None) is None


def test_hf_popi_is_the_merged_trained_summarizer(smollm2_dir):
    from popi_sdk import Personalizer
    from popi_sdk.backends import get_backend
    from popi_sdk.summary_spec import SummarySpec

    popi = get_backend("hf:popi")
    assert popi.name == "hf:popi" and popi.checkpoint
    assert SummarySpec.of_backend(popi).template == "quote"  # it writes as it was trained
    assert get_backend("hf").name == "hf" and get_backend("hf").path == str(smollm2_dir)
    p = Personalizer(store=":memory:")
    assert p.summarizer.name == "hf:popi" and p.generator.name == "hf"
    assert p.summary_spec.template == "quote"
    assert Personalizer(summarizer="hf", store=":memory:").summary_spec.template == "app-i"


def test_hf_popi_generator_is_the_embedded_model_with_the_stage2_adapter_merged(smollm2_dir):
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import load_file

    from popi_sdk.backends import get_backend
    from popi_sdk.backends.adapters import CONFIG, POPI_GENERATOR, WEIGHTS
    from popi_sdk.summary_spec import SPEC_FILE

    gen = get_backend("hf:popi-generator")
    assert gen.name == "hf:popi-generator" and gen.checkpoint != get_backend("hf:popi").checkpoint
    assert not (Path(gen.checkpoint) / SPEC_FILE).exists()
    config = json.loads((POPI_GENERATOR.folder / CONFIG).read_text())
    adapter = load_file(POPI_GENERATOR.folder / WEIGHTS)
    key = "model.layers.0.self_attn.q_proj.weight"
    a = adapter[f"base_model.model.{key.replace('.weight', '.lora_A.weight')}"].float()
    b = adapter[f"base_model.model.{key.replace('.weight', '.lora_B.weight')}"].float()
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        base = f.get_tensor(key)
    with safe_open(str(Path(gen.checkpoint) / "model.safetensors"), "pt") as f:
        merged = f.get_tensor(key)
    expected = base.float() + config["lora_alpha"] / config["r"] * b @ a
    assert torch.allclose(merged.float(), expected, atol=1e-5) and not torch.equal(merged, base)
