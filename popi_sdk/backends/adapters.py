"""The trained POPI summarizer that ships with the package: a LoRA adapter for the embedded model.

``hf:popi`` is SmolLM2-135M-Instruct with the stage-1 adapter of the ``cpu-learn`` preset
(``popi_sdk/adapters/popi-smollm2``, a few MB; its training record is in docs/results.md). The
first use merges the adapter into the embedded checkpoint once, into
``$POPI_HOME/models/SmolLM2-135M-Instruct-popi-<hash>``, with the summary spec it was trained
with, so it loads, decodes and writes summaries like any trained checkpoint folder (``RUN/stage1``).
The merge is plain arithmetic on the weights (``W + (alpha / r) * B @ A``): no ``peft`` needed.

:func:`export_adapter` writes a run's adapter in the shipped form (float16 weights, the summary
spec beside them)::

    python -m popi_sdk.backends.adapters RUN popi_sdk/adapters/popi-smollm2
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from popi_sdk.errors import InputError, ModelNotFoundError

POPI_ALIASES = {"popi", "smollm2-popi"}
SHIPPED = Path(__file__).resolve().parent.parent / "adapters" / "popi-smollm2"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."


def adapter_digest(folder: Path = SHIPPED) -> str:
    """A short hash of the adapter's weights and config: a new adapter gets a new merged folder."""
    h = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:12]


def merged_state_dict(base: dict, adapter: dict, config: dict) -> dict:
    """``base`` weights with each LoRA pair of ``adapter`` added: ``W += (alpha / r) * B @ A``."""
    import torch

    scale = config["lora_alpha"] / config["r"]
    out = dict(base)
    done = 0
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        target = key.removeprefix(_PREFIX).replace(".lora_A.weight", ".weight")
        if target not in out:
            raise InputError(f"the adapter's {key} has no weight {target} in the base model")
        w = out[target]
        out[target] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
        done += 1
    if not done:
        raise InputError("the adapter holds no LoRA weights (no '.lora_A.' keys)")
    return out


def require_shipped_adapter() -> None:
    """Fail with the fix when the package's trained summarizer adapter is missing."""
    if not (SHIPPED / WEIGHTS).is_file():
        raise ModelNotFoundError(
            f"the trained summarizer's adapter is missing from the package ({SHIPPED}): "
            "reinstall popi-sdk, or use the untrained embedded model ('hf')",
            backend="hf:popi",
        )


def popi_checkpoint(home: str | os.PathLike | None = None) -> Path:
    """The embedded model with the shipped adapter merged, built once; the checkpoint folder."""
    from popi_sdk.backends.hf import EMBEDDED_DIR, _file_lock, embedded_checkpoint
    from popi_sdk.settings import popi_home

    require_shipped_adapter()
    dest = popi_home(home) / "models" / f"{EMBEDDED_DIR}-popi-{adapter_digest()}"
    if (dest / "model.safetensors").exists():
        return dest
    base_dir = embedded_checkpoint(home)
    with _file_lock(dest.parent / f".{dest.name}.lock"):
        if (dest / "model.safetensors").exists():
            return dest
        from safetensors.torch import load_file, save_file

        config = json.loads((SHIPPED / CONFIG).read_text(encoding="utf-8"))
        merged = merged_state_dict(load_file(base_dir / "model.safetensors"),
                                   load_file(SHIPPED / WEIGHTS), config)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base_dir, tmp, ignore=shutil.ignore_patterns("model.safetensors"))
        save_file(merged, tmp / "model.safetensors", metadata={"format": "pt"})
        shutil.copy(SHIPPED / "popi_summary.json", tmp / "popi_summary.json")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def find_adapter(run: Path) -> Path:
    """The final stage-1 adapter of a run folder (``RUN/stage1/adapter``, else the newest
    checkpoint's), or ``run`` itself when it is an adapter folder."""
    candidates = [run, run / "stage1" / "adapter"]
    checkpoints = sorted((run / "checkpoints" / "stage1").glob("checkpoint-*"),
                         key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    candidates += list(reversed(checkpoints))
    for folder in candidates:
        if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
            return folder
    raise InputError(
        f"{run} holds no stage-1 LoRA adapter ({CONFIG} and {WEIGHTS} in RUN/stage1/adapter or "
        "RUN/checkpoints/stage1/checkpoint-N): give a run trained with lora.enabled"
    )


def export_adapter(run: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write ``run``'s stage-1 adapter to ``dest`` in the shipped form: float16 LoRA weights,
    the adapter's r and alpha, and the summary spec (``RUN/stage1/popi_summary.json``)."""
    from safetensors.torch import load_file, save_file

    from popi_sdk.summary_spec import SPEC_FILE

    run, dest = Path(run), Path(dest)
    folder = find_adapter(run)
    spec = next((p / SPEC_FILE for p in (run / "stage1", run, folder) if (p / SPEC_FILE).is_file()), None)
    if spec is None:
        raise InputError(f"{run} has no {SPEC_FILE} (written by stage 1 beside its checkpoint)")
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    weights = {k: v.half().contiguous() for k, v in load_file(folder / WEIGHTS).items()}
    dest.mkdir(parents=True, exist_ok=True)
    save_file(weights, dest / WEIGHTS, metadata={"format": "pt"})
    keep = {k: config[k] for k in ("r", "lora_alpha", "target_modules", "peft_type") if k in config}
    if isinstance(keep.get("target_modules"), list):
        keep["target_modules"] = sorted(keep["target_modules"])
    (dest / CONFIG).write_text(json.dumps(keep, indent=2) + "\n", encoding="utf-8")
    shutil.copy(spec, dest / SPEC_FILE)
    for name in (WEIGHTS, CONFIG, SPEC_FILE):  # package data: readable by every user
        (dest / name).chmod(0o644)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m popi_sdk.backends.adapters RUN DEST")
    print(export_adapter(sys.argv[1], sys.argv[2]))
