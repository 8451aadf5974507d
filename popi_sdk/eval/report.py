"""Write an evaluation: ``results.json`` (every number), ``examples.jsonl`` (every example and
judgment) and ``results.md`` (a Table-1-style table, and a transfer table like Tables 2-4)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


def _pct(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:.1f}"
    return text + (f" ± {100 * se:.1f}" if se is not None else "")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main_table(results: dict) -> list[list[str]]:
    """Rows of the main table: method, reward accuracy, context overhead, win rate."""
    rows = [["Method", "Reward accuracy (%)", "Context overhead (tokens)", "Win rate vs base (%)",
             "Echo rate (%)"]]
    for m in results["methods"].values():
        rows.append([
            m["title"],
            _pct(m["reward_accuracy"], m.get("reward_accuracy_se")),
            _num(m["context_overhead"]) + m.get("overhead_mark", ""),
            _pct(m["win_rate"], m.get("win_rate_se")),
            _pct(m.get("echo_rate")),
        ])
    return rows


def transfer_table(results: dict) -> list[list[str]]:
    """Rows of the transfer table: one column per generator, cells ``accuracy / win rate``."""
    transfer = results.get("transfer") or {}
    if not transfer:
        return []
    generators = list(transfer)
    titles: dict[str, str] = {}
    for per_method in transfer.values():
        for name, m in per_method.items():
            titles.setdefault(name, m["title"])
    rows = [["Method", *(f"{g}: acc / win (%)" for g in generators)]]
    for name, title in titles.items():
        cells = []
        for g in generators:
            m = transfer[g].get(name)
            cells.append("-" if m is None else f"{_pct(m['reward_accuracy'])} / {_pct(m['win_rate'])}")
        rows.append([title, *cells])
    return rows


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return ""
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    cfg = results.get("config", {})
    stats = results.get("stats", {})
    parts = ["# Evaluation results", ""]
    if cfg:
        parts += [
            f"Data: `{cfg.get('data')}` ({stats.get('users')} users, {stats.get('examples')} labeled "
            f"examples; {stats.get('judged_per_method')} judged answers per method). "
            f"Base model: `{cfg.get('base')}`. Judge: `{cfg.get('judge')}`. "
            f"Answers: greedy, at most {cfg.get('max_new_tokens')} new tokens.",
            "",
        ]
    parts += [
        markdown_table(main_table(results)),
        "",
        "Reward accuracy: share of examples whose log-prob margin log π(y_c|x,c) − log π(y_r|x,c) "
        "beats the base model's (ties half). Context overhead: extra tokens the conditioning adds "
        "in the generator's tokenizer. Win rate: judge's verdict on the method's answer against the "
        "base model's (ties half; an LLM judge sees the two in a seeded random order). Echo rate: share "
        "of the judged answers that repeat 8 or more consecutive words of the conditioning text. "
        "± is one standard error.",
    ]
    if any(m.get("overhead_mark") for m in results["methods"].values()):
        from popi_sdk.eval.latent import OVERHEAD_NOTE

        parts += ["", OVERHEAD_NOTE]
    if stats.get("judge_unparsed"):
        parts += [
            "",
            f"{stats['judge_unparsed']} judge answer(s) gave no verdict and counted as ties "
            "(see examples.jsonl); a small judge model often ignores the format.",
        ]
    transfer = transfer_table(results)
    if transfer:
        parts += ["", "## Transfer: the same summaries, other generators", "", markdown_table(transfer), ""]
        parts.append("Each generator is compared with its own base model (prompt only).")
    summaries = results.get("summaries") or {}
    if summaries:
        parts += ["", "## Summaries", ""]
        for source, s in summaries.items():
            parts.append(
                f"- {source}: `{s['summarizer']}`, {s['users']} users, "
                f"{_num(s['mean_tokens'])} tokens on average"
            )
    if stats.get("seconds") is not None:
        parts += ["", f"Finished in {stats['seconds']} s."]
    return "\n".join(parts).rstrip() + "\n"


def write_results(out_dir: str | os.PathLike, results: dict, records: Sequence[dict]) -> dict[str, Path]:
    """Write the three files into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "examples": out / "examples.jsonl"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(results), encoding="utf-8")
    with paths["examples"].open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return paths
