"""Prompt templates, after the POPI paper (arXiv 2510.17881): App. I (summarizer and generator).

Messages are plain ``[{"role": ..., "content": ...}]`` lists so every backend (a local chat template,
OpenAI, Anthropic's ``system`` field) can take them. Conditioning always travels as the *system*
message: it is context about the user, not something the user said.
"""

from __future__ import annotations

import re

from popi_sdk.signals import HistoryItem, PreferencePair, Signals

Message = dict[str, str]

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


def summarizer_messages(
    signals: Signals,
    *,
    max_words: int = 60,
    prompt: str | None = None,
    current_summary: str | None = None,
) -> list[Message]:
    """The summarizer's input. ``prompt`` selects the prompt-dependent variant (paper App. B);
    ``current_summary`` adds the user's current summary as extra context, for an incremental
    refresh after new signals arrive (``Personalizer.add_signals``)."""
    user = render_signals(signals)
    if current_summary is not None and current_summary.strip():
        user += "\n\n" + CURRENT_SUMMARY_CONTEXT.format(summary=current_summary.strip())
    user += "\n\n" + SUMMARIZER_INSTRUCTION.format(max_words=max_words)
    if prompt is not None:
        user += "\n\n" + PROMPT_DEPENDENT_INSTRUCTION.format(prompt=prompt)
    return [{"role": "system", "content": SUMMARIZER_SYSTEM}, {"role": "user", "content": user}]


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


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def clean_summary(text: str) -> str:
    """Strip the boilerplate small models wrap around a summary (quotes, a 'Summary:' label) and
    drop lines and sentences repeated word for word (small models loop), keeping the first
    occurrence."""
    text = text.strip()
    for label in ("Summary:", "summary:", "**Summary:**", "Preference summary:"):
        if text.startswith(label):
            text = text[len(label):].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    lines, seen_lines = [], set()
    for line in text.splitlines():  # list items loop line by line, without sentence ends
        key = line.strip().lower()
        if key and key in seen_lines:
            continue
        seen_lines.add(key)
        lines.append(line)
    text = "\n".join(lines)
    sentences = _SENTENCE_END.split(text)
    seen: set[str] = set()
    kept = []
    for sentence in sentences:
        key = sentence.strip().rstrip(".!?").lower()
        if key not in seen:
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept) if len(kept) < len(sentences) else text


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
