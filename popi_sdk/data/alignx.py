"""Load AlignX (``JinaLeejnl/AlignX``) into canonical rows: one record is one user.

A record has the target comparison ``prompt, chosen, rejected`` and the user's context:

- ``Demographic Information``: text -> ``signals.demographics``;
- ``User-Generated Content``: up to 4 ``{prompt, comment}`` -> ``signals.history``;
- ``Pair-wise Comparative Feedback``: up to 4 ``{prompt, chosen, rejected}`` -> ``signals.pairs``;
- ``Preference Direction``: 90 values in {0, 0.5, 1} over named dimensions (1: the first pole of
  the dimension is preferred, 0: the second, 0.5: neutral);
- ``profile`` (the benchmark files, e.g. ``benchmark/P-Soups/``): a generated text listing the
  user's attributes (``"Young, High Openness, Concise communication style, ..."``) ->
  ``signals.persona``, verbatim: it is text that describes the user, which is what that field
  holds (``demographics`` would mislabel personality and style, and ``traits`` would need the
  text parsed back into the 90 dimensions, losing the "Indifferent to ..." entries);
- ``ground_truth_persona`` (the benchmark files): the persona the labels were made for ->
  ``persona``, the ground truth for judges and the ``oracle`` method.

The record's own ``Preference Direction`` describes the *target* comparison, so it would leak the
label if shown to a model: it becomes the ground-truth ``persona`` (for judges only) when the
record has no ``ground_truth_persona``. The ``traits`` signal is instead derived from the
feedback pairs' own directions, averaged and thresholded at 0.6 / 0.4 as AlignX does when it
builds profiles (``traits_from="pairs"``).
The test splits (DEMO, PAIR, UGC, Arbitrary) carry only some of these; ``include`` keeps only
the kinds of signal you name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pydantic import ValidationError

from popi_sdk.data.alignx_dimensions import DIMENSIONS
from popi_sdk.data.records import Conversion, read_records, require_text
from popi_sdk.errors import DataFileError, InputError, describe_validation_error
from popi_sdk.signals import HistoryItem, PreferencePair, Signals, UserRow

DEMOGRAPHICS = "Demographic Information"
UGC = "User-Generated Content"
PAIRS = "Pair-wise Comparative Feedback"
DIRECTION = "Preference Direction"
PROFILE = "profile"
GROUND_TRUTH = "ground_truth_persona"
#: Signal kinds a user may keep; ``profile`` becomes ``signals.persona``.
SIGNAL_KINDS = ("pairs", "history", "demographics", "traits", "profile")
TRAITS_FROM = ("pairs", "target", "none")


def _direction(value, n_dims: int, where: str, problems: list[str]) -> list[float] | None:
    if not isinstance(value, list) or len(value) != n_dims:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        problems.append(f"{where}: must be a list of {n_dims} values in {{0, 0.5, 1}}, got {got}. "
                        "Fix: pass --dimension-names to match your data's dimensions")
        return None
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1]
    if bad:
        problems.append(f"{where}: values must be numbers in [0, 1], found {bad[0]!r}")
        return None
    return [float(v) for v in value]


def _polar(value: float) -> float | None:
    """AlignX's thresholds: >= 0.6 prefers the first pole, <= 0.4 the second, else neutral."""
    return 1.0 if value >= 0.6 else 0.0 if value <= 0.4 else None


def describe_direction(direction: Sequence[float], dimensions: Sequence[tuple[str, str]] = DIMENSIONS) -> str | None:
    """``"Young; High Openness; Likes travel"``: the preferred pole of every non-neutral dimension."""
    parts = [dims[0] if v == 1.0 else dims[1] for v, dims in
             ((_polar(x), d) for x, d in zip(direction, dimensions)) if v is not None]
    return "; ".join(parts) or None


def load_alignx(
    path: str | os.PathLike,
    *,
    include: Sequence[str] = SIGNAL_KINDS,
    traits_from: str = "pairs",
    keep_neutral: bool = False,
    dimension_names: Sequence[str] | Sequence[tuple[str, str]] | None = None,
    skip_bad: bool = False,
) -> Conversion:
    """Convert an AlignX file (JSON Lines, JSON or Parquet) into canonical rows, one per record.

    ``include``: which signals to keep (``pairs``, ``history``, ``demographics``, ``traits``,
    ``profile``; all by default).
    ``traits_from``: ``pairs`` (default; the feedback pairs' directions, averaged), ``target``
    (the record's own direction: leaks the label, for oracle-style upper bounds only) or ``none``.
    ``keep_neutral`` keeps neutral dimensions (value 0.5) in ``traits``. ``dimension_names``
    replaces the 90 AlignX names: plain names or (first pole, second pole) pairs; trait keys are
    the first pole. User ids are the record's ``user_id``/``id`` when present, else
    ``alignx-{row}``. Bad records stop the conversion, listing every problem, unless ``skip_bad``.
    """
    unknown = [k for k in include if k not in SIGNAL_KINDS]
    if unknown:
        raise InputError(f"unknown signal kind(s) {unknown}; choose from {', '.join(SIGNAL_KINDS)}")
    if traits_from not in TRAITS_FROM:
        raise InputError(f"traits_from must be one of {', '.join(TRAITS_FROM)}, got {traits_from!r}")
    dims = DIMENSIONS if dimension_names is None else [
        tuple(d) if isinstance(d, (list, tuple)) else (d, f"not {d}") for d in dimension_names
    ]
    records = read_records(path)
    rows: list[UserRow] = []
    problems: list[str] = []
    seen_ids: set[str] = set()
    empty = 0
    for number, record in records:
        where = f"{path}: row {number}"
        if not isinstance(record, dict):
            problems.append(f"{where}: expected a JSON object, got {type(record).__name__}")
            continue
        mine: list[str] = []
        row = _convert(record, where, mine, include, traits_from, keep_neutral, dims)
        if row is not None and not mine:
            row.user_id = str(record.get("user_id") or record.get("id") or f"alignx-{number:06d}")
            if row.user_id in seen_ids:
                mine.append(f"{where}: user id {row.user_id!r} appears more than once. Fix: make ids unique")
            else:
                seen_ids.add(row.user_id)
                rows.append(row)
        elif row is None and not mine:
            empty += 1
        problems.extend(mine)
    skipped: list[str] = []
    if problems:
        if not skip_bad:
            raise DataFileError(str(path), problems)
        skipped = problems
    if not rows:
        raise DataFileError(str(path), [f"{path}: no record kept any of the signals {list(include)}"] + skipped)
    field = {"profile": "persona"}  # the one kind stored under another name
    kept = [f"{kind} {n}" for kind in include
            if (n := sum(bool(getattr(r.signals, field.get(kind, kind))) for r in rows))]
    notes = [f"{len(rows)} users; users with each signal kind: {', '.join(kept)}"]
    personas = sum(bool(r.persona) for r in rows)
    notes.append(f"{personas} users with a ground-truth persona" + (
        f" ({sum(GROUND_TRUTH in rec for _, rec in records if isinstance(rec, dict))} from "
        f"'{GROUND_TRUTH}')" if personas else ""))
    if empty:
        notes.append(f"{empty} record(s) had none of the requested signals and were left out")
    return Conversion(rows=rows, skipped=skipped, notes=notes)


