"""Prompt templates, after the POPI paper (arXiv 2510.17881): App. I (summarizer and generator).

Messages are plain ``[{"role": ..., "content": ...}]`` lists so every backend (a local chat template,
OpenAI, Anthropic's ``system`` field) can take them. Conditioning always travels as the *system*
message: it is context about the user, not something the user said.

The summarizer's wording is a registered :class:`SummaryTemplate` ("app-i" is the paper's), chosen
by name in a :class:`~popi_sdk.summary_spec.SummarySpec`, which alone turns it into messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from popi_sdk.backends.base import Message
from popi_sdk.errors import InputError
from popi_sdk.signals import HistoryItem, PreferencePair, Signals

SUMMARIZER_SYSTEM = (
    "You are an expert at understanding what people want from an AI assistant. You read evidence "
    "about one user and describe their preferences so that another assistant can serve them well."
)

SUMMARIZER_INSTRUCTION = (
    "Based on the information above, write a short summary of this user's preferences: what they "
    "value in a response (content, tone, style, length, level of detail) and what they dislike. "
    "Write it in the third person (\"The user prefers ...\"), in at most {max_words} words, as "
    "general preferences that apply to new questions; do not repeat the examples."
)

PROMPT_DEPENDENT_INSTRUCTION = (
    "The user is about to ask the question below. Focus the summary on the preferences that matter "
    "for answering it.\n\nUpcoming question: {prompt}"
)

# The summary is data about the user, written by a model or edited by the user, so it is fenced
# off from the instructions around it: the generator is told where it starts and ends. Tags inside
# a summary are removed (:func:`fence_summary`), so it cannot close the fence. The wording is the
# paper's plus the tags: with a longer preamble ("... it is information about the user, not a new
# task") the embedded model read a persona 5.8 ± 3.8 points worse on development users
# (docs/results.md, "With the summary fenced as data"; benchmarks/generator_wording.py).
SUMMARY_TAG = "preferences"
GENERATOR_SUMMARY_SYSTEM = (
    f"Personalize your answer for this user. Here is a summary of their preferences, between "
    f"<{SUMMARY_TAG}> tags:\n<{SUMMARY_TAG}>\n{{summary}}\n</{SUMMARY_TAG}>"
)

GENERATOR_RAW_SYSTEM = (
    "Personalize your answer for this user. Here is what they have shown about their "
    "preferences:\n\n{signals}"
)


def render_pairs(pairs: list[PreferencePair]) -> str:
    blocks = []
    for i, pair in enumerate(pairs, start=1):
        lines = [f"Example {i}"]
        if pair.prompt:
            lines.append(f"Prompt: {pair.prompt}")
        lines.append(f"Preferred response: {pair.chosen}")
        lines.append(f"Rejected response: {pair.rejected}")
        blocks.append("\n".join(lines))
    return "The user compared pairs of responses:\n\n" + "\n\n".join(blocks)


def render_persona(persona: str) -> str:
    return f"The user describes themselves: {persona}"


def render_history(history: list[HistoryItem]) -> str:
    lines = ["Things the user wrote before:"]
    for item in history:
        lines.append(f"- On \"{item.prompt}\": {item.text}" if item.prompt else f"- {item.text}")
    return "\n".join(lines)


def render_demographics(demographics: str) -> str:
    return f"Demographic information: {demographics}"


def trait_level(score: float) -> str:
    """A trait score in words, by fifths of [0, 1]: "very low", "low", "middle" (0.4 to 0.6: the
    axis hardly matters to the user), "high", "very high". Rendered beside the number, since a
    small summarizer reads a word more easily than the digits of a score."""
    if score < 0.2:
        return "very low"
    if score < 0.4:
        return "low"
    if score <= 0.6:
        return "middle"
    if score < 0.8:
        return "high"
    return "very high"


def render_traits(traits: dict[str, float]) -> str:
    scored = ", ".join(f"{name}: {score:g} ({trait_level(score)})" for name, score in sorted(traits.items()))
    return f"Trait scores (0 = low, 1 = high): {scored}"


def render_signals(signals: Signals) -> str:
    """Every kind of signal the user has, each rendered by its own renderer, in a fixed order."""
    parts = []
    if signals.persona:
        parts.append(render_persona(signals.persona))
    if signals.demographics:
        parts.append(render_demographics(signals.demographics))
    if signals.traits:
        parts.append(render_traits(signals.traits))
    if signals.history:
        parts.append(render_history(signals.history))
    if signals.pairs:
        parts.append(render_pairs(signals.pairs))
    return "\n\n".join(parts)


CURRENT_SUMMARY_CONTEXT = (
    "The user's current summary, written from earlier evidence (the evidence above may add to it "
    "or contradict it; keep what still holds and correct what no longer does):\n{summary}"
)


#: How a describe-then-show summary introduces its exemplar (the ``describe`` template's wording,
#: the warm start's persona candidates and stage 2's ``profile`` form).
SHOW_LEAD = "They like answers such as:"

#: How the copy rule (the ``exemplar`` reference method) and the warm start's extractive
#: candidates introduce a quoted preferred response.
EXEMPLAR_LEAD = "The user prefers answers like this one:"


def exemplar_summary(signals: Signals) -> str:
    """The fixed copy rule: ``EXEMPLAR_LEAD`` + the first signal pair's preferred response, word
    for word; ``""`` for a user without pairs (the rule has nothing to quote). A trained
    summarizer earns its place only above this rule (docs/results.md)."""
    if not signals.pairs:
        return ""
    return f"{EXEMPLAR_LEAD} {signals.pairs[0].chosen.strip()}"


def describe_then_show(description: str, answer: str) -> str:
    """A description, then ``SHOW_LEAD`` and one preferred answer: the form of every
    describe-then-show summary written from known parts (``profile_summary``, the warm start's
    persona candidates, ``benchmarks/persona_form.py``'s ``shown`` form)."""
    return f"{description.strip()} {SHOW_LEAD} {answer.strip()}"


def profile_summary(persona: str, signals: Signals) -> str:
    """A describe-then-show summary from a user's written persona: the persona, then
    ``SHOW_LEAD`` and the first signal pair's preferred response (the persona alone for a user
    without pairs). The form the ``describe`` template asks a summarizer for, written from the
    ground truth: the ``profile`` reference methods measure what such a summary can reach."""
    if not signals.pairs:
        return persona.strip()
    return describe_then_show(persona, signals.pairs[0].chosen)


def prompt_only_messages(prompt: str) -> list[Message]:
    """Base model: the prompt alone (also the reference policy's context in the POPI loss)."""
    return [{"role": "user", "content": prompt}]


# Chat-template control tokens of the common model families (ChatML and Llama 3 "<|...|>",
# DeepSeek's full-width "<｜...｜>", Llama 2's [INST] and <<SYS>>, Gemma's turns, BOS/EOS). A
# tokenizer turns these strings into real control tokens wherever they appear in a message, so a
# summary holding "<|im_end|>\n<|im_start|>system" would open a system turn of its own.
_CONTROL_TOKENS = re.compile(
    r"<\|[^<>|\s]{1,64}\|>|<｜[^<>｜]{1,64}｜>|\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>"
    r"|</?(?:bos|eos|pad|unk)>",
    re.IGNORECASE,
)


def neutralize_control_tokens(text: str) -> str:
    """``text`` without chat-template control tokens (see ``_CONTROL_TOKENS``): a summary is
    data about the user, and no generator may read a role or turn boundary inside it. Applied
    until nothing changes, so a token split by another (``<|im_<|x|>start|>``) cannot reappear."""
    while True:
        cleaned = _CONTROL_TOKENS.sub("", text)
        if cleaned == text:
            return cleaned
        text = cleaned


_SUMMARY_TAGS = re.compile(rf"<\s*/?\s*{SUMMARY_TAG}\s*/?\s*>", re.IGNORECASE)


def fence_summary(summary: str) -> str:
    """``summary`` as it may stand between the ``<preferences>`` tags of
    :data:`GENERATOR_SUMMARY_SYSTEM`: no chat-template control tokens
    (:func:`neutralize_control_tokens`) and no tag of the fence itself, so the text can neither
    open a turn nor end the fenced block and speak as the instructions after it."""
    text = summary
    while True:  # removing one kind can join the pieces of the other: until neither is left
        cleaned = _SUMMARY_TAGS.sub("", neutralize_control_tokens(text))
        if cleaned == text:
            return cleaned.strip()
        text = cleaned


def personalize_messages(messages: Sequence[Mapping[str, Any]], summary: str) -> list[dict[str, Any]]:
    """``messages`` with the preference summary as the system message: the one place a summary
    enters a conversation (the SDK's :func:`summary_messages` and ``popi serve`` both use it).

    A conversation without a system message gets one in front. One that has a system (or
    ``developer``) message first keeps it, with the summary appended after the app's own text, so
    the app's instructions still come first and the model still sees a single system message
    (several chat templates accept only one, at the start). Text content and OpenAI content-part
    lists both work. The input is not modified; other messages are passed through as they are.
    The summary stands between ``<preferences>`` tags, as data about the user, with control tokens
    and fence tags removed (:func:`fence_summary`)."""
    personal = GENERATOR_SUMMARY_SYSTEM.format(summary=fence_summary(summary))
    out = [dict(m) for m in messages]
    if out and out[0].get("role") in ("system", "developer"):
        first = out[0]
        content = first.get("content")
        if isinstance(content, list):
            first["content"] = [*content, {"type": "text", "text": personal}]
        elif content:
            first["content"] = f"{content}\n\n{personal}"
        else:
            first["content"] = personal
        return out
    return [{"role": "system", "content": personal}, *out]


def summary_messages(prompt: str, summary: str) -> list[Message]:
    """POPI / Inference-Prompting: the preference summary as system context, then the prompt.
    An empty summary says nothing about the user, so it adds nothing: the prompt alone."""
    if not summary.strip():
        return prompt_only_messages(prompt)
    return personalize_messages(prompt_only_messages(prompt), summary)


def raw_signals_messages(prompt: str, signals: Signals | str) -> list[Message]:
    """Raw-Prompting baseline: every raw signal in context (``signals``, or their
    :func:`render_signals` text), then the prompt."""
    rendered = signals if isinstance(signals, str) else render_signals(signals)
    return [
        {"role": "system", "content": GENERATOR_RAW_SYSTEM.format(signals=rendered)},
        {"role": "user", "content": prompt},
    ]


@dataclass(frozen=True)
class SummaryTemplate:
    """How the summarizer is asked for a summary: plain text, so a new template is data.

    ``instruction`` follows the rendered signals and must contain ``{max_words}``;
    ``prompt_instruction`` is appended for prompt-dependent summaries and must contain
    ``{prompt}``; ``current_summary_context`` (with ``{summary}``) precedes the instruction in an
    incremental refresh (``Personalizer.add_signals(..., with_current=True)``)."""

    name: str
    system: str
    instruction: str
    prompt_instruction: str
    description: str = ""
    current_summary_context: str = CURRENT_SUMMARY_CONTEXT

    def __post_init__(self) -> None:
        if "{max_words}" not in self.instruction:
            raise InputError(f"summary template {self.name!r}: instruction must contain {{max_words}}")
        if "{prompt}" not in self.prompt_instruction:
            raise InputError(
                f"summary template {self.name!r}: prompt_instruction must contain {{prompt}}"
            )


SUMMARY_TEMPLATES: dict[str, SummaryTemplate] = {}


def register_summary_template(template: SummaryTemplate) -> SummaryTemplate:
    """Make ``template`` selectable by name (``SummarySpec(template=name)``)."""
    if not template.name or template.name in SUMMARY_TEMPLATES:
        raise InputError(f"summary template name {template.name!r} is empty or already registered")
    SUMMARY_TEMPLATES[template.name] = template
    return template


def summary_template(name: str) -> SummaryTemplate:
    """The registered template ``name``; an unknown name is an error listing the known ones."""
    try:
        return SUMMARY_TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(SUMMARY_TEMPLATES))
        raise InputError(f"unknown summary template {name!r}; known templates: {known}") from None


