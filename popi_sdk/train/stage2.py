"""Stage 2 (optional): fine-tune the generator with DPO on prompt + stage-1 summary (paper §4).

Each training example ``(x, y_c, y_r)`` of a user becomes a DPO pair whose prompt is ``x`` with the
user's stage-1 summary ``z`` as system context. The reference term of the summary-augmented loss
is ``log πref(y|x)``, on the prompt *alone*: it is computed once per example by the initial
generator (:class:`~popi_sdk.scoring.ReferenceCache`) and handed to TRL as precomputed columns,
so no reference model is kept during training.

Stock ``DPOTrainer`` (TRL 1.16) reads ``ref_chosen_logps`` / ``ref_rejected_logps`` only when
``precompute_ref_log_probs=True``, and then computes them itself (on prompt + summary, the wrong
context) and fails concatenating its own columns onto ours. :class:`PopiDPOTrainer` changes three
hooks and nothing else: supplied reference columns are kept, rows already tokenized (by
:class:`~popi_sdk.scoring.SequenceScorer`, the tokenization evaluation uses) are not re-tokenized,
and the loss projects only the response positions through the LM head
(:func:`popi_sdk.train.grpo.compact_lm_head`).

Local::

    popi train stage2 --preset cpu-small --data data/review --out runs/small

Several GPUs or nodes::

    accelerate launch --config_file popi_sdk/train/accelerate/zero3.yaml \\
        --num_processes $(nvidia-smi -L | wc -l) \\
        -m popi_sdk.cli train stage2 --preset paper --data DATA --out runs/paper

Cloud (SkyPilot, both stages; see docs/launch.md)::

    popi launch train --cloud aws --gpus H100:8 --bucket MY-BUCKET
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from popi_sdk.backends.hf import resolve_model
from popi_sdk.errors import ConfigError, InputError
from popi_sdk.signals import PreferencePair, UserRow
from popi_sdk.summary_spec import SummarySpec
from popi_sdk.templates import (
    exemplar_summary,
    profile_summary,
    prompt_only_messages,
    raw_signals_messages,
    render_signals,
    summary_messages,
)
from popi_sdk.train import common
from popi_sdk.train.config import TrainConfig

log = logging.getLogger(__name__)

TOKENIZED = ("prompt_ids", "chosen_ids", "rejected_ids")
REFERENCE = ("ref_chosen_logps", "ref_rejected_logps")


def popi_dpo_trainer_class() -> type:
    """:class:`trl.DPOTrainer` extended to take precomputed x-only reference log-probs."""
    from trl import DPOTrainer

    class PopiDPOTrainer(DPOTrainer):
        """DPOTrainer that keeps reference log-probs and token ids the caller supplies.

        Use with ``precompute_ref_log_probs=True``: that switch makes the loss read the
        ``ref_*_logps`` columns instead of running a reference model.
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if all(c in dataset.column_names for c in TOKENIZED):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if all(c in dataset.column_names for c in REFERENCE):
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

        def _compute_loss(self, model, inputs, return_outputs):
            # The LM head over the response positions only (on CPU TRL projects the prompt too,
            # which held most of this stage's peak memory; see popi_sdk.train.grpo).
            from popi_sdk.train.grpo import compact_lm_head

            with compact_lm_head():
                return super()._compute_loss(model, inputs, return_outputs)

    return PopiDPOTrainer


def summary_spec(cfg: TrainConfig, summarizer: str) -> SummarySpec:
    """How stage 2's summaries are written: as the summarizer was trained (its folder's
    ``popi_summary.json``, e.g. RUN/stage1's), else the config's ``summary`` section (a base model
    summarizing, the Inference-Aligned setting)."""
    spec = SummarySpec.from_checkpoint(summarizer, default=cfg.summary)
    if spec != cfg.summary:
        differ = [k for k, v in spec.model_dump().items() if getattr(cfg.summary, k) != v]
        log.warning(
            "summaries are written as %s was trained; the config's summary section differs in %s",
            summarizer, ", ".join(differ),
        )
    return spec


def summarizer_path(cfg: TrainConfig) -> str:
    """The model folder that writes stage 2's summaries (RUN/stage1 unless stage2.summarizer)."""
    run = cfg.run_dir()
    if cfg.stage2.summarizer is None and not (run / "stage1" / "config.json").exists():
        raise ConfigError(
            f"{run / 'stage1'} holds no stage-1 checkpoint: run `popi train stage1` with the same "
            "--out first, or set stage2.summarizer to a model folder"
        )
    return resolve_model(cfg.stage2.summarizer or str(run / "stage1"))


