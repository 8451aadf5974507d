"""``popi summary show|history|edit|score USER``: one user's summary and its versions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from popi_sdk.cli import args

app = typer.Typer(
    help="One user's summary: show it, list its versions, edit it, score it.",
    no_args_is_help=True,
)

STORE_HELP = "Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."
EDIT_TEMPLATE = """{text}
# Write {user}'s preference summary above. Lines starting with '#' are ignored;
# an empty summary cancels the edit. Saved as a new version written by the user
# (source "user"), which later summarize runs keep unless told to replace it.
"""


def _store(store: Optional[str]):
    from popi_sdk.store import open_store

    return open_store(store)


def _current(store, user_id: str):
    from popi_sdk.errors import NotFoundError

    summary = store.latest(user_id)
    if summary is None:
        raise NotFoundError(
            f"no summary stored for user {user_id!r}; write one with `popi summarize` or "
            f"`popi summary edit {user_id} --text ...`"
        )
    return summary


def _describe(summary) -> str:
    who = "written by the user" if summary.source == "user" else f"written by {summary.summarizer}"
    line = f"version {summary.version}, {who}, {summary.created_at:%Y-%m-%d %H:%M:%S %Z}".rstrip()
    if summary.score is not None:
        line += f", {_score_text(summary.score)}"
    return line


def _score_text(score) -> str:
    return (
        f"reward accuracy {score.reward_accuracy:.2f} and margin gain {score.margin_gain:+.3f} "
        f"on {score.n_examples} labeled pairs ({score.scorer})"
    )


@app.command()
def show(
    user_id: str = typer.Argument(..., help="The user.", callback=args.user_id),
    store: Optional[str] = typer.Option(None, help=STORE_HELP),
) -> None:
    """Print USER's current summary and which version it is."""
    summary = _current(_store(store), user_id)
    typer.echo(summary.text)
    typer.secho(_describe(summary), dim=True, err=True)


@app.command()
def history(
    user_id: str = typer.Argument(..., help="The user.", callback=args.user_id),
    store: Optional[str] = typer.Option(None, help=STORE_HELP),
) -> None:
    """List every version of USER's summary, oldest first; the last one is current."""
    from rich.console import Console
    from rich.table import Table

    versions = _store(store).history(user_id)
    if not versions:
        _current(_store(store), user_id)  # raises the not-found error
    table = Table(title=f"Summary versions of {user_id}", show_lines=True)
    for column in ("version", "source", "written", "score", "summary"):
        table.add_column(column, ratio=1 if column == "summary" else None)
    for s in versions:
        source = "user" if s.source == "user" else f"model\n{s.summarizer}"
        score = (
            f"acc {s.score.reward_accuracy:.2f}\ngain {s.score.margin_gain:+.3f}\nn={s.score.n_examples}"
            if s.score is not None
            else "-"
        )
        mark = " (current)" if s is versions[-1] else ""
        table.add_row(f"{s.version}{mark}", source, f"{s.created_at:%Y-%m-%d %H:%M}", score, s.text)
    Console().print(table)


def _edit_in_editor(user_id: str, current: str) -> str:
    import os
    import shlex
    import subprocess
    import tempfile

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="popi-summary-", delete=False) as f:
        f.write(EDIT_TEMPLATE.format(text=current, user=user_id))
        path = f.name
    try:
        try:
            result = subprocess.run([*shlex.split(editor), path])
        except OSError as e:
            raise typer.BadParameter(
                f"cannot run the editor {editor!r} ({e}); set EDITOR, or pass --text",
                param_hint="EDITOR",
            ) from None
        if result.returncode != 0:
            typer.secho(
                f"The editor ({editor}) exited with status {result.returncode}; the summary is unchanged.",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(1)
        text = Path(path).read_text(encoding="utf-8")
    finally:
        os.unlink(path)
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()


@app.command()
def edit(
    user_id: str = typer.Argument(..., help="The user.", callback=args.user_id),
    text: Optional[str] = typer.Option(
        None, "--text", help="The new summary; without it, $EDITOR opens on the current one."
    ),
    store: Optional[str] = typer.Option(None, help=STORE_HELP),
) -> None:
    """Replace USER's summary with one written by hand; it becomes a new, current version."""
    from popi_sdk import Personalizer

    st = _store(store)
    current = st.latest(user_id)
    if text is None:
        text = _edit_in_editor(user_id, current.text if current is not None else "")
        if not text:
            typer.echo("The summary is empty; nothing was changed.")
            raise typer.Exit(1)
    if current is not None and text.strip() == current.text.strip():
        typer.echo(f"The summary of {user_id} is unchanged; no new version was written.")
        return
    summary = Personalizer(store=st).edit_summary(user_id, text)
    typer.echo(f"Saved version {summary.version} of {user_id}'s summary (written by the user).")


@app.command()
def score(
    user_id: str = typer.Argument(..., help="The user.", callback=args.user_id),
    data: Optional[Path] = typer.Option(
        None, help="Users file (JSON Lines) whose row for USER has the labeled 'examples' to "
        "score on; default: the examples stored for USER."
    ),
    version: Optional[int] = typer.Option(None, min=1, help="Which version (default: current)."),
    scorer: Optional[str] = typer.Option(
        None, help="Local scoring model: hf or a checkpoint folder (default: the generator, "
        "env POPI_GENERATOR, when local; else hf)."
    ),
    store: Optional[str] = typer.Option(None, help=STORE_HELP),
) -> None:
    """Measure how useful USER's summary is on labeled pairs, and store the score with it."""
    from popi_sdk import Personalizer

    examples = None
    if data is not None:
        from popi_sdk.data import read_users

        rows = [r for r in read_users(data) if r.user_id == user_id]
        if not rows:
            raise typer.BadParameter(f"{data} has no row for user {user_id!r}", param_hint="--data")
        if not rows[0].examples:
            raise typer.BadParameter(
                f"the row of {user_id!r} in {data} has no 'examples' (labeled pairs) to score on",
                param_hint="--data",
            )
        examples = rows[0].examples
    p = Personalizer(store=_store(store))
    if examples is None and not (p.store.signals(user_id) or {}).get("examples"):
        # Checked here so the message names this command's option, not the SDK's argument.
        raise typer.BadParameter(
            f"no labeled pairs are stored for user {user_id!r} to score the summary on: pass "
            "--data USERS.jsonl, a users file whose row for the user has 'examples' (pairs the "
            "summary was not written from)", param_hint="--data")
    result = p.score(user_id, examples, scorer=scorer, version=version)
    used = version or p.store.latest(user_id).version
    typer.echo(f"{user_id}, version {used}: {_score_text(result)}.")
    typer.echo(
        "0.50 means no better than no summary; the score is stored with the version (popi summary history)."
    )
