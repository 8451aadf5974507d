"""What both stages share: the run folder, loading models, the metrics log, resuming, saving.

Run folder layout::

    RUN/config.yaml            resolved config of the latest invocation
    RUN/metrics.jsonl          one line per logged step: {"stage": "stage1", "step": 3, ...}
    RUN/rewards.png            mean reward ± spread per step (stage 1), DPO margins (stage 2)
    RUN/checkpoints/stageN/    TRL checkpoints (resume points)
    RUN/stage1/, RUN/stage2/   final Hugging Face checkpoints, loadable by the SDK
    RUN/stage1/popi_summary.json   the summary spec stage 1 trained with (SummarySpec)
    RUN/summaries.sqlite       training users' summaries by the stage-1 model (stage 2 input)
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from popi_sdk.backends.hf import require_local_stack, resolve_model
from popi_sdk.errors import MissingDependencyError
from popi_sdk.train.config import TrainConfig

INSTALL_TRAIN = 'pip install "popi-sdk[train]"'
DONE_FILE = "popi_stage.json"
# transformers' Trainer._save_checkpoint writes trainer_state.json last (after the weights, the
# optimizer, the scheduler and the RNG states), so a checkpoint whose state file is whole is whole.
STATE_FILE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

log = logging.getLogger(__name__)


def require_train_stack() -> None:
    import importlib.util

    require_local_stack()
    for module in ("trl", "datasets", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(f"'{module}' (needed for training)", INSTALL_TRAIN)


def prepare_run(cfg: TrainConfig) -> Path:
    """Create the run folder and write the resolved config into it."""
    run = cfg.run_dir()
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    return run


def use_bf16(cfg: TrainConfig) -> bool:
    import torch

    if cfg.precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cfg.precision == "bf16"


def world_size() -> int:
    from accelerate import PartialState

    return PartialState().num_processes


def per_device_batch(total: int, accumulation: int, what: str) -> int:
    """Split a global batch over processes and accumulation steps, or say how to fix it."""
    from popi_sdk.errors import ConfigError

    world = world_size()
    if total % (world * accumulation):
        raise ConfigError(
            f"{what} = {total} cannot be split over {world} process(es) x {accumulation} "
            f"accumulation step(s): make it a multiple of {world * accumulation}"
        )
    return total // (world * accumulation)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(name: str) -> tuple[str, Any]:
    """The model to train, in float32 (mixed precision happens in the trainer). Returns its real
    folder too: TRL reloads the KL reference from ``config._name_or_path``."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name)
    return path, AutoModelForCausalLM.from_pretrained(path, dtype="float32")


def load_frozen(name: str, bf16: bool) -> Any:
    """A frozen model for scoring (the generator in stage 1, the reference in stage 2)."""
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype)
    model.requires_grad_(False)
    return model.to(PartialState().device).eval()


def lora_config(cfg: TrainConfig) -> Any:
    if not cfg.lora.enabled:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise MissingDependencyError("'peft' (needed for lora.enabled)", INSTALL_TRAIN) from None
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
    )


def trainer_args(cfg: TrainConfig, stage: str, opts: Any) -> dict[str, Any]:
    """transformers.TrainingArguments fields both stages set the same way."""
    import torch

    bf16 = use_bf16(cfg)
    return dict(
        output_dir=str(cfg.run_dir() / "checkpoints" / stage),
        learning_rate=opts.learning_rate,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps or 1,  # 0 (stage 1's warm start alone) never calls train()
        warmup_steps=opts.warmup_steps,
        lr_scheduler_type=opts.lr_scheduler,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        # bf16 is TRL's default even on CPU, where it only slows things down (docs/benchmarks.md).
        bf16=bf16,
        # transformers refuses bf16 without a GPU unless told the run is on the CPU on purpose.
        use_cpu=bf16 and not torch.cuda.is_available(),
        seed=cfg.seed,
        report_to=[],
        disable_tqdm=False,
        save_only_model=False,
        # TRL turns gradient checkpointing on by default; transformers 5 renamed the field and
        # the new name wins over TRL's default without a deprecation warning.
        activation_checkpointing=cfg.gradient_checkpointing,
    )