register_summary_template(
    SummaryTemplate(
        name="app-i",
        system=SUMMARIZER_SYSTEM,
        instruction=SUMMARIZER_INSTRUCTION,
        prompt_instruction=PROMPT_DEPENDENT_INSTRUCTION,
        description="the paper's App. I wording: general third-person preferences, no examples",
    )
)

# The embedded 135M generator imitates text in its context but barely reacts to a description
# of the user (docs/results.md, headroom): these two let the summary carry example-like text in
# the user's preferred style, which App. I forbids ("do not repeat the examples").
EXAMPLES_INSTRUCTION = (
    "Based on the information above, describe this user's preferred kind of response so that "
    "another assistant can imitate it. First say in one sentence what they prefer (tone, length, "
    "level of detail) and what they dislike. Then write one short sample answer in exactly the "
    "style they preferred, reusing typical phrases of their preferred responses. At most "
    "{max_words} words in all."
)

QUOTE_INSTRUCTION = (
    "Based on the information above, write a short profile of this user for another assistant. "
    "First one sentence on what they prefer (tone, length, level of detail). Then write "
    "\"They like answers such as:\" and copy, word for word, the preferred response that shows "
    "their style best. At most {max_words} words in all."
)

register_summary_template(
    SummaryTemplate(
        name="examples",
        system=SUMMARIZER_SYSTEM,
        instruction=EXAMPLES_INSTRUCTION,
        prompt_instruction=PROMPT_DEPENDENT_INSTRUCTION,
        description="one sentence on the preferences, then a short sample answer in that style",
    )
)
register_summary_template(
    SummaryTemplate(
        name="quote",
        system=SUMMARIZER_SYSTEM,
        instruction=QUOTE_INSTRUCTION,
        prompt_instruction=PROMPT_DEPENDENT_INSTRUCTION,
        description="one sentence on the preferences, then a preferred response quoted word for word",
    )
)


