"""Stage 1 (GRPO summarizer): the reward is the objective, a tiny random Llama trains and changes,
the run folder is complete and loadable, a killed run resumes from its last checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from popi_sdk.errors import InputError
from popi_sdk.signals import PreferencePair, UserRow
from popi_sdk.templates import prompt_only_messages, summary_messages

pytest.importorskip("trl")


def _user(i: int, n_examples: int = 2) -> dict:
    good, bad = ("Lovely, five stars.", "Awful, one star.") if i % 2 == 0 else (
        "Awful, one star.", "Lovely, five stars.")
    return {
        "user_id": f"u{i}",
        "signals": {"pairs": [{"prompt": "Review a lamp.", "chosen": good, "rejected": bad}]},
        "examples": [
            {"prompt": f"Review item {j}.", "chosen": good, "rejected": bad} for j in range(n_examples)
        ],
        "persona": "positive" if i % 2 == 0 else "negative",
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
        "stage1.kl_weight": None,  # 0.002·β: TRL's reference model is reloaded from the folder
        "stage1.batch_size": 2, "stage1.num_generations": 2, "summary.max_tokens": 6,
        "stage1.gradient_accumulation_steps": 1,
        "stage1.learning_rate": 1e-2, "stage1.warmup_steps": 0, "stage1.lr_scheduler": "constant",
    }
    base.update(overrides)
    return load_config(preset="cpu-small", overrides=base, data=data_dir, out=out)


# -- rows --------------------------------------------------------------------------------------
def test_rows_one_per_user_with_capped_examples(tiny_dir, data_dir, tmp_path):
    from popi_sdk.train.stage1 import build_rows

    users = [UserRow.model_validate(_user(i, n_examples=3)) for i in range(3)]
    users.append(UserRow.model_validate({**_user(9), "examples": []}))  # nothing to score: skipped
    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run", **{"stage1.examples_per_summary": 2})
    rows, examples = build_rows(users, cfg)
    assert [r["example_key"] for r in rows] == ["u0", "u1", "u2"]
    assert all(len(v) == 2 for v in examples.values())
    assert "Upcoming question" not in rows[0]["prompt"][-1]["content"]


def test_prompt_dependent_rows_condition_each_summary_on_its_prompt(tiny_dir, data_dir, tmp_path):
    from popi_sdk.train.stage1 import build_rows

    users = [UserRow.model_validate(_user(0, n_examples=2))]
    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run", **{"summary.prompt_dependent": True})
    rows, examples = build_rows(users, cfg)
    assert [r["example_key"] for r in rows] == ["u0#0", "u0#1"]
    assert "Review item 1." in rows[1]["prompt"][-1]["content"]
    assert examples["u0#1"] == [users[0].examples[1]]


def test_users_without_examples_are_an_error(tiny_dir, data_dir, tmp_path):
    from popi_sdk.errors import InputError
    from popi_sdk.train.stage1 import build_rows

    users = [UserRow.model_validate({**_user(0), "examples": []})]
    with pytest.raises(InputError, match="'examples'"):
        build_rows(users, _cfg(tiny_dir, data_dir, tmp_path / "run"))


# -- the reward is the objective ----------------------------------------------------------------
@pytest.mark.parametrize("loss_type, beta", [("dpo", 0.1), ("ipo", 0.5)])
def test_reward_equals_the_objective_by_hand(tiny_dir, loss_type, beta):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train.stage1 import SummaryReward

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    scorer = SequenceScorer(model, tok)
    pairs = [PreferencePair(prompt="Review a kettle.", chosen="Great kettle.", rejected="Bad kettle."),
             PreferencePair(prompt="Review a mug.", chosen="Fine mug!", rejected="Cracked mug.")]
    reward = SummaryReward(scorer, ReferenceCache(scorer, "tiny"), {"u": pairs},
                           beta=beta, loss_type=loss_type)
    assert reward.precompute_reference() == 2
    completions = [[{"role": "assistant", "content": "Summary: The user likes praise."}],
                   [{"role": "assistant", "content": "The user is terse."}]]
    got = reward(prompts=[None, None], completions=completions, example_key=["u", "u"],
                 trainer_state=None, log_metric=print)

    def lp(context, response):
        return float(scorer.logprobs([context], [response])[0])

    for summary, value in zip(["The user likes praise.", "The user is terse."], got):
        losses = []
        for p in pairs:
            delta = (lp(summary_messages(p.prompt, summary), p.chosen) - lp(prompt_only_messages(p.prompt), p.chosen)) - (
                lp(summary_messages(p.prompt, summary), p.rejected) - lp(prompt_only_messages(p.prompt), p.rejected))
            if loss_type == "dpo":
                losses.append(math.log1p(math.exp(-beta * delta)))  # −log σ(βΔ)
            else:
                losses.append((delta - 1 / (2 * beta)) ** 2)
        assert value == pytest.approx(-sum(losses) / len(losses), rel=1e-4, abs=1e-4)
    assert got[0] != pytest.approx(got[1])  # the summary matters


def test_lora_reward_scores_with_the_adapter_off(tiny_dir):
    """With LoRA, the summarizer's base model is also the frozen generator: a trained adapter
    must not leak into the reward."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train.stage1 import SummaryReward

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    pairs = {"u": [PreferencePair(prompt="Review a mug.", chosen="Fine mug!", rejected="Cracked mug.")]}
    completions = [[{"role": "assistant", "content": "The user is terse."}]]

    def reward_of(model, adapter=None):
        scorer = SequenceScorer(model, tok)
        reward = SummaryReward(scorer, ReferenceCache(scorer, "tiny"), pairs, beta=0.1, loss_type="dpo")
        if adapter is not None:
            reward.share_base_with(adapter)
        return reward(prompts=[None], completions=completions, example_key=["u"])[0]

    plain = reward_of(AutoModelForCausalLM.from_pretrained(tiny_dir).eval())
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)  # a clearly non-zero adapter
    assert reward_of(base) != pytest.approx(plain, abs=1e-4)  # the adapter is live in the model...
    assert reward_of(base, adapter=lora) == pytest.approx(plain, abs=1e-5)  # ...but off for scoring


