"""SDK commands: ``popi demo``, ``popi summarize``, ``popi generate``, ``popi forget``, ``popi backends``."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Optional

import typer

from popi_sdk.cli import args

from popi_sdk.errors import InputError, NotFoundError

DEMO_PROMPT = "How does the internet work?"

SUMMARY_TOKENS_HELP = "Length cap of each summary, in tokens (a summary at the cap ends at its last full sentence)."
SUMMARY_WORDS_HELP = "Summary length asked of the summarizer, in words (keep it well inside --summary-tokens)."


def _demo_users_file() -> Path:
    return Path(str(files("popi_sdk") / "examples_data" / "demo_users.jsonl"))


def demo_generator(summarizer: str) -> str:
    """The demo's default generator: the shipped trained generator beside the shipped trained
    summarizer whose summaries it was trained on (POPI-Full), else the untrained embedded model."""
    from popi_sdk.backends.adapters import POPI, POPI_GENERATOR, shipped_adapter
    from popi_sdk.settings import DEFAULT_BACKEND

    prefix, _, model = summarizer.partition(":")
    paired = prefix.lower() == "hf" and shipped_adapter(model) is POPI
    return POPI_GENERATOR.backend if paired else DEFAULT_BACKEND


def prepare_models(names: list[str], timer: Any, console: Any) -> None:
    """The one-time work the first run does before any model loads, each step timed as a phase
    of its own and announced: converting the embedded model, merging each shipped adapter the
    ``names`` use. A later run finds both done and adds no phase. (The demo always uses the
    embedded model: its plain answers come from it.)"""
    from popi_sdk.backends.adapters import (
        merged_folder,
        popi_checkpoint,
        require_shipped_adapter,
        shipped_adapter,
    )
    from popi_sdk.backends.hf import EMBEDDED_DIR, embedded_checkpoint
    from popi_sdk.settings import popi_home

    adapters = []
    for name in names:
        prefix, _, model = name.partition(":")
        adapter = shipped_adapter(model) if prefix.lower() == "hf" and model else None
        if adapter is not None and adapter not in adapters:
            adapters.append(adapter)
    if not (popi_home() / "models" / EMBEDDED_DIR / "model.safetensors").exists():
        with timer.phase("converting the model"), console.status(
                "Converting the embedded model to safetensors (once, about 25 s)..."):
            embedded_checkpoint()
    for adapter in adapters:
        require_shipped_adapter(adapter)  # a missing adapter file: its own error, with the fix
        if not (merged_folder(adapter) / "model.safetensors").exists():
            with timer.phase(f"merging {adapter.name}"), console.status(
                    f"Merging the trained adapter {adapter.name} into it (once)..."):
                popi_checkpoint(adapter=adapter)


def demo(
    users: Optional[Path] = typer.Option(None, help="Users file (JSON Lines); default: the shipped examples."),
    prompt: str = typer.Option(DEMO_PROMPT, help="The question every user asks."),
    max_new_tokens: int = typer.Option(80, min=1, help="Length cap of each answer."),
    summary_tokens: Optional[int] = typer.Option(
        None, min=1, help=SUMMARY_TOKENS_HELP + " Default: the summarizer's trained spec, else 96."
    ),
    summary_words: Optional[int] = typer.Option(
        None, min=1, help=SUMMARY_WORDS_HELP + " Default: the summarizer's trained spec, else 40."
    ),
    summarizer: Optional[str] = typer.Option(
        None, help="Summarizer backend (env POPI_SUMMARIZER; default hf:popi, the trained one; hf: untrained)."
    ),
    generator: Optional[str] = typer.Option(
        None, help="Generator backend (env POPI_GENERATOR; default hf:popi-generator, trained to "
        "read hf:popi's summaries, when the summarizer is hf:popi; else hf)."
    ),
    store: Optional[str] = typer.Option(None, help="Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."),
) -> None:
    """Summarize the example users and answer one question for each.

    Each user's personalized answer is printed beside the plain one (the untrained embedded
    model, the question alone), and the time of each phase at the end. With the shipped trained
    summarizer (hf:popi) the answers come from the shipped trained generator (hf:popi-generator,
    POPI's stage 2). Decoding uses settings that suit the small embedded model (a mild
    repetition penalty, no repeated 6-grams, answers cut back to their last complete sentence)."""
    from rich.console import Console
    from rich.table import Table

    from popi_sdk import Personalizer
    from popi_sdk.data import read_users
    from popi_sdk.personalizer import SMALL_MODEL
    from popi_sdk.progress import PhaseTimer
    from popi_sdk.templates import render_signals

    console = Console()
    timer = PhaseTimer()
    rows = read_users(users or _demo_users_file())
    from popi_sdk.backends import get_backend
    from popi_sdk.settings import DEFAULT_BACKEND, DEFAULT_SUMMARIZER, resolve
    from popi_sdk.summary_spec import SPEC_FILE, SummarySpec

    summarizer_name = resolve(summarizer, "POPI_SUMMARIZER", DEFAULT_SUMMARIZER)
    generator_name = resolve(generator, "POPI_GENERATOR", demo_generator(summarizer_name))
    # A first line at once: the first run converts and merges models for a minute before the
    # first table, and a silent terminal reads as a hang.
    console.print(f"[bold]popi demo[/bold]: {len(rows)} users ask {prompt!r}; summarizer "
                  f"{summarizer_name}, generator {generator_name}.")
    prepare_models([summarizer_name, generator_name, DEFAULT_BACKEND], timer, console)
    # The demo asks an untrained summarizer for 40 words with decoding settings that keep a small
    # model from looping; a trained one writes exactly as it was trained (a repetition penalty
    # would fight a summarizer trained to quote the user's preferred response).
    checkpoint = get_backend(summarizer_name).checkpoint
    is_trained = bool(checkpoint) and (Path(checkpoint) / SPEC_FILE).is_file()
    trained = SummarySpec.from_checkpoint(checkpoint) if is_trained else SummarySpec(max_words=40)
    summary_decoding = {} if is_trained else SMALL_MODEL
    # Beside a trained summarizer, the untrained embedded one shows what training changed.
    untrained = None
    if is_trained and summarizer_name != DEFAULT_BACKEND:
        untrained = Personalizer(
            summarizer=DEFAULT_BACKEND, generator=DEFAULT_BACKEND, store=store,
            summary=SummarySpec(max_words=40), summary_tokens=summary_tokens,
            summary_words=summary_words, **SMALL_MODEL,
        )
    p = Personalizer(
        summarizer=summarizer_name, generator=generator_name, store=store, summary=trained,
        summary_tokens=summary_tokens, summary_words=summary_words, **summary_decoding,
    )
    # The plain answers: the untrained embedded model, the question alone.
    plain_model = get_backend(DEFAULT_BACKEND)
    models = dict.fromkeys([p._summarizer_spec, p._generator_spec, DEFAULT_BACKEND])
    with timer.phase("loading"), console.status(f"Loading the models ({', '.join(models)})..."):
        p.summarizer.count_tokens("warm-up")  # loads the model (first run: converts it once)
        p.generator.count_tokens("warm-up")
        plain_model.count_tokens("warm-up")
    with timer.phase("summarizing"):
        summaries = p.summarize_many(rows)
        before = untrained.summarize_many(rows) if untrained is not None else None

    table = Table(title="Preference summaries", show_lines=True)
    table.add_column("user")
    table.add_column("raw signals\n(tokens)", justify="right")
    if before is not None:
        table.add_column("untrained summarizer (hf)", ratio=1, style="dim")
    table.add_column(f"summary ({p._summarizer_spec})", ratio=1)
    table.add_column("summary\n(tokens)", justify="right")
    for row, summary, old in zip(rows, summaries, before or [None] * len(rows)):
        raw = p.summarizer.count_tokens(render_signals(row.signals))
        table.add_row(row.user_id, str(raw), *([old.text] if old else []), summary.text,
                      str(summary.n_tokens))
    console.print(table)

    answer_options = dict(max_new_tokens=max_new_tokens, whole_sentences=True, **SMALL_MODEL)
    with timer.phase("answering"):
        answers = p.generate_many([prompt] * len(rows), summaries=summaries, progress=True,
                                  **answer_options)
        plain = p.generate(prompt, summary=None, backend=plain_model, **answer_options).text
    console.print(f"\n[bold]Everyone asks:[/bold] {prompt}")
    console.print(f"Personalized: {p._generator_spec} with the user's summary. "
                  f"Plain: {DEFAULT_BACKEND}, the question alone.\n")
    for row, answer in zip(rows, answers):
        side = Table(show_lines=False, expand=True)
        side.add_column(f"personalized for {row.user_id}", ratio=1, style="green")
        side.add_column("plain (no summary)", ratio=1, style="dim")
        side.add_row(answer.text, plain)
        console.print(side)
    store_where = getattr(p.store, "path", "memory")
    console.print(f"\nStored {len(summaries)} summaries in {store_where}.")
    console.print(timer.report())


def summarize(
    file: Path = typer.Argument(..., help="Users file in the canonical JSON Lines format."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write one summary per line."),
    summarizer: Optional[str] = typer.Option(None, help="Summarizer backend (env POPI_SUMMARIZER)."),
    store: Optional[str] = typer.Option(None, help="Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."),
    batch_size: int = typer.Option(8, min=1, help="Users per model call."),
    refresh: bool = typer.Option(False, help="Recompute even when a cached summary exists."),
    summary_tokens: Optional[int] = typer.Option(
        None, min=1, help=SUMMARY_TOKENS_HELP + " Default: the summarizer's trained spec, else 96."
    ),
    summary_words: Optional[int] = typer.Option(
        None, min=1, help=SUMMARY_WORDS_HELP + " Default: the summarizer's trained spec, else 60."
    ),
) -> None:
    """Summarize every user of FILE and write the summaries to OUT.

    Users already summarized with the same signals and settings are read from the store. A
    trained summarizer (RUN/stage1) writes them as it was trained (its popi_summary.json)."""
    from popi_sdk import Personalizer
    from popi_sdk.data import read_users
    from popi_sdk.data.jsonl import check_output_file, write_jsonl

    check_output_file(out, inputs=[file])  # before any work: never the users file, never a folder
    rows = read_users(file)
    p = Personalizer(
        summarizer=summarizer, store=store, summary_tokens=summary_tokens, summary_words=summary_words
    )
    summaries = p.summarize_many(rows, batch_size=batch_size, refresh=refresh)
    n = write_jsonl(out, summaries)
    typer.echo(f"Wrote {n} {_plural(n, 'summary', 'summaries')} to {out}")


def _no_summary(user: str, store: Optional[str]) -> InputError:
    where = f" --store {store}" if store else ""
    return InputError(
        f"no summary is stored for user {user!r}. Summarize the user first "
        f"(`popi summarize USERS.jsonl --out summaries.jsonl{where}`), pass --users USERS.jsonl to "
        "summarize them now, or give the summary itself with --summary TEXT"
    )


def generate(
    prompt: str = typer.Option(..., "--prompt", help="The question to answer."),
    user: Optional[str] = typer.Option(None, "--user", help="User whose summary to use.", callback=args.user_id),
    summary: Optional[str] = typer.Option(None, "--summary", help="Use this summary text as it is."),
    users: Optional[Path] = typer.Option(
        None, "--users", help="Users file: summarize --user from it now (cached) instead of reading the store."
    ),
    summarizer: Optional[str] = typer.Option(
        None, help="Summarizer whose summary to use (env POPI_SUMMARIZER; default hf:popi)."
    ),
    backend: Optional[str] = typer.Option(
        None, help="Generator backend (env POPI_GENERATOR; default hf, the embedded model)."
    ),
    store: Optional[str] = typer.Option(None, help="Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."),
    max_new_tokens: int = typer.Option(256, min=1, help="Length cap of the answer."),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="0 is greedy; at most 2."),
    stream: bool = typer.Option(True, help="Print the answer as it is written."),
    base_url: Optional[str] = typer.Option(
        None, help="Server for an openai:/anthropic: backend, e.g. http://127.0.0.1:8000/v1 "
        "(env OPENAI_BASE_URL / ANTHROPIC_BASE_URL)."
    ),
) -> None:
    """Answer PROMPT for a user, conditioned on their summary.

    The summary is --summary TEXT, or the user's summary: written now from --users FILE, else the
    latest stored one (which must be --summarizer's when that is given). Without --user or
    --summary the answer is un-personalized."""
    from popi_sdk import Personalizer
    from popi_sdk.backends import get_backend, parse_backend_name
    from popi_sdk.settings import DEFAULT_BACKEND, resolve

    if summary is not None and (users is not None or summarizer is not None):
        raise typer.BadParameter("--summary gives the summary itself; drop --users/--summarizer",
                                 param_hint="--summary")
    if summary is not None and user is not None:  # the user's summary would be silently unused
        raise typer.BadParameter(
            f"--summary gives the summary itself, so --user {user} would be ignored: drop --user "
            "to use this text, or drop --summary to use the user's stored summary",
            param_hint="--summary")
    if users is not None and user is None:
        raise typer.BadParameter("--users needs --user: the user to summarize", param_hint="--users")
    generator = resolve(backend, "POPI_GENERATOR", DEFAULT_BACKEND)
    if base_url is not None:
        if parse_backend_name(generator)[0] not in ("openai", "anthropic"):
            raise typer.BadParameter(
                f"--base-url applies to openai:<model> and anthropic:<model> backends, not {generator!r}",
                param_hint="--base-url",
            )
        generator = get_backend(generator, base_url=base_url)
    p = Personalizer(summarizer=summarizer, generator=generator, store=store)
    if summary is None and user is not None:
        summary = _user_summary(p, user, users, store, summarizer is not None)
    kwargs = dict(summary=summary, max_new_tokens=max_new_tokens, temperature=temperature)
    if not stream:
        typer.echo(p.generate(prompt, **kwargs).text)
        return
    for piece in p.stream(prompt, **kwargs):
        typer.echo(piece, nl=False)
    typer.echo()


def _user_summary(p, user: str, users: Optional[Path], store: Optional[str], pick_summarizer: bool):
    """The summary ``popi generate`` uses for ``user``."""
    from popi_sdk.data import read_users

    if users is not None:
        rows = [r for r in read_users(users) if r.user_id == user]
        if not rows:
            raise InputError(f"{users}: no user {user!r} in this file. Check --user")
        return p.summarize(rows[0])
    try:
        found = p.get_summary(user)
    except NotFoundError:
        found = None
    if found is None:
        raise _no_summary(user, store)
    if pick_summarizer and found.summarizer != p.summarizer.name:
        raise InputError(
            f"the stored summary of {user!r} was written by {found.summarizer}, not "
            f"{p.summarizer.name}. Pass --users USERS.jsonl to summarize the user with it"
        )
    return found


def forget(
    user_id: str = typer.Argument(..., help="The user to remove.", callback=args.user_id),
    store: Optional[str] = typer.Option(None, help="Summary store: a SQLite path or a postgresql:// URL (env POPI_STORE)."),
) -> None:
    """Delete everything stored about USER_ID.

    Every stored summary version and the stored signals."""
    from popi_sdk import Personalizer

    n = Personalizer(store=store).forget(user_id)
    typer.echo(f"Forgot {user_id}: {n} {_plural(n, 'summary', 'summaries')} deleted.")


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def backends() -> None:
    """List the registered backends."""
    from popi_sdk.backends import known_backends

    for prefix, help_text in known_backends().items():
        typer.echo(f"{prefix + ':<model>':<20} {help_text}")


def register(app: typer.Typer) -> None:
    for command in (demo, summarize, generate, forget, backends):
        app.command()(command)
