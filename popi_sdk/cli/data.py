"""``popi data``: generate the synthetic benchmarks and convert public datasets to canonical rows."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from popi_sdk.errors import InputError

app = typer.Typer(
    help="Benchmark data: generate synthetic users, convert FSPO / AlignX files to canonical rows, split users.",
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
    signals: str = typer.Option(
        "pairs",
        help="Signal kinds per user, comma-separated: pairs, persona, history, traits, demographics "
        "(elix only); or 'mixed' for a random non-empty subset per user.",
    ),
) -> None:
    """Generate a synthetic benchmark: users with signals (pairs by default; also a
    self-description, past messages, trait scores, demographics), labeled examples and a
    ground-truth persona, split into disjoint train and test users."""
    from popi_sdk.data.jsonl import check_output_dir
    from popi_sdk.data.synth import write_benchmark

    check_output_dir(out)
    started = time.perf_counter()
    meta = write_benchmark(
        kind.value,
        out,
        users,
        seed,
        pairs=pairs,
        examples=parse_range(examples),
        test_fraction=test_fraction,
        signals=signals,
    )
    kinds = meta.get("signals", ["pairs"])
    n = meta["pairs_per_user"]
    if kinds == "mixed":
        described = f"mixed signal kinds, {n} signal pairs per user that has pairs"
    else:
        described = "signals " + ",".join(kinds) + (f", {n} signal pairs per user" if "pairs" in kinds else "")
    typer.echo(
        f"Wrote {meta['train_users']} train users to {out / 'train.jsonl'} and "
        f"{meta['test_users']} test users to {out / 'test.jsonl'} "
        f"({kind.value}, seed {seed}, {described}) in {time.perf_counter() - started:.1f} s."
    )


@app.command()
def split(
    file: Path = typer.Argument(..., help="Canonical JSON Lines file of users (e.g. from popi data convert)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, test.jsonl, meta.json."),
    test_fraction: float = typer.Option(
        0.5, help="Share of users in test.jsonl (the report half); the rest go to train.jsonl."
    ),
    seed: int = typer.Option(0, help="Random seed; the same seed and file give the same split."),
) -> None:
    """Split users into a development half (train.jsonl: train and select on it) and a report
    half (test.jsonl: evaluate on it once), seeded and stratified by persona."""
    from popi_sdk.data.split import write_split

    started = time.perf_counter()
    meta = write_split(file, out, test_fraction, seed)
    typer.echo(
        f"Wrote {meta['train_users']} users to {out / 'train.jsonl'} and {meta['test_users']} to "
        f"{out / 'test.jsonl'} (seed {seed}, test fraction {test_fraction:g}) "
        f"in {time.perf_counter() - started:.1f} s."
    )
    for side in ("train", "test"):
        for persona, n in meta.get(f"{side}_personas", {}).items():
            typer.echo(f"  {side}: {n:4d}  {persona}")


convert_app = typer.Typer(
    help="Convert a public dataset file (JSON Lines, JSON or Parquet) to canonical JSON Lines.",
    no_args_is_help=True,
)
app.add_typer(convert_app, name="convert")


def _report(conversion, out: Path, started: float) -> None:
    from popi_sdk.data.jsonl import write_jsonl

    n = write_jsonl(out, conversion.rows)
    for note in conversion.notes:
        typer.echo(note)
    if conversion.skipped:
        typer.secho(f"Skipped {len(conversion.skipped)} problem(s):", fg=typer.colors.YELLOW, err=True)
        for problem in conversion.skipped[:20]:
            typer.echo(f"  {problem}", err=True)
        if len(conversion.skipped) > 20:
            typer.echo(f"  ... and {len(conversion.skipped) - 20} more", err=True)
    typer.echo(f"Wrote {n} rows to {out} in {time.perf_counter() - started:.1f} s.")


@convert_app.command("fspo")
def convert_fspo(
    file: Path = typer.Argument(..., help="FSPO Review/ELIX or Roleplay file."),
    out: Path = typer.Option(..., "--out", "-o", help="Canonical JSON Lines file to write."),
    window: Optional[int] = typer.Option(
        None, min=1, help="Signal pairs per row (default 4; Roleplay 8)."
    ),
    examples: int = typer.Option(1, min=1, help="Target pairs after each window (labeled examples)."),
    persona_template: Optional[str] = typer.Option(
        None, help="Persona text with {level}, e.g. 'The user is {level}.' (default: by level name)."
    ),
    skip_bad: bool = typer.Option(False, help="Leave bad records out (and list them) instead of stopping."),
) -> None:
    """FSPO rows (prompt, response_x, response_y, scorer_level, label; or x, yw, yl, level,
    score_persona) -> one canonical row per window of each user's pairs."""
    from popi_sdk.data.fspo import load_fspo
    from popi_sdk.data.jsonl import check_output_file

    check_output_file(out, inputs=[file])
    started = time.perf_counter()
    conversion = load_fspo(
        file, window=window, examples=examples, persona_template=persona_template, skip_bad=skip_bad
    )
    _report(conversion, out, started)


@convert_app.command("alignx")
def convert_alignx(
    file: Path = typer.Argument(..., help="AlignX file."),
    out: Path = typer.Option(..., "--out", "-o", help="Canonical JSON Lines file to write."),
    signals: str = typer.Option(
        "pairs,history,demographics,traits,profile",
        help="Signals to keep, comma-separated (e.g. 'demographics' for the DEMO split); "
        "'profile' (the benchmark files' generated profile) becomes the self-description.",
    ),
    traits_from: str = typer.Option(
        "pairs", help="Where traits come from: pairs (feedback pairs' directions), target (leaks the label), none."
    ),
    keep_neutral: bool = typer.Option(False, help="Keep neutral (0.5) dimensions in traits."),
    dimension_names: Optional[Path] = typer.Option(
        None, help="Text file with one dimension name per line (or 'first pole | second pole')."
    ),
    skip_bad: bool = typer.Option(False, help="Leave bad records out (and list them) instead of stopping."),
) -> None:
    """AlignX records -> one canonical row per user: feedback pairs, comments, demographics,
    traits and profile as signals, the record's comparison as the labeled example, and
    ground_truth_persona (or else the record's Preference Direction) as the persona."""
    from popi_sdk.data.alignx import load_alignx
    from popi_sdk.data.jsonl import check_output_file

    check_output_file(out, inputs=[file])
    started = time.perf_counter()
    names = None
    if dimension_names is not None:
        if not dimension_names.exists():
            raise InputError(f"{dimension_names}: no such file (--dimension-names)")
        lines = [ln.strip() for ln in dimension_names.read_text(encoding="utf-8").splitlines() if ln.strip()]
        names = [tuple(part.strip() for part in ln.split("|", 1)) if "|" in ln else ln for ln in lines]
    conversion = load_alignx(
        file,
        include=[s.strip() for s in signals.split(",") if s.strip()],
        traits_from=traits_from,
        keep_neutral=keep_neutral,
        dimension_names=names,
        skip_bad=skip_bad,
    )
    _report(conversion, out, started)
