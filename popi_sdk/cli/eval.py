"""``popi eval``: the paper's evaluation on held-out users, written to DIR/results.{json,md}."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def eval_command(
    data: Path = typer.Option(..., "--data", help="Held-out users (JSON Lines), e.g. DIR/test.jsonl."),
    methods: str = typer.Option(
        "base,raw,inference",
        help="Comma-separated: base, raw, inference, popi, popi-full, raw-aligned, inference-aligned, "
        "lore, pal-a, pal-b (latent-embedding baselines, --latent), and the references oracle (the "
        "true persona as the summary), user-edit (the persona read by --generator), exemplar / "
        "exemplar-aligned (the copy rule: the first preferred response quoted, read by the base / "
        "trained generator), profile / profile-aligned (the true persona, then that preferred response) "
        "and shuffled (another user's summary).",
    ),
    judge: str = typer.Option(
        "oracle", help="'oracle' (synthetic personas) or a backend name, e.g. openai:gpt-4o."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.json, results.md, examples.jsonl."),
    base: str = typer.Option("hf", help="Base model: generator of the unaligned methods, default summarizer."),
    summarizer: Optional[str] = typer.Option(None, help="Trained summarizer checkpoint (popi, popi-full)."),
    generator: Optional[str] = typer.Option(None, help="Trained generator checkpoint (*-aligned, popi-full)."),
    latent: Optional[str] = typer.Option(
        None, help="Run folder of `popi train latent` (holding lore/, pal-a/, pal-b/) for the "
        "latent-embedding methods."
    ),
    generators: Optional[str] = typer.Option(
        None, help="Comma-separated generators for a transfer table (the same summaries, other models)."
    ),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first N users."),
    prompts_per_user: Optional[int] = typer.Option(
        None, min=1, help="Judge answers to only the first N examples of each user (default: all)."
    ),
    max_new_tokens: int = typer.Option(48, min=1, help="Length cap of each generated answer."),
    summary_tokens: Optional[int] = typer.Option(
        None, help="Override the length cap of each summary (default: the trained summarizer's "
        "popi_summary.json, else 96)."
    ),
    summary_words: Optional[int] = typer.Option(
        None, help="Override the summary length asked of the summarizer (default: the trained "
        "summarizer's popi_summary.json, else 60 words)."
    ),
    batch_size: int = typer.Option(8, min=1, help="Sequences per forward pass."),
    bf16: bool = typer.Option(False, help="Score under bfloat16 autocast."),
    seed: int = typer.Option(
        0, help="Seed of the LLM judge's position randomization and of the shuffled control."
    ),
    store: Optional[str] = typer.Option(
        None, help="Summary store (default: OUT/summaries.sqlite, so a rerun reuses the summaries)."
    ),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Evaluate personalization methods on held-out users.

    Reward accuracy against the base model's margin, context overhead, and win rate against the
    base model's answers, written to OUT/results.json, results.md and results.png."""
    from rich.console import Console
    from rich.table import Table

    from popi_sdk.data import read_users
    from popi_sdk.eval.judges import get_judge
    from popi_sdk.eval.methods import parse_methods
    from popi_sdk.eval.report import main_table, transfer_table, write_results
    from popi_sdk.eval.runner import evaluate

    from popi_sdk.data.jsonl import check_output_dir, check_output_file

    check_output_dir(out)
    for name in ("results.json", "results.md", "examples.jsonl"):
        check_output_file(out / name, inputs=[data])
    chosen = parse_methods(methods, summarizer=summarizer, generator=generator)
    rows = read_users(data)
    if limit is not None:
        rows = rows[:limit]
    gens = [g.strip() for g in generators.split(",") if g.strip()] if generators else []
    out.mkdir(parents=True, exist_ok=True)
    results, records = evaluate(
        rows,
        chosen,
        get_judge(judge, seed=seed),
        base=base,
        summarizer=summarizer,
        generator=generator,
        generators=gens,
        store=store or str(out / "summaries.sqlite"),
        max_new_tokens=max_new_tokens,
        prompts_per_user=prompts_per_user,
        batch_size=batch_size,
        bf16=bf16,
        progress=progress,
        summary_tokens=summary_tokens,
        summary_words=summary_words,
        shuffle_seed=seed,
        latent=latent,
    )
    results["config"] = {
        "data": str(data), "methods": [m.name for m in chosen], "judge": judge, "base": base,
        "summarizer": summarizer, "generator": generator, "generators": gens, "limit": limit,
        "prompts_per_user": prompts_per_user, "max_new_tokens": max_new_tokens, "seed": seed,
        "summary_tokens": summary_tokens, "summary_words": summary_words,
        "summary_spec": next(iter(results["summaries"].values()), {}).get("spec"),
        "bf16": bf16, "latent": latent,
    }
    paths = write_results(out, results, records)

    console = Console()
    for title, rows_ in (("Evaluation", main_table(results)), ("Transfer", transfer_table(results))):
        if not rows_:
            continue
        table = Table(title=title)
        for i, head in enumerate(rows_[0]):
            table.add_column(head, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for r in rows_[1:]:
            table.add_row(*r)
        console.print(table)
    try:
        from popi_sdk.eval.plot import plot_results

        picture = plot_results(results, out / "results.png")
    except ImportError:
        picture = None
        console.print('(no results.png: plotting needs matplotlib, `pip install "popi-sdk[train]"`)')
    written = [paths["json"], paths["md"], paths["examples"], *([picture] if picture else [])]
    console.print("Wrote " + ", ".join(str(p) for p in written))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
