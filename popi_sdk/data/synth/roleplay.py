"""Roleplay benchmark: the user prefers answers in a particular style, set by trait axes.

Five axes, each with two poles; a persona fixes two or three of them (120 personas), e.g.
``"The user prefers casual language, a playful tone and brief answers."``. Every pair answers one
advice question twice with the same tips: the chosen answer has all the persona's poles, the
rejected one flips at least one of them, and axes the persona does not name are drawn
independently for each side. The oracle measures each axis from surface markers.
"""

from __future__ import annotations

import itertools
import math
import random
import re

from popi_sdk.data.synth._signals import distinct, pole_score, some, unrated_score, with_detail
from popi_sdk.data.synth._text import cap, join_and, pick, squash, words
from popi_sdk.data.synth.roleplay_topics import TOPICS
from popi_sdk.signals import PreferencePair

NAME = "roleplay"
DEFAULT_PAIRS = 8

#: axis -> (first pole, second pole); a feature is positive for the first pole.
AXES = {
    "formality": ("formal", "casual"),
    "humor": ("playful", "serious"),
    "length": ("detailed", "brief"),
    "warmth": ("encouraging", "matter-of-fact"),
    "format": ("list", "prose"),
}
#: How each pole is named in a persona (and parsed back).
PHRASES = {
    "formal": "formal language", "casual": "casual language",
    "playful": "a playful tone", "serious": "a serious tone",
    "detailed": "detailed answers", "brief": "brief answers",
    "encouraging": "an encouraging manner", "matter-of-fact": "a matter-of-fact manner",
    "list": "bulleted lists", "prose": "flowing prose",
}
LENGTH_BANDS = {"brief": (5, 18), "detailed": (28, 40)}
MAX_CHARS = 230  # keeps every answer within about 64 tokens of a Llama-style tokenizer
#: Every persona: 2 or 3 axes, each at one pole, in AXES order.
PERSONAS: list[dict] = [
    dict(zip(axes, poles))
    for k in (2, 3)
    for axes in itertools.combinations(AXES, k)
    for poles in itertools.product(*(AXES[a] for a in axes))
]

_CONTRACT = [("do not", "don't"), ("does not", "doesn't"), ("cannot", "can't"), ("it is", "it's"),
             ("you are", "you're"), ("you will", "you'll"), ("that is", "that's"),
             ("I am", "I'm"), ("I would", "I'd"), ("you have", "you've"), ("is not", "isn't"),
             ("here is", "here's"), ("what is", "what's"), ("let us", "let's")]
_OPEN = {
    ("formal", "encouraging"): ["Thank you for asking; this is a worthwhile goal.",
                                "That is an excellent question.", "I am glad you asked."],
    ("casual", "encouraging"): ["Great question, happy to help.", "Oh nice, good for you.",
                                "Love that you're doing this."],
    ("formal", "matter-of-fact"): ["The approach is as follows.", "Here is the procedure.", ""],
    ("casual", "matter-of-fact"): ["Okay, so.", "Right, here goes.", ""],
}
_CLOSE = {
    ("formal", "encouraging"): ["I am confident you will do well.",
                                "I wish you the very best of luck.",
                                "You are more capable than you think.", "Best of luck.",
                                "Good luck to you."],
    ("casual", "encouraging"): ["You've got this!", "Rooting for you!", "You'll crush it.",
                                "Good luck, friend!"],
}
_QUIPS = {
    "formal": ["(A modest victory dance is permitted.)", "(Snacks are, regrettably, optional.)",
               "Your future self may wish to send a thank-you card.",
               "Worst case, you acquire an amusing story.", "(Capes remain optional.)",
               "(Snacks are advisable.)"],
    "casual": ["(Snacks help. Snacks always help, haha.)", "No capes required, lol.",
               "Your future self will send you a thank-you card.",
               "Worst case, you get a funny story out of it, haha.", "No capes needed, lol.",
               "Snacks help, haha."],
}
_LEAD_IN = {"formal": ["I would recommend the following:", "Please consider these steps:",
                      "The following steps are advisable:", "Please consider:"],
            "casual": ["Okay, here's the deal:", "Quick list, honestly:", "So yeah, try this:",
                       "Okay, so:"]}
