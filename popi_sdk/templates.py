"""Prompt templates, after the POPI paper (arXiv 2510.17881): App. I (summarizer and generator).

Messages are plain ``[{"role": ..., "content": ...}]`` lists so every backend (a local chat template,
OpenAI, Anthropic's ``system`` field) can take them. Conditioning always travels as the *system*
message: it is context about the user, not something the user said.

The summarizer's wording is a registered :class:`SummaryTemplate` ("app-i" is the paper's), chosen
by name in a :class:`~popi_sdk.summary_spec.SummarySpec`, which alone turns it into messages.
"""

from __future__ import annotations

from dataclasses import dataclass

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

GENERATOR_SUMMARY_SYSTEM = (
    "Personalize your answer for this user. Here is a summary of their preferences:\n{summary}"
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


def render_traits(traits: dict[str, float]) -> str:
    scored = ", ".join(f"{name}: {score:g}" for name, score in sorted(traits.items()))
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


def prompt_only_messages(prompt: str) -> list[Message]:
    """Base model: the prompt alone (also the reference policy's context in the POPI loss)."""
    return [{"role": "user", "content": prompt}]


def summary_messages(prompt: str, summary: str) -> list[Message]:
    """POPI / Inference-Prompting: the preference summary as system context, then the prompt."""
    return [
        {"role": "system", "content": GENERATOR_SUMMARY_SYSTEM.format(summary=summary.strip())},
        {"role": "user", "content": prompt},
    ]


def raw_signals_messages(prompt: str, signals: Signals) -> list[Message]:
    """Raw-Prompting baseline: every raw signal in context, then the prompt."""
    return [
        {"role": "system", "content": GENERATOR_RAW_SYSTEM.format(signals=render_signals(signals))},
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
