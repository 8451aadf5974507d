"""Small text helpers shared by the generators and the oracle: words, sentences, syllables."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)|\n+")
_VOWEL_GROUPS = re.compile(r"[aeiouy]+")


def words(text: str) -> list[str]:
    """Word tokens (letters, digits, inner apostrophes): ``"don't stop"`` -> ``["don't", "stop"]``."""
    return _WORD.findall(text)


def n_words(text: str) -> int:
    return len(words(text))


def n_sentences(text: str) -> int:
    """Sentences, counting line breaks as boundaries (list items are sentences); at least 1."""
    parts = [p for p in _SENTENCE_END.split(text) if words(p)]
    return max(1, len(parts))


def syllables(word: str) -> int:
    """A standard vowel-group heuristic; exact enough to rank reading levels."""
    w = word.lower().replace("’", "'").split("'")[0]
    if not w:
        return 1
    if w.isdigit():
        return len(w)
    count = len(_VOWEL_GROUPS.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and count > 1:
        count -= 1
    return max(1, count)


def reading_grade(text: str) -> float:
    """Flesch-Kincaid grade level: ``0.39·words/sentence + 11.8·syllables/word − 15.59``."""
    ws = words(text)
    if not ws:
        return 0.0
    syl = sum(syllables(w) for w in ws)
    return 0.39 * len(ws) / n_sentences(text) + 11.8 * syl / len(ws) - 15.59


def squash(x: float) -> float:
    """Map any real to (−1, 1) smoothly, so features on different scales can be added."""
    return math.tanh(x)


def pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def join_and(items: Sequence[str]) -> str:
    """``[a, b, c]`` -> ``"a, b and c"``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
