"""ELIX benchmark: the user prefers explanations pitched at their expertise level.

Five levels, as in FSPO's ELIX task: child, preteen, teenager, young adult, expert; the persona is
``"The user is a child."`` and so on. Each pair explains one question twice: the chosen text at the
user's level, the rejected one at another level. Each level has a target reading grade
(Flesch-Kincaid); generated texts land within ``BAND`` grades of their level's target, and the
targets are far enough apart that the oracle always ranks the chosen text first.
"""

from __future__ import annotations

import random
import re

from popi_sdk.data.synth._text import cap, pick, reading_grade
from popi_sdk.data.synth.elix_topics import TOPICS
from popi_sdk.signals import PreferencePair

NAME = "elix"
DEFAULT_PAIRS = 4

LEVELS = ("child", "preteen", "teenager", "young adult", "expert")
#: Target Flesch-Kincaid grade per level (the oracle's ideal), and the accepted band around it.
TARGET_GRADE = {"child": 1.0, "preteen": 4.75, "teenager": 8.5, "young adult": 12.5, "expert": 19.5}
BAND = 1.75
MAX_CHARS = 240  # keeps every explanation within about 64 tokens of a Llama-style tokenizer
_ARTICLE = {"child": "a", "preteen": "a", "teenager": "a", "young adult": "a", "expert": "an"}
# Words in a persona that name a level, most specific first ("young adult" before "adult").
_LEVEL_WORDS = [
    ("young adult", "young adult"), ("college", "young adult"), ("preteen", "preteen"),
    ("pre-teen", "preteen"), ("middle school", "preteen"), ("teenager", "teenager"),
    ("teen", "teenager"), ("high school", "teenager"), ("child", "child"), ("kid", "child"),
    ("elementary", "child"), ("expert", "expert"), ("phd", "expert"), ("professional", "expert"),
]

_PROMPTS = ["{q}", "Can you explain: {q_l}", "Explain this to me: {q_l}", "Quick question. {q}",
            "{q} Please explain.", "I was wondering: {q_l}"]

_TEMPLATES = {
    "child": ["{Kid}. It is like {like}!", "{Kid}! It is a bit like {like}.",
              "Think of {like}. {Kid}!", "Here is the fun part: {kid}.", "{Kid}. Wow!",
              "Guess what? {Kid}."],
    "preteen": ["{Kid}, kind of like {like}. Scientists call this {t0}.",
                "Basically, {kid}. It works a lot like {like}.",
                "Picture {like}: {kid}. That is the main idea.",
                "{Mid}.", "Here is how it works: {mid}.",
                "{Kid}. The science name for this is {t0}."],
    "teenager": ["{Mid}. This is called {t0}.", "{Mid}, a process known as {t0}.",
                 "Here's the idea: {mid}. Scientists study this as {t0}.",
                 "{Mid}. The key concept here is {t0}.",
                 "In simple terms, {mid}. Think of {like}."],
    "young adult": ["{Mid}, which involves {t0} and {t1}.",
                    "In short, {mid}; the key ideas are {t0} and {t1}.",
                    "{Mid}. Formally, this is explained by {t0} together with {t1}.",
                    "{Mid}. Understanding {t0} and {t1} explains the details.",
                    "Essentially, {expert}.", "{Mid}, mainly through {t0}."],
    "expert": ["{Expert}, consistent with standard models of {t2}.",
               "Mechanistically, {expert}; {t1} and {t2} determine the dynamics.",
               "{Expert}, with {t2} as the principal quantitative constraint.",
               "{Expert}. Quantitative treatments emphasize {t1} and {t2}.",
               "Formally, {expert}, modulated by {t2}.", "{Expert}.", "Mechanistically, {expert}."],
}


# Optional first and last sentences per level, for variety (each list's "" means none).
_FRAMES = {
    "child": (["", "Okay! ", "Know what? ", "Ooh, fun one! "], ["", " Cool, right?", " Neat!", " Fun, huh?"]),
    "preteen": (["", "Good question! ", "Here's the deal. ", "Fun fact time. "],
                ["", " Pretty cool, right?", " Neat, huh?"]),
    "teenager": (["", "Good question. ", "Okay, here goes. "], [""]),
    "young adult": (["", "Good question. ", "Put simply. "], [""]),
    "expert": (["", "Briefly. ", "In summary. "], [""]),
}


