"""Can a stage-1 reward select a *correct* description of the user?

A summarizer that writes "description, then one preferred answer" (the ``describe`` template)
learns to infer who the user is only if its reward prefers a right description to a wrong one.
This samples several summaries per user from a summarizer, scores every sample with the stage-1
reward (the summary-augmented DPO reward on the user's labeled pairs, as training computes it)
under each generator given, and reports, per generator, how often the best-rewarded sample's
description is the user's true persona against the share of samples that get it right, and how
often a right description outscores a wrong one of the same user.

A description is the summary's text before "They like answers such as:"; it is right when it
equals the user's ground-truth persona (case and surrounding spaces aside), which suits data whose
personas are short fixed sentences (`popi data synth elix`).

    python benchmarks/reward_selects.py --summarizer runs/sum-r3/stage1 \\
        --generators hf,runs/gen-r2/stage2 --data data/dev-elix/test.jsonl --users 16 --samples 8
"""

from __future__ import annotations

import argparse
import statistics
import time


def description(summary: str) -> str:
    from popi_sdk.templates import SHOW_LEAD

    return summary.split(SHOW_LEAD)[0].strip().lower()


def model_name(spec: str) -> str:
    """A model folder or the embedded model's name from a backend spec ("hf", "hf:FOLDER")."""
    spec = spec.removeprefix("hf:")
    return "smollm2" if spec == "hf" else spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summarizer", required=True, help="Trained summarizer folder (RUN/stage1).")
    ap.add_argument("--generators", default="hf", help="Comma-separated generators whose reward to test.")
    ap.add_argument("--data", required=True, help="Users with personas and labeled examples (JSON Lines).")
    ap.add_argument("--users", type=int, default=16, help="First N users of --data.")
    ap.add_argument("--samples", type=int, default=8, help="Summaries sampled per user.")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from popi_sdk.backends.hf import resolve_model
    from popi_sdk.data import read_users
    from popi_sdk.eval.runner import summary_spec_for
    from popi_sdk.scoring import ReferenceCache, SequenceScorer, summary_rewards
    from popi_sdk.train import common
    from popi_sdk.train.validation import write_summaries

    users = [u for u in read_users(args.data) if u.persona and u.examples][: args.users]
    if not users:
        ap.error(f"{args.data} has no users with a persona and labeled examples")
    spec = summary_spec_for(args.summarizer)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model = common.load_frozen(model_name(args.summarizer), bf16=False)
    tok = common.load_tokenizer(resolve_model(model_name(args.summarizer)))
    messages = [spec.messages(u.signals) for u in users for _ in range(args.samples)]
    texts = write_summaries(model, tok, messages, max_tokens=spec.max_tokens, clean=spec.clean,
                            temperature=args.temperature, top_p=spec.train_top_p)
    del model
    sampled_s = time.perf_counter() - started
    groups = [texts[i * args.samples:(i + 1) * args.samples] for i in range(len(users))]
    right = [[description(t) == u.persona.strip().lower() for t in g] for u, g in zip(users, groups)]
    n = len(texts)
    print(f"{len(users)} users x {args.samples} samples at temperature {args.temperature} from "
          f"{args.summarizer} ({sampled_s:.0f} s); {sum(map(sum, right))} of {n} samples "
          f"({100 * sum(map(sum, right)) / n:.1f}%) describe the user's true persona\n")
    print("| generator of the reward | best-rewarded sample right (users) | right beats wrong, same user "
          "(pairs) | mean reward, right / wrong | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name in args.generators.split(","):
        t0 = time.perf_counter()
        gen = common.load_frozen(model_name(name), bf16=False)
        scorer = SequenceScorer(gen, common.load_tokenizer(resolve_model(model_name(name))), batch_size=16)
        rewards = summary_rewards(scorer, ReferenceCache(scorer, name),
                                  [u.examples for u in users for _ in range(args.samples)], texts,
                                  beta=args.beta)
        del gen, scorer
        per_user = [rewards[i * args.samples:(i + 1) * args.samples] for i in range(len(users))]
        best_right = sum(ok[max(range(len(rs)), key=rs.__getitem__)] for ok, rs in zip(right, per_user))
        wins = ties = total = 0
        for ok, rs in zip(right, per_user):
            for a, ra in zip(ok, rs):
                for b, rb in zip(ok, rs):
                    if a and not b:
                        total += 1
                        wins += ra > rb
                        ties += ra == rb
        good = [r for ok, rs in zip(right, per_user) for a, r in zip(ok, rs) if a]
        bad = [r for ok, rs in zip(right, per_user) for a, r in zip(ok, rs) if not a]
        beats = f"{100 * (wins + ties / 2) / total:.1f}% of {total}" if total else "no pair"
        means = (f"{statistics.mean(good):.3f} / {statistics.mean(bad):.3f}" if good and bad else "-")
        print(f"| {name} | {best_right} of {len(users)} | {beats} | {means} | "
              f"{time.perf_counter() - t0:.0f} |")


if __name__ == "__main__":
    main()
