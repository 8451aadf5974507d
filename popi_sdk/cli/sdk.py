"""SDK commands: ``popi demo``, ``popi summarize``, ``popi generate``, ``popi forget``, ``popi backends``."""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path
from typing import Optional

import typer

DEMO_PROMPT = "How does the internet work?"


def _demo_users_file() -> Path:
    return Path(str(files("popi_sdk") / "examples_data" / "demo_users.jsonl"))


def demo(
    users: Optional[Path] = typer.Option(None, help="Users file (JSON Lines); default: the shipped examples."),
    prompt: str = typer.Option(DEMO_PROMPT, help="The question every user asks."),
    max_new_tokens: int = typer.Option(80, min=1, help="Length cap of each answer."),
    summary_tokens: int = typer.Option(96, min=1, help="Length cap of each summary."),
    summarizer: Optional[str] = typer.Option(None, help="Summarizer backend (env POPI_SUMMARIZER; default hf)."),
    generator: Optional[str] = typer.Option(None, help="Generator backend (env POPI_GENERATOR; default hf)."),
    store: Optional[str] = typer.Option(None, help="Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."),
) -> None:
    """Summarize the example users with the embedded model and answer one question per user,
    personalized and plain, side by side."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from popi_sdk import Personalizer
    from popi_sdk.data import read_users
    from popi_sdk.templates import render_signals

    console = Console()
    started = time.perf_counter()
    rows = read_users(users or _demo_users_file())
    p = Personalizer(summarizer=summarizer, generator=generator, store=store, summary_tokens=summary_tokens)
    with console.status(f"Loading the summarizer ({p._summarizer_spec})..."):
        p.summarizer.count_tokens("warm-up")  # loads the model (first run: converts it once)
    summaries = p.summarize_many(rows)

    table = Table(title="Preference summaries", show_lines=True)
    table.add_column("user")
    table.add_column("raw signals\n(tokens)", justify="right")
    table.add_column("summary", ratio=1)
    table.add_column("summary\n(tokens)", justify="right")
    for row, summary in zip(rows, summaries):
        raw = p.summarizer.count_tokens(render_signals(row.signals))
        table.add_row(row.user_id, str(raw), summary.text, str(summary.n_tokens))
    console.print(table)

    console.print(f"\n[bold]Everyone asks:[/bold] {prompt}\n")
    with console.status("Generating answers..."):
        answers = p.generate_many(
            [prompt] * (len(rows) + 1),
            summaries=[*summaries, None],
            max_new_tokens=max_new_tokens,
        )
    plain = answers[-1]
    console.print(Panel(plain.text, title="un-personalized answer (same for everyone)", border_style="dim"))
    for row, answer in zip(rows, answers[:-1]):
        console.print(Panel(answer.text, title=f"personalized for {row.user_id}", border_style="green"))
    store_where = getattr(p.store, "path", "memory")
    console.print(
        f"\nStored {len(summaries)} summaries in {store_where}. "
        f"Done in {time.perf_counter() - started:.0f} s."
    )


def summarize(
    file: Path = typer.Argument(..., help="Users file in the canonical JSON Lines format."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write one summary per line."),
    summarizer: Optional[str] = typer.Option(None, help="Summarizer backend (env POPI_SUMMARIZER)."),
    store: Optional[str] = typer.Option(None, help="Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."),
    batch_size: int = typer.Option(8, min=1, help="Users per model call."),
    refresh: bool = typer.Option(False, help="Recompute even when a cached summary exists."),
) -> None:
    """Summarize every user of FILE (cached ones cost nothing) and write the summaries to OUT."""
    from popi_sdk import Personalizer
    from popi_sdk.data import read_users
    from popi_sdk.data.jsonl import check_output_file, write_jsonl

    check_output_file(out, inputs=[file])  # before any work: never the users file, never a folder
    rows = read_users(file)
    p = Personalizer(summarizer=summarizer, store=store)
    summaries = p.summarize_many(rows, batch_size=batch_size, refresh=refresh)
    n = write_jsonl(out, summaries)
    typer.echo(f"Wrote {n} summaries to {out}")


def generate(
    user: Optional[str] = typer.Option(None, "--user", help="User id whose stored summary to use."),
    prompt: str = typer.Option(..., "--prompt", help="The question to answer."),
    backend: Optional[str] = typer.Option(None, help="Generator backend (env POPI_GENERATOR)."),
    store: Optional[str] = typer.Option(None, help="Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."),
    max_new_tokens: int = typer.Option(256, min=1, help="Length cap of the answer."),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="0 is greedy; at most 2."),
    base_url: Optional[str] = typer.Option(
        None, help="Server for an openai:/anthropic: backend, e.g. http://127.0.0.1:8000/v1 "
        "(env OPENAI_BASE_URL / ANTHROPIC_BASE_URL)."
    ),
) -> None:
    """Answer PROMPT for a user, conditioned on their stored summary (none: un-personalized)."""
    from popi_sdk import Personalizer
    from popi_sdk.backends import get_backend, parse_backend_name
    from popi_sdk.settings import DEFAULT_BACKEND, resolve

    generator = resolve(backend, "POPI_GENERATOR", DEFAULT_BACKEND)
    if base_url is not None:
        if parse_backend_name(generator)[0] not in ("openai", "anthropic"):
            raise typer.BadParameter(
                f"--base-url applies to openai:<model> and anthropic:<model> backends, not {generator!r}",
                param_hint="--base-url",
            )
        generator = get_backend(generator, base_url=base_url)
    p = Personalizer(generator=generator, store=store)
    answer = p.generate(prompt, user_id=user, max_new_tokens=max_new_tokens, temperature=temperature)
    typer.echo(answer.text)


def forget(
    user_id: str = typer.Argument(..., help="The user to remove."),
    store: Optional[str] = typer.Option(None, help="Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."),
) -> None:
    """Delete every stored summary version and the stored signals of USER_ID."""
    from popi_sdk.store import open_store

    n = open_store(store).delete_user(user_id)
    typer.echo(f"Forgot {user_id}: {n} summaries deleted.")


def backends() -> None:
    """List the registered backends."""
    from popi_sdk.backends import known_backends

    for prefix, help_text in known_backends().items():
        typer.echo(f"{prefix + ':<model>':<20} {help_text}")


def register(app: typer.Typer) -> None:
    for command in (demo, summarize, generate, forget, backends):
        app.command()(command)
