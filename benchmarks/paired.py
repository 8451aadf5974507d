"""Paired differences in reward accuracy between methods of `popi eval` runs on the same users.

Each ``--diff A B`` names two ``RUN:METHOD`` (a `popi eval --out` folder and a method name in
it). For each, the difference of ``correct`` (1, ½ for a tie, 0) is taken per
labeled example present in both, and its mean and standard error are printed in points:

    python benchmarks/paired.py --diff runs/eval-sr3-elix:popi runs/eval-ref-elix:exemplar \\
        --diff runs/eval-sr3-elix:profile-aligned runs/eval-sr3-elix:exemplar-aligned
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from popi_sdk.eval import metrics as M


def correct(spec: str) -> dict[tuple[str, str], float]:
    run, _, method = spec.rpartition(":")
    path = Path(run) / "examples.jsonl"
    if not path.exists():
        sys.exit(f"{path}: no such file (give RUN:METHOD with RUN a `popi eval --out` folder)")
    out = {}
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "example" and r["method"] == method and r.get("table", "main") == "main":
                out[(r["user_id"], r["prompt"])] = float(r["correct"])
    if not out:
        sys.exit(f"{path}: no labeled examples of method {method!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--diff", nargs=2, action="append", required=True, metavar=("A", "B"),
                    help="RUN:METHOD RUN:METHOD (A minus B); repeat for more rows")
    args = ap.parse_args()
    print("| difference | paired (points) | examples |")
    print("|---|---:|---:|")
    for left, right in args.diff:
        a, b = correct(left), correct(right)
        keys = sorted(a.keys() & b.keys())
        if not keys:
            sys.exit(f"{left} and {right} share no labeled example: give runs on the same users")
        d = [a[k] - b[k] for k in keys]
        se = M.stderr(d)
        print(f"| {left} − {right} | {100 * M.mean(d):+.1f} ± "
              f"{'-' if se is None else f'{100 * se:.1f}'} | {len(d)} |")


if __name__ == "__main__":
    main()