_CONNECT = {"formal": ["Furthermore,", "Additionally,", "Moreover,"],
            "casual": ["Also,", "Plus,", "And honestly,"]}
_FIRST = {"formal": ["I would recommend that you", "It is advisable to", "First, you should"],
          "casual": ["Honestly, just", "Try to", "Super simple: first,"]}


def persona_text(attrs: dict) -> str:
    return f"The user prefers {join_and([PHRASES[attrs[a]] for a in AXES if a in attrs])}."


def sample_persona(rng: random.Random, index: int) -> str:
    return persona_text(PERSONAS[rng.randrange(len(PERSONAS))])


def matches(persona: str) -> bool:
    """Whether ``persona`` is worded exactly as this benchmark words them."""
    m = re.fullmatch(r"The user prefers (.+)\.", persona.strip())
    if not m:
        return False
    rest = m.group(1)
    for phrase in sorted(PHRASES.values(), key=len, reverse=True):
        rest = rest.replace(phrase, "")
    return re.fullmatch(r"[\s,]*(?:and[\s,]*)?", rest) is not None  # only the separators left


def parse_persona(persona: str) -> dict:
    """``"The user prefers casual language and brief answers."`` ->
    ``{"formality": "casual", "length": "brief"}``."""
    low = persona.lower()
    attrs = {}
    for axis, poles in AXES.items():
        named = [p for p in poles if PHRASES[p] in low]
        if len(named) == 1:
            attrs[axis] = named[0]
    if not attrs:
        raise ValueError(
            f"roleplay persona {persona!r} names no trait; expected phrases such as "
            f"{', '.join(repr(p) for p in list(PHRASES.values())[:4])} ..."
        )
    return attrs


def sample_prompt(rng: random.Random) -> dict:
    topic = TOPICS[rng.randrange(len(TOPICS))]
    return {"prompt": pick(rng, topic["asks"]), "topic": topic}


def sample_pair(rng: random.Random, attrs: dict, state: dict) -> PreferencePair:
    keys = list(attrs)
    tips = rng.sample(state["topic"]["tips"], 4)
    for _ in range(200):
        flip = [k for k in keys if rng.random() < 0.4] or [pick(rng, keys)]
        chosen_style = {a: attrs.get(a) or pick(rng, AXES[a]) for a in AXES}
        rejected_style = {a: _other(a, attrs[a]) if a in flip else chosen_style[a] if a in attrs
                          else pick(rng, AXES[a]) for a in AXES}
        chosen = respond(rng, tips, chosen_style)
        rejected = respond(rng, tips, rejected_style)
        if chosen != rejected and score(attrs, chosen) > score(attrs, rejected) + 0.1:
            return PreferencePair(prompt=state["prompt"], chosen=chosen, rejected=rejected)
    raise RuntimeError(f"could not separate a pair for persona {attrs}")


def _other(axis: str, pole: str) -> str:
    a, b = AXES[axis]
    return b if pole == a else a


