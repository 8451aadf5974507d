"""What a best-of-N warm start picked, by kind of user and kind of candidate.

Reads ``RUN/warm_start.jsonl`` (one pick per training user, or the best few with
``stage1.warm_start_keep``, each counted; ``--best N`` counts each user's first N, best first)
and prints one row per user group
(the user id's prefix before the first "-", e.g. "persona-" for the persona-only users of a
mixed training file): how many picks were the summarizer's own sample, an extractive quote, and
the data's persona worded as the data writes it ("about") or as an instruction to the writer
("instruction", ``stage1.warm_start_persona_form``), each alone or followed by a shown answer
("... , shown": "They like answers such as:" and the user's own preferred response, or with
``stage1.warm_start_persona_show = "peers"`` a same-persona user's, with ``"written"`` one the
generator wrote). With ``--by-persona DATA`` (the run's training file) the rows are the users'
personas instead. With ``--in-style DATA`` a last column counts, of the picked summaries that show
an answer (a sample may too), those whose shown answer is in the user's style (``summary_personas.py``'s check: the oracle's ``persona_score`` at
least halfway from the user's rejected to chosen labeled responses).

    python benchmarks/warm_start_picks.py runs/sum-r8both runs/sum-r8about
    python benchmarks/warm_start_picks.py runs/sum-r8both --by-persona data/r7/train.jsonl
    python benchmarks/warm_start_picks.py runs/sum-r13p runs/sum-r13w --in-style data/r12revn/train.jsonl
    python benchmarks/warm_start_picks.py runs/r16h0 --best 1 --in-style data/r16h0/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
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
    ap.add_argument("--in-style", metavar="DATA",
                    help="Also count the shown answers in the user's style (DATA: the run's "
                         "training file, whose personas and labeled examples the check reads).")
    ap.add_argument("--best", type=int, metavar="N",
                    help="Count only each user's first N picks (a run with stage1.warm_start_keep "
                         "writes several per user, best first).")
    args = ap.parse_args()
    if args.best is not None and args.best < 1:
        ap.error(f"--best counts each user's first N picks: give N >= 1, not {args.best}")
    from popi_sdk.data import read_users

    personas = None
    if args.by_persona:
        personas = {u.user_id: u.persona or "(no persona)" for u in read_users(args.by_persona)}
    styled = None
    if args.in_style:
        sys.path.insert(0, str(Path(__file__).parent))
        from summary_personas import in_style

        users = {u.user_id: u for u in read_users(args.in_style) if u.persona and u.examples}
        styled = lambda key, summary: (key in users  # noqa: E731
                                       and in_style(users[key], summary.split(SHOW_LEAD, 1)[1]))
    extra = " | shown, in style |" if styled else " |"
    print("| run | users | " + " | ".join(COLUMNS) + extra)
    print("|---|---|" + "---:|" * (len(COLUMNS) + bool(styled)))
    for run in args.runs:
        path = Path(run) / "warm_start.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (a stage-1 run with stage1.warm_start_samples writes it)")
        picks = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if args.best is not None:  # each user's picks are written best first
            rank: Counter = Counter()
            kept = []
            for p in picks:
                rank[p["example_key"]] += 1
                if rank[p["example_key"]] <= args.best:
                    kept.append(p)
            picks = kept
        groups: dict[str, Counter] = {}
        for p in picks:
            key = p["example_key"]
            if personas is not None and key not in personas:
                raise SystemExit(f"{path}: user {key!r} is not in {args.by_persona}: give the run's training file")
            group = personas[key] if personas is not None else key.split("-")[0]
            groups.setdefault(group, Counter())[form(p)] += 1
            if styled and SHOW_LEAD in p["summary"]:  # a persona candidate's, or a sample's own
                groups[group]["shows"] += 1
                groups[group]["in style"] += styled(key, p["summary"])
        groups["all"] = sum(groups.values(), Counter())
        for name, c in groups.items():
            cells = [str(c[k]) for k in COLUMNS]
            if styled:
                cells.append(f"{c['in style']} of {c['shows']}")
            print(f"| {run} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
