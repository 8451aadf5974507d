"""What a best-of-N warm start picked, by kind of user and kind of candidate.

Reads ``RUN/warm_start.jsonl`` (one pick per training user) and prints one row per user group
(the user id's prefix before the first "-", e.g. "persona-" for the persona-only users of a
mixed training file): how many picks were the summarizer's own sample, an extractive quote, and
the data's persona worded as the data writes it ("about") or as an instruction to the writer
("instruction", ``stage1.warm_start_persona_form``), each alone or followed by a shown answer
("... , shown": "They like answers such as:" and the user's own preferred response, or with
``stage1.warm_start_persona_show = "peers"`` a same-persona user's). With ``--by-persona DATA`` (the run's
training file) the rows are the users' personas instead.

    python benchmarks/warm_start_picks.py runs/sum-r8both runs/sum-r8about
    python benchmarks/warm_start_picks.py runs/sum-r8both --by-persona data/r7/train.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from popi_sdk.templates import SHOW_LEAD

COLUMNS = ("sampled", "extractive", "about", "about, shown", "instruction", "instruction, shown")


def form(pick: dict) -> str:
    if pick["source"] != "persona":
        return pick["source"]
    wording = "instruction" if pick["summary"].startswith("Generate ") else "about"
    return f"{wording}, shown" if SHOW_LEAD in pick["summary"] else wording


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="Stage-1 run folders with a warm_start.jsonl.")
    ap.add_argument("--by-persona", metavar="DATA",
                    help="Group by each user's persona in DATA (the training JSON Lines file).")
    args = ap.parse_args()
    personas = None
    if args.by_persona:
        from popi_sdk.data import read_users

        personas = {u.user_id: u.persona or "(no persona)" for u in read_users(args.by_persona)}
    print("| run | users | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for run in args.runs:
        path = Path(run) / "warm_start.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (a stage-1 run with stage1.warm_start_samples writes it)")
        picks = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        groups: dict[str, Counter] = {}
        for p in picks:
            key = p["example_key"]
            if personas is not None and key not in personas:
                raise SystemExit(f"{path}: user {key!r} is not in {args.by_persona}: give the run's training file")
            group = personas[key] if personas is not None else key.split("-")[0]
            groups.setdefault(group, Counter())[form(p)] += 1
        groups["all"] = sum(groups.values(), Counter())
        for name, c in groups.items():
            print(f"| {run} | {name} | " + " | ".join(str(c[k]) for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
