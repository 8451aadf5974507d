"""Stage 2 (DPO generator): the reference in the loss is the x-only one we supply, a tiny random
Llama trains and changes, and the checkpoint loads in the SDK."""

from __future__ import annotations

import json
import math

import pytest

from popi_sdk.signals import UserRow
from popi_sdk.templates import prompt_only_messages, summary_messages

pytest.importorskip("trl")


def _user(i: int) -> dict:
    good, bad = ("Lovely, five stars.", "Awful, one star.") if i % 2 == 0 else (
        "Awful, one star.", "Lovely, five stars.")
    return {
        "user_id": f"u{i}",
        "signals": {"pairs": [{"prompt": "Review a lamp.", "chosen": good, "rejected": bad}]},
        "examples": [
            {"prompt": f"Review item {j}.", "chosen": good, "rejected": bad} for j in range(2)
        ],
    }


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(4)))
    return folder


def _cfg(tiny_dir, data_dir, out, **overrides):
    from popi_sdk.train.config import load_config

    base = {
        "model": str(tiny_dir), "precision": "fp32", "save_steps": 1,
        "stage1.max_steps": 2, "stage2.max_steps": 2, "lora.enabled": False,
        "beta": 0.5,
        # The base model writes the summaries (the Inference-Aligned setting): no stage 1 needed.
        "stage2.summarizer": str(tiny_dir), "summary.max_tokens": 6,
        "stage2.batch_size": 2, "stage2.gradient_accumulation_steps": 1,
        "stage2.learning_rate": 1e-3, "stage2.warmup_steps": 0,
        "stage2.lr_scheduler": "constant",
    }
    base.update(overrides)
    return load_config(preset="cpu-small", overrides=base, data=data_dir, out=out)


def _fixture_rows(tiny_dir, cfg):
    """Rows for four examples with hand-written summaries, and the scorer that made them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train.stage2 import build_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    scorer = SequenceScorer(model, tok)
    users = [UserRow.model_validate(_user(i)) for i in range(2)]
    summaries = {"u0": "The user likes praise.", "u1": "The user wants harsh reviews."}
    rows = build_rows(users, summaries, scorer, ReferenceCache(scorer, "tiny"), cfg)
    return users, summaries, scorer, rows


def test_rows_carry_x_only_reference_and_the_scorers_tokens(tiny_dir, data_dir, tmp_path):
    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run")
    users, summaries, scorer, rows = _fixture_rows(tiny_dir, cfg)
    assert len(rows) == 4
    pair, row = users[0].examples[0], rows[0]
    ref = scorer.logprobs([prompt_only_messages(pair.prompt)] * 2, [pair.chosen, pair.rejected])
    with_summary = scorer.logprobs([summary_messages(pair.prompt, summaries["u0"])], [pair.chosen])
    assert row["ref_chosen_logps"] == pytest.approx(float(ref[0]), abs=1e-4)
    assert row["ref_rejected_logps"] == pytest.approx(float(ref[1]), abs=1e-4)
    assert row["ref_chosen_logps"] != pytest.approx(float(with_summary[0]), abs=1e-3)
    prompt_ids, chosen_ids = scorer.encode_pair(summary_messages(pair.prompt, summaries["u0"]), pair.chosen)
    assert row["prompt_ids"] == prompt_ids and row["chosen_ids"] == chosen_ids


def test_dpo_loss_uses_the_supplied_x_only_reference(tiny_dir, data_dir, tmp_path):
    """At initialization the policy equals the reference model. A reference read on prompt +
    summary would make every log-ratio 0 and the loss exactly ln 2; the loss the trainer computes
    is instead the summary-augmented loss with the x-only reference, term for term."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.train.stage2 import dpo_args, popi_dpo_trainer_class
    from datasets import Dataset

    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run")
    users, summaries, scorer, rows = _fixture_rows(tiny_dir, cfg)
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir)
    trainer = popi_dpo_trainer_class()(
        model=policy, args=dpo_args(cfg), train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_dir),
    )
    assert trainer.ref_model is None  # no second model: the reference is the columns
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))

    expected = []
    for user in users:
        summary = summaries[user.user_id]
        for p in user.examples:
            pol = scorer.logprobs([summary_messages(p.prompt, summary)] * 2, [p.chosen, p.rejected])
            ref = scorer.logprobs([prompt_only_messages(p.prompt)] * 2, [p.chosen, p.rejected])
            delta = float((pol[0] - ref[0]) - (pol[1] - ref[1]))
            expected.append(math.log1p(math.exp(-cfg.beta * delta)))
    assert loss == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    assert abs(loss - math.log(2)) > 1e-3