def _convert(record, where, problems, include, traits_from, keep_neutral, dims) -> UserRow | None:
    prompt = require_text(record, "prompt", where, problems, allow_empty=True)
    chosen = require_text(record, "chosen", where, problems)
    rejected = require_text(record, "rejected", where, problems)

    pairs: list[PreferencePair] = []
    pair_dirs: list[list[float]] = []
    for k, item in enumerate(_list(record, PAIRS, where, problems)):
        at = f"{where}: field '{PAIRS}'[{k}]"
        if not isinstance(item, dict):
            problems.append(f"{at}: expected an object with prompt, chosen, rejected")
            continue
        p = require_text(item, "prompt", at, problems, allow_empty=True)
        c, r = require_text(item, "chosen", at, problems), require_text(item, "rejected", at, problems)
        if None not in (p, c, r):
            pairs.append(_pair(p, c, r, at, problems))
        if DIRECTION in item:
            d = _direction(item[DIRECTION], len(dims), f"{at}.'{DIRECTION}'", problems)
            if d is not None:
                pair_dirs.append(d)

    history: list[HistoryItem] = []
    for k, item in enumerate(_list(record, UGC, where, problems)):
        at = f"{where}: field '{UGC}'[{k}]"
        if not isinstance(item, dict):
            problems.append(f"{at}: expected an object with prompt, comment")
            continue
        p, c = require_text(item, "prompt", at, problems, allow_empty=True), require_text(item, "comment", at, problems)
        if p is not None and c is not None:
            history.append(HistoryItem(prompt=p, text=c))

    demographics = _text_or_none(record, DEMOGRAPHICS, where, problems)
    profile = _text_or_none(record, PROFILE, where, problems)
    ground_truth = _text_or_none(record, GROUND_TRUTH, where, problems)

    target_dir = None
    if record.get(DIRECTION) is not None:
        target_dir = _direction(record[DIRECTION], len(dims), f"{where}: field '{DIRECTION}'", problems)
    if problems or None in (prompt, chosen, rejected):
        return None

    source = {"pairs": _mean(pair_dirs), "target": target_dir, "none": None}[traits_from]
    traits = {}
    for value, (first, _second) in zip(source or [], dims):
        polar = _polar(value)
        if polar is not None or keep_neutral:
            traits[first] = polar if polar is not None else 0.5

    kept = {
        "pairs": [p for p in pairs if p is not None] if "pairs" in include else [],
        "history": history if "history" in include else [],
        "demographics": (demographics or None) if "demographics" in include else None,
        "traits": traits if "traits" in include else {},
        "persona": profile if PROFILE in include and profile and profile.strip() else None,
    }
    example = _pair(prompt, chosen, rejected, where, problems)
    if example is None or not any(kept.values()):
        return None
    return UserRow(
        user_id="pending",
        signals=Signals(**kept),
        examples=[example],
        persona=(ground_truth or "").strip() or _persona(target_dir, dims),
    )


def _text_or_none(record: dict, key: str, where: str, problems: list[str]) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        problems.append(f"{where}: field '{key}' must be text, got {type(value).__name__}")
        return None
    return value


def _persona(direction: list[float] | None, dims) -> str | None:
    described = describe_direction(direction, dims) if direction else None
    return f"The user's preferences: {described}." if described else None


def _list(record: dict, key: str, where: str, problems: list[str]) -> list:
    value = record.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{where}: field '{key}' must be a list, got {type(value).__name__}")
        return []
    return value


def _pair(prompt: str, chosen: str, rejected: str, where: str, problems: list[str]) -> PreferencePair | None:
    if chosen == rejected:
        problems.append(f"{where}: 'chosen' and 'rejected' are identical, so it shows no preference. "
                        "Fix: drop it")
        return None
    try:
        return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)
    except ValidationError as e:
        problems.extend(f"{where}: {msg}" for msg in describe_validation_error(e))
        return None


def _mean(directions: list[list[float]]) -> list[float] | None:
    if not directions:
        return None
    return [sum(col) / len(col) for col in zip(*directions)]
