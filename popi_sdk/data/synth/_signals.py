"""Signal kinds beyond pairs, shared by the three generators: which kinds a user gets, the
irrelevant details that make a self-description noisy, and trait scores near a pole.

Each generator module words its own signals (``describe_self``, ``past_messages``,
``trait_scores`` and, for ELIX, ``demographics``); this module only assembles them. Every kind is
drawn from its own ``random.Random`` (see :func:`kind_rng`), so asking for more kinds never changes
a user's pairs, examples or the text of another kind.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from types import ModuleType

from popi_sdk.errors import InputError
from popi_sdk.signals import HistoryItem

#: Every kind of signal a synthetic user can have, in the order they are listed and drawn.
SIGNAL_KINDS = ("pairs", "persona", "history", "traits", "demographics")
#: The ``signals`` value that draws a random non-empty subset of kinds per user.
MIXED = "mixed"
DEFAULT_SIGNALS = ("pairs",)
HISTORY_RANGE = (2, 4)

# Details about a user that bear on no benchmark's preference: no sentiment or style words, no
# ages, school years or jobs (the tests check none of them carries a cue of any pole).
_DETAILS = [
    "I have two cats.", "I live near the coast.", "I usually read on the train.",
    "My hobby is gardening.", "I grew up in a small town.", "I drink a lot of tea.",
    "I have a dog named Biscuit.", "Weekends are for hiking.", "I'm left-handed.",
    "I collect old maps.", "I cycle to most places.", "My sister lives abroad.",
]


def kinds_of(gen: ModuleType) -> tuple[str, ...]:
    """The signal kinds benchmark ``gen`` can give (demographics only where they mean something)."""
    return tuple(k for k in SIGNAL_KINDS if k != "demographics" or hasattr(gen, "demographics"))


def parse_signals(value: str | Sequence[str], gen: ModuleType) -> tuple[str, ...] | str:
    """``"pairs,persona"`` or ``["pairs", "persona"]`` -> ``("pairs", "persona")`` in canonical
    order; ``"mixed"`` stays ``"mixed"``. Unknown names and kinds the benchmark lacks are errors."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names == [MIXED]:
        return MIXED
    allowed = kinds_of(gen)
    unknown = [n for n in names if n not in SIGNAL_KINDS]
    if unknown or not names:
        raise InputError(
            f"unknown signal kind(s) {unknown or names}; choose from {', '.join(allowed)} "
            f"(comma-separated) or '{MIXED}'"
        )
    missing = [n for n in names if n not in allowed]
    if missing:
        raise InputError(
            f"the {gen.NAME} benchmark has no {', '.join(missing)} signal (its personas say nothing "
            f"they would describe); choose from {', '.join(allowed)}"
        )
    return tuple(k for k in SIGNAL_KINDS if k in names)


def kind_rng(kind: str, seed: int, index: int, version: str, what: str) -> random.Random:
    """The random stream for one user's ``what`` (a signal kind, or ``kinds`` for the mixed draw)."""
    return random.Random(f"{version}/{kind}/{seed}/{index}/{what}")


def draw_kinds(rng: random.Random, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A non-empty subset of ``allowed``, uniform over all of them."""
    mask = rng.randrange(1, 2 ** len(allowed))
    return tuple(k for bit, k in enumerate(allowed) if mask >> bit & 1)


def some(rng: random.Random, items: Sequence, keep: float = 0.6) -> list:
    """A non-empty random subset of ``items`` in their order ("partial": not every attribute)."""
    kept = [x for x in items if rng.random() < keep]
    return kept or [items[rng.randrange(len(items))]]


def with_detail(rng: random.Random, sentences: list[str], p: float = 0.5) -> str:
    """Join sentences, with probability ``p`` inserting one irrelevant detail ("noisy")."""
    out = list(sentences)
    if rng.random() < p:
        out.insert(rng.randint(0, len(out)), _DETAILS[rng.randrange(len(_DETAILS))])
    return " ".join(out)


def pole_score(rng: random.Random, high: bool) -> float:
    """A trait score near one end: 0.75–1.0 for the high pole, 0.0–0.25 for the low one."""
    return round(rng.uniform(0.75, 1.0) if high else rng.uniform(0.0, 0.25), 2)


def unrated_score(rng: random.Random) -> float | None:
    """For an axis the persona does not rate: omitted half the time, else 0.4–0.6."""
    return round(rng.uniform(0.4, 0.6), 2) if rng.random() < 0.5 else None


def history(rng: random.Random, gen: ModuleType, attrs: dict) -> list[HistoryItem]:
    """2–4 past messages to an assistant, each reacting (mostly) to a prompt of the benchmark."""
    n = rng.randint(*HISTORY_RANGE)
    items = []
    for text in gen.past_messages(rng, attrs, n):
        prompt = gen.sample_prompt(rng)["prompt"] if rng.random() < 0.7 else ""
        items.append(HistoryItem(prompt=prompt, text=text))
    return items


def distinct(rng: random.Random, pools: list[list[str]], n: int) -> list[str]:
    """``n`` texts, the ``k``-th from ``pools[k % len(pools)]``, without repeating a text while
    the pools still have unused ones."""
    used: set[str] = set()
    out = []
    for k in range(n):
        pool = pools[k % len(pools)]
        fresh = [t for t in pool if t not in used] or pool
        text = fresh[rng.randrange(len(fresh))]
        used.add(text)
        out.append(text)
    return out