def test_reward_is_a_plain_callable_not_a_module():
    import torch

    from popi_sdk.train.stage1 import SummaryReward

    assert not issubclass(SummaryReward, torch.nn.Module)


# -- training ----------------------------------------------------------------------------------
def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_grpo_steps_change_weights_and_leave_a_complete_run(tiny_dir, data_dir, tmp_path, capsys):
    from popi_sdk import Personalizer
    from popi_sdk.train import stage1

    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data_dir, run)
    out = stage1.main(cfg)
    shown = capsys.readouterr()
    # one progress line per stage: steps with an ETA and the step's reward, not tqdm's dicts
    assert "Training stage1" in shown.err and "2/2 steps" in shown.err and "ETA" in shown.err
    assert "reward " in shown.err and "{'loss'" not in shown.out + shown.err
    before, after = _weights(tiny_dir), _weights(run / "stage1")
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert changed, "no weight changed"
    assert (run / "config.yaml").exists() and (run / "rewards.png").stat().st_size > 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["reward"]) and r["reward_std"] >= 0 for r in steps)
    assert all(r["stage"] == "stage1" for r in logged)
    # The checkpoint is a plain HF folder the SDK loads directly.
    p = Personalizer(summarizer=out, store=":memory:", summary_tokens=4)
    assert isinstance(p.summarize(UserRow.model_validate(_user(0))).text, str)


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tiny_dir, data_dir, tmp_path, monkeypatch):
    from popi_sdk.train import common, stage1

    real = common.metrics_callback

    def dying_after_step_2(cfg, stage):
        callback = real(cfg, stage)

        class KilledAfterCheckpoint(type(callback)):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == 2:
                    raise _Killed()  # the process dies right after writing checkpoint-2

        return KilledAfterCheckpoint()

    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data_dir, run, **{"stage1.max_steps": 3})
    monkeypatch.setattr(common, "metrics_callback", dying_after_step_2)
    with pytest.raises(_Killed):
        stage1.main(cfg)
    monkeypatch.setattr(common, "metrics_callback", real)
    assert not (run / "stage1").exists()
    assert (run / "checkpoints" / "stage1" / "checkpoint-2").is_dir()
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first if "reward" in r] == [1, 2]

    stage1.main(cfg)
    state = json.loads((run / "checkpoints" / "stage1" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # Steps 1-2 were not re-run: their log lines are the first run's, byte for byte.
    assert steps[:2] == [r for r in first if "reward" in r]
    assert json.loads((run / "stage1" / "popi_stage.json").read_text())["steps"] == 3
    # A finished stage is skipped (no new log lines).
    stage1.main(cfg)
    assert (run / "metrics.jsonl").read_text().count("\n") == len(logged)


@pytest.mark.slow
def test_lora_shares_one_base_model_and_saves_a_merged_checkpoint(tiny_dir, data_dir, tmp_path):
    pytest.importorskip("peft")
    from popi_sdk.train import stage1

    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data_dir, run, **{"lora.enabled": True, "lora.r": 4, "stage1.learning_rate": 5e-2},
               )
    stage1.main(cfg)
    after = _weights(run / "stage1")
    assert not any("lora" in k for k in after), "the adapter must be merged into a plain checkpoint"
    before = _weights(tiny_dir)
    assert any(not (before[k] == after[k]).all() for k in before)
    assert json.loads((run / "stage1" / "popi_stage.json").read_text())["lora_merged"] is True


# -- validation users, best-of-N warm start -----------------------------------------------------
def test_validation_split_is_seeded_disjoint_and_checked():
    from popi_sdk.errors import ConfigError
    from popi_sdk.train.validation import split_validation

    users = [UserRow.model_validate(_user(i)) for i in range(10)]
    users.append(UserRow.model_validate({**_user(10), "examples": []}))
    train, val = split_validation(users, 3, seed=0)
    assert len(val) == 3 and len(train) == 8
    assert {u.user_id for u in train}.isdisjoint(u.user_id for u in val)
    assert all(u.examples for u in val)  # a validation user must have something to score
    assert [u.user_id for u in split_validation(users, 3, seed=0)[1]] == [u.user_id for u in val]
    assert split_validation(users, 0, seed=0) == (users, [])
    with pytest.raises(ConfigError, match="stage1.validation_users = 10.*only 10 users with examples"):
        split_validation(users, 10, seed=0)


def test_warm_start_pass_lowers_the_loss_on_the_picked_summaries_only(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.train.warmstart import _encode, supervised_pass

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": "Summarize the user."}]
    prompt_ids, summary_ids, described = _encode(tok, messages, "The user likes short answers.")
    assert described == len(summary_ids)  # no answer shown: every token describes
    full = tok(tok.apply_chat_template([*messages, {"role": "assistant", "content": "The user likes short answers."}],
                                       tokenize=False), add_special_tokens=False)["input_ids"]
    assert prompt_ids + summary_ids == full[: len(prompt_ids) + len(summary_ids)]
    assert tok.decode(summary_ids).startswith("The user likes short answers.")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = supervised_pass(model, tok, [(messages, "The user likes short answers.")] * 4,
                             learning_rate=1e-2, batch_size=2, epochs=3, seed=0)
    assert len(losses) == 6 and losses[-1] < losses[0] - 1.0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_warm_start_loss_can_weigh_the_description_above_the_answer_it_shows(tiny_dir):
    """In "The user is a child. They like answers such as: ..." the words before the lead say who
    the user is; ``description_weight`` weighs them against the copied answer, and at 1 the loss
    is the model's own mean token loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.templates import SHOW_LEAD
    from popi_sdk.train.warmstart import _encode, supervised_pass, weighted_token_loss

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": "Summarize the user."}]
    summary = f"The user is a child. {SHOW_LEAD} Think of a drum. Sound is air that shakes!"
    prompt_ids, summary_ids, described = _encode(tok, messages, summary)
    assert 0 < described < len(summary_ids)
    assert tok.decode(summary_ids[:described]).strip() == "The user is a child."

    ids = torch.tensor([prompt_ids + summary_ids])
    labels = torch.full_like(ids, -100)
    labels[0, len(prompt_ids):] = ids[0, len(prompt_ids):]
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        ones = weighted_token_loss(out.logits, labels, torch.ones(ids.shape))
        assert float(ones) == pytest.approx(float(out.loss), rel=1e-5)
        weights = torch.ones(ids.shape)
        weights[0, len(prompt_ids) + described:] = 0.0  # the description alone
        only = weighted_token_loss(out.logits, labels, weights)
        head = labels.clone()
        head[0, len(prompt_ids) + described:] = -100
        assert float(only) == pytest.approx(float(model(input_ids=ids, labels=head).loss), rel=1e-5)

    losses = supervised_pass(model, tok, [(messages, summary)] * 4, learning_rate=1e-2,
                             batch_size=2, epochs=2, seed=0, description_weight=4.0)
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_validation_curve_and_warm_start_in_a_run(tiny_dir, tmp_path):
    from popi_sdk.train import stage1

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(6)))
    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data, run, **{
        "stage1.validation_users": 2, "stage1.eval_every": 1, "stage1.warm_start_samples": 2,
        "stage1.warm_start_learning_rate": 1e-2, "stage1.kl_weight": 0,
    })
    stage1.main(cfg)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in logged if r.get("kind") == "validation"]
    assert [(r["step"], r["phase"]) for r in val] == [(0, "initial"), (0, "warm_start"), (1, "grpo"), (2, "grpo")]
    for r in val:
        assert r["val_users"] == 2 and r["val_examples"] == 4
        assert math.isfinite(r["val_reward"]) and 0.0 <= r["val_accuracy"] <= 1.0
    (warm,) = [r for r in logged if r.get("kind") == "warm_start"]
    assert warm["warm_start_users"] == 4 and warm["warm_start_best_reward"] >= warm["warm_start_mean_reward"]
    picked = [json.loads(line) for line in (run / "warm_start.jsonl").read_text().splitlines()]
    held_out = {json.loads(line)["user_id"] for line in (run / "validation" / "step-00002.jsonl").read_text().splitlines()}
    assert len(picked) == 4 and held_out.isdisjoint(p["example_key"] for p in picked)
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step-00000.jsonl", "step-00001.jsonl", "step-00002.jsonl", "warm-start.jsonl"]
    assert (run / "rewards.png").stat().st_size > 0
    assert not (run / "warm-start").exists()  # without LoRA there is no adapter to save


def test_zero_grpo_steps_ship_the_warm_start_alone(tiny_dir, tmp_path):
    """``stage1.max_steps = 0``: the warm start is the summarizer; RUN/stage1 is written from it
    and no GRPO step runs."""
    from popi_sdk.train import stage1

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(4)))
    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data, run, **{
        "stage1.warm_start_samples": 2, "stage1.warm_start_learning_rate": 1e-2,
        "stage1.kl_weight": 0, "stage1.max_steps": 0, "lora.enabled": True,
    })
    dest = Path(stage1.main(cfg))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("kind") for r in logged] == ["warm_start"]
    assert json.loads((dest / "popi_stage.json").read_text())["steps"] == 0
    assert (dest / "popi_summary.json").exists()
    from safetensors.torch import load_file

    warm = load_file(run / "warm-start" / "adapter_model.safetensors")
    shipped = load_file(dest / "adapter" / "adapter_model.safetensors")
    assert warm.keys() == shipped.keys() and all((warm[k] == shipped[k]).all() for k in warm)
    assert any(k for k in warm if "lora_B" in k and warm[k].abs().sum() > 0)  # the pass trained it


def test_picks_are_kept_when_the_warm_start_pass_is_stopped(tiny_dir, data_dir, tmp_path, monkeypatch):
    """The sampled picks are written before the supervised pass, so a pass that is stopped (or
    fails) leaves them for ``stage1.warm_start_from`` instead of losing the sampling time."""
    from popi_sdk.train import stage1, warmstart

    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data_dir, run, **{
        "stage1.warm_start_samples": 2, "stage1.kl_weight": 0, "stage1.max_steps": 0,
    })

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(warmstart, "supervised_pass", stopped)
    with pytest.raises(KeyboardInterrupt):
        stage1.main(cfg)
    picked = [json.loads(line) for line in (run / "warm_start.jsonl").read_text().splitlines()]
    assert sorted(p["example_key"] for p in picked) == sorted(_user(i)["user_id"] for i in range(4))
    assert all(set(p) == set(warmstart.PICK_FIELDS) and p["summary"] for p in picked)


def test_extractive_candidates_quote_preferred_responses_within_the_budget(tiny_dir):
    from transformers import AutoTokenizer

    from popi_sdk.signals import Signals
    from popi_sdk.summary_spec import SummarySpec
    from popi_sdk.train.warmstart import QUOTE_LEAD, extractive_candidates

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    signals = Signals.model_validate({"pairs": [
        {"prompt": "q1", "chosen": "Short and sweet. Wow!", "rejected": "A long dry answer."},
        {"prompt": "q2", "chosen": "Short and sweet. Wow!", "rejected": "Another dry answer."},
        {"prompt": "q3", "chosen": " ".join(["Word."] * 80), "rejected": "No."},
    ]})
    spec = SummarySpec(max_words=20, max_tokens=30)
    out = extractive_candidates(signals, spec, tok)
    assert out[0] == f"{QUOTE_LEAD} Short and sweet. Wow!"
    assert len(out) == 2  # the repeated preferred response is offered once
    assert out[1].startswith(QUOTE_LEAD) and len(out[1].split()) <= 20
    assert len(tok(out[1], add_special_tokens=False)["input_ids"]) < 30
    assert out[1].endswith(".")  # cut at a sentence end, not mid-word


def test_extractive_warm_start_lets_the_reward_pick_between_kinds(tiny_dir, tmp_path):
    from popi_sdk.train import stage1

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(4)))
    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data, run, **{
        "stage1.warm_start_samples": 1, "stage1.warm_start_extractive": True,
        "stage1.warm_start_learning_rate": 1e-2, "stage1.kl_weight": 0, "summary.max_tokens": 24,
    })
    stage1.main(cfg)
    picked = [json.loads(line) for line in (run / "warm_start.jsonl").read_text().splitlines()]
    assert len(picked) == 4 and {p["source"] for p in picked} <= {"sampled", "extractive"}
    lead = [p for p in picked if p["summary"].startswith("The user prefers answers like this one:")]
    assert all(p["source"] == "extractive" for p in lead)
    (warm,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
               if json.loads(line).get("kind") == "warm_start"]
    assert warm["warm_start_extractive_won"] == sum(p["source"] == "extractive" for p in picked)
    # Each pick is the best of its candidates: at least as good as the one sampled summary.
    assert all(p["reward"] >= p["group_mean"] for p in picked)


def test_persona_candidates_describe_then_show_within_the_budget(tiny_dir):
    from transformers import AutoTokenizer

    from popi_sdk.signals import Signals
    from popi_sdk.summary_spec import SummarySpec
    from popi_sdk.templates import SHOW_LEAD
    from popi_sdk.train.warmstart import persona_candidates

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    signals = Signals.model_validate({"pairs": [
        {"prompt": "q1", "chosen": "Short and sweet. Wow!", "rejected": "A long dry answer."}]})
    spec = SummarySpec(max_words=20, max_tokens=40)
    out = persona_candidates("The user is a child.", signals, spec, tok)
    assert out == ["The user is a child.", f"The user is a child. {SHOW_LEAD} Short and sweet. Wow!"]
    # without pairs there is nothing to show: the description alone
    assert persona_candidates("The user is a child.", Signals(persona="I am 8."), spec, tok) == [
        "The user is a child."]
    # as an instruction to the writer, or both forms for the reward to pick from
    instruction = "Generate a response that can be easily understood by a child."
    assert persona_candidates("The user is a child.", Signals(persona="I am 8."), spec, tok,
                              "instruction") == [instruction]
    assert persona_candidates("The user is a child.", signals, spec, tok, "both") == [
        "The user is a child.", f"The user is a child. {SHOW_LEAD} Short and sweet. Wow!",
        instruction, f"{instruction} {SHOW_LEAD} Short and sweet. Wow!"]
    # a free-text persona has no other wording: kept as written, offered once
    assert persona_candidates("I like it short.", Signals(persona="x"), spec, tok, "both") == [
        "I like it short."]


def test_peer_answers_show_a_same_persona_users_answer_to_users_without_pairs(tiny_dir):
    from transformers import AutoTokenizer

    from popi_sdk.signals import Signals
    from popi_sdk.summary_spec import SummarySpec
    from popi_sdk.templates import SHOW_LEAD
    from popi_sdk.train.warmstart import peer_answers, persona_candidates

    def user(uid, persona, chosen, pairs=False):
        row = {"user_id": uid, "persona": persona,
               "signals": {"persona": "I am 8."} | ({"pairs": [
                   {"prompt": "q", "chosen": f"{chosen} (pair)", "rejected": "No."}]} if pairs else {}),
               "examples": [{"prompt": "p", "chosen": chosen, "rejected": "No."}]}
        return UserRow.model_validate(row)

    users = {u.user_id: u for u in [
        user("a", "The user is a child.", "Wow, fun!"), user("b", "The user is a child.", "Yay, neat!"),
        user("c", "The user is an expert.", "Formally, X."), user("d", "The user is a child.", "Ok!", pairs=True),
    ]}
    users["a#1"] = users["a"]  # a prompt-dependent row of user a
    shown = peer_answers(users, seed=0)
    # users with pairs show their own; a persona no one else has shows nothing
    assert set(shown) == {"a", "a#1", "b"}
    (a,), (b,) = shown["a"], shown["b"]
    assert a in {"Yay, neat!", "Ok!", "Ok! (pair)"} and b in {"Wow, fun!", "Ok!", "Ok! (pair)"}
    assert shown == peer_answers(users, seed=0)  # seeded
    # stage1.warm_start_peer_answers: several, without replacement, never the user's own;
    # all there are where fewer exist
    three = peer_answers(users, seed=0, n=3)
    assert sorted(three["a"]) == ["Ok!", "Ok! (pair)", "Yay, neat!"]
    assert sorted(three["b"]) == ["Ok!", "Ok! (pair)", "Wow, fun!"]
    assert peer_answers(users, seed=0, n=5) == peer_answers(users, seed=0, n=3)
    assert [len(v) for v in peer_answers(users, seed=1, n=2).values()] == [2, 2, 2]

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    spec = SummarySpec(max_words=30, max_tokens=60)
    instruction = "Generate a response that can be easily understood by a child."
    assert persona_candidates("The user is a child.", Signals(persona="I am 8."), spec, tok,
                              "instruction", shown=["Yay, neat!"]) == [
        instruction, f"{instruction} {SHOW_LEAD} Yay, neat!"]


def _persona_only_user(i: int) -> dict:
    """``_user(i)`` without pairs: the persona is all the summarizer reads."""
    row = _user(i)
    row["signals"] = {"persona": "I write reviews." if i % 2 == 0 else "I rarely like things."}
    row["examples"] = [{**e, "prompt": f"Review item {j} of user {i}."} for j, e in enumerate(row["examples"])]
    return row


def test_peer_prompts_are_another_users_prompts_for_users_without_pairs():
    from popi_sdk.train.warmstart import peer_prompts

    users = {u.user_id: u for u in map(UserRow.model_validate, [
        _persona_only_user(0), _persona_only_user(1), _persona_only_user(2), _user(3)])}
    users["u0#1"] = users["u0"]  # a prompt-dependent row of user u0
    prompts = peer_prompts(users, seed=0)
    assert set(prompts) == {"u0", "u0#1", "u1", "u2"}  # u3 has pairs: it shows its own answer
    for key, prompt in prompts.items():
        assert prompt not in {e.prompt for e in users[key].examples}  # never one the reward scores on
        assert any(prompt in {e.prompt for e in u.examples} for u in users.values())
    assert prompts == peer_prompts(users, seed=0)  # seeded


def test_written_answers_are_the_generators_answers_under_the_persona_instruction(tiny_dir, tmp_path):
    """``stage1.warm_start_persona_show=written``: the generator answers a peer's prompt with the
    user's persona, as an instruction, for its summary; greedy, exactly what ``generate`` writes
    from the same messages; the candidates show each answer after the persona."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.data.synth import persona_instruction
    from popi_sdk.templates import SHOW_LEAD, summary_messages
    from popi_sdk.train import stage1
    from popi_sdk.train.warmstart import written_answers

    data = tmp_path / "data"
    data.mkdir()
    rows = [_persona_only_user(i) | {"persona": "This user prefers positive reviews."} for i in range(4)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tiny_dir, data, tmp_path / "run", **{
        "stage1.warm_start_samples": 1, "stage1.warm_start_persona": True,
        "stage1.warm_start_persona_form": "instruction", "stage1.warm_start_persona_show": "written",
        "summary.max_tokens": 8})
    parts = stage1.build_trainer(cfg)
    assert parts.peers is None and set(parts.prompts) == {"u0", "u1", "u2", "u3"}
    answers = written_answers(parts.reward, parts.personas, parts.prompts, n=2, max_tokens=8,
                              temperature=0.0, top_p=1.0)
    assert set(answers) == set(parts.prompts) and all(len(a) == 2 for a in answers.values())
    instruction = persona_instruction("This user prefers positive reviews.")
    assert instruction == "Generate a positive review."
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    text = tok.apply_chat_template(summary_messages(parts.prompts["u1"], instruction),
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert answers["u1"] == [expected, expected]

    stage1.main(cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"max_steps": 0})}))
    picked = [json.loads(line) for line in (tmp_path / "run" / "warm_start.jsonl").read_text().splitlines()]
    assert len(picked) == 4 and {p["source"] for p in picked} <= {"sampled", "persona"}
    shown = [p["summary"] for p in picked if SHOW_LEAD in p["summary"]]
    assert all(s.startswith(f"{instruction} {SHOW_LEAD}") for s in shown)


