"""Does a review summarizer decide from the signals how many attributes to name?

A review persona names a sentiment, a length, or both ("This user prefers positive reviews.",
"... positive and concise reviews."). For each user of a review data file this reads the trained
summarizer's next-token probabilities at the two points where its greedy summary decides that:
the first word after "This user prefers" (a sentiment word or a length word), and, after the
user's sentiment (or the likelier one for a length-only user), " and" (a second attribute) against
" reviews" (none). It prints the means for users whose persona names one attribute and for users
whose persona names two: a summarizer that reads the signals puts " and" lower for the first.
When the run's ``warm_start.jsonl`` sits beside the summarizer folder (``RUN/stage1``), it first
counts the same two choices in the summaries the warm start trained on.

    python benchmarks/review_axes.py --summarizer runs/sum-r6rev/stage1 --data data/dev-review/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path


def target_counts(picks: Path) -> Counter:
    """(starts with a sentiment word, goes on with " and") for each warm-start summary that
    starts "This user prefers"."""
    counts: Counter = Counter()
    for line in picks.read_text(encoding="utf-8").splitlines():
        m = re.match(r"This user prefers (\w+)( and)?", json.loads(line)["summary"]) if line.strip() else None
        if m:
            counts[(m.group(1) in ("positive", "negative"), bool(m.group(2)))] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summarizer", required=True, help="Trained summarizer folder (RUN/stage1).")
    ap.add_argument("--data", required=True, help="Review users with personas (JSON Lines).")
    args = ap.parse_args()

    import torch

    from popi_sdk.data import read_users
    from popi_sdk.data.synth import infer_kind, persona_attributes
    from popi_sdk.eval.runner import summary_spec_for
    from popi_sdk.train import common

    users = [u for u in read_users(args.data) if u.persona and infer_kind(u.persona) == "review"]
    if not users:
        ap.error(f"{args.data} has no users with a synthetic review persona")
    picks = Path(args.summarizer).parent / "warm_start.jsonl"
    if picks.is_file():
        c = target_counts(picks)
        print(f"{picks}: {c[True, True] + c[True, False]} targets start with a sentiment word, "
              f"{c[False, True] + c[False, False]} with a length word; after the sentiment, "
              f"{c[True, True]} go on with \" and\", {c[True, False]} do not\n")
    spec = summary_spec_for(args.summarizer)
    model, tok = common.load_frozen(args.summarizer, bf16=False), common.load_tokenizer(args.summarizer)

    def next_word(messages, text: str, words: list[str]) -> dict[str, float]:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + text
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = model(ids).logits[0, -1].float().softmax(-1)
        return {w: float(probs[tok(w, add_special_tokens=False)["input_ids"][0]]) for w in words}

    groups: dict[str, list[tuple[float, float]]] = {"one attribute": [], "two attributes": []}
    for u in users:
        attrs = persona_attributes(u.persona, "review")
        messages = spec.messages(u.signals)
        first = next_word(messages, "This user prefers", [" positive", " negative", " concise", " verbose"])
        sentiment = attrs["sentiment"] or max(("positive", "negative"), key=lambda s: first[" " + s])
        then = next_word(messages, f"This user prefers {sentiment}", [" and", " reviews"])
        name = "two attributes" if attrs["sentiment"] and attrs["length"] else "one attribute"
        groups[name].append((first[" positive"] + first[" negative"], then[" and"] / (then[" and"] + then[" reviews"])))
    print("| users whose persona names | users | P(a sentiment word first) | P(\" and\" after the sentiment), "
          "against \" reviews\" | \" and\" the likelier |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in groups.items():
        if rows:
            n = len(rows)
            print(f"| {name} | {n} | {sum(r[0] for r in rows) / n:.2f} | {sum(r[1] for r in rows) / n:.2f} | "
                  f"{sum(r[1] > 0.5 for r in rows)} of {n} |")


if __name__ == "__main__":
    main()
