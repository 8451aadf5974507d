"""When does an incremental refresh beat a fresh summary? Measured with the usefulness score.

Synthetic ``review`` users (``popi data synth review``) whose signal pairs arrive in two halves.
Each user is first summarized from the first half ("old"); then the second half arrives and the
summary is rewritten two ways with :meth:`Personalizer.add_signals`:

- **refresh**: from the merged signals with the current summary as extra context
  (``with_current=True``);
- **fresh**: from the merged signals alone (``with_current=False``, the default).

Two situations:

- **more evidence**: the second half comes from the same user (their preferences hold);
- **changed**: the second half, and the labeled pairs scored on, come from another user (the
  person's preferences changed, so the old summary is now wrong).

Every summary is scored with :meth:`Personalizer.score` on the labeled pairs of whoever the user
now is (the embedded model scores; 0.5 = no better than no summary). Prints a Markdown table.

    python benchmarks/refresh.py                     # defaults: 4 users, 6 pairs, 4 examples, 48-token summaries
    python benchmarks/refresh.py --users 8           # the run in docs/lifecycle.md
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--summary-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from popi_sdk import Personalizer
    from popi_sdk.data import read_users

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "popi_sdk.cli", "data", "synth", "review", "--out", tmp,
               "--users", str(args.users * 2), "--pairs", str(args.pairs),
               "--examples", str(args.examples), "--seed", str(args.seed), "--test-fraction", "0"]
        print("$", " ".join(["popi", *cmd[3:]]), file=sys.stderr)
        subprocess.run(cmd, check=True, capture_output=True)
        rows = read_users(Path(tmp) / "train.jsonl")
    users, others = rows[: args.users], rows[args.users : 2 * args.users]

    # Each user's first summary is written once and copied into every arm's store.
    base = Personalizer(store=":memory:", summary_tokens=args.summary_tokens)
    firsts = []
    for user in users:
        half = len(user.signals.pairs) // 2
        first = {"user_id": user.user_id, **user.signals.model_dump(), "pairs": [
            p.model_dump() for p in user.signals.pairs[:half]]}
        firsts.append((half, first, base.summarize(first)))
        print(f"first summary of {user.user_id} written", file=sys.stderr)

    results: dict[str, dict[str, list]] = {}
    same: dict[str, dict[str, int]] = {}
    for situation in ("more evidence", "changed"):
        arms = {"old": [], "refresh": [], "fresh": []}
        copies = {"old": 0, "refresh": 0, "fresh": 0}
        for user, other, (half, first, old) in zip(users, others, firsts):
            source = user if situation == "more evidence" else other
            later = {"pairs": [p.model_dump() for p in source.signals.pairs[half:]]}
            examples = source.examples
            for arm in ("refresh", "fresh"):
                p = Personalizer(store=":memory:", summary_tokens=args.summary_tokens)
                p.store.put(old)
                p.store.merge_signals(
                    user.user_id, {"signals": {k: v for k, v in first.items() if k != "user_id"}},
                    limit=p.max_stored_signals,
                )
                if arm == "refresh":
                    arms["old"].append(p.score(user.user_id, examples))
                new = p.add_signals(user.user_id, later, with_current=(arm == "refresh"))
                copies[arm] += new.text == old.text
                arms[arm].append(p.score(user.user_id, examples))
            print(f"{situation}: {user.user_id} done", file=sys.stderr)
        results[situation] = arms
        same[situation] = copies

    print(f"\n{args.users} synthetic review users, {args.pairs} signal pairs each (half old, half "
          f"new), scored on {args.examples} labeled pairs each; summaries of at most "
          f"{args.summary_tokens} tokens; embedded model scores.\n")
    print("| situation | summary | reward accuracy | margin gain (nats) | wins vs fresh | text = old |")
    print("|---|---|---:|---:|---:|---:|")
    for situation, arms in results.items():
        for arm in ("old", "refresh", "fresh"):
            scores = arms[arm]
            acc = statistics.mean(s.reward_accuracy for s in scores)
            gain = statistics.mean(s.margin_gain for s in scores)
            wins = "" if arm == "fresh" else str(sum(
                a.margin_gain > f.margin_gain for a, f in zip(scores, arms["fresh"])
            )) + f"/{len(scores)}"
            copied = "" if arm == "old" else f"{same[situation][arm]}/{len(scores)}"
            print(f"| {situation} | {arm} | {acc:.3f} | {gain:+.3f} | {wins} | {copied} |")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
