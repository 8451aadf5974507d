"""Evaluation: metrics by hand, judges (the synthetic oracle, a pairwise LLM judge), methods,
reports, and ``popi eval`` end to end on the bundled model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from popi_sdk.backends import Backend, GenerateOptions
from popi_sdk.errors import InputError
from popi_sdk.eval import metrics as M
from popi_sdk.eval.judges import Comparison, LLMJudge, OracleJudge, get_judge, parse_verdict
from popi_sdk.eval.methods import METHODS, parse_methods
from popi_sdk.eval.report import main_table, render_markdown, transfer_table
from popi_sdk.personalizer import Personalizer
from popi_sdk.signals import PreferencePair, Signals, Summary, UserRow
from popi_sdk.templates import prompt_only_messages, raw_signals_messages

POSITIVE = "This user prefers positive reviews."
REFERENCES = ("oracle", "shuffled", "user-edit", "profile", "profile-aligned")  # need users with at least two personas
LATENT = ("lore", "pal-a", "pal-b")  # need a `popi train latent` run (tests/test_latent.py)


# -- metrics --------------------------------------------------------------------------------------
def test_reward_accuracy_counts_ties_half():
    assert M.accuracy_outcomes([2.0, 1.0, 0.5], [1.0, 1.0, 1.0]) == [1.0, 0.5, 0.0]
    assert M.reward_accuracy([2.0, 1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.625)
    base = [-3.0, 4.0]
    assert M.reward_accuracy(base, base) == 0.5  # the base model against itself
    with pytest.raises(InputError, match="one base margin per method margin"):
        M.accuracy_outcomes([1.0], [])


def test_win_rate_and_standard_error():
    assert M.win_rate([1.0, 0.5, 0.0, 1.0]) == pytest.approx(0.625)
    assert M.win_rate([]) is None
    assert M.stderr([1.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(InputError, match="0, 0.5 or 1"):
        M.win_rate([0.7])


@pytest.mark.model
def test_context_overhead_counts_template_tokens(smollm2):
    tok = smollm2.tokenizer
    prompt = "Review the Orbit 2 smartwatch."
    assert M.context_overhead(tok, prompt_only_messages(prompt), prompt) == 0
    signals = Signals(pairs=[PreferencePair(prompt="p", chosen="Great!", rejected="Awful.")])
    messages = raw_signals_messages(prompt, signals)
    want = len(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    want -= len(tok.apply_chat_template(prompt_only_messages(prompt), add_generation_prompt=True, tokenize=True)["input_ids"])
    assert M.context_overhead(tok, messages, prompt) == want > 0


# -- judges -------------------------------------------------------------------------------------
def test_oracle_judge_follows_the_persona():
    judge = OracleJudge()
    good = "I loved it. The staff were wonderful and the food was excellent. Highly recommended!"
    bad = "Awful place. The food was terrible and the staff were rude. Avoid it."
    verdicts = judge.judge_many(
        [
            Comparison(POSITIVE, "Review the cafe.", good, bad),
            Comparison(POSITIVE, "Review the cafe.", bad, good),
            Comparison(POSITIVE, "Review the cafe.", good, good),
        ]
    )
    assert verdicts == [1.0, 0.0, 0.5]
    with pytest.raises(InputError, match="ground-truth 'persona'"):
        judge.judge_many([Comparison("", "x", good, bad)])
    judge.check({"u1": POSITIVE})
    with pytest.raises(InputError, match="'u2' has no ground-truth 'persona'"):
        judge.check({"u1": POSITIVE, "u2": None})
    with pytest.raises(InputError, match="'u3'.*oracle judge scores only synthetic personas"):
        judge.check({"u3": "Likes jazz and long walks."})


class ScriptedJudge(Backend):
    """A stand-in for an API judge (a paid API cannot run in tests): always answers ``answer``
    and keeps every conversation it was asked."""

    name = "scripted"

    def __init__(self, answer: str):
        self.answer = answer
        self.history: list[list[dict]] = []

    def generate(self, messages, options: GenerateOptions) -> str:
        self.history.append(list(messages))
        return self.answer


def _comparisons(n: int) -> list[Comparison]:
    return [Comparison(POSITIVE, f"Review place {i}.", f"method answer {i}", f"base answer {i}") for i in range(n)]


def test_llm_judge_randomizes_positions_and_maps_verdicts_back():
    backend = ScriptedJudge("The first one is warmer.\nVerdict: A")
    judge = LLMJudge(backend, seed=3)
    items = _comparisons(40)
    verdicts = judge.judge_many(items)
    swapped = [judge.swapped(c) for c in items]
    assert 5 < sum(swapped) < 35  # both orders happen
    # "A" wins: the method wins exactly when it was shown first
    assert verdicts == [0.0 if s else 1.0 for s in swapped]
    for convo, item, s in zip(backend.history, items, swapped):
        text = convo[-1]["content"]
        first, second = (item.baseline, item.response) if s else (item.response, item.baseline)
        assert text.index(first) < text.index(second)
        assert POSITIVE in text and item.prompt in text
    # the same seed gives the same order; another seed another one
    assert [LLMJudge(backend, seed=3).swapped(c) for c in items] == swapped
    assert [LLMJudge(backend, seed=4).swapped(c) for c in items] != swapped


def test_llm_judge_ties_and_unparsed_answers_count_half():
    judge = LLMJudge(ScriptedJudge("Both are fine. Verdict: tie"))
    assert judge.judge_many(_comparisons(3)) == [0.5] * 3
    vague = LLMJudge(ScriptedJudge("I cannot decide."))
    assert vague.judge_many(_comparisons(2)) == [0.5, 0.5]
    assert vague.unparsed == 2


@pytest.mark.parametrize(
    "text,want",
    [
        ("Reasoning...\nVerdict: B", "B"),
        ("verdict: **A**", "A"),
        ("Verdict - tie", "tie"),
        ("A", "A"),
        ("Verdict: A\nOn reflection, Verdict: B", "B"),
        ("no idea", None),
    ],
)
def test_parse_verdict(text, want):
    assert parse_verdict(text) == want


def test_get_judge():
    assert isinstance(get_judge("oracle"), OracleJudge)
    with pytest.raises(InputError, match="unknown backend"):
        get_judge("nosuchbackend:x")


# -- methods and reports -------------------------------------------------------------------------
def test_parse_methods_puts_base_first_and_checks_checkpoints():
    assert [m.name for m in parse_methods("inference,raw,inference")] == ["base", "inference", "raw"]
    with pytest.raises(InputError, match="unknown method"):
        parse_methods("base,magic")
    with pytest.raises(InputError, match="--summarizer"):
        parse_methods("popi")
    with pytest.raises(InputError, match="--generator"):
        parse_methods("raw-aligned", summarizer="s")
    assert {m.name for m in METHODS.values() if m.transferable} == {
        "base", "raw", "inference", "popi", "oracle", "shuffled", "exemplar", "profile"}


def test_report_tables():
    def metrics(title, acc, overhead, win):
        return {"title": title, "reward_accuracy": acc, "context_overhead": overhead, "win_rate": win}

    results = {
        "methods": {"base": metrics("Base-Model", 0.5, 0, 0.5), "raw": metrics("Raw-Prompting", 0.75, 250.4, 0.6)},
        "transfer": {"hf:other": {"raw": metrics("Raw-Prompting", 0.25, 300.0, None)}},
    }
    results["methods"]["raw"]["echo_rate"] = 0.25
    assert main_table(results)[2] == ["Raw-Prompting", "75.0", "250.4", "60.0", "25.0"]
    assert main_table(results)[1][-1] == "-"  # not measured: no conditioning text to echo
    assert transfer_table(results)[1] == ["Raw-Prompting", "25.0 / -"]
    md = render_markdown(results)
    assert "| Raw-Prompting | 75.0 | 250.4 | 60.0 | 25.0 |" in md and "## Transfer" in md


def test_echo_needs_eight_consecutive_words_of_the_conditioning_text():
    from popi_sdk.eval.metrics import echoes

    summary = "The user is a networking professor; be technical and precise in every answer."
    assert echoes(summary, "Sure. The user is a networking professor, be technical and precise!")
    assert not echoes(summary, "TCP is a reliable, connection-oriented transport protocol.")
    # seven shared words in a row are not an echo; case and punctuation do not matter
    assert not echoes(summary, "the USER is a networking professor; BE happy")
    assert echoes(summary, "THE USER IS A NETWORKING PROFESSOR. BE TECHNICAL")
    assert not echoes("too short to echo", "too short to echo")


def test_exemplar_rule_quotes_the_first_preferred_response():
    from popi_sdk.signals import Signals
    from popi_sdk.templates import EXEMPLAR_LEAD, exemplar_summary, summary_messages

    signals = Signals(pairs=[{"prompt": "p", "chosen": " Short. ", "rejected": "Long long."},
                             {"prompt": "q", "chosen": "Second.", "rejected": "Other."}])
    assert exemplar_summary(signals) == f"{EXEMPLAR_LEAD} Short."
    assert exemplar_summary(Signals(persona="I like short answers.")) == ""
    # an empty summary adds nothing to the generator's context
    assert summary_messages("Hi?", "  ") == [{"role": "user", "content": "Hi?"}]


def test_profile_rule_describes_then_shows_the_first_preferred_response():
    from popi_sdk.signals import Signals
    from popi_sdk.templates import SHOW_LEAD, profile_summary

    signals = Signals(pairs=[{"prompt": "p", "chosen": " Short. ", "rejected": "Long long."}])
    assert profile_summary(" Wants brevity. ", signals) == f"Wants brevity. {SHOW_LEAD} Short."
    assert profile_summary("Wants brevity.", Signals(persona="I like short answers.")) == "Wants brevity."


# -- end to end on the bundled model --------------------------------------------------------------
def _users() -> list[UserRow]:
    from popi_sdk.data.synth import synth_users

    return synth_users("review", 1, seed=7, pairs=2, examples=(1, 1))


def _stored_summary(store_path, row: UserRow, summarizer: str, text: str) -> None:
    """Put a summary in the store, so the test does not spend a minute writing one."""
    from popi_sdk.store import open_store

    open_store(str(store_path)).put(
        Summary(user_id=row.user_id, text=text, summarizer=summarizer,
                signals_hash=Personalizer(summarizer="hf", store=":memory:").cache_hash(row), n_tokens=len(text.split()))
    )


@pytest.mark.model
def test_popi_eval_cli_writes_the_tables(smollm2, tmp_path):
    from popi_sdk.cli import app
    from popi_sdk.data.jsonl import write_jsonl

    users = _users()
    data = tmp_path / "test.jsonl"
    write_jsonl(data, users)
    out = tmp_path / "eval"
    out.mkdir()
    _stored_summary(out / "summaries.sqlite", users[0], "hf", users[0].persona)
    result = CliRunner().invoke(
        app,
        ["eval", "--data", str(data), "--methods", "base,raw,inference", "--judge", "oracle",
         "--out", str(out), "--max-new-tokens", "4", "--generators", "hf", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "Raw-Prompting" in result.output
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert list(methods) == ["base", "raw", "inference"]
    assert methods["base"]["reward_accuracy"] == 0.5 and methods["base"]["win_rate"] == 0.5
    assert methods["base"]["context_overhead"] == 0
    assert methods["raw"]["context_overhead"] > methods["inference"]["context_overhead"] > 0
    for m in methods.values():
        assert m["n_examples"] == 1 and m["n_judged"] == 1
        assert m["reward_accuracy"] in (0.0, 0.5, 1.0) and m["win_rate"] in (0.0, 0.5, 1.0)
    # the summary came from the store; the reference was computed once and reused
    assert results["summaries"]["base"]["users"] == 1
    assert results["stats"]["reference_cache"]["misses"] == 2
    # the transfer table on the same generator repeats the main numbers (and costs nothing more)
    assert results["transfer"]["hf"]["raw"]["reward_accuracy"] == methods["raw"]["reward_accuracy"]
    md = (out / "results.md").read_text()
    assert "| Base-Model | 50.0" in md and "## Transfer" in md
    assert (out / "results.png").stat().st_size > 0 and "results.png" in result.output
    records = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    judged = [r for r in records if r["kind"] == "judged" and r["table"] == "main"]
    assert {r["method"] for r in judged} == {"base", "raw", "inference"}
    assert all(r["response"] for r in judged)


@pytest.mark.model
def test_eval_needs_examples_and_local_generators(smollm2, tmp_path):
    from popi_sdk.eval.runner import evaluate

    row = _users()[0].model_copy(update={"examples": []})
    with pytest.raises(InputError, match="no user has labeled 'examples'"):
        evaluate([row], parse_methods("base"), OracleJudge())


@pytest.mark.model
def test_every_method_with_checkpoints(smollm2, smollm2_dir, tmp_path):
    """popi / popi-full / *-aligned with a "trained" checkpoint (here: the base model's folder)."""
    from popi_sdk.eval.runner import evaluate

    users = _users()
    store = tmp_path / "s.sqlite"
    _stored_summary(store, users[0], "hf", "The user likes upbeat reviews.")
    _stored_summary(store, users[0], f"hf:{smollm2_dir}", users[0].persona)
    methods = parse_methods([m for m in METHODS if m not in REFERENCES + LATENT],
                            summarizer=str(smollm2_dir), generator=str(smollm2_dir))
    results, _ = evaluate(
        users, methods, OracleJudge(), summarizer=str(smollm2_dir), generator=str(smollm2_dir),
        store=str(store), max_new_tokens=4, progress=False,
    )
    got = results["methods"]
    assert list(got) == [m for m in METHODS if m not in REFERENCES + LATENT]
    # the "trained" generator is the same weights: aligned methods equal their unaligned twins
    assert got["raw-aligned"]["mean_margin"] == pytest.approx(got["raw"]["mean_margin"], abs=1e-4)
    assert got["popi-full"]["mean_margin"] == pytest.approx(got["popi"]["mean_margin"], abs=1e-4)
    assert got["popi"]["mean_margin"] != got["inference"]["mean_margin"]  # different summaries


@pytest.mark.model
def test_user_edit_and_exemplar_read_the_persona_and_the_copy_rule(smollm2, smollm2_dir, tmp_path):
    """``user-edit`` is the persona read by the trained generator, ``exemplar`` the copy rule read
    by the base one; with the "trained" generator being the base weights each equals its twin."""
    from popi_sdk.eval.runner import evaluate

    users = _two_personas()
    methods = parse_methods("oracle,user-edit,exemplar,exemplar-aligned,profile,profile-aligned",
                            generator=str(smollm2_dir))
    results, records = evaluate(users, methods, OracleJudge(), generator=str(smollm2_dir),
                                max_new_tokens=4, progress=False)
    got = results["methods"]
    assert got["user-edit"]["mean_margin"] == pytest.approx(got["oracle"]["mean_margin"], abs=1e-4)
    assert got["exemplar-aligned"]["mean_margin"] == pytest.approx(got["exemplar"]["mean_margin"], abs=1e-4)
    assert got["profile-aligned"]["mean_margin"] == pytest.approx(got["profile"]["mean_margin"], abs=1e-4)
    assert got["exemplar"]["mean_margin"] != pytest.approx(got["oracle"]["mean_margin"], abs=1e-4)
    assert got["exemplar"]["context_overhead"] > got["oracle"]["context_overhead"] > 0
    # the profile is the persona, then the copy rule's response: longer than either alone
    assert got["profile"]["context_overhead"] > got["exemplar"]["context_overhead"]
    for m in ("oracle", "user-edit", "exemplar", "exemplar-aligned", "profile", "profile-aligned"):
        assert got[m]["echo_rate"] in (0.0, 0.5, 1.0)
    assert got["base"]["echo_rate"] is None


@pytest.mark.model
def test_a_context_that_is_the_prompt_alone_ties_the_base_model_exactly(smollm2, smollm2_dir):
    """A user with no preferred answer to copy gets an empty copy rule: the prompt alone, which is
    the base model's own input. Its margins are the base model's to the bit, so it scores 50%
    (every example a tie) instead of a coin flip decided by float rounding in another batch."""
    from popi_sdk.eval.runner import evaluate

    users = [u.model_copy(update={"signals": Signals(persona=u.persona)}) for u in _two_personas()]
    users.append(_two_personas()[0].model_copy(update={"user_id": "with-pairs"}))  # batched beside them
    methods = parse_methods("exemplar,exemplar-aligned", generator=str(smollm2_dir))
    results, records = evaluate(users, methods, OracleJudge(), generator=str(smollm2_dir),
                                max_new_tokens=4, progress=False)
    rows = [r for r in records if r.get("kind") == "example" and r["method"] == "exemplar"]
    empty = [r for r in rows if r["user_id"] != users[-1].user_id]
    assert empty and all(r["margin"] == r["base_margin"] and r["correct"] == 0.5 for r in empty)
    copied = [r for r in rows if r["user_id"] == users[-1].user_id]
    assert copied and all(r["margin"] != r["base_margin"] for r in copied)


# -- reference methods: the persona as the summary, and another user's summary -------------------
def _two_personas() -> list[UserRow]:
    from popi_sdk.data.synth import synth_users

    users = synth_users("review", 12, seed=3, pairs=1, examples=(1, 1))
    by_persona = {}
    for u in users:
        by_persona.setdefault(u.persona, u)
    assert len(by_persona) >= 2
    return list(by_persona.values())[:2]


def test_shuffled_summaries_come_from_users_with_another_persona():
    from popi_sdk.data.synth import synth_users
    from popi_sdk.eval.runner import shuffled_summaries

    users = synth_users("review", 40, seed=1, pairs=1, examples=(1, 1))
    own = [f"summary of {u.user_id}" for u in users]
    got = shuffled_summaries(users, own, seed=0)
    donor = {text: u for u, text in zip(users, own)}
    for u, text in zip(users, got):
        assert donor[text].persona != u.persona
    assert got == shuffled_summaries(users, own, seed=0)  # seeded
    assert got != shuffled_summaries(users, own, seed=1)


def test_reference_methods_need_personas_before_any_model_runs():
    from popi_sdk.eval.runner import evaluate

    users = _two_personas()
    no_persona = [users[0].model_copy(update={"persona": None}), users[1]]
    with pytest.raises(InputError, match=r"methods 'oracle' and 'user-edit'.*1 user\(s\) have no 'persona' \(review-"):
        evaluate(no_persona, parse_methods("oracle"), get_judge("oracle"), base="no-such-backend:x")
    same = [users[0], users[1].model_copy(update={"persona": users[0].persona})]
    with pytest.raises(InputError, match="at least two personas"):
        evaluate(same, parse_methods("shuffled"), get_judge("oracle"), base="no-such-backend:x")


@pytest.mark.model
def test_oracle_scores_the_persona_and_shuffled_swaps_summaries(smollm2, tmp_path):
    """With each user's stored base summary equal to their persona, ``oracle`` must score exactly
    like ``inference``, and ``shuffled`` like ``inference`` with the two users' texts swapped."""
    from popi_sdk.eval.runner import evaluate

    users = _two_personas()
    store = tmp_path / "s.sqlite"
    for u in users:
        _stored_summary(store, u, "hf", u.persona)
    results, records = evaluate(
        users, parse_methods("inference,oracle,shuffled"), OracleJudge(), store=str(store),
        max_new_tokens=2, progress=False,
    )
    got = results["methods"]
    assert got["oracle"]["title"] == "Oracle persona"
    assert got["oracle"]["mean_margin"] == pytest.approx(got["inference"]["mean_margin"], abs=1e-4)
    assert got["shuffled"]["mean_margin"] != pytest.approx(got["inference"]["mean_margin"], abs=1e-4)
    assert results["summaries"]["shuffled"]["shuffled_from"] == "base"

    swapped = [users[0].model_copy(update={"persona": users[1].persona}),
               users[1].model_copy(update={"persona": users[0].persona})]
    again, _ = evaluate(swapped, parse_methods("oracle"), OracleJudge(), store=":memory:",
                        max_new_tokens=2, progress=False)
    assert got["shuffled"]["mean_margin"] == pytest.approx(again["methods"]["oracle"]["mean_margin"], abs=1e-4)
    assert {r["method"] for r in records} >= {"oracle", "shuffled"}
