"""A summary's life with the real embedded model: versions, edits, new signals, usefulness."""

import os
import stat

import pytest
from typer.testing import CliRunner

from popi_sdk import Personalizer, SummaryScore, UserRow, UserSignals
from popi_sdk.cli import app
from popi_sdk.errors import InputError, NotFoundError

pytestmark = pytest.mark.model

KID = UserSignals(
    user_id="kid",
    pairs=[{"prompt": "Why is the sky blue?", "chosen": "Blue light bounces around the most!",
            "rejected": "Rayleigh scattering scales with the inverse fourth power of wavelength."}],
    persona="I am 8 years old.",
)
EXAMPLES = [
    {"prompt": "What is rain?", "chosen": "Rain is water falling from clouds, like a big sprinkler!",
     "rejected": "Precipitation occurs when condensed atmospheric water vapour exceeds saturation."},
    {"prompt": "Why do cats purr?", "chosen": "Cats purr when they are happy and cozy!",
     "rejected": "Purring results from laryngeal muscle oscillation driven by a neural oscillator."},
]


class CallCounter:
    def __init__(self, method):
        self.calls = 0
        self.original = method

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


@pytest.fixture
def p(smollm2, store_path, monkeypatch):
    personalizer = Personalizer(summarizer="hf", store=store_path, summary_tokens=24)
    # The personalizer's own summarizer object: another test may have cleared the backend cache,
    # so it need not be the session's ``smollm2`` object. Every local model call goes through it.
    backend = personalizer.summarizer
    counter = CallCounter(backend.generate_batch)
    monkeypatch.setattr(backend, "generate_batch", counter)
    personalizer.counter = counter
    return personalizer


def test_edits_are_kept_until_the_caller_replaces_them(p):
    first = p.summarize(KID)
    assert (first.version, first.source, first.summarizer) == (1, "model", "hf")
    assert p.get_summary("kid") == first and p.get_summary("nobody") is None
    edit = p.edit_summary("kid", "  The user is a child: short, playful answers.  ")
    assert (edit.version, edit.source, edit.text) == (2, "user", "The user is a child: short, playful answers.")
    calls = p.counter.calls
    assert p.summarize(KID) == edit and p.summarize(KID, refresh=True) == edit  # never overwritten
    assert p.summarize_many([KID], progress=False) == [edit]
    assert p.counter.calls == calls
    messages, used = p.conditioning("What is rain?", user_id="kid")
    assert used == edit and edit.text in messages[0]["content"]  # generate uses the current one
    back = p.summarize(KID, replace_user_edit=True)  # the cached model summary, current again
    assert back.version == 3 and back.text == first.text and back.source == "model"
    assert p.counter.calls == calls
    assert [(s.version, s.source) for s in p.history("kid")] == [(1, "model"), (2, "user"), (3, "model")]
    with pytest.raises(InputError, match="empty"):
        p.edit_summary("kid", "   ")
    assert len(p.history("kid")) == 3


def test_add_signals_merges_and_refreshes_with_the_current_summary(p):
    p.max_stored_signals = 2
    first = p.summarize(KID)
    new_pair = {"prompt": "What is thunder?", "chosen": "It's the sky going BOOM!",
                "rejected": "Thunder is the acoustic shock wave of a lightning discharge."}
    third = {"prompt": "What is snow?", "chosen": "Frozen fluffy rain!",
             "rejected": "Ice crystals nucleated around aerosol particles."}
    calls = p.counter.calls
    refreshed = p.add_signals(
        "kid", {"pairs": [new_pair, third]}, examples=EXAMPLES[:1], with_current=True
    )
    assert p.counter.calls == calls + 1 and refreshed.version == 2 and refreshed.source == "model"
    stored = p.stored_signals("kid")
    # at most 2 pairs kept: the original (oldest) one was evicted; the persona stays
    assert [x.prompt for x in stored.pairs] == ["What is thunder?", "What is snow?"]
    assert stored.persona == "I am 8 years old."
    assert p.store.signals("kid")["examples"][0]["prompt"] == "What is rain?"
    refresh_input = p.summarizer_input(stored, current_summary=first.text)[1]["content"]
    assert first.text in refresh_input and "current summary" in refresh_input
    assert refreshed.signals_hash == p.cache_hash(stored, current_summary=first.text)
    assert p.add_signals("kid", {"pairs": [third]}) == refreshed  # nothing new: no model call
    assert p.counter.calls == calls + 1
    fresh = p.add_signals("kid", {"persona": "I am 9."})  # default: a fresh summary
    assert fresh.signals_hash == p.cache_hash(p.stored_signals("kid"))
    with pytest.raises(InputError, match="not 'kid'"):
        p.add_signals("kid", UserSignals(user_id="other", persona="x"))
    assert p.forget("kid") == 3
    assert p.history("kid") == [] and p.stored_signals("kid") is None and p.store.user_ids() == []