def test_written_answer_count_needs_written(tiny_dir, data_dir, tmp_path):
    with pytest.raises(ValueError, match="warm_start_persona_show=written"):
        _cfg(tiny_dir, data_dir, tmp_path / "run", **{
            "stage1.warm_start_samples": 1, "stage1.warm_start_persona": True,
            "stage1.warm_start_written_answers": 3})


def test_peer_answer_count_needs_peers_and_kept_picks_need_scoring(tiny_dir, data_dir, tmp_path):
    persona = {"stage1.warm_start_samples": 1, "stage1.warm_start_persona": True}
    with pytest.raises(ValueError, match="warm_start_persona_show=peers"):
        _cfg(tiny_dir, data_dir, tmp_path / "run", **persona, **{"stage1.warm_start_peer_answers": 3})
    with pytest.raises(ValueError, match="warm_start_keep chooses among scored candidates"):
        _cfg(tiny_dir, data_dir, tmp_path / "run", **{
            "stage1.warm_start_samples": 0, "stage1.warm_start_from": "picks.jsonl",
            "stage1.warm_start_keep": 2})


def test_the_warm_start_can_keep_several_picks_per_user(tiny_dir, tmp_path):
    """``stage1.warm_start_keep``: the best few distinct candidates of each user, best first, all
    trained on; a later run reads them back with ``stage1.warm_start_from``."""
    pytest.importorskip("peft")
    from popi_sdk.train import stage1

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(4)))
    common = {"stage1.warm_start_learning_rate": 1e-2, "stage1.kl_weight": 0, "stage1.max_steps": 0,
              "lora.enabled": True, "lora.r": 4, "summary.max_tokens": 24}
    run = tmp_path / "run"
    stage1.main(_cfg(tiny_dir, data, run, **common, **{
        "stage1.warm_start_samples": 2, "stage1.warm_start_extractive": True,
        "stage1.warm_start_keep": 2}))
    picked = [json.loads(line) for line in (run / "warm_start.jsonl").read_text().splitlines()]
    by_user: dict = {}
    for p in picked:
        by_user.setdefault(p["example_key"], []).append(p)
    assert len(by_user) == 4 and all(len(ps) == 2 for ps in by_user.values())
    for ps in by_user.values():
        assert ps[0]["summary"] != ps[1]["summary"] and ps[0]["reward"] >= ps[1]["reward"]
        assert ps[0]["group_mean"] == ps[1]["group_mean"]
    (warm,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
               if json.loads(line).get("kind") == "warm_start"]
    assert warm["warm_start_users"] == 4 and warm["warm_start_picks"] == 8
    # one optimizer step per batch of four picks: all eight are trained on
    assert len(warm["warm_start_losses"]) == 2

    again = tmp_path / "again"
    stage1.main(_cfg(tiny_dir, data, again, **common, **{
        "stage1.warm_start_from": str(run / "warm_start.jsonl")}))
    assert (again / "warm_start.jsonl").read_text() == (run / "warm_start.jsonl").read_text()