def summaries_for(
    users: Sequence[UserRow], cfg: TrainConfig, spec: SummarySpec | None = None
) -> dict[str, str]:
    """Summary text per example key, cached in RUN/summaries.sqlite: ``user_id`` (one summary
    per user) or ``user_id#j`` when ``spec`` (default: :func:`summary_spec`) is prompt-dependent."""
    from popi_sdk import Personalizer

    summarizer = summarizer_path(cfg)
    spec = spec or summary_spec(cfg, summarizer)
    p = Personalizer(summarizer=summarizer, store=cfg.run_dir() / "summaries.sqlite", summary=spec)
    with_examples = [u for u in users if u.examples]
    # Training uses what the stage-1 model writes, nothing included; an empty summary is just
    # never stored for the SDK to serve.
    batch_size = cfg.stage2.summary_batch_size
    if not spec.prompt_dependent:
        done = p.summarize_many(with_examples, batch_size=batch_size, keep_empty=True)
        return {s.user_id: s.text for s in done}
    keyed = [(f"{u.user_id}#{j}", u, pair.prompt) for u in with_examples for j, pair in enumerate(u.examples)]
    done = p.summarize_many(
        [u for _, u, _ in keyed], prompts=[q for _, _, q in keyed], batch_size=batch_size,
        keep_empty=True,
    )
    return {key: s.text for (key, _, _), s in zip(keyed, done)}


def descriptions(user: UserRow) -> list[str]:
    """How a training user can be described in words, for the ``description`` conditioning form:
    their self-description (a persona signal, the user's own voice) and the data's ground-truth
    persona. Training users only: a test user's persona is never read."""
    return [t.strip() for t in dict.fromkeys([user.signals.persona or "", user.persona or ""]) if t.strip()]


def conditioning_texts(
    users: Sequence[UserRow], summaries: dict[str, str], cfg: TrainConfig, *,
    prompt_dependent: bool = False,
) -> list[tuple[PreferencePair, str | None, str]]:
    """``(example, system text or None, form)`` per training draw (``profile`` is a description
    then one preferred response, the shape the ``describe`` template asks a summarizer for;
    ``raw`` is every raw signal, rendered as Raw-Prompting shows them, which trains the paper's
    Raw-Aligned baseline):
    ``stage2.conditioning_copies``
    draws per example, each form drawn with ``stage2.conditioning``'s weights (seeded by
    ``cfg.seed``). A form a user cannot have (no summary, no description, no pairs to quote) is
    redrawn among the forms that user has; ``none`` is always possible."""
    import random

    mix = {form: w for form, w in cfg.stage2.conditioning.items() if w > 0}
    rng = random.Random(f"popi-stage2-conditioning/{cfg.seed}")
    out: list[tuple[PreferencePair, str | None, str]] = []
    for user in users:
        described = descriptions(user)
        exemplar = exemplar_summary(user.signals)
        for j, pair in enumerate(user.examples):
            key = f"{user.user_id}#{j}" if prompt_dependent else user.user_id
            options: dict[str, list[str | None]] = {
                "summary": [summaries[key]] if key in summaries else [],
                "description": described,
                "exemplar": [exemplar] if exemplar else [],
                "profile": [profile_summary(d, user.signals) for d in described] if user.signals.pairs else [],
                "raw": [render_signals(user.signals)],
                "none": [None],
            }
            usable = {f: w for f, w in mix.items() if options[f]}
            if not usable:
                continue  # e.g. summaries only, and none for this user
            forms, weights = zip(*usable.items())
            for _ in range(cfg.stage2.conditioning_copies):
                form = rng.choices(forms, weights)[0]
                out.append((pair, rng.choice(options[form]), form))
    return out


