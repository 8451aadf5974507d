"""Review benchmark: the user prefers reviews of a given sentiment and/or length.

Eight personas, as in FSPO's Review task: ``positive``, ``negative``, ``concise``, ``verbose`` and
the four combinations (``positive and concise`` ...). Every pair reviews one item twice; the chosen
review has the persona's attributes, the rejected one violates at least one of them, and any
attribute the persona does not care about is drawn independently for each side, so it carries no
signal. Lengths fall in disjoint bands (concise 3–6 words, medium 8–12, verbose 15–21).
"""

from __future__ import annotations

import math
import random
import re

from popi_sdk.data.synth._signals import distinct, pole_score, some, unrated_score, with_detail
from popi_sdk.data.synth._text import cap, pick, squash, words
from popi_sdk.signals import PreferencePair

NAME = "review"
DEFAULT_PAIRS = 4

SENTIMENTS = ("positive", "negative")
LENGTHS = ("concise", "verbose")
#: Persona levels in a fixed order; user ``i`` gets ``LEVELS[i % 8]`` so every level is balanced.
LEVELS = (
    ("positive", None),
    ("negative", None),
    (None, "concise"),
    (None, "verbose"),
    ("positive", "concise"),
    ("positive", "verbose"),
    ("negative", "concise"),
    ("negative", "verbose"),
)
LENGTH_BANDS = {"concise": (3, 6), "medium": (8, 12), "verbose": (15, 21)}

# --- what gets reviewed -------------------------------------------------------------------------

_FIRST = ["Marco", "Elena", "Sam", "Priya", "Kenji", "Lucia", "Omar", "Greta", "Tariq", "Mei",
          "Jonas", "Ada", "Felix", "Nadia", "Rosa", "Hugo", "Ines", "Viktor", "Zara", "Bruno"]
_ADJ = ["Silent", "Golden", "Amber", "Hidden", "Last", "Crimson", "Distant", "Paper", "Northern",
        "Quiet", "Electric", "Frozen", "Wild", "Hollow", "Burning", "Velvet", "Iron", "Lonely"]
_NOUN = ["Harbor", "Garden", "Signal", "Orchard", "Winter", "Lantern", "River", "Machine", "Island",
         "Crown", "Mirror", "Station", "Forest", "Letter", "Bridge", "Summer", "Tide", "Compass"]
_BRAND = ["Nimbus", "Aurora", "Vertex", "Pulse", "Zephyr", "Orbit", "Lumen", "Kestrel", "Nova",
          "Quill", "Atlas", "Ember"]
_CITY = ["Lisbon", "Denver", "Kyoto", "Oslo", "Austin", "Naples", "Porto", "Seoul", "Dublin",
         "Quebec", "Seville", "Perth"]
_PLACE_KIND = ["Trattoria", "Bistro", "Noodle Bar", "Diner", "Taqueria", "Cafe", "Grill",
               "Bakery", "Curry House", "Sushi Bar"]

# Each category: how to name an item, what to call it, and the aspects a review talks about.
_CATEGORIES: list[dict] = [
    {"name": lambda r: f"{pick(r, _FIRST)}'s {pick(r, _PLACE_KIND)}", "thing": "place",
     "aspects": ["food", "service", "atmosphere", "prices", "portions", "desserts", "coffee",
                 "staff", "menu", "seating"]},
    {"name": lambda r: f"the film \"The {pick(r, _ADJ)} {pick(r, _NOUN)}\"", "thing": "film",
     "aspects": ["plot", "acting", "soundtrack", "pacing", "visuals", "ending", "dialogue",
                 "lead actor", "script", "cinematography"]},
    {"name": lambda r: f"the novel \"{pick(r, _ADJ)} {pick(r, _NOUN)}\"", "thing": "book",
     "aspects": ["characters", "writing", "plot", "ending", "pacing", "dialogue", "world-building",
                 "narrator", "prose", "twist"]},
    {"name": lambda r: f"the {pick(r, _BRAND)} {r.randint(2, 9)} "
                       f"{pick(r, ['headphones', 'smartwatch', 'blender', 'vacuum', 'speaker', 'e-reader', 'kettle', 'keyboard'])}",
     "thing": "gadget",
     "aspects": ["battery life", "build quality", "design", "setup", "price", "sound", "controls",
                 "charging", "manual", "performance"]},
    {"name": lambda r: f"the {pick(r, _NOUN)} Hotel in {pick(r, _CITY)}", "thing": "hotel",
     "aspects": ["room", "staff", "location", "breakfast", "bed", "view", "pool", "check-in",
                 "bathroom", "price"]},
    {"name": lambda r: f"the {pick(r, _BRAND)} {pick(r, ['Notes', 'Budget', 'Fitness', 'Maps', 'Recipes', 'Photos'])} app",
     "thing": "app",
     "aspects": ["interface", "speed", "features", "notifications", "sync", "price", "search",
                 "layout", "updates", "support"]},
    {"name": lambda r: f"the album \"{pick(r, _ADJ)} {pick(r, _NOUN)}s\"", "thing": "album",
     "aspects": ["vocals", "lyrics", "production", "melodies", "opening track", "guitar work",
                 "drums", "mixing", "album length", "closing song"]},
    {"name": lambda r: f"{pick(r, _ADJ)} {pick(r, _NOUN)} Park", "thing": "park",
     "aspects": ["trails", "views", "parking", "picnic area", "signage", "playground", "lake",
                 "restrooms", "wildlife", "paths"]},
]