def test_peer_answers_need_the_persona_candidates(tiny_dir, data_dir, tmp_path):
    with pytest.raises(ValueError, match="warm_start_persona=true"):
        _cfg(tiny_dir, data_dir, tmp_path / "run", **{
            "stage1.warm_start_samples": 2, "stage1.warm_start_persona_show": "peers"})


def test_persona_instruction_rewords_each_synthetic_persona():
    from popi_sdk.data.synth import persona_instruction

    assert persona_instruction("The user is a preteen.") == (
        "Generate a response that can be easily understood by a preteen.")
    assert persona_instruction("The user is an expert.") == (
        "Generate a response that only an expert in the field could understand.")
    assert persona_instruction("This user prefers negative reviews.") == "Generate a negative review."
    assert persona_instruction("This user prefers positive and verbose reviews.") == (
        "Generate a positive and verbose review.")
    assert persona_instruction("The user prefers formal language and brief answers.") == (
        "Generate a response with formal language and brief answers.")
    assert persona_instruction("Explain it like I'm a PhD student.") is None


def test_persona_form_without_persona_candidates_is_refused(tiny_dir, data_dir, tmp_path):
    with pytest.raises(ValueError, match="warm_start_persona=true"):
        _cfg(tiny_dir, data_dir, tmp_path / "run", **{
            "stage1.warm_start_samples": 2, "stage1.warm_start_persona_form": "both"})


