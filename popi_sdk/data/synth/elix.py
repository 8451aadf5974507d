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

from popi_sdk.data.synth._signals import distinct, with_detail
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


# --- signals besides pairs (see _signals.py) -------------------------------------------------------

#: ``expertise`` trait: the centre of each level's score (noise keeps levels apart, ±0.08).
EXPERTISE = {"child": 0.05, "preteen": 0.3, "teenager": 0.5, "young adult": 0.7, "expert": 0.95}
#: Ages each level's users give (self-descriptions and demographics).
AGES = {"child": (6, 9), "preteen": (11, 12), "teenager": (14, 17), "young adult": (19, 24),
        "expert": (30, 60)}
OCCUPATIONS = ["marine biologist", "structural engineer", "physician", "physics professor",
               "research chemist", "economist", "astronomer", "software architect", "geologist"]

# Who the user says they are: every self-description names one of these (an age, a school year
# or a job), so a reader can place the level; a request about the explanations may follow.
_WHO = {
    "child": ["I'm {age}.", "I'm in {grade} grade.", "I'm {age} and in {grade} grade."],
    "preteen": ["I'm {age}.", "I'm in {grade} grade.", "I just started middle school."],
    "teenager": ["I'm {age}.", "I'm in high school.", "I'm a {year} in high school."],
    "young adult": ["I'm {age}.", "I'm in college.", "I'm an undergrad at university."],
    "expert": ["I run a lab.", "I have a PhD in this area.", "I work as a {job}.", "I'm a {job}."],
}
_FILL = {"child": {"grade": ["first", "second", "third"]}, "preteen": {"grade": ["fifth", "sixth"]},
         "teenager": {"year": ["sophomore", "junior", "senior"]}}
_ASK = {
    "child": ["Big words confuse me.", "Please use easy words.", "I like short, simple sentences."],
    "preteen": ["I know a little science from school.",
                "Easy words are best, but I can handle a new term or two."],
    "teenager": ["I get the basics; just keep it clear.", "Use the real terms, but explain them."],
    "young adult": ["I've taken intro courses, so use the proper terms.",
                    "Keep the vocabulary, but don't assume too much."],
    "expert": ["Skip the basics.", "Give me the mechanism, not analogies.", "Be precise and technical."],
}
# Past messages, by the direction they ask the explanations to move.
_PAST = {
    "child": ["Can you explain that like I'm five?", "That has too many big words for me.",
              "Simpler please, with easy words.", "I didn't get it. Can you say it easier?"],
    "preteen": ["Simpler please, that was hard to follow.", "What does that big word mean? Say it easier.",
                "Can you explain that without so many big words?"],
    "teenager": ["Not so babyish, but no heavy jargon either.",
                 "That was a bit childish. I'm in high school.",
                 "Somewhere in between, please: not babyish, not jargon."],
    "young adult": ["More technical please, I know the basics.", "You can use the proper terms with me.",
                    "That was too basic; I've had intro courses."],
    "expert": ["More technical please, I know the basics.", "Skip the analogies and give me the mechanism.",
               "Too basic. I run a lab; be precise.", "Don't dumb it down, use the jargon."],
}


def _who(rng: random.Random, level: str) -> str:
    lo, hi = AGES[level]
    fill = {"age": rng.randint(lo, hi), "job": pick(rng, OCCUPATIONS)}
    fill.update({k: pick(rng, v) for k, v in _FILL.get(level, {}).items()})
    return pick(rng, _WHO[level]).format(**fill)


def describe_self(rng: random.Random, attrs: dict) -> str:
    """``"I'm in second grade. Big words confuse me."``: who they are, maybe what they want,
    maybe an irrelevant detail."""
    level = attrs["level"]
    sentences = [_who(rng, level)]
    if rng.random() < 0.6:
        sentences.append(pick(rng, _ASK[level]))
    return with_detail(rng, sentences)


def past_messages(rng: random.Random, attrs: dict, n: int) -> list[str]:
    """``n`` messages the user sent an assistant, asking for explanations at their level."""
    return distinct(rng, [_PAST[attrs["level"]]], n)


def trait_scores(rng: random.Random, attrs: dict) -> dict[str, float]:
    """``{"expertise": 0.07}``: the level's centre (:data:`EXPERTISE`) ± 0.08."""
    centre = EXPERTISE[attrs["level"]]
    return {"expertise": round(min(1.0, max(0.0, centre + rng.uniform(-0.08, 0.08))), 2)}


def demographics(rng: random.Random, attrs: dict) -> str:
    """``"Age: 8"``; adults may name an occupation (always for experts); sometimes a country."""
    level = attrs["level"]
    lo, hi = AGES[level]
    parts = [f"Age: {rng.randint(lo, hi)}"]
    if level == "expert":
        parts.append(f"occupation: {pick(rng, OCCUPATIONS)}")
    elif level == "young adult" and rng.random() < 0.5:
        parts.append("occupation: undergraduate student")
    if rng.random() < 0.3:
        parts.append(f"country: {pick(rng, ['Portugal', 'Canada', 'Japan', 'Kenya', 'Chile', 'Norway'])}")
    return "; ".join(parts)