def respond(rng: random.Random, tips: list[tuple[str, str]], style: dict) -> str:
    """An answer giving ``tips`` (action, reason) in ``style`` (a pole for every axis)."""
    register, warmth = style["formality"], style["warmth"]
    lo, hi = LENGTH_BANDS[style["length"]]
    brief = style["length"] == "brief"

    def pick_(options: list[str]) -> str:  # brief answers draw only the short phrasings
        return pick(rng, [o for o in options if len(words(o)) <= 4] if brief else options)

    for _ in range(400):
        n_tips = rng.randint(1, 2) if brief else rng.randint(2, 4)
        n_reasons = 0 if brief else rng.randint(1, n_tips)
        parts: list[str] = []
        opener = pick(rng, _OPEN[(register, warmth)])
        if opener and not brief and rng.random() < 0.5 and not (
            style["format"] == "list" and warmth == "matter-of-fact"  # the lead-in opens it
        ):
            parts.append(opener)
        lines = []
        for k, (action, reason) in enumerate(tips[:n_tips]):
            sentence = action + (f", because {reason}" if k < n_reasons else "")
            lines.append(sentence)
        if style["format"] == "list":
            body = pick_(_LEAD_IN[register]) + "\n" + "\n".join(f"- {cap(line)}." for line in lines)
        else:
            sentences = [f"{pick(rng, _FIRST[register])} {lines[0]}."]
            sentences += [f"{pick(rng, _CONNECT[register])} {line}." for line in lines[1:]]
            body = " ".join(sentences)
        parts.append(body)
        if style["humor"] == "playful":
            parts.append(pick_(_QUIPS[register]))
        if warmth == "encouraging":
            parts.append(pick_(_CLOSE[(register, warmth)]))
        text = _join(parts)
        if register == "casual":
            text = _contract(text)
        if lo <= len(words(text)) <= hi and len(text) <= MAX_CHARS:
            return text
    raise RuntimeError(f"could not write an answer in {lo}-{hi} words for style {style}")


def _join(parts: list[str]) -> str:
    """Sentences run on with spaces; a bulleted block sits on its own lines."""
    out = parts[0]
    for prev, part in zip(parts, parts[1:]):
        out += ("\n" if "\n" in prev or prev.startswith("- ") or part.startswith("- ") else " ") + part
    return out


def _contract(text: str) -> str:
    for long, short in _CONTRACT:
        text = re.sub(rf"\b{long}\b", short, text)
        text = re.sub(rf"\b{cap(long)}\b", cap(short), text)
    return text


# --- oracle features -------------------------------------------------------------------------------

_CONTRACTION = re.compile(r"\b\w+(?:n't|'re|'ll|'ve|'m|'d)\b|\b(?:it|that|what|here|there|let)'s\b", re.I)
_CASUAL = ["hey", "okay", "ok", "honestly", "gonna", "wanna", "kinda", "super", "totally", "stuff",
           "yeah", "cool", "awesome", "plus", "nice", "crush", "lol", "haha", "right", "just"]
_FORMAL = ["certainly", "furthermore", "additionally", "moreover", "therefore", "recommend",
           "advisable", "consequently", "however", "regrettably", "acquire", "procedure",
           "approach", "confident", "wish", "thank", "capable", "should", "please", "following"]
_HUMOR = ["haha", "lol", "joke", "kidding", "victory dance", "capes", "snacks", "funny",
          "amusing", "pun", "silly", "thank-you card", "hehe", ":)", "😄", "😂"]
_WARM = ["you've got this", "you got this", "you can do", "good luck", "best of luck",
         "rooting for you", "great question", "excellent question", "happy to help",
         "glad you asked", "believe in you", "proud", "confident you", "don't worry",
         "do not worry", "crush it", "worthwhile", "good for you", "love that",
         "more capable than you think", "thank you for asking"]
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.M)


def _markers(markers: list[str]) -> re.Pattern:
    longest_first = sorted(markers, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, longest_first)) + r")(?!\w)")


_CASUAL_RE, _FORMAL_RE, _HUMOR_RE, _WARM_RE = map(_markers, (_CASUAL, _FORMAL, _HUMOR, _WARM))


def _count(text: str, pattern: re.Pattern) -> int:
    return len(pattern.findall(text.lower().replace("’", "'")))


def features(text: str) -> dict:
    """Per-axis features in (−1, 1), positive toward the first pole of each axis in :data:`AXES`."""
    formal = _count(text, _FORMAL_RE)
    casual = _count(text, _CASUAL_RE) + len(_CONTRACTION.findall(text.replace("’", "'")))
    n = max(1, len(words(text)))
    return {
        "formality": (formal - casual) / (formal + casual + 1),
        "humor": squash(_count(text, _HUMOR_RE)),
        "length": squash(math.log(n / 22) / math.log(2)),
        "warmth": squash(_count(text, _WARM_RE)),
        "format": squash(len(_LIST_LINE.findall(text))),
    }