def test_persona_warm_start_offers_training_users_personas_only(tiny_dir, tmp_path):
    from popi_sdk.train import stage1

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(5)))
    run = tmp_path / "run"
    cfg = _cfg(tiny_dir, data, run, **{
        "stage1.warm_start_samples": 1, "stage1.warm_start_persona": True,
        "stage1.validation_users": 1, "stage1.eval_every": 1,
        "stage1.warm_start_learning_rate": 1e-2, "stage1.kl_weight": 0, "summary.max_tokens": 24,
    })
    parts = stage1.build_trainer(cfg)
    validation = {u.user_id for u in parts.validator.users}
    assert parts.personas and not validation & set(parts.personas)
    stage1.main(cfg)
    picked = [json.loads(line) for line in (run / "warm_start.jsonl").read_text().splitlines()]
    assert len(picked) == 4 and {p["source"] for p in picked} <= {"sampled", "persona"}
    assert not validation & {p["example_key"] for p in picked}
    (warm,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
               if json.loads(line).get("kind") == "warm_start"]
    assert warm["warm_start_persona_won"] == sum(p["source"] == "persona" for p in picked)
    assert all(p["reward"] >= p["group_mean"] for p in picked)


def test_a_run_starts_from_another_runs_warm_start_adapter(tiny_dir, data_dir, tmp_path):
    """The warm start's adapter is saved (RUN/warm-start) and a second run's GRPO starts from it:
    its validation after loading equals the first run's after the warm start."""
    pytest.importorskip("peft")
    from popi_sdk.train import stage1

    lora = {"lora.enabled": True, "lora.r": 4, "stage1.kl_weight": 0, "stage1.max_steps": 1,
            "stage1.validation_users": 1, "stage1.eval_every": 1}
    first = tmp_path / "first"
    stage1.main(_cfg(tiny_dir, data_dir, first, **lora, **{
        "stage1.warm_start_samples": 2, "stage1.warm_start_learning_rate": 5e-2}))
    assert (first / "warm-start" / "adapter_config.json").is_file()
    assert (first / "stage1" / "adapter" / "adapter_config.json").is_file()
    second = tmp_path / "second"
    stage1.main(_cfg(tiny_dir, data_dir, second, **lora,
                     **{"stage1.init_adapter": str(first / "warm-start")}))

    def warm(run):
        (rec,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("phase") == "warm_start"]
        return rec["val_reward"]

    assert warm(second) == pytest.approx(warm(first), abs=1e-5)
    assert not (second / "warm_start.jsonl").exists()  # no second warm start
    with pytest.raises(InputError, match="holds no LoRA adapter"):
        stage1.main(_cfg(tiny_dir, data_dir, tmp_path / "third", **lora,
                         **{"stage1.init_adapter": str(tmp_path)}))


