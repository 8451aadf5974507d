"""Can a stage-1 reward select a *correct* description of the user?

A summarizer that writes "description, then one preferred answer" (the ``describe`` template)
learns to infer who the user is only if its reward prefers a right description to a wrong one.
This samples several summaries per user from a summarizer, scores every sample with the stage-1
reward (the summary-augmented DPO reward on the user's labeled pairs, as training computes it)
under each generator given, and reports, per generator, how often the best-rewarded sample's
description is the user's true persona against the share of samples that get it right, and how
often a right description outscores a wrong one of the same user.

A description is the summary's text before "They like answers such as:"; it is right when it
equals the user's ground-truth persona (case and surrounding spaces aside), as the data writes it
or as an instruction to the writer (``persona_instruction``), which suits data whose
personas are short fixed sentences (`popi data synth elix`). With ``--temperature 0 --samples 1
--generators ""`` it only counts how many of the summarizer's greedy summaries (the ones it
writes in use) describe the true persona.

    python benchmarks/reward_selects.py --summarizer runs/sum-r3/stage1 \\
        --generators hf,runs/gen-r2/stage2 --data data/dev-elix/test.jsonl --users 16 --samples 8
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time


def description(summary: str) -> str:
    from popi_sdk.templates import SHOW_LEAD

    return summary.split(SHOW_LEAD)[0].strip().lower()


def wordings(persona: str) -> set[str]:
    """The descriptions that name ``persona``: as the data writes it, and as an instruction to
    the writer (``stage1.warm_start_persona_form``), lower-cased."""
    from popi_sdk.data.synth import persona_instruction

    return {t.strip().lower() for t in (persona, persona_instruction(persona) or persona)}


def confusion(users: list, groups: list[list[str]]) -> str:
    """Which persona each user's summaries describe, by true persona (a Markdown table): a
    summarizer that infers fills the diagonal; one that guesses spreads each row like the column
    totals; "other" is a description that is none of the data's personas."""
    from collections import Counter

    personas = sorted({u.persona.strip().lower() for u in users})
    named = {w: p for u in users for p in [u.persona.strip().lower()] for w in wordings(u.persona)}
    counts = {p: Counter() for p in personas}
    for u, texts in zip(users, groups):
        for t in texts:
            counts[u.persona.strip().lower()][named.get(description(t), "other")] += 1
    cols = [*personas, "other"]
    lines = ["| true persona \\ described | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    lines += [f"| {p} | " + " | ".join(str(counts[p][c]) for c in cols) + " |" for p in personas]
    return "\n".join(lines) + "\n"


def load_local(spec: str) -> tuple:
    """(model, tokenizer) of ``hf``, ``hf:FOLDER`` or a folder, frozen in float32 as stage 1
    loads its reward's generator."""
    from popi_sdk.backends import parse_backend_name
    from popi_sdk.backends.hf import resolve_model
    from popi_sdk.train import common

    prefix, model = parse_backend_name(spec)
    if prefix != "hf":
        sys.exit(f"{spec}: the reward needs a local model's log-probs: give hf, hf:FOLDER or a folder")
    path = resolve_model(model)
    return common.load_frozen(path, bf16=False), common.load_tokenizer(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summarizer", required=True, help="Trained summarizer folder (RUN/stage1).")
    ap.add_argument("--generators", default="hf",
                    help="Comma-separated generators whose reward to test ('' for none).")
    ap.add_argument("--data", required=True, help="Users with personas and labeled examples (JSON Lines).")
    ap.add_argument("--users", type=int, default=16, help="First N users of --data.")
    ap.add_argument("--samples", type=int, default=8, help="Summaries sampled per user.")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from popi_sdk.data import read_users
    from popi_sdk.eval.runner import summary_spec_for
    from popi_sdk.scoring import ReferenceCache, SequenceScorer, summary_rewards
    from popi_sdk.train.validation import write_summaries

    users = [u for u in read_users(args.data) if u.persona and u.examples][: args.users]
    if not users:
        ap.error(f"{args.data} has no users with a persona and labeled examples")
    spec = summary_spec_for(args.summarizer)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model, tok = load_local(args.summarizer)
    messages = [spec.messages(u.signals) for u in users for _ in range(args.samples)]
    texts = write_summaries(model, tok, messages, max_tokens=spec.max_tokens, clean=spec.clean,
                            temperature=args.temperature, top_p=spec.train_top_p)
    del model
    sampled_s = time.perf_counter() - started
    groups = [texts[i * args.samples:(i + 1) * args.samples] for i in range(len(users))]
    right = [[description(t) in wordings(u.persona) for t in g] for u, g in zip(users, groups)]
    n = len(texts)
    print(f"{len(users)} users x {args.samples} samples at temperature {args.temperature} from "
          f"{args.summarizer} ({sampled_s:.0f} s); {sum(map(sum, right))} of {n} samples "
          f"({100 * sum(map(sum, right)) / n:.1f}%) describe the user's true persona\n")
    print(confusion(users, groups))
    generators = [g for g in args.generators.split(",") if g.strip()]
    if not generators:
        return
    print("| generator of the reward | best-rewarded sample right (users) | right beats wrong, same user "
          "(pairs) | mean reward, right / wrong | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name in generators:
        t0 = time.perf_counter()
        gen, gen_tok = load_local(name)
        scorer = SequenceScorer(gen, gen_tok, batch_size=16)
        rewards = summary_rewards(scorer, ReferenceCache(scorer, name),
                                  [u.examples for u in users for _ in range(args.samples)], texts,
                                  beta=args.beta)
        del gen, scorer
        per_user = [rewards[i * args.samples:(i + 1) * args.samples] for i in range(len(users))]
        best_right = sum(ok[max(range(len(rs)), key=rs.__getitem__)] for ok, rs in zip(right, per_user))
        good_bad = [([r for a, r in zip(ok, rs) if a], [r for a, r in zip(ok, rs) if not a])
                    for ok, rs in zip(right, per_user)]
        pairs = [(g, b) for gs, bs in good_bad for g, b in itertools.product(gs, bs)]
        total = len(pairs)
        wins, ties = sum(g > b for g, b in pairs), sum(g == b for g, b in pairs)
        good = [r for gs, _ in good_bad for r in gs]
        bad = [r for _, bs in good_bad for r in bs]
        beats = f"{100 * (wins + ties / 2) / total:.1f}% of {total}" if total else "no pair"
        means = (f"{statistics.mean(good):.3f} / {statistics.mean(bad):.3f}" if good and bad else "-")
        print(f"| {name} | {best_right} of {len(users)} | {beats} | {means} | "
              f"{time.perf_counter() - t0:.0f} |")


if __name__ == "__main__":
    main()