def score(attrs: dict, text: str) -> float:
    """Mean over the persona's axes of the feature, signed toward the persona's pole."""
    feats = features(text)
    signed = [feats[axis] * (1 if pole == AXES[axis][0] else -1) for axis, pole in attrs.items()]
    return sum(signed) / len(signed)


# --- signals besides pairs (see _signals.py) -------------------------------------------------------

#: Trait name per axis; a score near 1 is the axis's first pole (formal, playful, detailed,
#: encouraging, list), near 0 its second.
TRAITS = {"formality": "formality", "humor": "playfulness", "length": "verbosity",
          "warmth": "warmth", "format": "bullet_lists"}

# First-person phrasings per pole; several per pole, none of them a persona's wording.
_SELF = {
    "formal": ["Polished wording matters to me.", "I appreciate a professional register.",
               "I like things worded properly."],
    "casual": ["Talk to me like a friend.", "I'm a laid-back person; keep it relaxed.",
               "Chatty is good with me."],
    "playful": ["A joke or two keeps me reading.", "I like it when things are a bit funny.",
                "Make me laugh if you can."],
    "serious": ["Please play it straight with me.", "I take these things seriously.",
                "I prefer a sober, earnest style."],
    "detailed": ["I want the thorough version, with details.", "Explain things in depth.",
                 "Walk me through it step by step."],
    "brief": ["Keep it short.", "I only have time for a quick answer.", "Get to the point fast."],
    "encouraging": ["A bit of encouragement goes a long way with me.",
                    "I need someone to cheer me on.", "Supportive words help me keep going."],
    "matter-of-fact": ["Skip the pep talk; just the facts.", "I'm a no-nonsense person.",
                       "State things plainly; I don't need reassurance."],
    "list": ["Bullet points help me scan.", "I like a list I can tick off.",
             "Give me steps as points, one per line."],
    "prose": ["I like a paragraph I can read through.", "Write in full sentences, like a letter.",
              "I'd rather read a connected paragraph."],
}
_PAST = {
    "formal": ["Could you phrase that more professionally?",
               "Please keep the wording polished; this is for work."],
    "casual": ["Whoa, that's stiff. Talk to me like a friend.", "Relax, you can be chatty with me."],
    "playful": ["Ha, throw in a joke next time.", "That was dry. Make it funny."],
    "serious": ["Please play it straight; this matters to me.", "Keep it earnest, I'm not in the mood."],
    "detailed": ["Can you go into more depth?", "Walk me through it step by step, with details."],
    "brief": ["Give me the short version.", "Just the quick answer, please."],
    "encouraging": ["I'm nervous about this; some encouragement would help.",
                    "Could you cheer me on a bit?"],
    "matter-of-fact": ["No pep talk needed, just the facts.", "Skip the reassurance and state it plainly."],
    "list": ["Can you put that in bullet points?", "A list would be easier to follow."],
    "prose": ["Please write it as a paragraph instead.", "Full sentences, please, like a letter."],
}


def describe_self(rng: random.Random, attrs: dict) -> str:
    """What the user says about themselves: some of their poles, maybe an irrelevant detail."""
    poles = [attrs[a] for a in AXES if a in attrs]
    return with_detail(rng, [pick(rng, _SELF[pole]) for pole in some(rng, poles)])


def past_messages(rng: random.Random, attrs: dict, n: int) -> list[str]:
    """``n`` messages the user sent an assistant, each asking for one of their poles."""
    poles = [attrs[a] for a in AXES if a in attrs]
    rng.shuffle(poles)
    return distinct(rng, [_PAST[p] for p in poles], n)


def trait_scores(rng: random.Random, attrs: dict) -> dict[str, float]:
    """One score per axis named in :data:`TRAITS`: the persona's axes near their pole (first pole
    near 1), the others ~0.5 or absent."""
    scores = {}
    for axis, name in TRAITS.items():
        value = pole_score(rng, attrs[axis] == AXES[axis][0]) if axis in attrs else unrated_score(rng)
        if value is not None:
            scores[name] = value
    return scores
