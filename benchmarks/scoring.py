"""Reward cost per summary: the naive way against popi_sdk.scoring, on the same inputs.

The workload is one GRPO reward call's worth of stage 1: ``--users`` users, ``--summaries``
candidate summaries per user (the group), each scored on the user's ``--examples`` labeled pairs.

- **naive** (as the official POPI code does): for every summary, four forward passes (policy
  chosen, policy rejected, reference chosen, reference rejected), each batched over the user's
  examples with right padding, LM head over every position, and the prompt-only reference
  recomputed for every summary.
- **popi-sdk**: :func:`popi_sdk.scoring.summary_rewards`: the reference comes from a
  :class:`~popi_sdk.scoring.ReferenceCache` (computed once per example: its cost is included
  here), the summary's system prefix runs once and its KV cache serves every chosen and rejected
  sequence of the user, and the LM head runs over response positions only.

The two ways run in ``--rounds`` interleaved rounds (the first way of each round alternates), so
on a shared machine both see the same load; each round of popi-sdk starts from an empty reference
cache. Both give the same rewards to 1e-4 (asserted). Prints each round's times, then forward
tokens (every position fed through the model, padding included), forward calls, the median wall
time and the median CPU time of the process (which, with one torch thread, hardly depends on the
other jobs sharing the machine), and their ratios (with the range of the per-round ratios), as a
Markdown table.

    python benchmarks/scoring.py                      # defaults: 4 users x 4 summaries x 2 examples, 3 rounds
    python benchmarks/scoring.py --users 8 --summaries 8 --bf16
"""

from __future__ import annotations

import argparse
import random
import time

SUMMARY_TEMPLATES = [
    "The user prefers {a} reviews. They value {b} and dislike {c}.",
    "The user enjoys {a} writing and responds well to {b}. They find {c} off-putting, and they "
    "appreciate when a review gets to the point about what matters to them.",
    "This user likes {a} reviews with {b}. Avoid {c}. Keep the tone consistent and match the level "
    "of detail they have shown in the examples: they reward answers that feel written for them "
    "rather than for a general audience, and penalize filler.",
    "Preferences: {a} tone; {b}; no {c}.",
]
FILL = {
    "a": ["positive", "negative", "short", "detailed", "upbeat", "critical"],
    "b": ["concrete details", "a clear verdict", "brevity", "a warm tone", "specific praise"],
    "c": ["long-winded openings", "vague statements", "sarcasm", "lists of specs", "hedging"],
}


def candidate_summaries(rng: random.Random, n: int) -> list[str]:
    """A group of ``n`` summaries of varied length, like the samples GRPO scores per user."""
    return [
        rng.choice(SUMMARY_TEMPLATES).format(**{k: rng.choice(v) for k, v in FILL.items()})
        for _ in range(n)
    ]


