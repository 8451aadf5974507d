"""The paper's Table 1 on one benchmark's held-out users: every row, one table
(docs/results.md, "Table 1: every row").

Each row needs its own checkpoint, so one kind (a benchmark) is four ``popi eval`` runs, each a
plain eval folder under ``OUT/KIND/``:

- ``main``: Base, Raw-Prompting, Inference-Prompting, POPI-Inference-Only and POPI-Full
  (``--summarizer``, ``--generator``);
- ``raw-aligned``: the generator trained on the raw signals (``--raw-aligned``, stage 2 with
  ``stage2.conditioning={raw: 1}``);
- ``inference-aligned``: the generator trained on the untrained summarizer's summaries
  (``--inference-aligned``, stage 2 with ``stage2.summarizer=hf``);
- ``latent``: LoRe, PAL-A and PAL-B (``--latent``, a ``popi train latent`` run folder).

Every run also scores the base model, so each row's reward accuracy and win rate are against the
same base margins and answers (greedy, so identical across runs). Rerunning skips runs already
done; the table printed at the end covers every kind under OUT:

    python benchmarks/table1.py --out runs/t1 --kind elix --data data/t1-elix/test.jsonl \\
        --summarizer hf:popi --generator hf:popi-generator --raw-aligned runs/raw-elix/stage2 \\
        --inference-aligned runs/infal-elix/stage2 --latent runs/latent-elix
    python benchmarks/table1.py --out runs/t1 --report        # the table alone

The data should be test users no run has selected on (a fresh ``popi data synth`` seed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROWS = ("base", "raw", "inference", "popi", "raw-aligned", "inference-aligned",
        "lore", "pal-a", "pal-b", "popi-full")
RUNS = {  # run name -> (methods, the option naming its checkpoint)
    "main": ("base,raw,inference,popi,popi-full", None),
    "raw-aligned": ("base,raw-aligned", "raw_aligned"),
    "inference-aligned": ("base,inference-aligned", "inference_aligned"),
    "latent": ("base,lore,pal-a,pal-b", "latent"),
}
LATENT = ("lore", "pal-a", "pal-b")


def run_evals(args: argparse.Namespace) -> None:
    out = Path(args.out) / args.kind
    for name, (methods, option) in RUNS.items():
        folder = out / name
        if (folder / "results.json").exists():
            print(f"{folder}: done, reused", file=sys.stderr)
            continue
        checkpoint = getattr(args, option) if option else None
        if option and not checkpoint:
            print(f"{folder}: skipped (no --{option.replace('_', '-')})", file=sys.stderr)
            continue
        cmd = ["popi", "eval", "--data", args.data, "--methods", methods, "--judge", "oracle",
               "--prompts-per-user", str(args.prompts_per_user), "--max-new-tokens",
               str(args.max_new_tokens), "--no-progress", "--out", str(folder)]
        if name == "main":
            cmd += ["--summarizer", args.summarizer, "--generator", args.generator]
        elif name == "latent":
            cmd += ["--latent", checkpoint]
        else:
            cmd += ["--generator", checkpoint]
        print("+ POPI_WEIGHTS=float32 " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "POPI_WEIGHTS": "float32"})


def collect(out: Path) -> dict[str, dict]:
    """``{kind: {"rows": {method: metrics}, "examples": n, "judged": n}}`` from OUT/*/*/results.json."""
    kinds: dict[str, dict] = {}
    for kind_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        rows: dict[str, dict] = {}
        stats: dict = {}
        for name in RUNS:
            path = kind_dir / name / "results.json"
            if not path.exists():
                continue
            res = json.loads(path.read_text(encoding="utf-8"))
            for method, metrics in res["methods"].items():
                if method != "base" or name == "main" or "base" not in rows:
                    rows[method] = metrics
            stats = stats or res["stats"]
        if rows:
            kinds[kind_dir.name] = {"rows": rows, "examples": stats.get("examples"),
                                    "judged": stats.get("judged_per_method"), "users": stats.get("users")}
    return kinds


def pct(m: dict, key: str) -> str:
    if m.get(key) is None:
        return "-"
    se = m.get(f"{key}_se")
    return f"{100 * m[key]:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def table(kinds: dict[str, dict]) -> str:
    head = "| Method |"
    rule = "|---|"
    for kind, k in kinds.items():
        head += f" {kind}: reward accuracy (%) | overhead (tokens) | win rate vs base (%) |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for method in ROWS:
        present = [k["rows"].get(method) for k in kinds.values()]
        if not any(present):
            continue
        title = next(m["title"] for m in present if m)
        cells = [title]
        for m in present:
            if m is None:
                cells += ["-", "-", "-"]
                continue
            overhead = f"{m['context_overhead']:.1f}" + ("†" if method in LATENT else "")
            cells += [pct(m, "reward_accuracy"), overhead, pct(m, "win_rate")]
        lines.append("| " + " | ".join(cells) + " |")
    sizes = "; ".join(f"{kind}: {k['users']} users, {k['examples']} labeled examples, "
                      f"{k['judged']} judged answers per method" for kind, k in kinds.items())
    return "\n".join(lines) + f"\n\n{sizes}. ± is one standard error. † one special token."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="Folder of the runs: OUT/KIND/{main,raw-aligned,...}.")
    ap.add_argument("--report", action="store_true", help="Print the table of what OUT holds; run nothing.")
    ap.add_argument("--kind", help="The benchmark's name in the table (elix, review, ...).")
    ap.add_argument("--data", help="Its held-out users, DIR/test.jsonl.")
    ap.add_argument("--summarizer", default="hf:popi")
    ap.add_argument("--generator", default="hf:popi-generator")
    ap.add_argument("--raw-aligned", help="Stage-2 checkpoint trained on the raw signals.")
    ap.add_argument("--inference-aligned", help="Stage-2 checkpoint trained on untrained summaries.")
    ap.add_argument("--latent", help="Run folder of `popi train latent` (lore/, pal-a/, pal-b/).")
    ap.add_argument("--prompts-per-user", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    if not args.report:
        if not args.kind or not args.data:
            ap.error("--kind and --data are needed unless --report")
        run_evals(args)
    out = Path(args.out)
    if not out.is_dir():
        sys.exit(f"{out}: no such folder; run an evaluation into it first")
    kinds = collect(out)
    if not kinds:
        sys.exit(f"{out}: no results.json under {out}/KIND/RUN; run an evaluation into it first")
    print(table(kinds))


if __name__ == "__main__":
    main()