def show_progress(trainer: Any, stage: str) -> None:
    """Replace the trainer's tqdm bar (and the dict it prints per log) with one line per stage:
    steps done, ETA, and the last logged reward or loss. Main process only."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from popi_sdk.progress import training_progress

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if trainer.accelerator.is_main_process:
        trainer.add_callback(training_progress(trainer.args.max_steps, stage))


def last_checkpoint(cfg: TrainConfig, stage: str) -> str | None:
    """The newest *complete* TRL checkpoint of ``stage`` when resuming is on, else None.

    A process killed while saving (a spot preemption, an OOM kill) leaves the newest folder
    partly written; it is skipped, with a warning naming it, and the run resumes from the newest
    checkpoint before it. The skipped folder is left in place: the trainer writes that step's
    checkpoint into it again when it gets there."""
    folder = cfg.run_dir() / "checkpoints" / stage
    if not cfg.resume or not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    for _step, path in sorted(found, reverse=True):
        if not path.is_dir():
            continue
        why = incomplete_reason(path)
        if why is None:
            return str(path)
        log.warning("not resuming from %s: %s (the run was probably stopped while saving it); "
                    "trying the checkpoint before it", path, why)
    if found:
        log.warning("no complete checkpoint in %s: %s starts from step 0", folder, stage)
    return None


def incomplete_reason(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete."""
    state = checkpoint / STATE_FILE
    if not state.is_file():
        return f"it has no {STATE_FILE}"
    try:
        step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return f"its {STATE_FILE} is cut short"
    if not isinstance(step, int):
        return f"its {STATE_FILE} records no global_step"
    return None


def stage_done(cfg: TrainConfig, stage: str) -> bool:
    """A finished stage (its final checkpoint written) is skipped when resuming."""
    return cfg.resume and (cfg.run_dir() / stage / DONE_FILE).exists()


def save_final(trainer: Any, tokenizer: Any, cfg: TrainConfig, stage: str, *, spec: Any = None) -> Path:
    """Write RUN/<stage> as a plain Hugging Face checkpoint; a LoRA adapter is merged first, so
    ``Personalizer(summarizer="RUN/stage1")`` loads it like any model folder. ``popi_summary.json``
    says how its summaries are written: stage 1's ``cfg.summary``, or for stage 2 ``spec``, the
    spec of the summaries the generator trained on (``popi eval`` writes Inference-Aligned's
    summaries with it)."""
    dest = cfg.run_dir() / stage
    model = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.lora.enabled:
        if trainer.accelerator.is_main_process:
            # The adapter alone too (a few MB, what the package ships as its trained
            # summarizer), then the merged model any loader reads.
            model.save_pretrained(dest / "adapter")
            merged = model.merge_and_unload()
            merged.save_pretrained(dest)
    else:
        trainer.save_model(str(dest))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(dest)
        if stage == "stage1":  # how the summarizer was trained to write, read back by every user
            cfg.summary.save(dest)
        elif spec is not None:  # how the summaries the generator read were written
            spec.save(dest)
        done = {"stage": stage, "steps": trainer.state.global_step, "lora_merged": cfg.lora.enabled}
        (dest / DONE_FILE).write_text(json.dumps(done), encoding="utf-8")
    trainer.accelerator.wait_for_everyone()
    return dest


def metrics_callback(cfg: TrainConfig, stage: str) -> Any:
    """A TrainerCallback appending every log to RUN/metrics.jsonl (main process only). On resume,
    lines of this stage past the resumed step are dropped first, so the log has no duplicates."""
    from transformers import TrainerCallback

    path = cfg.run_dir() / "metrics.jsonl"

    class MetricsLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero or not path.exists():
                return
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                if rec.get("stage") == stage and rec.get("step", 0) > state.global_step:
                    continue
                kept.append(line)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
            os.replace(tmp, path)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            rec = {"stage": stage, "step": state.global_step, **logs}
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")

    return MetricsLog()


def read_metrics(run: str | os.PathLike, stage: str | None = None) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if stage is None or r.get("stage") == stage]