class Naive:
    """Four forward passes per summary, the reference recomputed every time."""

    def __init__(self, model, tokenizer):
        self.model, self.tok = model, tokenizer
        self.forward_tokens = 0
        self.forward_calls = 0

    def _ids(self, context, response) -> tuple[list[int], int]:
        """Template the whole conversation; the response is what follows the prompt's tokens."""
        prompt = self.tok.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
        full = self.tok.apply_chat_template(
            [*context, {"role": "assistant", "content": response}], tokenize=False
        )
        p_ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = self.tok(full, add_special_tokens=False)["input_ids"]
        while self.tok.decode(f_ids[-1:]).strip() == "":  # the newline after the end-of-turn
            f_ids = f_ids[:-1]
        return f_ids, len(p_ids)

    def batch_logprobs(self, contexts, responses):
        import torch

        seqs = [self._ids(c, y) for c, y in zip(contexts, responses)]
        width = max(len(s) for s, _ in seqs)
        pad = self.tok.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, (s, _) in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        self.forward_tokens += ids.numel()
        self.forward_calls += 1
        logp = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for row, (s, n_prompt) in enumerate(seqs):
            out.append(sum(float(logp[row, i - 1, s[i]]) for i in range(n_prompt, len(s))))
        return torch.tensor(out)

    def rewards(self, examples, summaries, *, beta):
        from popi_sdk.objective import popi_reward
        from popi_sdk.templates import prompt_only_messages, summary_messages

        out = []
        for pairs, summary in zip(examples, summaries):
            with_summary = [summary_messages(p.prompt, summary) for p in pairs]
            alone = [prompt_only_messages(p.prompt) for p in pairs]
            pc = self.batch_logprobs(with_summary, [p.chosen for p in pairs])
            pr = self.batch_logprobs(with_summary, [p.rejected for p in pairs])
            rc = self.batch_logprobs(alone, [p.chosen for p in pairs])
            rr = self.batch_logprobs(alone, [p.rejected for p in pairs])
            out.append(float(popi_reward(pc, pr, rc, rr, beta=beta).mean()))
        return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--summaries", type=int, default=4, help="Summaries per user (GRPO group).")
    parser.add_argument("--examples", type=int, default=2, help="Labeled pairs per user.")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="popi-sdk under bf16 (rewards then differ).")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="Rounds of both ways, alternating which goes first, so both see the same load.",
    )
    parser.add_argument(
        "--profile", action="store_true",
        help="Then run popi-sdk once more under cProfile and print where its time goes.",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    import torch

    from popi_sdk.backends import get_backend
    from popi_sdk.data.synth import synth_users
    from popi_sdk.scoring import ReferenceCache, SequenceScorer, summary_rewards

    backend = get_backend("hf")
    model, tok = backend.model, backend.tokenizer
    rng = random.Random(args.seed)
    users = synth_users("review", args.users, args.seed, examples=(args.examples, args.examples))
    examples, summaries = [], []
    for row in users:
        for summary in candidate_summaries(rng, args.summaries):
            examples.append(row.examples)
            summaries.append(summary)
    n = len(summaries)
    print(
        f"{args.users} users x {args.summaries} summaries x {args.examples} examples "
        f"= {n} summaries, {n * args.examples} (summary, example) rewards; torch threads "
        f"{torch.get_num_threads()}; {args.rounds} interleaved rounds"
    )

    def run_naive():
        naive = Naive(model, tok)
        t0, c0 = time.perf_counter(), time.process_time()
        rewards = naive.rewards(examples, summaries, beta=args.beta)
        spent = time.perf_counter() - t0, time.process_time() - c0
        return rewards, spent, naive.forward_calls, naive.forward_tokens

    def run_popi():
        # A fresh cache every round: each round pays for the reference once, as a first step would.
        scorer = SequenceScorer(model, tok, batch_size=args.batch_size, bf16=args.bf16)
        ref = ReferenceCache(scorer, backend.name)
        t0, c0 = time.perf_counter(), time.process_time()
        rewards = summary_rewards(scorer, ref, examples, summaries, beta=args.beta)
        spent = time.perf_counter() - t0, time.process_time() - c0
        return rewards, spent, scorer.forward_calls, scorer.forward_tokens

    times: dict[str, list[float]] = {"naive": [], "popi": []}
    cpu: dict[str, list[float]] = {"naive": [], "popi": []}
    counts: dict[str, tuple[int, int]] = {}
    rewards: dict[str, list[float]] = {}
    ways = {"naive": run_naive, "popi": run_popi}
    for r in range(args.rounds):
        order = ("naive", "popi") if r % 2 == 0 else ("popi", "naive")
        for way in order:
            got, (secs, cpu_secs), calls, tokens = ways[way]()
            times[way].append(secs)
            cpu[way].append(cpu_secs)
            counts[way] = (calls, tokens)
            rewards.setdefault(way, got)
        print(
            f"round {r + 1} ({order[0]} first): naive {times['naive'][-1]:.1f} s, "
            f"popi-sdk {times['popi'][-1]:.1f} s, ratio {times['naive'][-1] / times['popi'][-1]:.1f}x; "
            f"CPU time naive {cpu['naive'][-1]:.1f} s, popi-sdk {cpu['popi'][-1]:.1f} s, ratio "
            f"{cpu['naive'][-1] / cpu['popi'][-1]:.1f}x",
            flush=True,
        )

    worst = max(abs(a - b) for a, b in zip(rewards["popi"], rewards["naive"]))
    print(f"largest reward difference: {worst:.2e}")
    if not args.bf16:
        assert worst <= 1e-4, f"rewards differ by {worst}"

    # CPU time (one torch thread) hardly depends on what else runs on the machine; wall time does.
    naive_s, ours_s = _median(times["naive"]), _median(times["popi"])
    naive_c, ours_c = _median(cpu["naive"]), _median(cpu["popi"])
    per_round = [a / b for a, b in zip(times["naive"], times["popi"])]
    cpu_round = [a / b for a, b in zip(cpu["naive"], cpu["popi"])]
    rows = [
        ("naive (4 passes per summary)", *counts["naive"], naive_s, naive_c),
        ("popi-sdk" + (" bf16" if args.bf16 else ""), *counts["popi"], ours_s, ours_c),
    ]
    print("\n| way | forward calls | forward tokens | wall time, median of rounds (s) "
          "| CPU time, median (s) | CPU per summary (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, calls, tokens, secs, cpu_secs in rows:
        print(f"| {name} | {calls} | {tokens:,} | {secs:.1f} | {cpu_secs:.1f} | {1000 * cpu_secs / n:.0f} |")
    (nc, nt), (oc, ot) = counts["naive"], counts["popi"]
    print(
        f"| ratio naive / popi-sdk | {nc / oc:.1f}x | {nt / ot:.1f}x | {naive_s / ours_s:.1f}x "
        f"(rounds {min(per_round):.1f}-{max(per_round):.1f}x) | {naive_c / ours_c:.1f}x "
        f"(rounds {min(cpu_round):.1f}-{max(cpu_round):.1f}x) | |"
    )

    if args.profile:
        profile(run_popi)


def profile(run) -> None:
    """Cumulative time of popi_sdk.scoring's functions and the model's forward in one run (a
    function's time includes what it calls, so the rows overlap)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive, own, cumulative, _)
    total = max(ct for (_, _, name), (_, _, _, ct, _) in stats.items() if name == "summary_rewards")
    rows = [(f"scoring.{name}", nc, ct) for (path, _, name), (_, nc, _, ct, _) in stats.items()
            if path.endswith("popi_sdk/scoring.py") and ct >= 0.01 * total]
    forwards = [(nc, ct) for (path, _, name), (_, nc, _, ct, _) in stats.items()
                if "models/" in path and "modeling_" in path and name == "forward"]
    if forwards:
        nc, ct = max(forwards, key=lambda f: f[1])
        rows.append(("model forward (the whole model)", nc, ct))
    print("\n| popi-sdk, profiled once | calls | cumulative (s) | share |")
    print("|---|---:|---:|---:|")
    for name, calls, secs in sorted(rows, key=lambda r: -r[2]):
        print(f"| {name} | {calls} | {secs:.2f} | {secs / total:.0%} |")


if __name__ == "__main__":
    main()
