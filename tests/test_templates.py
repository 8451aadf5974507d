"""The summarizer's input and the cleaning of its output, through SummarySpec; the generator's
conditioning from popi_sdk.templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from popi_sdk.errors import InputError
from popi_sdk.signals import Signals
from popi_sdk.summary_spec import SummarySpec
from popi_sdk.templates import (
    GENERATOR_SUMMARY_SYSTEM,
    SUMMARIZER_SYSTEM,
    SUMMARY_TEMPLATES,
    SummaryTemplate,
    raw_signals_messages,
    render_signals,
    summary_messages,
    trait_level,
)

EVERY_KIND = Signals(
    pairs=[{"prompt": "Describe a lamp.", "chosen": "Warm and cosy.", "rejected": "It emits light."}],
    persona="I write poetry.",
    history=[{"prompt": "Favourite season?", "text": "Autumn, for the colours."}, "I dislike jargon."],
    demographics="30-40, Lisbon",
    traits={"openness": 0.9, "brevity": 0.25},
)


@pytest.mark.parametrize(
    "kind, signals, expected",
    [
        ("pairs", {"pairs": EVERY_KIND.pairs},
         ["compared pairs", "Example 1", "Prompt: Describe a lamp.", "Preferred response: Warm and cosy.",
          "Rejected response: It emits light."]),
        ("persona", {"persona": "I write poetry."}, ["describes themselves: I write poetry."]),
        ("history", {"history": EVERY_KIND.history},
         ['- On "Favourite season?": Autumn, for the colours.', "- I dislike jargon."]),
        ("demographics", {"demographics": "30-40, Lisbon"}, ["Demographic information: 30-40, Lisbon"]),
        ("traits", {"traits": {"openness": 0.9, "brevity": 0.25}}, ["brevity: 0.25 (low), openness: 0.9 (very high)"]),
    ],
)
def test_every_signal_kind_renders_into_the_summarizer_input(kind, signals, expected):
    messages = SummarySpec().messages(Signals(**signals))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SUMMARIZER_SYSTEM
    for text in expected:
        assert text in messages[1]["content"], (kind, text)
        assert text in render_signals(EVERY_KIND)  # and together with every other kind


@pytest.mark.parametrize(
    "score, word",
    [(0.0, "very low"), (0.19, "very low"), (0.2, "low"), (0.39, "low"), (0.4, "middle"), (0.6, "middle"),
     (0.61, "high"), (0.79, "high"), (0.8, "very high"), (1.0, "very high")],
)
def test_a_trait_score_is_named_by_its_fifth_of_the_scale(score, word):
    # The synthetic benchmarks' scores land in one word each: a persona's poles at 0-0.25 and
    # 0.75-1, an axis it does not rate at 0.4-0.6, ELIX's five levels at 0.05/0.3/0.5/0.7/0.95.
    assert trait_level(score) == word


def test_all_kinds_render_in_a_fixed_order():
    text = render_signals(EVERY_KIND)
    order = ["describes themselves", "Demographic", "Trait scores", "Things the user wrote", "compared pairs"]
    assert [text.index(marker) for marker in order] == sorted(text.index(m) for m in order)


def test_the_specs_budget_and_prompt_appear_in_the_instruction():
    user = SummarySpec(max_words=23).messages(EVERY_KIND)[-1]["content"]
    assert "at most 23 words" in user and "at most 60 words" not in user
    assert "Upcoming question" not in user
    dependent = SummarySpec(prompt_dependent=True).messages(EVERY_KIND, prompt="How do I bake bread?")
    assert dependent[-1]["content"].endswith("Upcoming question: How do I bake bread?")


def test_the_prompt_is_given_exactly_when_the_spec_is_prompt_dependent():
    with pytest.raises(InputError, match="prompt-dependent summaries"):
        SummarySpec(prompt_dependent=True).messages(EVERY_KIND)
    with pytest.raises(InputError, match="prompt-independent summaries"):
        SummarySpec().messages(EVERY_KIND, prompt="Why?")


def test_cleaning_drops_repeated_sentences_and_keeps_the_rest():
    clean = SummarySpec().clean
    assert clean('Summary: "The user likes A. They like B. They like B. They like B"') == (
        "The user likes A. They like B."
    )
    assert clean("The user is brief. They like facts! The user is brief. Jokes? No.") == (
        "The user is brief. They like facts! Jokes? No."
    )
    assert clean("**Summary:** Prefers short answers.") == "Prefers short answers."
    assert clean("- a\n- b\n") == "- a\n- b"  # nothing repeated: the text as written, stripped
    assert clean("It's short. Its short.") == "It's short. Its short."  # only exact repeats go


def test_a_template_is_data_chosen_by_name(monkeypatch):
    quoting = SummaryTemplate(
        name="quote-test",
        system="You describe a user's taste.",
        instruction="Quote one preferred response, then describe the style in {max_words} words.",
        prompt_instruction="They will ask: {prompt}",
    )
    monkeypatch.setitem(SUMMARY_TEMPLATES, quoting.name, quoting)
    spec = SummarySpec(template="quote-test", max_words=12)
    messages = spec.messages(EVERY_KIND)
    assert messages[0]["content"] == "You describe a user's taste."
    assert messages[1]["content"].endswith("describe the style in 12 words.")
    assert spec.cache_key() != SummarySpec(max_words=12).cache_key()
    with pytest.raises(ValueError, match="unknown summary template 'nope'; known templates: .*app-i"):
        SummarySpec(template="nope")
    with pytest.raises(InputError, match="must contain {max_words}"):
        SummaryTemplate(name="bad", system="", instruction="no budget", prompt_instruction="{prompt}")


def test_generator_conditioning_is_the_system_message():
    messages = summary_messages("Plan my day.", "  The user likes lists.  ")
    assert messages == [
        {"role": "system", "content": GENERATOR_SUMMARY_SYSTEM.format(summary="The user likes lists.")},
        {"role": "user", "content": "Plan my day."},
    ]
    raw = raw_signals_messages("Plan my day.", EVERY_KIND)
    assert render_signals(EVERY_KIND) in raw[0]["content"] and raw[1]["content"] == "Plan my day."


@pytest.mark.parametrize("name, phrase", [("examples", "sample answer"), ("quote", "word for word")])
def test_example_carrying_templates_ask_for_text_in_the_preferred_style(name, phrase):
    from popi_sdk.signals import Signals
    from popi_sdk.summary_spec import SummarySpec

    signals = Signals(pairs=[{"prompt": "Why is the sky blue?", "chosen": "Light bounces! Cool, right?",
                              "rejected": "Rayleigh scattering of shorter wavelengths."}])
    spec = SummarySpec(template=name, max_words=33)
    user = spec.messages(signals)[-1]["content"]
    assert phrase in user and "At most 33 words" in user
    assert "Light bounces! Cool, right?" in user  # the signals are rendered as for app-i
    assert spec.cache_key() != SummarySpec(template="app-i", max_words=33).cache_key()


def test_docs_show_the_fence_the_generator_reads():
    doc = (Path(__file__).parent.parent / "docs" / "serve.md").read_text(encoding="utf-8")
    block = doc.split("```text\nPersonalize", 1)[1].split("```", 1)[0]
    shown = " ".join(("Personalize" + block).split())
    assert shown == " ".join(GENERATOR_SUMMARY_SYSTEM.split())