# Describe, then show (docs/results.md): a description a user can read and edit, then at most one
# short exemplar. "describe" is a third-person profile; "instruct" speaks to the writer, the form
# that the small base model follows best on P-Soups ("Generate a response that ...").
DESCRIBE_INSTRUCTION = (
    "Based on the information above, say who this user is and how they want to be answered. "
    "First one or two sentences in the third person (\"The user is ...; they want ...\"): their "
    "level, tone, length and detail. Then write \"They like answers such as:\" and one short answer "
    "in the style they preferred. At most {max_words} words in all."
)

INSTRUCT_INSTRUCTION = (
    "Based on the information above, tell another assistant how to answer this user. First one "
    "or two sentences addressed to the writer (\"Answer as for ...; use ...\"): the level, tone, "
    "length and detail this user wants. Then write \"They like answers such as:\" and one short "
    "answer in the style they preferred. At most {max_words} words in all."
)

register_summary_template(
    SummaryTemplate(
        name="describe",
        system=SUMMARIZER_SYSTEM,
        instruction=DESCRIBE_INSTRUCTION,
        prompt_instruction=PROMPT_DEPENDENT_INSTRUCTION,
        description="who the user is in one or two sentences, then at most one short exemplar",
    )
)
register_summary_template(
    SummaryTemplate(
        name="instruct",
        system=SUMMARIZER_SYSTEM,
        instruction=INSTRUCT_INSTRUCTION,
        prompt_instruction=PROMPT_DEPENDENT_INSTRUCTION,
        description="how to answer the user, addressed to the writer, then at most one exemplar",
    )
)


_COMPLETE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
# A period after these ends no sentence ("(e.g.", "vs.", "U.S."): a cap that stops there has
# cut the sentence.
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|dr|mr|mrs|ms|prof|no|st)|\b[A-Za-z])\.$", re.I)


def _sentence_ends(text: str) -> list[int]:
    return [m.end() for m in _COMPLETE_END.finditer(text)
            if not _ABBREVIATION.search(text[: m.start() + 1])]


def cut_to_last_sentence(text: str) -> str:
    """``text`` without a trailing fragment cut off by a length cap ("a style that is elegant
    and", "- Specific style (e.g."): up to its last complete sentence or list line. Text with no
    complete sentence is kept as it is, since a fragment says more than nothing."""
    text = text.rstrip()
    ends = _sentence_ends(text)
    if not text or (ends and ends[-1] == len(text)):
        return text
    newline = text.rfind("\n")
    cut = max(ends[-1] if ends else 0, newline if newline > 0 else 0)
    return text[:cut].rstrip() if cut > 0 else text
