"""The summaries matrix: every benchmark × every kind of signal × the methods that say whether a
trained pair infers preferences (docs/results.md, "Summaries that say who the user is").

For each benchmark (review, elix, roleplay) and each signal setting (pairs, persona, history,
traits, mixed), fresh-seed users are generated with ``popi data synth KIND --signals S`` and
``popi eval`` runs the methods on their test half. One table per run: reward accuracy ± one SE,
win rate, echo rate and context overhead per method and cell, and the mean over the signal
settings of each benchmark. Raw signal tokens are printed beside the trained summaries' tokens
(the "≤ 1/3 of the raw signals" check). An external file (``--extra NAME=PATH``, e.g. the
P-Soups report half) adds a row of cells read from that path.

    python benchmarks/summary_matrix.py --summarizer hf:popi --generator hf:popi-generator \\
        --seed 5151 --out runs/matrix
    python benchmarks/summary_matrix.py --kinds elix --signals pairs --users 24 --out runs/m-small

Every cell is a plain ``popi eval`` folder under ``OUT/KIND-SIGNALS`` (its results.md, the
examples, the answers): rerunning skips cells already done. Select settings on other seeds; the
seed given here should be one no run has selected on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

KINDS = ("review", "elix", "roleplay")
SIGNALS = ("pairs", "persona", "history", "traits", "mixed")
METHODS = "base,raw,inference,exemplar,oracle,shuffled,popi,popi-full,exemplar-aligned,user-edit"


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def cell(args: argparse.Namespace, kind: str, signals: str, data: Path | None = None) -> dict:
    """Run (or reuse) one cell's ``popi eval``; returns its results.json."""
    out = Path(args.out) / (f"{kind}-{signals}" if data is None else kind)
    results = out / "eval" / "results.json"
    if not results.exists():
        if data is None:
            data_dir = out / "data"
            run(["popi", "data", "synth", kind, "--users", str(args.users), "--pairs", str(args.pairs),
                 "--examples", str(args.examples), "--test-fraction", "0.5", "--seed", str(args.seed),
                 "--signals", signals, "--out", str(data_dir)])
            data = data_dir / "test.jsonl"
        methods = args.methods
        if data is not None and not _has_personas(data):
            methods = ",".join(m for m in methods.split(",") if m not in ("oracle", "shuffled", "user-edit"))
        cmd = ["popi", "eval", "--data", str(data), "--methods", methods, "--judge", args.judge,
               "--out", str(out / "eval"), "--prompts-per-user", str(args.prompts_per_user),
               "--max-new-tokens", str(args.max_new_tokens), "--no-progress"]
        if args.summarizer:
            cmd += ["--summarizer", args.summarizer]
        if args.generator:
            cmd += ["--generator", args.generator]
        run(cmd)
    return json.loads(results.read_text(encoding="utf-8"))


def _has_personas(path: Path) -> bool:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return len({r.get("persona") for r in rows} - {None}) >= 2


def fmt(m: dict | None, key: str = "reward_accuracy") -> str:
    if m is None or m.get(key) is None:
        return "-"
    se = m.get(f"{key}_se")
    return f"{100 * m[key]:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--signals", default=",".join(SIGNALS))
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--summarizer", default="hf:popi")
    ap.add_argument("--generator", default="hf:popi-generator")
    ap.add_argument("--users", type=int, default=100, help="Users generated per cell (half are tested).")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--examples", default="3-3")
    ap.add_argument("--seed", type=int, default=5151)
    ap.add_argument("--judge", default="oracle")
    ap.add_argument("--prompts-per-user", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--extra", action="append", default=[], help="NAME=PATH of a test file to add.")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cells: dict[tuple[str, str], dict] = {}
    for kind in args.kinds.split(","):
        for signals in args.signals.split(","):
            cells[(kind, signals)] = cell(args, kind, signals)
    for extra in args.extra:
        name, _, path = extra.partition("=")
        cells[(name, "-")] = cell(args, name, "-", Path(path))

    methods = [m for m in args.methods.split(",")]
    lines = ["| benchmark | signals | users / examples | " + " | ".join(methods) + " |",
             "|---|---|---:|" + "---:|" * len(methods)]
    for (kind, signals), res in cells.items():
        stats = res["stats"]
        row = [kind, signals, f"{stats['users']} / {stats['examples']}"]
        row += [fmt(res["methods"].get(m)) for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    for kind in args.kinds.split(","):
        mine = [res for (k, s), res in cells.items() if k == kind and s != "-"]
        if len(mine) > 1:
            row = [kind, "mean", ""]
            for m in methods:
                vals = [r["methods"][m]["reward_accuracy"] for r in mine if m in r["methods"]]
                row.append(f"{100 * sum(vals) / len(vals):.1f}" if len(vals) == len(mine) else "-")
            lines.append("| " + " | ".join(row) + " |")
    print("\nReward accuracy (%), ± one SE\n")
    print("\n".join(lines))

    print("\nWin rate vs base (%) / echo rate (%) / context overhead (tokens)\n")
    lines = ["| benchmark | signals | " + " | ".join(methods) + " |", "|---|---|" + "---:|" * len(methods)]
    for (kind, signals), res in cells.items():
        row = [kind, signals]
        for m in methods:
            r = res["methods"].get(m)
            row.append("-" if r is None else
                       f"{fmt(r, 'win_rate').split(' ')[0]} / {fmt(r, 'echo_rate')} / {r['context_overhead']:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    print("\n".join(lines))

    raw_vs_summary = []
    for (kind, signals), res in cells.items():
        raw, popi = res["methods"].get("raw"), res["methods"].get("popi")
        if raw and popi and raw["context_overhead"]:
            raw_vs_summary.append(f"{kind}-{signals}: {popi['context_overhead'] / raw['context_overhead']:.2f}")
    if raw_vs_summary:
        print("\nTrained summary tokens / raw signal tokens (context overhead): " + ", ".join(raw_vs_summary))


if __name__ == "__main__":
    main()