_PROMPTS = [
    "Write a review of {item}.",
    "Review {item}.",
    "What did you think of {item}?",
    "Share your opinion of {item}.",
    "How was {item}?",
    "Give me your take on {item}.",
    "Tell me about your experience with {item}.",
]

# --- sentiment vocabulary ------------------------------------------------------------------------

POSITIVE_WORDS = ["excellent", "wonderful", "superb", "delightful", "fantastic", "impressive",
                  "outstanding", "lovely", "great", "terrific", "brilliant", "charming",
                  "fabulous", "stellar", "perfect", "splendid", "gorgeous", "solid", "amazing",
                  "good"]
NEGATIVE_WORDS = ["disappointing", "poor", "awful", "mediocre", "terrible", "dreadful", "weak",
                  "sloppy", "frustrating", "bland", "clumsy", "dismal", "shoddy", "lousy", "dull",
                  "horrible", "flimsy", "tedious", "bad", "annoying"]
# Extra words the oracle counts (they also occur in model outputs), beyond the adjectives above.
_POSITIVE_EXTRA = ["love", "loved", "enjoy", "enjoyed", "recommend", "recommended", "best",
                   "beautiful", "friendly", "pleasant", "fun", "worth", "happy", "glad", "nice",
                   "favorite", "gem", "impressed", "delicious", "fresh", "smooth", "comfortable",
                   "clean", "helpful", "incredible", "awesome", "satisfied", "thrilled"]
_NEGATIVE_EXTRA = ["hate", "hated", "worst", "waste", "rude", "broken", "boring", "overpriced",
                   "dirty", "slow", "ugly", "letdown", "regret", "avoid", "disappointed", "sad",
                   "unpleasant", "uncomfortable", "cold", "stale", "noisy", "messy", "useless",
                   "mess", "problem", "problems", "complaint", "fail", "failed", "unhappy"]
POSITIVE_LEXICON = frozenset(POSITIVE_WORDS + _POSITIVE_EXTRA)
NEGATIVE_LEXICON = frozenset(NEGATIVE_WORDS + _NEGATIVE_EXTRA)
_NEGATORS = frozenset(["not", "never", "no", "hardly", "cannot", "without", "nothing", "isn't",
                       "wasn't", "don't", "didn't", "doesn't", "won't", "can't", "aren't",
                       "weren't", "couldn't", "wouldn't", "barely"])

_INTENS = ["really", "truly", "genuinely", "honestly", "simply", "frankly", "quite"]

# Aspect sentences. {a} = aspect, {j} = adjective of the right sentiment, {i} = intensifier.
_ASPECT_SENT = {
    "positive": ["The {a} {was} {j}.", "The {a} {was} {i} {j}.", "I loved the {a}.",
                 "The {a} impressed me.", "Loved the {a}, {i} {j}.", "{A}: {j}.",
                 "The {a} felt {j}.", "The {a} {was} {j} and I enjoyed it."],
    "negative": ["The {a} {was} {j}.", "The {a} {was} {i} {j}.", "I hated the {a}.",
                 "The {a} let me down.", "The {a} felt {j}.", "{A}: {j}.",
                 "The {a} {was} a letdown.", "The {a} {was} {j}, sadly."],
}
_OPENERS = {
    "positive": ["{Item} is a gem.", "What {an_j} {t}.", "I would recommend {item}.",
                 "{Item} was {i} {j}.", "I enjoyed {item} a lot."],
    "negative": ["{Item} was a letdown.", "What {an_j} {t}.", "I would avoid {item}.",
                 "{Item} was {i} {j}.", "I regret trying {item}."],
}
_CLOSERS = {
    "positive": ["Highly recommended.", "Worth every penny.", "I'd happily go back.",
                 "Five stars from me.", "A real pleasure.", "Loved it."],
    "negative": ["Not worth the money.", "I won't be back.", "Avoid it.", "One star, sadly.",
                 "A waste of time.", "Skip it."],
}
_SHORT = {  # concise reviews: one sentence of 3-6 words
    "positive": ["{J} {a}, {j2} {a2}.", "Loved it: {j} {a}.", "{J} {t}, {i} {j2}.",
                 "{J} {a} and {j2} {a2}.", "{J}. Recommended.", "{J} {t}. Loved it."],
    "negative": ["{J} {a}, {j2} {a2}.", "Hated it: {j} {a}.", "{J} {t}, {i} {j2}.",
                 "{J} {a} and {j2} {a2}.", "{J}. Avoid.", "{J} {t}. Skip it."],
}


