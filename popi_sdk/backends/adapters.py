"""The trained POPI models that ship with the package: LoRA adapters for the embedded model.

- ``hf:popi`` is SmolLM2-135M-Instruct with the stage-1 adapter of the ``cpu-learn`` preset
  (``popi_sdk/adapters/popi-smollm2``): the trained summarizer, the SDK's default.
- ``hf:popi-generator`` is the same model with that run's stage-2 adapter
  (``popi_sdk/adapters/popi-smollm2-generator``): a generator trained with DPO to answer in the
  style the ``hf:popi`` summaries describe (paper §4, POPI-Full).

Each is a few MB; their training records are in docs/results.md. The first use merges an adapter
into the embedded checkpoint once, into ``$POPI_HOME/models/SmolLM2-135M-Instruct-<name>-<hash>``
(the summarizer with the summary spec it was trained with), so it loads and decodes like any
trained checkpoint folder (``RUN/stage1``, ``RUN/stage2``). The merge is plain arithmetic on the
weights (``W + (alpha / r) * B @ A``): no ``peft`` needed.

:func:`export_adapter` writes a run's adapter in the shipped form (float16 weights, and for a
summarizer the summary spec beside them)::

    python -m popi_sdk.backends.adapters RUN popi_sdk/adapters/popi-smollm2
    python -m popi_sdk.backends.adapters RUN popi_sdk/adapters/popi-smollm2-generator stage2
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from popi_sdk.errors import InputError, ModelNotFoundError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."
_FOLDER = Path(__file__).resolve().parent.parent / "adapters"


@dataclass(frozen=True)
class ShippedAdapter:
    """One adapter in the package: ``hf:<name>`` (or an alias) is the embedded model with it."""

    name: str
    folder: Path
    role: str  # what it was trained as: "summarizer" (stage 1) or "generator" (stage 2)
    aliases: frozenset[str]

    @property
    def backend(self) -> str:
        return f"hf:{self.name}"


POPI = ShippedAdapter("popi", _FOLDER / "popi-smollm2", "summarizer",
                      frozenset({"popi", "smollm2-popi"}))
POPI_GENERATOR = ShippedAdapter("popi-generator", _FOLDER / "popi-smollm2-generator", "generator",
                                frozenset({"popi-generator", "smollm2-popi-generator"}))
SHIPPED_ADAPTERS = (POPI, POPI_GENERATOR)


def shipped_adapter(model: str | None) -> ShippedAdapter | None:
    """The shipped adapter a model name means (``popi``, ``popi-generator``, ...), else None."""
    if model is None:
        return None
    return next((a for a in SHIPPED_ADAPTERS if model.lower() in a.aliases), None)


def adapter_digest(folder: Path) -> str:
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


def require_shipped_adapter(adapter: ShippedAdapter = POPI) -> None:
    """Fail with the fix when a shipped adapter's weights are missing from the package."""
    if not (adapter.folder / WEIGHTS).is_file():
        raise ModelNotFoundError(
            f"the trained {adapter.role}'s adapter is missing from the package ({adapter.folder}): "
            "reinstall popi-sdk, or use the untrained embedded model ('hf')",
            backend=adapter.backend,
        )


def merged_folder(adapter: ShippedAdapter = POPI, home: str | os.PathLike | None = None) -> Path:
    """Where :func:`popi_checkpoint` keeps the embedded model with ``adapter`` merged (it holds
    ``model.safetensors`` once the merge is done)."""
    from popi_sdk.backends.hf import EMBEDDED_DIR
    from popi_sdk.settings import popi_home

    return popi_home(home) / "models" / f"{EMBEDDED_DIR}-{adapter.name}-{adapter_digest(adapter.folder)}"


def popi_checkpoint(home: str | os.PathLike | None = None, adapter: ShippedAdapter = POPI) -> Path:
    """The embedded model with a shipped adapter merged, built once; the checkpoint folder."""
    from popi_sdk.backends.hf import EMBEDDED_DIR, _file_lock, embedded_checkpoint
    from popi_sdk.settings import popi_home
    from popi_sdk.summary_spec import SPEC_FILE

    require_shipped_adapter(adapter)
    dest = merged_folder(adapter, home)
    if (dest / "model.safetensors").exists():
        return dest
    base_dir = embedded_checkpoint(home)
    with _file_lock(dest.parent / f".{dest.name}.lock"):
        if (dest / "model.safetensors").exists():
            return dest
        from safetensors.torch import load_file, save_file

        config = json.loads((adapter.folder / CONFIG).read_text(encoding="utf-8"))
        merged = merged_state_dict(load_file(base_dir / "model.safetensors"),
                                   load_file(adapter.folder / WEIGHTS), config)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base_dir, tmp, ignore=shutil.ignore_patterns("model.safetensors"))
        save_file(merged, tmp / "model.safetensors", metadata={"format": "pt"})
        if (adapter.folder / SPEC_FILE).is_file():  # a summarizer writes as it was trained
            shutil.copy(adapter.folder / SPEC_FILE, tmp / SPEC_FILE)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def find_adapter(run: Path, stage: str = "stage1") -> Path:
    """The final adapter of a run folder's stage (``RUN/<stage>/adapter``, else the newest
    checkpoint's), or ``run`` itself when it is an adapter folder."""
    candidates = [run, run / stage / "adapter"]
    checkpoints = sorted((run / "checkpoints" / stage).glob("checkpoint-*"),
                         key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    candidates += list(reversed(checkpoints))
    for folder in candidates:
        if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
            return folder
    raise InputError(
        f"{run} holds no {stage.replace('stage', 'stage-')} LoRA adapter ({CONFIG} and {WEIGHTS} in RUN/{stage}/adapter or "
        f"RUN/checkpoints/{stage}/checkpoint-N): give a run trained with lora.enabled"
    )


def export_adapter(run: str | os.PathLike, dest: str | os.PathLike, stage: str = "stage1") -> Path:
    """Write ``run``'s adapter of ``stage`` to ``dest`` in the shipped form: float16 LoRA weights,
    the adapter's r and alpha, and for stage 1 the summary spec (``RUN/stage1/popi_summary.json``)."""
    from safetensors.torch import load_file, save_file

    from popi_sdk.summary_spec import SPEC_FILE

    if stage not in ("stage1", "stage2"):
        raise InputError(f"stage must be 'stage1' (the summarizer) or 'stage2' (the generator), got {stage!r}")
    run, dest = Path(run), Path(dest)
    folder = find_adapter(run, stage)
    spec = None
    if stage == "stage1":
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
    written = [WEIGHTS, CONFIG]
    if spec is not None:
        shutil.copy(spec, dest / SPEC_FILE)
        written.append(SPEC_FILE)
    for name in written:  # package data: readable by every user
        (dest / name).chmod(0o644)
    return dest


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m popi_sdk.backends.adapters RUN DEST [stage1|stage2]")
    print(export_adapter(sys.argv[1], sys.argv[2], *sys.argv[3:]))
