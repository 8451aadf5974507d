"""Headroom of a frozen generator: how much can *any* summary move its margins on these users?

For each kind of conditioning text, the reward accuracy (``popi eval``'s definition: the margin
under the summary beats the prompt-only margin) and the mean POPI reward on the users' labeled
examples, with the embedded model as generator and base. It says what a summarizer could reach
against this generator before any training is spent:

- ``oracle``: the ground-truth persona as the summary (the ceiling of a *description*);
- ``shuffled``: another user's persona (the control: a description of the wrong user);
- ``example``: "The user prefers answers like this one: " + the first signal pair's chosen response;
- ``<template>``: the untrained summarizer's greedy summary with each summary template;
- ``<template>-bestof``: the best of N sampled summaries per user, picked by reward on the same
  examples (what best-of-N warm start trains on: an upper bound, not a held-out number).

    python benchmarks/headroom.py --data data/elix/train.jsonl --users 24 --samples 8

Run it on training or validation users, never on the test users you report.
"""

from __future__ import annotations

import argparse
import random
import time

from popi_sdk.eval import metrics as M


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="JSON Lines users with examples and personas.")
    ap.add_argument("--users", type=int, default=24, help="First N users of the file.")
    ap.add_argument("--templates", default="app-i,examples", help="Summary templates to try.")
    ap.add_argument("--samples", type=int, default=0, help="N for best-of-N (0: skip).")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--summary-tokens", type=int, default=96)
    ap.add_argument("--summary-words", type=int, default=60)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-references", action="store_true",
                    help="Skip the oracle, shuffled and example rows (templates only).")
    args = ap.parse_args()

    from popi_sdk.backends import GenerateOptions, get_backend
    from popi_sdk.data import read_users
    from popi_sdk.objective import popi_reward
    from popi_sdk.scoring import ReferenceCache, SequenceScorer, summary_logprobs, summary_rewards
    from popi_sdk.summary_spec import SummarySpec

    users = [u for u in read_users(args.data) if u.examples][: args.users]
    backend = get_backend("hf")
    scorer = SequenceScorer(backend.model, backend.tokenizer, batch_size=16)
    ref = ReferenceCache(scorer, backend.name)
    examples = [u.examples for u in users]
    chosen_ref, rejected_ref = ref.pairs([p for ps in examples for p in ps])
    base_margins = M.margins(chosen_ref.tolist(), rejected_ref.tolist())

    def accuracy(summaries: list[str]) -> tuple[float, float, float, float]:
        """Reward accuracy and mean reward (popi_reward, as training) from one scoring pass."""
        margins, rewards = [], []
        for pairs, (chosen, rejected) in zip(examples, summary_logprobs(scorer, examples, summaries)):
            ref_c, ref_r = ref.pairs(pairs)
            rewards.append(float(popi_reward(chosen, rejected, ref_c, ref_r, beta=args.beta).mean()))
            margins.extend((chosen - rejected).tolist())
        acc = M.accuracy_outcomes(margins, base_margins)
        return M.mean(acc), M.stderr(acc), M.mean(rewards), M.stderr(rewards)

    rows: list[tuple[str, tuple, float, float]] = []

    def record(name: str, summaries: list[str], started: float) -> None:
        tokens = M.mean([backend.count_tokens(s) for s in summaries])
        rows.append((name, accuracy(summaries), tokens, time.perf_counter() - started))
        acc, se, rew, rse = rows[-1][1]
        print(f"{name:22s} acc {100 * acc:5.1f} ± {100 * se:4.1f}  reward {rew:+.3f} ± {rse:.3f}  "
              f"{tokens:5.1f} tokens  {rows[-1][3]:6.1f} s", flush=True)

    t = time.perf_counter()
    if not args.no_references and all(u.persona for u in users):
        record("oracle", [u.persona for u in users], t)
        rng = random.Random(args.seed)
        shuffled = []
        for i, u in enumerate(users):
            others = [v.persona for v in users if v.persona != u.persona]
            shuffled.append(rng.choice(others) if others else u.persona)
        record("shuffled", shuffled, t)
    if not args.no_references:
        record("example", ["The user prefers answers like this one: " + u.signals.pairs[0].chosen
                           for u in users], t)
    for name in [n.strip() for n in args.templates.split(",") if n.strip()]:
        spec = SummarySpec(template=name, max_words=args.summary_words, max_tokens=args.summary_tokens)
        t = time.perf_counter()
        greedy = [spec.clean(s) for s in backend.generate_batch(
            [spec.messages(u.signals) for u in users],
            GenerateOptions(max_new_tokens=spec.max_tokens, temperature=0.0))]
        record(name, greedy, t)
        print("   e.g.", repr(greedy[0][:300]))
        if args.samples:
            t = time.perf_counter()
            n = args.samples
            sampled = [spec.clean(s) for s in backend.generate_batch(
                [spec.messages(u.signals) for u in users for _ in range(n)],
                GenerateOptions(max_new_tokens=spec.max_tokens, temperature=args.temperature,
                                seed=args.seed))]
            rewards = summary_rewards(scorer, ref, [ps for ps in examples for _ in range(n)],
                                      sampled, beta=args.beta)
            best = []
            for i in range(len(users)):
                group = list(zip(rewards[i * n:(i + 1) * n], sampled[i * n:(i + 1) * n]))
                best.append(max(group)[1])
            record(f"{name}-mean-sample", sampled[::n], t)
            record(f"{name}-bestof{n}", best, t)
            print("   e.g.", repr(best[0][:300]))

    print(f"\n{len(users)} users, {len(base_margins)} examples, beta {args.beta}, {args.data}")
    print("| summary | reward accuracy % | mean reward | tokens |")
    print("|---|---|---|---|")
    for name, (acc, se, rew, rse), tokens, _ in rows:
        print(f"| {name} | {100 * acc:.1f} ± {100 * se:.1f} | {rew:+.3f} ± {rse:.3f} | {tokens:.0f} |")


if __name__ == "__main__":
    main()