def sample_persona(rng: random.Random, index: int) -> str:
    sentiment, length = LEVELS[index % len(LEVELS)]
    return persona_text(sentiment, length)


def persona_text(sentiment: str | None, length: str | None) -> str:
    level = " and ".join(x for x in (sentiment, length) if x)
    return f"This user prefers {level} reviews."


_PERSONA_RE = re.compile(r"This user prefers (?:(?:positive|negative)(?: and (?:concise|verbose))?|concise|verbose) reviews\.")


def matches(persona: str) -> bool:
    """Whether ``persona`` is worded exactly as this benchmark (and FSPO's Review) words them."""
    return bool(_PERSONA_RE.fullmatch(persona.strip()))


def parse_persona(persona: str) -> dict:
    """``"This user prefers positive and concise reviews."`` -> ``{"sentiment": "positive",
    "length": "concise"}``; an attribute the persona does not mention is ``None``."""
    found = set(re.findall(r"[a-z]+", persona.lower()))
    sentiment = next((s for s in SENTIMENTS if s in found), None)
    length = next((n for n in LENGTHS if n in found), None)
    if not (sentiment or length):
        raise ValueError(
            f"review persona {persona!r} names no attribute; expected one of positive, negative, "
            "concise, verbose (e.g. 'This user prefers positive and concise reviews.')"
        )
    return {"sentiment": sentiment, "length": length}


def sample_prompt(rng: random.Random) -> dict:
    """A prompt and what the two answers to it share (here: the item under review)."""
    category = _CATEGORIES[rng.randrange(len(_CATEGORIES))]
    item = category["name"](rng)
    return {"prompt": pick(rng, _PROMPTS).format(item=item), "item": item, "category": category}


def sample_pair(rng: random.Random, attrs: dict, state: dict) -> PreferencePair:
    want = {k: v for k, v in attrs.items() if v}
    # Flip a non-empty subset of the attributes the persona cares about.
    keys = sorted(want)
    flip = [k for k in keys if rng.random() < 0.5] or [pick(rng, keys)]
    chosen_attrs = {"sentiment": want.get("sentiment") or pick(rng, SENTIMENTS),
                    "length": want.get("length") or pick(rng, ("concise", "medium", "verbose"))}
    rejected_attrs = {
        "sentiment": _other(want["sentiment"]) if "sentiment" in flip
        else want.get("sentiment") or pick(rng, SENTIMENTS),
        "length": _other(want["length"]) if "length" in flip
        else want.get("length") or pick(rng, ("concise", "medium", "verbose")),
    }
    chosen = write_review(rng, state, **chosen_attrs)
    rejected = write_review(rng, state, **rejected_attrs)
    while rejected == chosen:  # possible only when both sides drew the same unrated attributes
        rejected = write_review(rng, state, **rejected_attrs)
    return PreferencePair(prompt=state["prompt"], chosen=chosen, rejected=rejected)


def _other(value: str) -> str:
    return {"positive": "negative", "negative": "positive",
            "concise": "verbose", "verbose": "concise"}[value]


def write_review(rng: random.Random, state: dict, sentiment: str, length: str) -> str:
    """One review of ``state['item']`` with the given sentiment and a length in its word band."""
    lo, hi = LENGTH_BANDS[length]
    category, item = state["category"], state["item"]
    adjectives = POSITIVE_WORDS if sentiment == "positive" else NEGATIVE_WORDS
    for _ in range(200):
        aspects = rng.sample(category["aspects"], 4)
        fill = {
            "item": item, "Item": cap(item), "t": category["thing"],
            "a": aspects[0], "A": cap(aspects[0]), "a2": aspects[1],
            "j": pick(rng, adjectives), "J": cap(pick(rng, adjectives)),
            "j2": pick(rng, adjectives), "i": pick(rng, _INTENS),
        }
        fill.update(was=_was(fill["a"]), an_j=_an(fill["j"]))
        if length == "concise":
            text = pick(rng, _SHORT[sentiment]).format(**fill)
        else:
            parts = [pick(rng, _OPENERS[sentiment]).format(**fill)]
            for aspect in aspects[: 1 if length == "medium" else 2]:
                j = pick(rng, adjectives)
                fill.update(a=aspect, A=cap(aspect), j=j, an_j=_an(j), was=_was(aspect),
                            i=pick(rng, _INTENS))
                parts.append(pick(rng, _ASPECT_SENT[sentiment]).format(**fill))
            if length == "verbose" or rng.random() < 0.5:
                parts.append(pick(rng, _CLOSERS[sentiment]))
            text = " ".join(parts)
        if lo <= len(words(text)) <= hi:
            return text
    raise RuntimeError(f"could not write a {length} review of {item!r} in {lo}-{hi} words")


