"""``popi data``: generate the synthetic benchmarks and convert public datasets to canonical rows."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from popi_sdk.errors import InputError

app = typer.Typer(
    help="Benchmark data: generate synthetic users, convert FSPO / AlignX files to canonical rows.",
    no_args_is_help=True,
)


class Kind(str, Enum):
    review = "review"
    elix = "elix"
    roleplay = "roleplay"


def parse_range(text: str, what: str = "--examples") -> tuple[int, int]:
    """``"2-4"`` -> ``(2, 4)``; ``"3"`` -> ``(3, 3)``."""
    lo, _, hi = text.partition("-")
    try:
        low = int(lo)
        high = int(hi) if hi else low
    except ValueError:
        raise InputError(f"{what} must be a number or a range like 2-4, got {text!r}") from None
    if not 0 <= low <= high:
        raise InputError(f"{what} range must satisfy 0 <= low <= high, got {text!r}")
    return low, high


@app.command()
def synth(
    kind: Kind = typer.Argument(..., help="Which benchmark: review, elix or roleplay."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, test.jsonl, meta.json."),
    users: int = typer.Option(200, min=1, help="Number of users (train + test)."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes the same bytes."),
    pairs: Optional[int] = typer.Option(
        None, min=1, help="Signal pairs per user (default: 4 for review/elix, 8 for roleplay)."
    ),
    examples: str = typer.Option("2-4", help="Labeled examples per user: a number or a range lo-hi."),
    test_fraction: float = typer.Option(0.2, min=0.0, max=0.99, help="Share of users held out for test."),
) -> None:
    """Generate a synthetic benchmark: users with signal pairs, labeled examples and a
    ground-truth persona, split into disjoint train and test users."""
    from popi_sdk.data.synth import write_benchmark

    started = time.perf_counter()
    meta = write_benchmark(
        kind.value,
        out,
        users,
        seed,
        pairs=pairs,
        examples=parse_range(examples),
        test_fraction=test_fraction,
    )
    typer.echo(
        f"Wrote {meta['train_users']} train users to {out / 'train.jsonl'} and "
        f"{meta['test_users']} test users to {out / 'test.jsonl'} "
        f"({kind.value}, seed {seed}, {meta['pairs_per_user']} signal pairs per user) "
        f"in {time.perf_counter() - started:.1f} s."
    )
