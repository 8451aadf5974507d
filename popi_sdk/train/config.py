"""The training configuration: one pydantic model with the paper's defaults (arXiv 2510.17881 §5),
read from YAML, overridden from the command line, and checked before anything heavy loads.

Resolution order: a preset or ``--config`` file, then ``--set key=value`` overrides (dotted keys
for nested fields, e.g. ``stage1.learning_rate=1e-5``), then ``--max-steps`` (both stages).
The resolved config is written to ``RUN/config.yaml`` so a run can be reproduced exactly.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from popi_sdk.errors import ConfigError
from popi_sdk.objective import kl_weight
from popi_sdk.summary_spec import SummarySpec

PRESET_DIR = Path(__file__).parent / "presets"
#: Fields that moved into the ``summary`` section (a SummarySpec), for the error an old config gets.
RENAMED = {
    "prompt_dependent": "summary.prompt_dependent",
    "stage1.max_summary_tokens": "summary.max_tokens",
    "stage1.summary_words": "summary.max_words",
    "stage1.temperature": "summary.train_temperature",
    "stage1.top_p": "summary.train_top_p",
}
ACCELERATE_DIR = Path(__file__).parent / "accelerate"


class _Section(BaseModel):
    # No NaN or infinity anywhere: `beta: .inf` or `epochs: .inf` would pass every range check
    # and fail (or never finish) on the training node.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraOptions(_Section):
    """Train a LoRA adapter instead of every weight: one base model in memory then serves as the
    trained policy, the KL reference (adapter off) and, in stage 1, the frozen generator."""

    enabled: bool = Field(default=False, description="Train a LoRA adapter (needs peft).")
    r: int = Field(default=16, ge=1, description="Adapter rank.")
    alpha: int = Field(default=32, ge=1, description="Adapter scaling numerator (lora_alpha).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field(
        default="all-linear", description="Modules to adapt: a list of names or 'all-linear'."
    )


class Stage1Options(_Section):
    """Stage 1: the summarizer, trained with GRPO (TRL GRPOTrainer)."""

    learning_rate: float = Field(default=1e-6, gt=0, description="Peak learning rate.")
    batch_size: int = Field(
        default=8, ge=1, description="Users (prompts) per optimizer step, over all devices."
    )
    num_generations: int = Field(
        default=8, ge=2, description="Group size G: summaries sampled per user per step."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="Micro-batches per optimizer step on each device."
    )
    examples_per_summary: int | None = Field(
        default=None,
        ge=1,
        description="Score each summary on at most this many of the user's examples (None: all).",
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training users.")
    max_steps: int = Field(
        default=-1,
        description="GRPO optimizer steps; -1 means use epochs; 0: none, RUN/stage1 is the warm "
        "start (or stage1.init_adapter) alone.",
    )
    warmup_steps: int = Field(default=150, ge=0, description="Linear warm-up steps.")
    lr_scheduler: str = Field(default="cosine", description="transformers scheduler name.")
    grpo_loss: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        default="grpo", description="TRL GRPO loss aggregation (paper: grpo)."
    )
    scale_rewards: Literal["none", "group", "batch"] = Field(
        default="none",
        description="GRPO advantage scaling: none (the paper: reward minus the group's mean), group "
        "(also divide by the group's std) or batch (by the batch's std).",
    )
    validation_users: int = Field(
        default=0,
        ge=0,
        description="Training users held out (drawn with seed) for the learning curve: their greedy "
        "summaries are scored at step 0 and every eval_every steps; 0: none.",
    )
    eval_every: int = Field(
        default=10, ge=1, description="Validate every N GRPO steps (and at the last step)."
    )
    warm_start_samples: int = Field(
        default=0,
        ge=0,
        description="Best-of-N warm start: summaries sampled per training user before GRPO; the one "
        "with the highest reward gets a supervised pass (rejection-sampling fine-tuning); 0: off.",
    )
    warm_start_extractive: bool = Field(
        default=False,
        description="Also offer best-of-N each preferred response of the user's own signals, quoted "
        "as a summary; the reward still picks the winner per user (RUN/warm_start.jsonl says "
        "which kind won). For a generator that imitates examples more than it reads "
        "descriptions, as the embedded 135M one does (docs/results.md).",
    )
    warm_start_persona: bool = Field(
        default=False,
        description="Also offer best-of-N, for TRAINING users only, descriptions of the user: "
        "the data's persona (as FSPO's rationalization does) and, where the user has pairs, "
        "the persona followed by one preferred response (describe, then show). Test users' "
        "personas are never read. The reward still picks per user.",
    )
    warm_start_persona_form: Literal["about", "instruction", "both"] = Field(
        default="about",
        description="How stage1.warm_start_persona words a training user's persona: 'about' as "
        "the data writes it (\"The user is a child.\"), 'instruction' as an instruction to the "
        "writer (\"Generate a response that can be easily understood by a child.\"; a persona "
        "in no synthetic wording is kept as written), 'both' offers each form and the reward "
        "picks.",
    )
    warm_start_persona_show: Literal["own", "peers", "written"] = Field(
        default="own",
        description="What stage1.warm_start_persona shows after a training user's persona: "
        "'own' the user's first preferred response, where the user has pairs (a user without "
        "pairs gets the persona alone); 'peers' also, for a user without pairs, one preferred "
        "answer of another training user with the same persona (a labeled example's chosen "
        "response, seeded), so that persona-, history- and traits-only users get a describe-"
        "then-show candidate too; 'written' instead, for a user without pairs, answers the "
        "frozen generator writes with the persona as an instruction for its summary, to another "
        "training user's prompt (stage1.warm_start_written_answers of them, each a candidate). "
        "Training users only; the reward still picks.",
    )
    warm_start_peer_answers: int = Field(
        default=1,
        ge=1,
        description="With stage1.warm_start_persona_show = 'peers': same-persona answers drawn "
        "per training user without pairs (without replacement), each shown after the persona as "
        "its own candidate; the reward picks among them.",
    )
    warm_start_keep: int = Field(
        default=1,
        ge=1,
        description="Candidates kept per training user for the warm start's supervised pass: the "
        "best this many by reward, distinct texts (1: the best-of-N pick alone). More than one "
        "gives the pass several targets per user, e.g. descriptions each followed by a "
        "different same-persona answer (stage1.warm_start_peer_answers), so that it learns the "
        "style rather than one answer.",
    )
    warm_start_written_answers: int = Field(
        default=2,
        ge=1,
        description="With stage1.warm_start_persona_show = 'written': answers the generator "
        "writes per training user without pairs, each shown after the persona as its own "
        "candidate.",
    )
    init_adapter: str | None = Field(
        default=None,
        description="Start GRPO from this LoRA adapter folder (another run's RUN/warm-start or "
        "RUN/stage1/adapter) instead of a fresh adapter, skipping the warm start (unless "
        "stage1.warm_start_from continues its pass): ablations of the GRPO settings from one "
        "warm start. Needs lora.enabled.",
    )
    warm_start_from: str | None = Field(
        default=None,
        description="Train the warm start's supervised pass on an earlier run's picks (its "
        "RUN/warm_start.jsonl: the same training users, so the same data, seed and "
        "validation_users) instead of sampling and scoring new ones: ablations of the pass "
        "(epochs, learning rate, description weight) without the sampling time. With "
        "stage1.init_adapter the pass continues from that adapter (more epochs on the same "
        "picks). Needs stage1.warm_start_samples=0.",
    )
    warm_start_learning_rate: float | None = Field(
        default=None, gt=0, description="Learning rate of the warm start pass (None: learning_rate)."
    )
    warm_start_epochs: int = Field(
        default=1, ge=1, description="Supervised passes over the best-of-N summaries."
    )
    warm_start_batch_size: int = Field(
        default=4, ge=1, description="Summaries per optimizer step of the warm start pass."
    )
    warm_start_description_weight: float = Field(
        default=1.0,
        gt=0,
        description="Weight of a summary's description tokens in the warm start's loss, against "
        "the answer it shows (the tokens from \"They like answers such as:\" on). In a "
        "describe-then-show summary the few words that say who the user is are outweighed by "
        "the copied answer; above 1 they count more. 1: every summary token alike.",
    )
    kl_weight: float | None = Field(
        default=None,
        ge=0,
        description="KL weight α to the initial summarizer; None: 0.002·β (IPO 0.002·2/β); 0: off.",
    )
    score_batch_size: int = Field(
        default=8, ge=1, description="Sequences per forward pass when scoring summaries."
    )
    score_bf16: bool | None = Field(
        default=None,
        description="Score summaries (the reward) under bf16 autocast. None: as the training "
        "precision. false keeps the reward exactly popi_sdk.scoring.summary_rewards' float32 "
        "value while the loss trains under bf16 (bf16 scoring moves rewards by up to ~2e-2 at "
        "beta=0.1, as much as a group's summaries differ).",
    )
    share_prompts: bool = Field(
        default=True,
        description="Run each user's prompt once per group of sampled summaries (in sampling and "
        "in the loss) and compute log-probs at the completion positions only "
        "(popi_sdk.train.grpo.PopiGRPOTrainer; same numbers, several times less time and memory "
        "on CPU). false: TRL's stock GRPOTrainer. Several processes or vLLM always use the stock "
        "path.",
    )
    use_vllm: bool = Field(default=False, description="Roll out summaries with vLLM (GPU only).")
    vllm_mode: Literal["colocate", "server"] = Field(
        default="colocate", description="vLLM in the training process, or a `trl vllm-serve` server."
    )


class Stage2Options(_Section):
    """Stage 2: the generator, trained with DPO (TRL DPOTrainer) on prompt + stage-1 summary."""

    learning_rate: float = Field(default=1e-6, gt=0, description="Peak learning rate.")
    batch_size: int = Field(
        default=8, ge=1, description="Preference pairs per optimizer step, over all devices."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="Micro-batches per optimizer step on each device."
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training examples.")
    max_steps: int = Field(default=-1, description="Optimizer steps; -1 means use epochs.")
    warmup_steps: int = Field(default=150, ge=0, description="Linear warm-up steps.")
    lr_scheduler: str = Field(default="cosine", description="transformers scheduler name.")
    max_length: int | None = Field(
        default=1024, ge=8, description="Longest prompt+response in tokens (None: no limit)."
    )
    sft_weight: float = Field(
        default=0.0, ge=0,
        description="Weight of a supervised term (mean negative log-likelihood of each chosen "
        "response given prompt + summary) added to the DPO loss; 0: DPO alone, as the paper.",
    )
    summarizer: str | None = Field(
        default=None,
        description="Model writing the training summaries: None is RUN/stage1; the base model "
        "here gives the Inference-Aligned baseline.",
    )
    conditioning: dict[Literal["summary", "description", "exemplar", "profile", "raw", "none"], float] = Field(
        default_factory=lambda: {"summary": 1.0},
        description="What each training example's system context is, drawn per example with "
        "these weights: 'summary' (the summarizer's, the paper's stage 2), 'description' (the "
        "training user's self-description or ground-truth persona, as a user's own edit would "
        "read), 'exemplar' (the copy rule: one preferred response of the user quoted), 'none' "
        "(the prompt alone). A generator trained on one form reads only that form "
        "(docs/results.md).",
    )
    conditioning_copies: int = Field(
        default=1, ge=1,
        description="Draws of a conditioning form per training example: each draw is one DPO "
        "pair (the same example under several forms).",
    )
    summary_batch_size: int = Field(
        default=8, ge=1, description="Users per call when the stage-1 model writes summaries."
    )
    score_batch_size: int = Field(
        default=8, ge=1, description="Sequences per forward pass for the x-only reference."
    )


class TrainConfig(_Section):
    """Everything a POPI training run needs. Defaults are the paper's (Llama-3.2-3B-Instruct)."""

    model: str = Field(
        default="smollm2",
        description="Base model of the summarizer: a hub id, a checkpoint folder, or 'smollm2' "
        "(the embedded model).",
    )
    generator: str | None = Field(
        default=None,
        description="Generator: frozen in stage 1, trained in stage 2. None: the same as model.",
    )
    data: str | None = Field(default=None, description="Folder holding train.jsonl.")
    out: str | None = Field(default=None, description="Run folder (checkpoints, metrics, plot).")
    beta: float = Field(default=0.01, gt=0, description="β of the summary-augmented loss.")
    loss_type: Literal["dpo", "ipo"] = Field(default="dpo", description="dpo or ipo, both stages.")
    seed: int = Field(default=0, description="Random seed.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 on a GPU, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Trade compute for memory (2-3x less activation memory)."
    )
    lora: LoraOptions = Field(default_factory=LoraOptions)
    logging_steps: int = Field(default=1, ge=1, description="Log metrics every N steps.")
    save_steps: int = Field(default=50, ge=1, description="Checkpoint every N steps.")
    save_total_limit: int | None = Field(
        default=2, ge=1, description="Checkpoints kept per stage (None: all)."
    )
    resume: bool = Field(
        default=True, description="Continue from the last checkpoint in the run folder."
    )
    summary: SummarySpec = Field(
        default_factory=SummarySpec,
        description="How summaries are written (template, budget, sampling); stage 1 saves it "
        "as RUN/stage1/popi_summary.json and everything that uses the summarizer reads it back.",
    )
    stage1: Stage1Options = Field(default_factory=Stage1Options)
    stage2: Stage2Options = Field(default_factory=Stage2Options)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.stage1.max_steps < -1:
            raise ValueError(
                "stage1.max_steps must be a step count, -1 (use epochs) or 0 (the warm start alone)"
            )
        if self.stage1.max_steps == 0 and not (
            self.stage1.warm_start_samples or self.stage1.init_adapter or self.stage1.warm_start_from
        ):
            raise ValueError(
                "stage1.max_steps = 0 trains no GRPO step, and there is no warm start to keep: "
                "set stage1.warm_start_samples (or stage1.init_adapter), or a positive max_steps"
            )
        if self.stage2.max_steps == 0 or self.stage2.max_steps < -1:
            raise ValueError("stage2.max_steps must be a positive step count or -1 (use epochs)")
        if self.stage1.validation_users and self.summary.prompt_dependent:
            raise ValueError(
                "stage1.validation_users needs prompt-independent summaries (one per user): set "
                "stage1.validation_users to 0 or summary.prompt_dependent to false"
            )
        extra = self.stage1.warm_start_extractive or self.stage1.warm_start_persona
        if self.stage1.warm_start_samples == 1 and not extra:
            raise ValueError(
                "stage1.warm_start_samples = 1 picks from one summary: use 0 (off) or at least 2 "
                "(or add candidates with stage1.warm_start_extractive or warm_start_persona)"
            )
        if self.stage1.init_adapter and not self.lora.enabled:
            raise ValueError(
                "stage1.init_adapter loads a LoRA adapter: set lora.enabled to true (with the "
                "adapter's r and alpha) or drop stage1.init_adapter"
            )
        mix = self.stage2.conditioning
        if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(
                "stage2.conditioning needs non-negative weights with a positive sum, e.g. "
                "{summary: 0.4, description: 0.3, exemplar: 0.2, none: 0.1}"
            )
        if self.stage1.warm_start_persona and not self.stage1.warm_start_samples:
            raise ValueError(
                "stage1.warm_start_persona adds candidates to the best-of-N warm start, which "
                "is off: set stage1.warm_start_samples to at least 1"
            )
        if self.stage1.warm_start_extractive and not self.stage1.warm_start_samples:
            raise ValueError(
                "stage1.warm_start_extractive adds candidates to the best-of-N warm start, which "
                "is off: set stage1.warm_start_samples to at least 1"
            )
        if self.stage1.warm_start_from and self.stage1.warm_start_samples:
            raise ValueError(
                "stage1.warm_start_from trains on an earlier run's picks and samples nothing: "
                "set stage1.warm_start_samples=0 (the candidate options, warm_start_extractive "
                "and warm_start_persona, stay off with it)"
            )
        if self.stage1.warm_start_persona_form != "about" and not self.stage1.warm_start_persona:
            raise ValueError(
                f"stage1.warm_start_persona_form={self.stage1.warm_start_persona_form!r} words "
                "the persona candidates, which are off: set stage1.warm_start_persona=true"
            )
        if self.stage1.warm_start_persona_show != "own" and not self.stage1.warm_start_persona:
            raise ValueError(
                f"stage1.warm_start_persona_show={self.stage1.warm_start_persona_show!r} adds to "
                "the persona candidates, which are off: set stage1.warm_start_persona=true"
            )
        if self.stage1.warm_start_written_answers != 2 and self.stage1.warm_start_persona_show != "written":
            raise ValueError(
                "stage1.warm_start_written_answers counts the answers of "
                "stage1.warm_start_persona_show=written, which is "
                f"{self.stage1.warm_start_persona_show!r}: set it to written, or leave the count out"
            )
        if self.stage1.warm_start_peer_answers != 1 and self.stage1.warm_start_persona_show != "peers":
            raise ValueError(
                "stage1.warm_start_peer_answers counts the answers of "
                "stage1.warm_start_persona_show=peers, which is "
                f"{self.stage1.warm_start_persona_show!r}: set it to peers, or leave the count out"
            )
        if self.stage1.warm_start_keep != 1 and self.stage1.warm_start_from:
            raise ValueError(
                "stage1.warm_start_keep chooses among scored candidates, and stage1.warm_start_from "
                "reads picks already chosen: keep them when they are scored (the run that writes "
                "the picks), or leave it out"
            )
        return self

    # -- derived values --------------------------------------------------------------------
    @property
    def generator_model(self) -> str:
        return self.generator or self.model

    @property
    def kl(self) -> float:
        """GRPO's KL weight α (paper §4: 0.002·β, IPO 0.002·2/β) unless set explicitly."""
        if self.stage1.kl_weight is not None:
            return self.stage1.kl_weight
        return kl_weight(self.beta, self.loss_type)

    def run_dir(self) -> Path:
        return run_folder(self.out)

    def train_file(self) -> Path:
        return training_file(self.data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def run_folder(out: str | None) -> Path:
    """The run folder ``out`` (config ``out:`` or ``--out``), checked to be a folder or absent."""
    if not out:
        raise ConfigError("no run folder: pass --out RUN (or set out: in the config file)")
    run = Path(out).expanduser()
    if run.exists() and not run.is_dir():
        raise ConfigError(f"out: {run} is a file; the run folder must be a folder (or not exist yet)")
    return run


def training_file(data: str | None) -> Path:
    """``train.jsonl`` of the data folder ``data`` (or ``data`` itself when it names a file)."""
    if not data:
        raise ConfigError("no data: pass --data DIR, a folder holding train.jsonl")
    path = Path(data).expanduser()
    file = path / "train.jsonl" if path.is_dir() or not path.suffix else path
    if not file.exists():
        raise ConfigError(
            f"data: {file} does not exist. Give a folder holding train.jsonl (make one with "
            "`popi data synth review --users 64 --out DIR`)"
        )
    return file


# -- loading -------------------------------------------------------------------------------
def presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(presets())}")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a YAML config file (see docs/training.md)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of field: value")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"stage1.learning_rate=1e-5"`` -> ``("stage1.learning_rate", 1e-05)``; values are YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stage1.learning_rate=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _fields_at(loc: tuple) -> list[str]:
    """Known field names of the section at ``loc`` (for 'did you mean' hints)."""
    model: Any = TrainConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(
            field.annotation, BaseModel
        ):
            break
        model = field.annotation
    return list(model.model_fields)


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(config)"
        if err["type"] == "extra_forbidden" and where in RENAMED:
            lines.append(f"field {where}: renamed. Fix: use {RENAMED[where]}")
        elif err["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?" if close else (
                f"known fields here: {', '.join(known)}"
            )
            lines.append(f"field {where}: unknown field. Fix: remove it or correct it ({hint})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"field {where}: {msg}{shown}")
    return f"invalid training config ({source}):\n  " + "\n  ".join(lines)


def load_config(
    config: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    max_steps: int | None = None,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> TrainConfig:
    """Build a :class:`TrainConfig` from a file or a preset (not both), then overrides.

    ``overrides`` are ``"key=value"`` strings (or a mapping) with dotted keys for nested fields;
    ``max_steps`` caps both stages. Raises :class:`ConfigError` naming every bad field.
    """
    if config is not None and preset is not None:
        raise ConfigError("give either --config FILE or --preset NAME, not both")
    sources = []
    data_dict: dict[str, Any] = {}
    if preset is not None:
        data_dict = _read_yaml(preset_path(preset))
        sources.append(f"preset {preset}")
    elif config is not None:
        data_dict = _read_yaml(Path(config))
        sources.append(str(config))
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        _set_dotted(data_dict, key, value)
        sources.append(f"--set {key}")
    if max_steps is not None:
        for stage in ("stage1", "stage2"):
            _set_dotted(data_dict, f"{stage}.max_steps", max_steps)
        sources.append("--max-steps")
    if data is not None:
        data_dict["data"] = str(data)
    if out is not None:
        data_dict["out"] = str(out)
    try:
        return TrainConfig.model_validate(data_dict)
    except ValidationError as e:
        raise ConfigError(_describe(e, ", ".join(sources) or "defaults")) from None