def test_a_run_trains_on_another_runs_picks(tiny_dir, tmp_path):
    """``stage1.warm_start_from``: the supervised pass on an earlier run's picks, nothing sampled
    (the same picks and seed train the same adapter); with ``init_adapter`` the pass continues
    from that run's adapter; picks of other users or a broken line are refused by name."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from popi_sdk.train import stage1

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(4)))
    common = {"stage1.warm_start_learning_rate": 1e-2, "stage1.kl_weight": 0,
              "stage1.max_steps": 0, "lora.enabled": True, "lora.r": 4}
    first = tmp_path / "first"
    stage1.main(_cfg(tiny_dir, data, first, **common, **{"stage1.warm_start_samples": 2}))
    picks = first / "warm_start.jsonl"
    second = tmp_path / "second"
    stage1.main(_cfg(tiny_dir, data, second, **common, **{"stage1.warm_start_from": str(picks)}))
    assert (second / "warm_start.jsonl").read_text() == picks.read_text()
    (record,) = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert record["warm_start_from"] == str(picks) and record["warm_start_users"] == 4

    def adapter(run):
        return load_file(run / "warm-start" / "adapter_model.safetensors")

    a, b = adapter(first), adapter(second)
    assert a.keys() == b.keys() and all(torch_close(a[k], b[k]) for k in a)
    third = tmp_path / "third"
    stage1.main(_cfg(tiny_dir, data, third, **common, **{
        "stage1.warm_start_from": str(picks), "stage1.init_adapter": str(first / "warm-start")}))
    c = adapter(third)
    assert any(not torch_close(a[k], c[k]) for k in a if "lora_B" in k)  # trained on from there

    other = tmp_path / "other.jsonl"
    lines = picks.read_text().splitlines()
    other.write_text("\n".join(lines[:-1] + [lines[-1].replace('"example_key": "', '"example_key": "x-')]))
    with pytest.raises(InputError, match=r"other training users: 1 of this run's 4 have none"):
        stage1.main(_cfg(tiny_dir, data, tmp_path / "fourth", **common,
                         **{"stage1.warm_start_from": str(other)}))
    other.write_text("\n".join(lines + lines[:1]))
    with pytest.raises(InputError, match=r"line 5: the same pick again for"):
        stage1.main(_cfg(tiny_dir, data, tmp_path / "fourth-b", **common,
                         **{"stage1.warm_start_from": str(other)}))
    other.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(InputError, match=r"other.jsonl, line 2: not a warm-start pick"):
        stage1.main(_cfg(tiny_dir, data, tmp_path / "fifth", **common,
                         **{"stage1.warm_start_from": str(other)}))
    with pytest.raises(InputError, match=r"is not a file"):
        stage1.main(_cfg(tiny_dir, data, tmp_path / "sixth", **common,
                         **{"stage1.warm_start_from": str(tmp_path / "missing.jsonl")}))


def torch_close(x, y) -> bool:
    import torch

    return bool(torch.allclose(x, y, atol=1e-6))


def test_extractive_warm_start_needs_the_warm_start():
    from popi_sdk.train.config import TrainConfig

    with pytest.raises(ValueError, match="warm_start_extractive.*warm_start_samples to at least 1"):
        TrainConfig.model_validate({"stage1": {"warm_start_extractive": True}})
    with pytest.raises(ValueError, match="warm_start_samples = 1 picks from one summary"):
        TrainConfig.model_validate({"stage1": {"warm_start_samples": 1}})
    TrainConfig.model_validate({"stage1": {"warm_start_samples": 1, "warm_start_extractive": True}})
    with pytest.raises(ValueError, match="init_adapter loads a LoRA adapter"):
        TrainConfig.model_validate({"lora": {"enabled": False}, "stage1": {"init_adapter": "x"}})
    with pytest.raises(ValueError, match="warm_start_from trains on an earlier run's picks"):
        TrainConfig.model_validate({"stage1": {"warm_start_from": "x", "warm_start_samples": 2}})
    TrainConfig.model_validate({"stage1": {"warm_start_from": "x", "max_steps": 0}})


def test_validation_scores_with_the_training_reward(tiny_dir):
    """One forest pass gives the validation reward and accuracy; the reward must equal the GRPO
    reward (summary_rewards) on the same summaries, and the accuracy must follow the margins."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train.stage1 import SummaryReward
    from popi_sdk.train.validation import Validator

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    scorer = SequenceScorer(model, tok)
    users = [UserRow.model_validate(_user(i)) for i in range(2)]
    reward = SummaryReward(scorer, ReferenceCache(scorer, "tiny"), {u.user_id: u.examples for u in users},
                           beta=0.1, loss_type="dpo")
    texts = ["The user likes praise.", "The user is harsh."]
    validator = Validator(users, [[] for _ in users], reward, lambda m, t, msgs: texts, Path("unused"))
    record = validator.run(model, tok, 3, write=False)
    want = reward.score([u.examples for u in users], texts)
    assert record["val_reward"] == pytest.approx(sum(want) / 2, abs=1e-5)
    assert record["step"] == 3 and record["val_examples"] == 4 and record["val_users"] == 2

    def margin(context, pair):
        lp = scorer.logprobs([context, context], [pair.chosen, pair.rejected])
        return float(lp[0] - lp[1])

    outcomes = []
    for user, text in zip(users, texts):
        for pair in user.examples:
            m, b = margin(summary_messages(pair.prompt, text), pair), margin(prompt_only_messages(pair.prompt), pair)
            outcomes.append(1.0 if m > b + 1e-6 else 0.0 if m < b - 1e-6 else 0.5)
    assert record["val_accuracy"] == pytest.approx(sum(outcomes) / len(outcomes))

