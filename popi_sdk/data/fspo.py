"""Load FSPO datasets (Review, ELIX, Roleplay) into canonical rows.

FSPO publishes preference rows, not users. Two schemas:

- Review / ELIX (``Asap7772/steered_reviews_full_autolabel_gpt4o_pref``,
  ``Asap7772/elix_generations_autolabel``): ``prompt, response_x, response_y, level_x, level_y,
  scorer_level, label``; ``label`` 0 means ``response_x`` is preferred, 1 means ``response_y``.
  The user is ``scorer_level``.
- Roleplay (``sher222/persona-iterative-responses``): ``x, yw, yl, level, score_persona``;
  ``yw`` is preferred; the user is ``level`` and ``score_persona`` describes them.

Each user's pairs, in file order, are cut into windows of ``window`` signal pairs followed by
``examples`` target pairs (FSPO: 4 + 1 for Review/ELIX, 8 + 1 for Roleplay); every window becomes
one canonical row, so signals and examples never share a pair.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from pydantic import ValidationError

from popi_sdk.data.records import Conversion, read_records, require_text
from popi_sdk.errors import DataFileError, InputError, describe_validation_error
from popi_sdk.signals import PreferencePair, Signals, UserRow

PAIR_FIELDS = ("prompt", "response_x", "response_y", "scorer_level", "label")
ROLEPLAY_FIELDS = ("x", "yw", "yl", "level")
DEFAULT_WINDOW = {"pairs": 4, "roleplay": 8}

_ELIX_LEVELS = ("child", "preteen", "teenager", "young adult", "expert")
_REVIEW_WORDS = ("positive", "negative", "concise", "verbose")


def detect_variant(record: dict) -> str:
    """``"pairs"`` (Review/ELIX schema) or ``"roleplay"``, from the record's field names."""
    keys = set(record)
    if {"response_x", "response_y"} <= keys:
        return "pairs"
    if {"yw", "yl"} <= keys:
        return "roleplay"
    raise InputError(
        f"the first record has fields {sorted(keys)}; expected the FSPO Review/ELIX schema "
        f"({', '.join(PAIR_FIELDS)}) or the Roleplay schema ({', '.join(ROLEPLAY_FIELDS)}, score_persona)"
    )


def default_persona(level: str) -> str:
    """The persona FSPO states for a level: ``"This user prefers {level} reviews."`` for Review
    levels, ``"The user is {level}."`` for ELIX levels, else a neutral sentence.

    Level spellings are normalized: ``positive_concise`` becomes ``positive and concise``,
    ``young_adult`` becomes ``young adult``, so the oracle recognizes them."""
    tokens = [t for t in re.split(r"[\s_\-+/,&]+", level.lower()) if t and t != "and"]
    if tokens and all(t in _REVIEW_WORDS for t in tokens):
        ordered = [w for w in _REVIEW_WORDS if w in tokens]  # sentiment before length
        return f"This user prefers {' and '.join(ordered)} reviews."
    spaced = re.sub(r"[_\-]+", " ", level).strip()
    if any(re.search(rf"\b{w}\b", spaced.lower()) for w in _ELIX_LEVELS):
        return f"The user is {spaced}."
    return f"The user belongs to the preference group {level!r}."


def _label(value, where: str, problems: list[str]) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    problems.append(f"{where}: field 'label' must be 0 (response_x preferred) or 1 (response_y "
                    f"preferred), got {value!r}. Fix: drop ties or rows without a preference")
    return None