def test_score_is_the_evaluation_reward_accuracy_on_the_labeled_pairs(p, smollm2):
    from popi_sdk.eval import metrics as M
    from popi_sdk.scoring import SequenceScorer
    from popi_sdk.templates import prompt_only_messages, summary_messages

    row = UserRow(user_id="kid", signals=KID.signals(), examples=EXAMPLES)
    with pytest.raises(NotFoundError):
        p.score("kid")
    p.edit_summary("kid", "The user is a child and likes short, playful, simple answers.")
    summary = p.add_signals("kid", row)  # the edit is kept; the row's examples are stored
    assert summary.source == "user"
    result = p.score("kid")
    assert isinstance(result, SummaryScore) and result.n_examples == 2 and result.scorer == "hf"
    # The same numbers straight from the scoring function, one sequence at a time.
    seq = SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=1)
    with_s, without = [], []
    for pair in row.examples:
        c, r = seq.logprobs([summary_messages(pair.prompt, summary.text)] * 2, [pair.chosen, pair.rejected]).tolist()
        bc, br = seq.logprobs([prompt_only_messages(pair.prompt)] * 2, [pair.chosen, pair.rejected]).tolist()
        with_s.append(c - r)
        without.append(bc - br)
    assert result.reward_accuracy == M.reward_accuracy(with_s, without)
    assert result.margin_gain == pytest.approx(M.mean([a - b for a, b in zip(with_s, without)]), abs=1e-3)
    assert p.history("kid")[-1].score == result  # stored with the version
    other = p.score("kid", EXAMPLES[:1])
    assert other.n_examples == 1
    with pytest.raises(InputError, match="no labeled pairs stored"):
        p.store.merge_signals("k2", {"signals": {"persona": "x"}}, limit=4)
        p.edit_summary("k2", "The user likes puns.")
        p.score("k2")


def test_cli_summary_commands(tmp_path, smollm2, demo_users_file):
    runner = CliRunner()
    store = str(tmp_path / "s.sqlite")
    result = runner.invoke(app, ["summary", "show", "maya", "--store", store])
    assert result.exit_code != 0 and "no summary stored for user 'maya'" in str(result.exception)
    result = runner.invoke(app, ["summary", "edit", "maya", "--text", "Maya wants one-line answers.",
                                 "--store", store])
    assert result.exit_code == 0 and "Saved version 1" in result.stdout
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nsed -i "s/one-line/two-line/" "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    result = runner.invoke(app, ["summary", "edit", "maya", "--store", store], env={"EDITOR": str(editor)})
    assert result.exit_code == 0 and "Saved version 2" in result.stdout, result.output
    result = runner.invoke(app, ["summary", "show", "maya", "--store", store])
    assert result.exit_code == 0 and result.stdout.strip().startswith("Maya wants two-line answers.")
    users = tmp_path / "users.jsonl"
    users.write_text(
        '{"user_id": "maya", "signals": {"persona": "busy"}, "examples": '
        '[{"prompt": "What is rain?", "chosen": "Water from clouds.", "rejected": "Rain, in the '
        'broadest meteorological sense, is a form of precipitation that forms when..."}]}\n'
    )
    result = runner.invoke(app, ["summary", "score", "maya", "--data", str(users), "--store", store])
    assert result.exit_code == 0 and "reward accuracy" in result.stdout and "1 labeled pairs" in result.stdout
    result = runner.invoke(app, ["summary", "history", "maya", "--store", store])
    assert result.exit_code == 0
    assert "1" in result.stdout and "2 (current)" in result.stdout and "acc" in result.stdout
    os.environ.pop("EDITOR", None)