def test_sft_weight_adds_the_chosen_responses_mean_token_nll(tiny_dir, data_dir, tmp_path):
    """stage2.sft_weight w: the loss is the DPO loss plus w times the mean negative
    log-likelihood per token of the chosen responses given prompt + summary."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.train.stage2 import dpo_args, popi_dpo_trainer_class

    losses = {}
    for w in (0.0, 0.5):
        cfg = _cfg(tiny_dir, data_dir, tmp_path / f"run{w}", **{"stage2.sft_weight": w})
        users, summaries, scorer, rows = _fixture_rows(tiny_dir, cfg)
        args = dpo_args(cfg)
        assert args.loss_type == (["sigmoid", "sft"] if w else ["sigmoid"])
        trainer = popi_dpo_trainer_class()(
            model=AutoModelForCausalLM.from_pretrained(tiny_dir), args=args,
            train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(tiny_dir),
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        trainer.model.eval()
        with torch.no_grad():
            losses[w] = float(trainer.compute_loss(trainer.model, batch))
    logps, tokens = 0.0, 0
    for user, row_pair in zip(users, (rows[:2], rows[2:])):
        for p, row in zip(user.examples, row_pair):
            logps += float(scorer.logprobs([summary_messages(p.prompt, summaries[user.user_id])],
                                           [p.chosen])[0])
            tokens += len(row["chosen_ids"])
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * -logps / tokens, rel=1e-4)


def test_stock_dpo_trainer_would_ignore_the_supplied_reference(tiny_dir, data_dir, tmp_path):
    """Why the extension exists: without precompute_ref_log_probs, stock DPOTrainer runs its own
    reference on prompt + summary and the loss at initialization is ln 2, whatever we supply."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from popi_sdk.train.stage2 import dpo_args

    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run")
    _, _, _, rows = _fixture_rows(tiny_dir, cfg)
    args = dpo_args(cfg)
    args.precompute_ref_log_probs = False
    text_rows = [{"prompt": [{"role": "user", "content": "Hi"}],
                  "chosen": [{"role": "assistant", "content": "Hello!"}],
                  "rejected": [{"role": "assistant", "content": "Go away."}],
                  "ref_chosen_logps": -123.0, "ref_rejected_logps": 0.0}]
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_dir), args=args,
        train_dataset=Dataset.from_list(text_rows), processing_class=AutoTokenizer.from_pretrained(tiny_dir),
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_dir),
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))
    assert loss == pytest.approx(math.log(2), abs=1e-5)


def test_dpo_steps_change_weights_and_the_checkpoint_loads(tiny_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    from popi_sdk import Personalizer
    from popi_sdk.train import stage2

    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data_dir, run, **{"summary.max_words": 17})
    out = stage2.main(cfg)
    before = load_file(str(tiny_dir / "model.safetensors"))
    after = load_file(str(run / "stage2" / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "rewards/margins" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["stage"] == "stage2" for r in steps)
    assert steps[0]["loss"] != steps[1]["loss"]  # the loss moved
    assert (run / "summaries.sqlite").exists() and (run / "rewards.png").exists()
    p = Personalizer(summarizer=str(tiny_dir), generator=out, store=":memory:")
    assert isinstance(p.generate("Review a lamp.", summary="Likes praise.", max_new_tokens=3).text, str)


def test_stage2_saves_the_spec_of_the_summaries_it_read_and_eval_writes_with_it(tiny_dir, data_dir, tmp_path, caplog):
    """Inference-Aligned: with no trained summarizer, ``popi eval`` writes the base summaries as
    the trained generator read them in training, not with the default spec."""
    import shutil

    from popi_sdk.eval.runner import summary_spec_for
    from popi_sdk.summary_spec import SummarySpec
    from popi_sdk.train import stage2

    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data_dir, run, **{"summary.max_words": 17, "stage2.max_steps": 1})
    out = stage2.main(cfg)
    assert cfg.summary != SummarySpec() and SummarySpec.from_checkpoint(out) == cfg.summary
    assert summary_spec_for(None, generator=out) == cfg.summary
    assert summary_spec_for(None, generator=out, summary_words=9).max_words == 9
    assert summary_spec_for(None) == SummarySpec()
    # A trained summarizer's own spec wins, and a mismatch with the generator's is said.
    other = shutil.copytree(tiny_dir, tmp_path / "summarizer")
    SummarySpec(max_words=23).save(other)
    with caplog.at_level("WARNING"):
        assert summary_spec_for(str(other), generator=out).max_words == 23
    assert "max_words" in caplog.text and "trained on summaries written otherwise" in caplog.text


def test_ipo_and_prompt_dependent_summaries(tiny_dir, data_dir, tmp_path):
    from popi_sdk.train import stage2

    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data_dir, run, loss_type="ipo", **{"summary.prompt_dependent": True},
               **{"stage2.max_steps": 1})
    summaries = stage2.summaries_for([UserRow.model_validate(_user(0))], cfg)
    assert sorted(summaries) == ["u0#0", "u0#1"]
    assert stage2.dpo_args(cfg).loss_type == ["ipo"]
    stage2.main(cfg)
    assert (run / "stage2" / "config.json").exists()


