"""Split a file of canonical user rows into a development half and a report half, by user.

Converted public data (``popi data convert``) is one file; training reads ``DIR/train.jsonl``
(``popi train --data DIR``) and evaluation reads a file (``popi eval --data DIR/test.jsonl``).
:func:`write_split` writes those two files from one, seeded, so a model is trained and selected
on ``train.jsonl`` and reported on ``test.jsonl``, users never shared. The split is the one the
synthetic benchmarks use (:func:`popi_sdk.data.synth.split_train_test`): stratified by persona,
so every persona with enough users is on both sides.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from popi_sdk.data.jsonl import check_output_dir, read_users, write_jsonl
from popi_sdk.data.synth import split_train_test
from popi_sdk.errors import InputError

SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
MAX_LISTED_PERSONAS = 20  # AlignX personas are per user: listing them would say nothing


def write_split(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> dict:
    """Read ``source`` (canonical JSON Lines), split its users into ``train.jsonl`` and
    ``test.jsonl`` under ``out_dir`` with ``test_fraction`` of them in the second, and write
    ``meta.json`` (the source's name and sha256, seed, fraction, counts per side, and per persona
    when there are at most 20 distinct personas).

    Nothing is written when the source is bad, or when an output would replace the source."""
    source, out = Path(source).expanduser(), check_output_dir(out_dir)
    if not 0 < test_fraction < 1:
        raise InputError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    for name in [*SPLIT_FILES.values(), "meta.json"]:
        target = out / name
        if target.exists() and source.exists() and os.path.samefile(target, source):
            raise InputError(
                f"--out {out} would overwrite the input {source} with its {name}; give another folder"
            )
    rows = read_users(source)
    if len(rows) < 2:
        raise InputError(f"{source}: {len(rows)} user(s); a split needs at least 2")
    train, test = split_train_test(rows, test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / SPLIT_FILES["train"], train)
    write_jsonl(out / SPLIT_FILES["test"], test)
    meta = {
        "source": source.name,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "seed": seed,
        "test_fraction": test_fraction,
        "users": len(rows),
        "train_users": len(train),
        "test_users": len(test),
        "files": dict(SPLIT_FILES),
    }
    if len({r.persona for r in rows}) <= MAX_LISTED_PERSONAS:
        meta["train_personas"], meta["test_personas"] = _personas(train), _personas(test)
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def _personas(rows) -> dict[str, int]:
    return dict(sorted(Counter(r.persona or "(none)" for r in rows).items()))