def _slug(level: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", level.lower()).strip("-")[:40] or "user"


def load_fspo(
    path: str | os.PathLike,
    *,
    window: int | None = None,
    examples: int = 1,
    persona_template: str | None = None,
    skip_bad: bool = False,
) -> Conversion:
    """Convert an FSPO file (JSON Lines, JSON or Parquet) into canonical rows.

    ``window`` signal pairs (default 4, Roleplay 8) plus ``examples`` target pairs make one row;
    leftover pairs at the end of a user that do not fill a window are dropped (counted in
    ``notes``). ``persona_template`` (with ``{level}``) overrides :func:`default_persona`; Roleplay
    rows take ``score_persona`` when present. Bad records stop the conversion, listing every
    problem, unless ``skip_bad``.
    """
    if examples < 1:
        raise InputError(f"examples must be at least 1 (the target pair), got {examples}")
    records = read_records(path)
    if not records:
        raise DataFileError(str(path), [f"{path}: the file has no records"])
    first = records[0][1]
    if not isinstance(first, dict):
        raise DataFileError(str(path), [f"{path}: row {records[0][0]}: expected a JSON object"])
    variant = detect_variant(first)
    window = DEFAULT_WINDOW[variant] if window is None else window
    if window < 1:
        raise InputError(f"window must be at least 1, got {window}")

    by_user: dict[str, list[PreferencePair]] = defaultdict(list)
    personas: dict[str, str | None] = {}
    problems: list[str] = []
    for number, record in records:
        where = f"{path}: row {number}"
        if not isinstance(record, dict):
            problems.append(f"{where}: expected a JSON object, got {type(record).__name__}")
            continue
        before = len(problems)
        if variant == "pairs":
            prompt = require_text(record, "prompt", where, problems, allow_empty=True)
            x = require_text(record, "response_x", where, problems)
            y = require_text(record, "response_y", where, problems)
            level = record.get("scorer_level")
            label = _label(record.get("label"), where, problems) if "label" in record else None
            if "label" not in record:
                problems.append(f"{where}: field 'label' is missing. Fix: add 0 or 1")
            chosen, rejected = (x, y) if label == 0 else (y, x)
            persona = None
        else:
            prompt = require_text(record, "x", where, problems, allow_empty=True)
            chosen = require_text(record, "yw", where, problems)
            rejected = require_text(record, "yl", where, problems)
            level = record.get("level")
            persona = record.get("score_persona")
            if persona is not None and not isinstance(persona, str):
                problems.append(f"{where}: field 'score_persona' must be text, got {type(persona).__name__}")
        key = "scorer_level" if variant == "pairs" else "level"
        if level is None or (isinstance(level, str) and not level.strip()):
            problems.append(f"{where}: field {key!r} is missing or empty. Fix: it names the user")
        elif not isinstance(level, (str, int)):
            problems.append(f"{where}: field {key!r} must be text or an integer, got {type(level).__name__}")
        if len(problems) == before and chosen == rejected:
            names = "'response_x' and 'response_y'" if variant == "pairs" else "'yw' and 'yl'"
            problems.append(f"{where}: fields {names} are identical, so the row shows no preference. "
                            "Fix: drop the row")
        if len(problems) > before:
            continue
        try:
            pair = PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)
        except ValidationError as e:
            problems.extend(f"{where}: {msg}" for msg in describe_validation_error(e))
            continue
        level = str(level)
        by_user[level].append(pair)
        personas.setdefault(level, persona)

    skipped: list[str] = []
    if problems:
        if not skip_bad:
            raise DataFileError(str(path), problems)
        skipped = problems

    rows, dropped = [], 0
    size = window + examples
    slugs: dict[str, str] = {}
    for level, pairs in by_user.items():
        slug = _slug(level)
        while slugs.setdefault(slug, level) != level:  # two levels with the same slug
            slug += "-x"
        persona = personas[level] or (
            persona_template.format(level=level) if persona_template else default_persona(level)
        )
        full = len(pairs) // size
        dropped += len(pairs) - full * size
        for k in range(full):
            chunk = pairs[k * size : (k + 1) * size]
            rows.append(
                UserRow(
                    user_id=f"{slug}-{k:04d}",
                    signals=Signals(pairs=chunk[:window]),
                    examples=chunk[window:],
                    persona=persona,
                )
            )
    notes = [f"{len(by_user)} users (levels), {len(rows)} rows of {window} signal pairs + "
             f"{examples} example(s)"]
    if dropped:
        notes.append(f"{dropped} pair(s) at the end of users did not fill a window and were dropped")
    if not rows:
        raise DataFileError(str(path), [
            f"{path}: no user has {size} valid pairs (window {window} + examples {examples}). "
            "Fix: pass a smaller --window"
        ] + skipped)
    return Conversion(rows=rows, skipped=skipped, notes=notes)