def build_rows(
    users: Sequence[UserRow], summaries: dict[str, str], scorer: Any, reference: Any,
    cfg: TrainConfig, *, prompt_dependent: bool | None = None,
) -> list[dict[str, Any]]:
    """Tokenized DPO rows with the x-only reference log-probs of the initial generator, one per
    draw of :func:`conditioning_texts`. ``prompt_dependent`` (default ``cfg.summary``'s) says how
    ``summaries`` are keyed."""
    if prompt_dependent is None:
        prompt_dependent = cfg.summary.prompt_dependent
    drawn = conditioning_texts(users, summaries, cfg, prompt_dependent=prompt_dependent)
    pairs = [pair for pair, _, _ in drawn]
    texts = [text for _, text, _ in drawn]
    forms = [form for _, _, form in drawn]
    if not pairs:
        raise InputError("no training examples: rows of train.jsonl need non-empty 'examples'")
    ref_chosen, ref_rejected = reference.pairs(pairs)
    rows = []
    limit = cfg.stage2.max_length
    for pair, summary, form, rc, rr in zip(pairs, texts, forms, ref_chosen.tolist(), ref_rejected.tolist()):
        if summary is None:
            context = prompt_only_messages(pair.prompt)
        elif form == "raw":  # Raw-Aligned: the raw signals as eval's raw methods show them
            context = raw_signals_messages(pair.prompt, summary)
        else:
            context = summary_messages(pair.prompt, summary)
        prompt_ids, chosen_ids = scorer.encode_pair(context, pair.chosen)
        _, rejected_ids = scorer.encode_pair(context, pair.rejected)
        if limit is not None and len(prompt_ids) >= limit:
            continue  # as TRL does: the prompt alone would fill max_length
        rows.append({
            "prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
            "ref_chosen_logps": rc, "ref_rejected_logps": rr,
        })
    if not rows:
        raise ConfigError(f"every prompt is longer than stage2.max_length={limit}; raise it")
    return rows


def dpo_args(cfg: TrainConfig) -> Any:
    from trl import DPOConfig

    opts = cfg.stage2
    sft = opts.sft_weight
    return DPOConfig(
        **common.trainer_args(cfg, "stage2", opts),
        per_device_train_batch_size=common.per_device_batch(
            opts.batch_size, opts.gradient_accumulation_steps, "stage2.batch_size"
        ),
        beta=cfg.beta,
        # TRL's "ipo" divides each log-ratio by the completion length (see docs/training.md).
        loss_type=["sigmoid" if cfg.loss_type == "dpo" else "ipo", *(["sft"] if sft else [])],
        loss_weights=[1.0, sft] if sft else None,
        max_length=opts.max_length,
        precompute_ref_log_probs=True,
    )


def main(cfg: TrainConfig) -> str:
    """Train the generator on stage-1 summaries; returns the checkpoint folder ``RUN/stage2``."""
    common.require_train_stack()
    run = common.prepare_run(cfg)
    if common.stage_done(cfg, "stage2"):
        log.info("stage 2 already finished in %s; skipping", run / "stage2")
        return str(run / "stage2")

    from accelerate import PartialState
    from datasets import Dataset

    from popi_sdk.data import read_users
    from popi_sdk.scoring import ReferenceCache, SequenceScorer

    users = read_users(cfg.train_file())
    args = dpo_args(cfg)
    if cfg.stage2.conditioning.get("summary", 0) > 0:
        spec = summary_spec(cfg, summarizer_path(cfg))
        with PartialState().main_process_first():  # the main process writes the summaries once
            summaries = summaries_for(users, cfg, spec)
        prompt_dependent = spec.prompt_dependent
    else:  # no summary form: no summarizer needed (descriptions, exemplars, none only)
        spec, summaries, prompt_dependent = None, {}, cfg.summary.prompt_dependent
    from popi_sdk.backends import clear_backend_cache

    clear_backend_cache()  # the stage-1 model is not needed while the generator trains
    gen_path = resolve_model(cfg.generator_model)
    tokenizer = common.load_tokenizer(gen_path)
    # The initial generator scores log πref(y|x) once per example, then is freed: training keeps
    # no reference model (and never shares a model object with the policy).
    reference_model = common.load_frozen(gen_path, bf16=args.bf16)
    scorer = SequenceScorer(reference_model, tokenizer, batch_size=cfg.stage2.score_batch_size,
                            bf16=args.bf16)
    rows = build_rows(users, summaries, scorer, ReferenceCache(scorer, gen_path), cfg,
                      prompt_dependent=prompt_dependent)
    del scorer, reference_model
    log.info("%d DPO pairs, x-only reference log-probs precomputed", len(rows))

    _, policy = common.load_policy(gen_path)
    trainer = popi_dpo_trainer_class()(
        model=policy,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=common.lora_config(cfg),
        callbacks=[common.metrics_callback(cfg, "stage2")],
    )
    common.show_progress(trainer, "stage2")
    trainer.train(resume_from_checkpoint=common.last_checkpoint(cfg, "stage2"))
    dest = common.save_final(trainer, tokenizer, cfg, "stage2", spec=spec)
    if trainer.accelerator.is_main_process:
        from popi_sdk.train.plot import plot_run

        plot_run(run)
    return str(dest)