def test_stage2_without_a_stage1_checkpoint_says_what_to_run(tiny_dir, data_dir, tmp_path):
    from popi_sdk.errors import ConfigError
    from popi_sdk.train import stage2

    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run", **{"stage2.summarizer": None})
    with pytest.raises(ConfigError, match="popi train stage1"):
        stage2.main(cfg)


def test_conditioning_mix_draws_every_form_a_user_can_have(tiny_dir, data_dir, tmp_path):
    """Each draw's system text is the summary, a description of the training user (their own
    words or the data's persona), the copy rule, or nothing, with the configured weights."""
    from popi_sdk.templates import exemplar_summary
    from popi_sdk.train.stage2 import conditioning_texts

    mix = {"summary": 0.4, "description": 0.3, "exemplar": 0.2, "none": 0.1}
    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run", **{"stage2.conditioning": mix,
                                                        "stage2.conditioning_copies": 50})
    users = [UserRow.model_validate({**_user(i), "persona": f"persona {i}"}) for i in range(2)]
    users[1].signals.persona = "I like harsh words."
    summaries = {"u0": "The user likes praise.", "u1": "The user wants harsh reviews."}
    drawn = conditioning_texts(users, summaries, cfg)
    assert len(drawn) == 2 * 2 * 50
    forms = [form for _, _, form in drawn]
    assert {f: forms.count(f) for f in mix} == pytest.approx({f: w * 200 for f, w in mix.items()}, abs=25)
    for pair, text, form in drawn:
        user = users[0] if pair in users[0].examples else users[1]
        want = {"summary": {summaries[user.user_id]}, "exemplar": {exemplar_summary(user.signals)},
                "none": {None}, "description": {user.persona, user.signals.persona} - {None}}[form]
        assert text in want
    assert drawn == conditioning_texts(users, summaries, cfg)  # seeded
    # a user without a summary is drawn among the other forms; summaries alone skip them
    partial = conditioning_texts(users, {"u0": "x"}, cfg)
    assert {f for p, _, f in partial if p in users[1].examples} == {"description", "exemplar", "none"}
    profiles = conditioning_texts(users, summaries, _cfg(
        tiny_dir, data_dir, tmp_path / "run3", **{"stage2.conditioning": {"profile": 1}}))
    assert {t for _, t, _ in profiles} == {
        "persona 0 They like answers such as: Lovely, five stars.",
        "persona 1 They like answers such as: Awful, one star.",
        "I like harsh words. They like answers such as: Awful, one star."}
    only = _cfg(tiny_dir, data_dir, tmp_path / "run2", **{"stage2.conditioning": {"summary": 1}})
    assert len(conditioning_texts(users, {"u0": "x"}, only)) == 2


def test_raw_form_trains_raw_aligned_on_the_raw_signals_context(tiny_dir, data_dir, tmp_path):
    """``{raw: 1}``: every row's context is the raw signals exactly as eval's ``raw-aligned``
    method shows them (the paper's Raw-Aligned baseline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.templates import raw_signals_messages
    from popi_sdk.train.stage2 import build_rows

    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run", **{"stage2.conditioning": {"raw": 1}})
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    scorer = SequenceScorer(model, AutoTokenizer.from_pretrained(tiny_dir))
    users = [UserRow.model_validate(_user(i)) for i in range(2)]
    rows = build_rows(users, {}, scorer, ReferenceCache(scorer, "tiny"), cfg)
    assert len(rows) == 4
    pair = users[1].examples[0]
    prompt_ids, chosen_ids = scorer.encode_pair(raw_signals_messages(pair.prompt, users[1].signals), pair.chosen)
    assert rows[2]["prompt_ids"] == prompt_ids and rows[2]["chosen_ids"] == chosen_ids


def test_conditioning_without_summaries_needs_no_summarizer(tiny_dir, data_dir, tmp_path):
    """Descriptions, exemplars and no summary only: stage 2 runs with no stage-1 checkpoint."""
    from popi_sdk.errors import ConfigError
    from popi_sdk.train import stage2

    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data_dir, run, **{"stage2.summarizer": None, "stage2.max_steps": 1,
                                           "stage2.conditioning": {"exemplar": 1, "none": 1}})
    stage2.main(cfg)
    assert (run / "stage2" / "config.json").exists() and not (run / "summaries.sqlite").exists()
    assert not (run / "stage2" / "popi_summary.json").exists()  # it read no summaries
    with pytest.raises(ConfigError, match="stage2.conditioning"):
        _cfg(tiny_dir, data_dir, run, **{"stage2.conditioning": {"summary": 0}})