def _was(aspect: str) -> str:
    return "were" if aspect.endswith("s") else "was"


def _an(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


# --- oracle features -------------------------------------------------------------------------------


def sentiment_score(text: str) -> float:
    """(positive − negative) / (positive + negative + 1) over lexicon words, in (−1, 1).

    A negator (not, never, won't, ...) up to three words before a lexicon word flips it."""
    toks = [w.lower().replace("’", "'") for w in words(text)]
    pos = neg = 0
    for k, tok in enumerate(toks):
        polarity = 1 if tok in POSITIVE_LEXICON else -1 if tok in NEGATIVE_LEXICON else 0
        if not polarity:
            continue
        if any(t in _NEGATORS for t in toks[max(0, k - 3) : k]):
            polarity = -polarity
        pos += polarity > 0
        neg += polarity < 0
    return (pos - neg) / (pos + neg + 1)


def length_score(text: str) -> float:
    """Longer is higher: ``tanh(ln(words / 13) / ln 2)``, 0 at 13 words, ±0.6 at half/double."""
    return squash(math.log(max(1, len(words(text))) / 13) / math.log(2))


def score(attrs: dict, text: str) -> float:
    """How well ``text`` fits the persona: the sum of the rated attributes' features."""
    total = 0.0
    if attrs.get("sentiment"):
        total += sentiment_score(text) * (1 if attrs["sentiment"] == "positive" else -1)
    if attrs.get("length"):
        total += length_score(text) * (1 if attrs["length"] == "verbose" else -1)
    return total


# --- signals besides pairs (see _signals.py) -------------------------------------------------------

#: Trait names and which pole scores high: ``positivity`` 1 = positive, ``verbosity`` 1 = verbose.
TRAITS = {"sentiment": ("positivity", "positive"), "length": ("verbosity", "verbose")}

# First-person phrasings per pole; several per pole, none of them a persona's wording.
_SELF = {
    "concise": ["I only want the gist, a few words.", "Keep it short; I only skim.",
                "I'm busy, so brief takes suit me best.", "A quick verdict in one line is all I read."],
    "verbose": ["I like reading the full story, every detail.", "Thorough write-ups are what I read.",
                "Tell me everything; I read reviews to the last line.",
                "I want the details, as many as you can give."],
    "positive": ["I like upbeat takes.", "I look for the bright side of things.",
                 "Enthusiastic reviews put me in a good mood.", "I prefer a cheerful, upbeat voice."],
    "negative": ["I trust critical reviews that name the flaws.",
                 "I'm skeptical by nature, so tell me about the faults.",
                 "Harsh honesty about faults helps me most.", "I read reviews for the complaints."],
}
_PAST = {
    "concise": ["Too long — shorter please.", "Way too wordy. Just give me the gist.",
                "Can you cut that down to a few words?", "Shorter, please. One line is plenty."],
    "verbose": ["That's too thin. Can you expand on it with more detail?",
                "Could you write a longer, more thorough version?",
                "Go into detail: tell me everything about it."],
    "positive": ["Can you be more upbeat? Mention what they got right.",
                 "Lighten up and tell me the bright side.", "I want an enthusiastic take, please.",
                 "That sounds grumpy; make it cheerful."],
    "negative": ["This reads like an ad. Be critical.", "What are the flaws? Don't sugarcoat it.",
                 "Too rosy. Tell me the downsides.", "Be harsher; I want the complaints."],
}


def _rated(attrs: dict) -> list[str]:
    return [attrs[a] for a in ("sentiment", "length") if attrs.get(a)]


def describe_self(rng: random.Random, attrs: dict) -> str:
    """What the user says about themselves: some of their poles, maybe an irrelevant detail."""
    return with_detail(rng, [pick(rng, _SELF[pole]) for pole in some(rng, _rated(attrs))])


def past_messages(rng: random.Random, attrs: dict, n: int) -> list[str]:
    """``n`` messages the user sent an assistant, each asking for one of their poles."""
    poles = _rated(attrs)
    rng.shuffle(poles)
    return distinct(rng, [_PAST[p] for p in poles], n)


def trait_scores(rng: random.Random, attrs: dict) -> dict[str, float]:
    """``{"positivity": 0.91, "verbosity": 0.08}``: rated axes near their pole, others ~0.5 or absent."""
    scores = {}
    for axis, (name, high) in TRAITS.items():
        value = pole_score(rng, attrs[axis] == high) if attrs.get(axis) else unrated_score(rng)
        if value is not None:
            scores[name] = value
    return scores
