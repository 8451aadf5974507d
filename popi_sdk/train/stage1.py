"""Stage 1: train the summarizer with GRPO (paper §4, Algorithm 1).

For each training user, sample a group of summaries of their signals; a summary's reward is
``−l``, the summary-augmented DPO (or IPO) loss of a *frozen* generator on the user's held-out
examples (:func:`popi_sdk.scoring.summary_rewards`, the function evaluation uses too). The
reference log-probs ``log πref(y|x)`` read the prompt only, so they are computed once per example
before training (:class:`~popi_sdk.scoring.ReferenceCache`), never by a second reference model.
KL to the initial summarizer has weight α = 0.002·β; rewards are not std-scaled.

Local::

    popi train stage1 --preset cpu-small --data data/review --out runs/small

Several GPUs or nodes (batch sizes in the config are global)::

    accelerate launch --config_file popi_sdk/train/accelerate/zero3.yaml \\
        --num_processes $(nvidia-smi -L | wc -l) \\
        -m popi_sdk.cli train stage1 --preset paper --data DATA --out runs/paper

Cloud (SkyPilot, both stages; see docs/launch.md)::

    popi launch train --cloud aws --gpus H100:8 --bucket MY-BUCKET
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from popi_sdk.backends.base import Message
from popi_sdk.backends.hf import resolve_model
from popi_sdk.errors import InputError, MissingDependencyError
from popi_sdk.signals import PreferencePair, Signals, UserRow
from popi_sdk.summary_spec import SummarySpec
from popi_sdk.train import common
from popi_sdk.train.config import TrainConfig
from popi_sdk.train.validation import (
    Validator,
    split_validation,
    validate_and_log,
    validation_callback,
    write_summaries,
)

log = logging.getLogger(__name__)


def build_rows(
    users: Sequence[UserRow], cfg: TrainConfig
) -> tuple[list[dict[str, Any]], dict[str, list[PreferencePair]]]:
    """GRPO prompts and the examples each one's summaries are scored on.

    One row per user (one summary serves all of the user's examples), or, with
    ``summary.prompt_dependent``, one row per (user, example) whose summary is written for that
    prompt. The prompts are ``cfg.summary``'s messages, as the trained summarizer will read them.
    """
    spec = cfg.summary
    rows: list[dict[str, Any]] = []
    examples: dict[str, list[PreferencePair]] = {}
    for user in users:
        pairs = user.examples[: cfg.stage1.examples_per_summary]
        if not pairs:
            continue
        if spec.prompt_dependent:
            for j, pair in enumerate(pairs):
                key = f"{user.user_id}#{j}"
                rows.append({"prompt": spec.messages(user.signals, pair.prompt), "example_key": key})
                examples[key] = [pair]
        else:
            rows.append({"prompt": spec.messages(user.signals), "example_key": user.user_id})
            examples[user.user_id] = list(pairs)
    if not rows:
        raise InputError(
            "no training user has examples: each row of train.jsonl needs a non-empty 'examples' "
            "list (the preference pairs a summary is scored on)"
        )
    return rows, examples


class SummaryReward:
    """GRPO reward: −(summary-augmented loss) of the frozen generator, averaged over the user's
    examples, for each sampled summary cleaned as ``spec`` cleans summaries written for use.
    A plain callable, not an ``nn.Module`` (TRL would treat a module as a reward model); TRL
    passes every dataset column as a keyword argument, so ``example_key`` arrives per sample.
    """

    __name__ = "popi"

    def __init__(self, scorer: Any, reference: Any, examples: dict[str, list[PreferencePair]],
                 *, beta: float, loss_type: str, spec: SummarySpec | None = None):
        self.spec = spec or SummarySpec()
        self.scorer = scorer
        self.reference = reference
        self.examples = examples
        self.beta = beta
        self.loss_type = loss_type
        self._adapter_model: Any = None

    def share_base_with(self, peft_model: Any) -> None:
        """The generator is the LoRA policy's base: score with the adapter switched off."""
        self._adapter_model = peft_model

    @contextlib.contextmanager
    def generator_context(self):
        """The frozen generator ready to score: eval mode, and the adapter off when the
        generator is the LoRA policy's base."""
        model = self.scorer.model
        was_training = model.training
        model.eval()  # no dropout; and training-mode checkpointing would turn the KV cache off
        try:
            if self._adapter_model is not None:
                with self._adapter_model.disable_adapter():
                    yield
            else:
                yield
        finally:
            model.train(was_training)

    def precompute_reference(self) -> int:
        """Fill the reference cache for every example now, once (the reference never changes)."""
        pairs = [p for ps in self.examples.values() for p in ps]
        with self.generator_context():
            self.reference.pairs(pairs)  # one grouped, batched pass
        return len(pairs)

    def score(self, examples: list[list[PreferencePair]], texts: list[str]) -> list[float]:
        """Rewards of cleaned summaries ``texts[i]`` on ``examples[i]`` (call inside
        :meth:`generator_context`)."""
        from popi_sdk.scoring import summary_rewards

        return summary_rewards(
            self.scorer, self.reference, examples, texts, beta=self.beta, loss_type=self.loss_type
        )

    def __call__(
        self, prompts: list, completions: list, example_key: list[str], **_: Any
    ) -> list[float]:
        texts = [self.spec.clean(_completion_text(c)) for c in completions]
        with self.generator_context():
            return self.score([self.examples[k] for k in example_key], texts)


def _completion_text(completion: str | list[Message]) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")


def grpo_args(cfg: TrainConfig) -> Any:
    from trl import GRPOConfig

    opts = cfg.stage1
    completions = opts.batch_size * opts.num_generations
    if opts.use_vllm:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise MissingDependencyError(
                "'vllm' (stage1.use_vllm: true; on a CPU machine set it to false)",
                'pip install "popi-sdk[vllm]"',
            )
    return GRPOConfig(
        **common.trainer_args(cfg, "stage1", opts),
        # TRL counts completions, not prompts, in the per-device batch.
        per_device_train_batch_size=common.per_device_batch(
            completions, opts.gradient_accumulation_steps,
            "stage1.batch_size x stage1.num_generations",
        ),
        num_generations=opts.num_generations,
        max_completion_length=cfg.summary.max_tokens,
        temperature=cfg.summary.train_temperature,
        top_p=cfg.summary.train_top_p,
        beta=cfg.kl,
        scale_rewards=opts.scale_rewards,
        loss_type=opts.grpo_loss,
        use_vllm=opts.use_vllm,
        vllm_mode=opts.vllm_mode,
        remove_unused_columns=False,
        log_completions=False,
    )


def main(cfg: TrainConfig) -> str:
    """Train the summarizer; returns the final checkpoint folder ``RUN/stage1``, which holds the
    summary spec it was trained with (``popi_summary.json``)."""
    common.require_train_stack()
    run = common.prepare_run(cfg)
    if common.stage_done(cfg, "stage1"):
        log.info("stage 1 already finished in %s; skipping", run / "stage1")
        return str(run / "stage1")
    parts = build_trainer(cfg)
    trainer, tokenizer = parts.trainer, parts.trainer.processing_class
    resume = common.last_checkpoint(cfg, "stage1")
    main_process = trainer.accelerator.is_main_process
    metrics = run / "metrics.jsonl"
    if parts.validator is not None and resume is None and not cfg.stage1.init_adapter:
        # (A run from another run's adapter starts at that adapter: its step 0 is "warm_start".)
        validate_and_log(parts.validator, trainer.model, tokenizer, metrics, step=0, phase="initial",
                         main_process=main_process)
    opts = cfg.stage1
    if opts.init_adapter and resume is None:
        load_adapter(trainer, opts.init_adapter)
        if parts.validator is not None:  # where this run starts, or where GRPO starts
            validate_and_log(parts.validator, trainer.model, tokenizer, metrics, step=0,
                             phase="initial" if opts.warm_start_from else "warm_start",
                             main_process=main_process)
    if resume is None and (opts.warm_start_from or (opts.warm_start_samples and not opts.init_adapter)):
        from popi_sdk.train.warmstart import warm_start

        record = warm_start(
            trainer.model, tokenizer, parts.reward, parts.rows, opts, spec=cfg.summary,
            run=run, seed=cfg.seed, signals=parts.signals,
            personas=parts.personas if opts.warm_start_persona else None,
            # set only with warm_start_persona_show = peers / written, which need the personas
            peers=parts.peers, prompts=parts.prompts,
        )
        if main_process:
            with metrics.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            if cfg.lora.enabled:  # the adapter alone: GRPO ablations start from it (init_adapter)
                trainer.accelerator.unwrap_model(trainer.model).save_pretrained(run / "warm-start")
        if parts.validator is not None:
            validate_and_log(parts.validator, trainer.model, tokenizer, metrics, step=0,
                             phase="warm_start", main_process=main_process)
    if cfg.stage1.max_steps != 0:  # 0: the warm start (or init_adapter) is the summarizer
        trainer.train(resume_from_checkpoint=resume)
    dest = common.save_final(trainer, tokenizer, cfg, "stage1")
    if main_process:
        from popi_sdk.train.plot import plot_run

        plot_run(run)
    return str(dest)


def load_adapter(trainer: Any, folder: str) -> None:
    """Put the LoRA weights saved in ``folder`` into the trainer's adapter (same r and targets)."""
    from pathlib import Path

    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    if not (Path(folder) / "adapter_config.json").is_file():
        raise InputError(
            f"stage1.init_adapter = {folder!r} holds no LoRA adapter (adapter_config.json): point "
            "it at a run's RUN/warm-start or RUN/stage1/adapter folder"
        )
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = set_peft_model_state_dict(model, load_peft_weights(folder, device="cpu"))
    unplaced = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unplaced:
        raise InputError(
            f"stage1.init_adapter = {folder!r} does not fit this model's adapter ({len(unplaced)} "
            f"weights without a place, e.g. {unplaced[0]}): use the lora settings it was trained with"
        )
    log.info("stage 1 starts from the adapter in %s", folder)


class Stage1Parts(NamedTuple):
    """What :func:`build_trainer` assembles: the trainer, its reward, the GRPO rows (the warm
    start samples for them too) and the validator of the held-out users (None without any)."""

    trainer: Any
    reward: SummaryReward
    rows: list[dict[str, Any]]
    validator: Validator | None
    signals: dict[str, Signals] | None = None  # each row's user's signals, by example_key
    personas: dict[str, str] | None = None  # each row's (training) user's persona, by example_key
    peers: dict[str, list[str]] | None = None  # stage1.warm_start_persona_show = "peers": warmstart.peer_answers
    prompts: dict[str, str] | None = None  # ... = "written": warmstart.peer_prompts


def build_trainer(cfg: TrainConfig) -> Stage1Parts:
    """The GRPO trainer of stage 1, with its reference log-probs computed, its reward, rows and
    validator (``benchmarks/train_cpu.py`` times the parts of a step through them)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from popi_sdk.data import read_users
    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train.grpo import popi_grpo_trainer_class

    run = cfg.run_dir()
    users, val_users = split_validation(
        read_users(cfg.train_file()), cfg.stage1.validation_users, seed=cfg.seed
    )
    rows, examples = build_rows(users, cfg)
    args = grpo_args(cfg)
    policy_path, policy = common.load_policy(cfg.model)
    tokenizer = common.load_tokenizer(policy_path)

    shared_base = cfg.lora.enabled and cfg.generator is None
    score_bf16 = args.bf16 if cfg.stage1.score_bf16 is None else cfg.stage1.score_bf16
    if shared_base:
        generator, gen_tokenizer = policy, tokenizer
    else:
        generator = common.load_frozen(cfg.generator_model, bf16=score_bf16)
        gen_tokenizer = common.load_tokenizer(resolve_model(cfg.generator_model))
    scorer = SequenceScorer(generator, gen_tokenizer, batch_size=cfg.stage1.score_batch_size,
                            bf16=score_bf16)
    reward = SummaryReward(
        scorer, ReferenceCache(scorer, cfg.generator_model), examples,
        beta=cfg.beta, loss_type=cfg.loss_type, spec=cfg.summary,
    )
    callbacks = [common.metrics_callback(cfg, "stage1")]
    spec = cfg.summary
    validator = None
    if val_users:
        # Validation writes summaries as the SDK will with the trained checkpoint: the spec's
        # own sampling for use (greedy by default), its token cap and its cleaning.
        summarize = functools.partial(
            write_summaries, max_tokens=spec.max_tokens, clean=spec.clean,
            temperature=spec.temperature, batch_size=cfg.stage1.score_batch_size,
        )
        validator = Validator(
            val_users, [spec.messages(u.signals) for u in val_users], reward, summarize,
            run / "validation",
        )
        callbacks.append(validation_callback(validator, cfg.stage1.eval_every, run / "metrics.jsonl", tokenizer))
    trainer_class = popi_grpo_trainer_class() if cfg.stage1.share_prompts else GRPOTrainer
    trainer = trainer_class(
        model=policy,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=common.lora_config(cfg),
        callbacks=callbacks,
    )
    common.show_progress(trainer, "stage1")
    if shared_base:
        reward.share_base_with(trainer.accelerator.unwrap_model(trainer.model))
    # After the trainer placed the model on its device; the adapter (if any) is off while scoring.
    n = reward.precompute_reference()
    log.info("reference log-probs of %d examples computed once", n)
    # A row's key is its user's id, or "id#j" for the j-th prompt-dependent row (build_rows).
    owner = {u.user_id: u for u in users}
    owners = {key: owner[key] if key in owner else owner[key.rsplit("#", 1)[0]]
              for key in (row["example_key"] for row in rows)}
    signals = {key: u.signals for key, u in owners.items()}
    # Training users only (validation users were split off above): a persona may be a training
    # target, never something a model reads at test time.
    personas = {key: u.persona for key, u in owners.items() if u.persona}
    peers = prompts = None
    if cfg.stage1.warm_start_persona_show == "peers":
        from popi_sdk.train.warmstart import peer_answers

        peers = peer_answers(owners, cfg.seed, n=cfg.stage1.warm_start_peer_answers)
    elif cfg.stage1.warm_start_persona_show == "written":
        from popi_sdk.train.warmstart import peer_prompts

        prompts = peer_prompts(owners, cfg.seed)
    return Stage1Parts(trainer, reward, rows, validator, signals, personas, peers, prompts)