# -- the shared-prompt trainer ------------------------------------------------------------------
def _grouped_batch(trainer, group: int):
    """Two users' prompts, each repeated ``group`` times as TRL's sampler repeats them, left-padded,
    followed by right-padded completions of different lengths (one of them empty)."""
    import torch

    prompts = [trainer.train_dataset[i]["prompt"] for i in (0, 1) for _ in range(group)]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    completions = [list(range(100 + i, 100 + i + n)) for i, n in enumerate([5, 3, 1, 5, 2, 4][: len(prompts)])]
    width, k = max(map(len, prompt_ids)), max(map(len, completions))
    pad = trainer._tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p + c + [pad] * (k - len(c))
                        for p, c in zip(prompt_ids, completions)])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (k - len(c))
                         for p, c in zip(prompt_ids, completions)])
    return prompt_ids, ids, mask, k


def test_shared_prompt_trainer_gives_the_stock_log_probs_gradients_and_samples(
        tiny_dir, data_dir, tmp_path):
    """PopiGRPOTrainer runs each prompt once per group; the per-token log-probs, entropies and
    their gradients equal TRL's stock computation over the full sequences, and greedy sampling
    from the shared prefill gives the stock completions."""
    import torch
    from trl import GRPOTrainer

    from popi_sdk.train.stage1 import build_trainer

    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run", **{
        "lora.enabled": True, "lora.r": 4, "stage1.kl_weight": 0, "stage1.num_generations": 3})
    trainer = build_trainer(cfg).trainer
    assert type(trainer).__name__ == "PopiGRPOTrainer"
    prompt_ids, ids, mask, k = _grouped_batch(trainer, group=3)

    calls = []
    inner = trainer.model.forward
    trainer.model.forward = lambda *a, **kw: calls.append(kw["input_ids"].shape) or inner(*a, **kw)
    results = []
    for method in (type(trainer)._get_per_token_logps_and_entropies,
                   GRPOTrainer._get_per_token_logps_and_entropies):
        trainer.model.zero_grad()
        logps, entropy, _ = method(trainer, trainer.model, ids, mask, k, compute_entropy=True)
        (logps * mask[:, -k:]).sum().backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), entropy.detach(), grads))
    trainer.model.forward = inner
    # shared: the two distinct prompts once, then the 6 continuations; stock: 6 full sequences
    assert calls[0] == (2, ids.size(1) - k - 1) and calls[1] == (6, k + 1) and calls[2] == ids.shape
    (fast, fast_ent, fast_grads), (stock, stock_ent, stock_grads) = results
    assert fast.shape == stock.shape == (6, k)
    torch.testing.assert_close(fast, stock, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_ent, stock_ent, atol=1e-4, rtol=1e-4)
    assert fast_grads.keys() == stock_grads.keys() and fast_grads
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, stock_grads[name], atol=1e-5, rtol=1e-3)

    trainer.generation_config.do_sample = False
    fast_ids, _ = trainer._generate_single_turn(prompt_ids, None, {}, 3)
    stock_ids, _ = GRPOTrainer._generate_single_turn(trainer, prompt_ids, None, {}, 3)
    assert fast_ids == stock_ids and all(fast_ids)


def test_shared_prompt_steps_keep_each_group_in_one_micro_batch(tiny_dir, data_dir, tmp_path):
    """With gradient accumulation, every micro-batch is one user's group (the stock trainer
    shuffles the rows across micro-batches), so its prompt runs once."""
    from popi_sdk.train.stage1 import build_trainer

    cfg = _cfg(tiny_dir, data_dir, tmp_path / "run", **{
        "stage1.kl_weight": 0, "stage1.num_generations": 2, "stage1.batch_size": 2,
        "stage1.gradient_accumulation_steps": 2, "stage1.max_steps": 1})
    trainer = build_trainer(cfg).trainer
    seen = []
    inner = trainer._compute_loss
    trainer._compute_loss = lambda model, inputs: seen.append(inputs["prompt_ids"]) or inner(model, inputs)
    trainer.train()
    assert len(seen) == 2
    for prompt_ids in seen:
        assert len(prompt_ids) == 2 and bool((prompt_ids[0] == prompt_ids[1]).all())
