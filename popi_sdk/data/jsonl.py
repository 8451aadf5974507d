"""Read and write JSON Lines files of pydantic rows, reporting *every* bad row at once.

A data file with problems is rejected whole (nothing is half-processed) and the error lists each
problem as ``FILE:LINE: field PATH: what is wrong. Fix: how``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from popi_sdk.errors import DataFileError, InputError, describe_validation_error
from popi_sdk.signals import UserRow

M = TypeVar("M", bound=BaseModel)


def no_such_file(path: Path) -> InputError:
    """The error for a missing input file; a relative path is explained against the folder it
    was resolved in."""
    if path.is_absolute():
        return InputError(f"{path}: no such file. Check the path.")
    return InputError(f"{path}: no such file. Check the path (it is relative to {Path.cwd()}).")


def read_jsonl_models(path: str | os.PathLike, model: type[M]) -> list[M]:
    """Parse every line of ``path`` into ``model``; raise :class:`DataFileError` listing all problems."""
    path = Path(path)
    if not path.exists():
        raise no_such_file(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a .jsonl file inside it.")
    rows: list[M] = []
    problems: list[str] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(
                    f"{where}: invalid UTF-8 at byte {e.start} of the line. Fix: re-save the "
                    "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                )
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(
                    f"{where}: malformed JSON at column {e.colno}: {e.msg}. Fix: each line must "
                    "be one complete JSON object"
                )
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
                continue
            try:
                rows.append(model.model_validate(obj))
            except ValidationError as e:
                problems.extend(f"{where}: {msg}" for msg in describe_validation_error(e))
    if problems:
        raise DataFileError(str(path), problems)
    if not rows:
        raise DataFileError(str(path), [f"{path}: the file has no rows"])
    return rows


def read_users(path: str | os.PathLike) -> list[UserRow]:
    """Read a canonical users file (one :class:`UserRow` per line); duplicate user ids are errors."""
    rows = read_jsonl_models(path, UserRow)
    seen: dict[str, int] = {}
    dupes = []
    for i, row in enumerate(rows):
        if row.user_id in seen:
            dupes.append(f"{path}: user_id {row.user_id!r} appears more than once. Fix: merge the rows")
        seen.setdefault(row.user_id, i)
    if dupes:
        raise DataFileError(str(path), dupes)
    return rows


def check_output_file(
    out: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), option: str = "--out"
) -> Path:
    """Refuse, before any work starts, an output file that cannot be written or would destroy an
    input: a folder, a path under a file, or the very file being read."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise InputError(
            f"{option} {out} is a folder; give a file name, e.g. {option} {out / 'out.jsonl'}"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {out}: {parent} is a file, not a folder")
            break
    for given in inputs:
        source = Path(given).expanduser()
        if out.exists() and source.exists() and os.path.samefile(out, source):
            raise InputError(
                f"{option} {out} is the input file {given}: writing there would replace it. "
                "Give another output file"
            )
    return out


def check_output_dir(out: str | os.PathLike, *, option: str = "--out") -> Path:
    """Refuse, before any work starts, an output folder that is an existing file."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} is a file; give a folder (it is created if missing)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {out}: {parent} is a file, not a folder")
            break
    return out


def write_jsonl(path: str | os.PathLike, rows: Iterable[BaseModel]) -> int:
    """Write rows atomically (a temporary file renamed into place); returns the row count. On
    any failure the temporary file is removed and an existing ``path`` is left as it was."""
    path = check_output_file(path, option="output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(row.model_dump_json(exclude_none=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


write_users = write_jsonl
