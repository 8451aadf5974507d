"""Synthetic personalization benchmarks: procedural, seeded, no LLM, seconds to generate.

Three look-alikes of the FSPO tasks, each a module with the same small interface:

- ``review``: reviews whose preferred side follows a sentiment and/or length persona;
- ``elix``: explanations at five expertise levels (child ... expert);
- ``roleplay``: answers in a style set by several trait axes (formality, humor, ...).

Every user is drawn from ``random.Random`` seeded by ``(kind, seed, user index)``, so the same seed
gives the same bytes, and user ``i`` does not depend on how many users are generated.
Users get pair signals by default; ``signals=`` adds a self-description, past messages, trait
scores and (ELIX) demographics, each worded by the benchmark and agreeing with the persona
(:mod:`._signals`). :func:`persona_score` is the deterministic oracle: it scores any text
against a persona from measurable features, and is what the oracle judge uses.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from popi_sdk.data.jsonl import write_jsonl
from popi_sdk.data.synth import _signals, elix, review, roleplay
from popi_sdk.data.synth._signals import DEFAULT_SIGNALS, MIXED, SIGNAL_KINDS
from popi_sdk.data.synth._text import join_and
from popi_sdk.errors import InputError
from popi_sdk.signals import Signals, UserRow

#: Version of the generators; part of ``meta.json`` so results name the data they ran on.
SYNTH_VERSION = "popi-synth-v1"

_GENERATORS: dict[str, ModuleType] = {"review": review, "elix": elix, "roleplay": roleplay}
KINDS = tuple(_GENERATORS)


def _generator(kind: str) -> ModuleType:
    try:
        return _GENERATORS[kind]
    except KeyError:
        raise InputError(f"unknown benchmark kind {kind!r}; choose one of {', '.join(KINDS)}") from None


def signal_kinds(kind: str) -> tuple[str, ...]:
    """The kinds of signal benchmark ``kind`` can give its users (``demographics`` only for elix)."""
    return _signals.kinds_of(_generator(kind))


def default_pairs(kind: str) -> int:
    """Signal pairs per user when not given: 4 for review and elix, 8 for roleplay (as FSPO)."""
    return _generator(kind).DEFAULT_PAIRS


def synth_users(
    kind: str,
    n_users: int,
    seed: int = 0,
    *,
    pairs: int | None = None,
    examples: tuple[int, int] = (2, 4),
    signals: str | Sequence[str] = DEFAULT_SIGNALS,
) -> list[UserRow]:
    """Generate ``n_users`` canonical rows of benchmark ``kind``.

    Each user has ``pairs`` signal pairs (default :func:`default_pairs`) and between
    ``examples[0]`` and ``examples[1]`` labeled examples; every pair of a user answers a different
    prompt, so signals and examples never share a prompt. ``persona`` is the ground truth.

    ``signals`` picks the kinds of signal users get: a subset of :data:`SIGNAL_KINDS` (a list or
    ``"pairs,persona"``; ``demographics`` only for ``elix``), or ``"mixed"`` for a random
    non-empty subset per user. Every kind agrees with the persona. A user's pairs and examples
    are the same whatever kinds are asked for (without ``pairs`` the signal pairs are dropped and
    the examples kept), and each kind is drawn from its own seeded stream, so the default
    ``("pairs",)`` gives the bytes it always gave.
    """
    gen = _generator(kind)
    wanted = _signals.parse_signals(signals, gen)
    n_pairs = gen.DEFAULT_PAIRS if pairs is None else pairs
    lo, hi = examples
    if n_users < 1:
        raise InputError(f"n_users must be at least 1, got {n_users}")
    if n_pairs < 1:
        raise InputError(f"pairs must be at least 1, got {n_pairs}")
    if not 0 <= lo <= hi or hi < 1:
        raise InputError(f"examples must be a range lo-hi with 0 <= lo <= hi and hi >= 1, got {lo}-{hi}")
    rows = []
    for index in range(n_users):
        rng = random.Random(f"{SYNTH_VERSION}/{kind}/{seed}/{index}")
        persona = gen.sample_persona(rng, index)
        attrs = gen.parse_persona(persona)
        states = _distinct_prompts(gen, rng, n_pairs + rng.randint(lo, hi))
        made = [gen.sample_pair(rng, attrs, state) for state in states]
        rows.append(
            UserRow(
                user_id=f"{kind}-{index:05d}",
                signals=_user_signals(gen, kind, seed, index, attrs, made[:n_pairs], wanted),
                examples=made[n_pairs:],
                persona=persona,
            )
        )
    return rows


def _user_signals(gen, kind, seed, index, attrs, pairs, wanted) -> Signals:
    def stream(what: str) -> random.Random:
        return _signals.kind_rng(kind, seed, index, SYNTH_VERSION, what)

    kinds = _signals.draw_kinds(stream("kinds"), _signals.kinds_of(gen)) if wanted == MIXED else wanted
    made: dict = {"pairs": pairs if "pairs" in kinds else []}
    if "persona" in kinds:
        made["persona"] = gen.describe_self(stream("persona"), attrs)
    if "history" in kinds:
        made["history"] = _signals.history(stream("history"), gen, attrs)
    if "traits" in kinds:
        made["traits"] = gen.trait_scores(stream("traits"), attrs)
    if "demographics" in kinds:
        made["demographics"] = gen.demographics(stream("demographics"), attrs)
    return Signals(**made)


def _distinct_prompts(gen: ModuleType, rng: random.Random, n: int) -> list[dict]:
    states: list[dict] = []
    seen: list[str] = []
    for _ in range(n * 50):
        state = gen.sample_prompt(rng)
        if state["prompt"] not in seen:
            seen.append(state["prompt"])
            states.append(state)
            if len(states) == n:
                return states
    raise InputError(f"could not draw {n} distinct prompts for one user; ask for fewer pairs/examples")


def split_train_test(
    rows: list[UserRow], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[UserRow], list[UserRow]]:
    """Split users (never their pairs) into disjoint train and test lists.

    Stratified by persona: users are grouped by persona and test users are taken at even spacing
    through the groups, so every persona with enough users appears on both sides. Each side keeps
    the original order. At least one user lands on each side when there are two or more.
    """
    if not 0 <= test_fraction < 1:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n = len(rows)
    n_test = round(n * test_fraction)
    if n >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), n - 1)
    order = list(range(n))
    random.Random(f"{SYNTH_VERSION}/split/{seed}").shuffle(order)
    order.sort(key=lambda i: rows[i].persona or "")  # stable: shuffled within each persona
    picked = {order[int((j + 0.5) * n / n_test)] for j in range(n_test)} if n_test else set()
    train = [r for i, r in enumerate(rows) if i not in picked]
    test = [r for i, r in enumerate(rows) if i in picked]
    return train, test


def write_benchmark(
    kind: str,
    out_dir: str | os.PathLike,
    n_users: int,
    seed: int = 0,
    *,
    pairs: int | None = None,
    examples: tuple[int, int] = (2, 4),
    test_fraction: float = 0.2,
    signals: str | Sequence[str] = DEFAULT_SIGNALS,
) -> dict:
    """Generate users and write ``train.jsonl``, ``test.jsonl`` and ``meta.json`` into ``out_dir``.

    Returns the metadata written to ``meta.json`` (kind, seed, counts, file names, and the signal
    kinds under ``signals``: a list, or ``"mixed"``). The key is left out for the default
    ``["pairs"]``, so files written before signal kinds existed stay byte-identical."""
    wanted = _signals.parse_signals(signals, _generator(kind))
    rows = synth_users(kind, n_users, seed, pairs=pairs, examples=examples, signals=wanted)
    train, test = split_train_test(rows, test_fraction, seed)
    out = Path(out_dir)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    meta = {
        "generator": SYNTH_VERSION,
        "kind": kind,
        "seed": seed,
        "users": n_users,
        "train_users": len(train),
        "test_users": len(test),
        "pairs_per_user": default_pairs(kind) if pairs is None else pairs,
        "examples_per_user": list(examples),
        "test_fraction": test_fraction,
        "files": {"train": "train.jsonl", "test": "test.jsonl"},
    }
    if wanted != DEFAULT_SIGNALS:
        meta["signals"] = wanted if wanted == MIXED else list(wanted)
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


# --- the oracle ------------------------------------------------------------------------------------


def infer_kind(persona: str) -> str | None:
    """Which benchmark's wording ``persona`` has (``None`` for free-text personas).

    Strict on purpose: a free-text persona that happens to mention "expert" or "positive" is not
    a synthetic one, and the oracle must not pretend to judge it."""
    return next((kind for kind, gen in _GENERATORS.items() if gen.matches(persona)), None)


def persona_attributes(persona: str, kind: str | None = None) -> dict:
    """Parse a persona this package writes into its machine-readable attributes.

    ``review``: ``{"sentiment": "positive"|"negative"|None, "length": "concise"|"verbose"|None}``;
    ``elix``: ``{"level": "child"|"preteen"|"teenager"|"young adult"|"expert", "index": 0..4}``;
    ``roleplay``: ``{axis: pole}`` for the axes the persona names (see :mod:`.roleplay`).
    ``kind`` defaults to :func:`infer_kind`. Raises :class:`InputError` when nothing parses.
    """
    kind = kind or infer_kind(persona)
    if kind is None:
        raise InputError(
            f"persona {persona!r} is not one the synthetic benchmarks write; the oracle judge "
            "scores only synthetic personas (use an LLM judge for other data)"
        )
    try:
        return _generator(kind).parse_persona(persona)
    except ValueError as e:
        raise InputError(str(e)) from None


def persona_instruction(persona: str) -> str | None:
    """A persona this package writes, reworded as an instruction to the writer (the form the
    small base model follows best on P-Soups, "Generate a response that ..."); ``None`` for a
    persona in no synthetic wording (a free-text one is left as its author wrote it).

    ``"The user is a child."`` -> ``"Generate a response that can be easily understood by a
    child."``; ``"This user prefers positive and concise reviews."`` -> ``"Generate a positive
    and concise review."``; ``"The user prefers a playful tone and brief answers."`` ->
    ``"Generate a response with a playful tone and brief answers."``."""
    kind = infer_kind(persona)
    if kind is None:
        return None
    attrs = persona_attributes(persona, kind)
    if kind == "elix":
        level = attrs["level"]
        if level == "expert":  # P-Soups' other end: "... that only a PhD Student ... could understand."
            return "Generate a response that only an expert in the field could understand."
        article = "an" if level[0] in "aeiou" else "a"
        return f"Generate a response that can be easily understood by {article} {level}."
    if kind == "review":
        words = " and ".join(a for a in (attrs["sentiment"], attrs["length"]) if a)
        return f"Generate a {words} review."
    return f"Generate a response with {join_and([roleplay.PHRASES[attrs[a]] for a in roleplay.AXES if a in attrs])}."


def persona_score(persona: str | dict, text: str, kind: str | None = None) -> float:
    """How well ``text`` fits ``persona``; higher is better; deterministic; no model.

    ``persona`` is the persona string or its parsed attributes (then ``kind`` is required).
    Compare two texts for one persona by their scores (that is the oracle judge); the scale is
    per benchmark: review sums sentiment and length features in (−1, 1) each; elix is minus the
    distance in grade levels between the text's reading grade and the level's target; roleplay
    averages per-axis trait features in (−1, 1).
    """
    if isinstance(persona, dict):
        if kind is None:
            raise InputError("persona_score with parsed attributes needs kind=")
        attrs = persona
    else:
        kind = kind or infer_kind(persona)
        attrs = persona_attributes(persona, kind)
    return _generator(kind).score(attrs, text)


__all__ = [
    "KINDS",
    "MIXED",
    "SIGNAL_KINDS",
    "SYNTH_VERSION",
    "default_pairs",
    "infer_kind",
    "persona_attributes",
    "persona_instruction",
    "persona_score",
    "signal_kinds",
    "split_train_test",
    "synth_users",
    "write_benchmark",
]
