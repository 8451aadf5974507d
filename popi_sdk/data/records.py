"""Read the raw records of a public dataset file: JSON Lines, JSON, or Parquet.

Hugging Face datasets export to all three (``Dataset.to_json`` writes JSON Lines even when the file
ends in ``.json``), so the format is sniffed from the content, not trusted from the name. Records
come back with their row number (the line number for JSON Lines) so loaders can report problems
as ``FILE: row N: field F: ...``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from popi_sdk.data.jsonl import no_such_file
from popi_sdk.errors import DataFileError, InputError, MissingDependencyError
from popi_sdk.signals import UserRow


@dataclass
class Conversion:
    """What a loader made of a file: the canonical rows, and what it left out and why."""

    rows: list[UserRow]
    skipped: list[str] = field(default_factory=list)  # bad records left out (skip_bad=True)
    notes: list[str] = field(default_factory=list)  # anything else worth telling the user


def read_records(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``[(row_number, record), ...]`` from a ``.jsonl``, ``.json`` or ``.parquet`` file.

    Malformed JSON is reported for every bad line at once as a :class:`DataFileError`."""
    path = Path(path)
    if not path.exists():
        raise no_such_file(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a .jsonl, .json or .parquet file inside it.")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(str(path), [f"{path}: invalid UTF-8 at byte {e.start}. Fix: re-save the file as UTF-8"]) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFileError(str(path), [f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"]) from None
        return list(enumerate(data, start=1))
    if stripped.startswith("{"):
        try:  # one JSON object: either {"data": [...]}-style or a single record
            data = json.loads(text)
        except json.JSONDecodeError:
            pass  # more than one object: JSON Lines
        else:
            lists = [v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
            if len(data) == 1 and len(lists) == 1:
                return list(enumerate(lists[0], start=1))
            return [(1, data)]
    records, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"{path}: line {number}: malformed JSON at column {e.colno}: {e.msg}. "
                            "Fix: each line must be one complete JSON object")
    if problems:
        raise DataFileError(str(path), problems)
    return records


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow (needed to read Parquet files)", "pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for unreadable files
        raise InputError(f"{path}: not a readable Parquet file ({e}). Export it as JSON Lines instead.") from e
    return list(enumerate(table.to_pylist(), start=1))


def require_text(record: dict, key: str, where: str, problems: list[str], *, allow_empty: bool = False) -> str | None:
    """``record[key]`` as a string, or ``None`` after appending a problem naming the field."""
    if key not in record or record[key] is None:
        problems.append(f"{where}: field {key!r} is missing. Fix: add it (see docs/data.md for the schema)")
        return None
    value = record[key]
    if not isinstance(value, str):
        problems.append(f"{where}: field {key!r} must be text, got {type(value).__name__}")
        return None
    if not allow_empty and not value.strip():
        problems.append(f"{where}: field {key!r} is empty")
        return None
    return value