def persona_text(level: str) -> str:
    return f"The user is {_ARTICLE[level]} {level}."


def sample_persona(rng: random.Random, index: int) -> str:
    return persona_text(LEVELS[index % len(LEVELS)])


_PERSONA_RE = re.compile(r"The user is (?:an? )?(?:child|preteen|teenager|young adult|expert)\b[^.]*\.", re.I)


def matches(persona: str) -> bool:
    """Whether ``persona`` is worded as this benchmark (and FSPO's ELIX) words them."""
    return bool(_PERSONA_RE.fullmatch(persona.strip()))


def parse_persona(persona: str) -> dict:
    """``"The user is a teenager."`` -> ``{"level": "teenager", "index": 2}``.

    Also accepts FSPO's plain ``"The user is {level}."`` and common paraphrases (kid, PhD, ...)."""
    low = persona.lower()
    for word, level in _LEVEL_WORDS:
        if re.search(rf"\b{re.escape(word)}\b", low):
            return {"level": level, "index": LEVELS.index(level)}
    raise ValueError(
        f"elix persona {persona!r} names no level; expected one of {', '.join(LEVELS)} "
        "(e.g. 'The user is a teenager.')"
    )


def sample_prompt(rng: random.Random) -> dict:
    topic = TOPICS[rng.randrange(len(TOPICS))]
    q = topic["q"]
    prompt = pick(rng, _PROMPTS).format(q=q, q_l=q[:1].lower() + q[1:])
    return {"prompt": prompt, "topic": topic}


def sample_pair(rng: random.Random, attrs: dict, state: dict) -> PreferencePair:
    level = attrs["level"]
    other = pick(rng, [lv for lv in LEVELS if lv != level])
    chosen = explain(rng, state["topic"], level)
    rejected = explain(rng, state["topic"], other)
    return PreferencePair(prompt=state["prompt"], chosen=chosen, rejected=rejected)


def explain(rng: random.Random, topic: dict, level: str) -> str:
    """An explanation of ``topic`` whose reading grade is within ``BAND`` of the level's target."""
    best, best_gap = "", float("inf")
    for _ in range(400):
        # Prefer terms the expert clause does not already use, so none is said twice.
        fresh = [t for t in topic["terms"] if t not in topic["expert"]]
        terms = rng.sample(fresh, 3) if len(fresh) >= 3 else rng.sample(topic["terms"], 3)
        fill = {
            "kid": topic["kid"], "Kid": cap(topic["kid"]), "like": topic["like"],
            "mid": topic["mid"], "Mid": cap(topic["mid"]),
            "expert": topic["expert"], "Expert": cap(topic["expert"]),
            "t0": terms[0], "t1": terms[1], "t2": terms[2],
        }
        before, after = _FRAMES[level]
        text = pick(rng, before) + pick(rng, _TEMPLATES[level]).format(**fill) + pick(rng, after)
        gap = grade_gap(level, reading_grade(text)) + (len(text) > MAX_CHARS) * 100
        if gap <= BAND:
            return text
        if gap < best_gap:
            best, best_gap = text, gap
    return best  # the closest draw; a test checks every shipped topic reaches every band


def grade_gap(level: str, grade: float) -> float:
    """Grade levels between ``grade`` and the level's target. One-sided at the ends: any text
    simpler than the child target fits a child, any text denser than the expert target fits an
    expert."""
    gap = grade - TARGET_GRADE[level]
    if level == LEVELS[0]:
        return max(0.0, gap)
    if level == LEVELS[-1]:
        return max(0.0, -gap)
    return abs(gap)


def score(attrs: dict, text: str) -> float:
    """Minus :func:`grade_gap` of the text's Flesch-Kincaid reading grade: 0 is a perfect fit."""
    return 0.0 - grade_gap(attrs["level"], reading_grade(text))  # 0.0, not -0.0, for a perfect fit
