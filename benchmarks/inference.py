"""Decode speed of the local model: the fast decoder against transformers' generate, one process.

Paths (each an ``HFBackend`` over the same checkpoint, greedy):

- **transformers**: ``decoder="transformers"``, float32 weights, ``model.generate`` (the path
  every release before the fast decoder used);
- **fast float32**: ``weights="float32"``: the lean decode loop, the model's own weights;
- **fast int4**: 4-bit projection weights (groups of 32) for the decode steps, bf16 weights for the
  prompt pass, bf16 inputs to the products, float32 elsewhere, the LM head's argmax exact over a
  4-bit shortlist.

Measured: decode tokens/s at batch 1 after each answer's first token (the answer's tokens less one,
over its time less its time to first token), end-to-end tokens/s at batch 1 and batched
(``--batches``), time to first token (prefill and one token, batch 1),
``Personalizer.summarize_many`` summaries per minute, the greedy tokens' agreement with
transformers, and, with ``--eval``, the POPI reward of each path's summaries
(``popi_sdk.scoring.summary_rewards``, float32 scorer) and their reward accuracy (share of
(summary, pair) rewards above 0, i.e. the summary raising the chosen answer's margin over the
plain prompt's). A 1 GiB tensor copy gives the machine's memory bandwidth, and with each path's
bytes of weights read per token its bandwidth bound. Every cell is the best of ``--repeats``
interleaved runs; the spread (slowest / fastest) is printed with it.

    python benchmarks/inference.py                         # threads from POPI_THREADS / default
    python benchmarks/inference.py --threads 1 --thread-sweep 1,2 --eval
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

PROMPTS = [
    "Explain how the internet works to a child, in a few sentences.",
    "Write a short review of a budget laptop you used for a year.",
    "What should I cook for dinner tonight? Give three ideas and explain each.",
    "Summarize the plot of Romeo and Juliet.",
    "Give me five tips for a job interview, with a reason for each.",
    "Why is the sky blue? Explain it step by step.",
    "Describe a good morning routine for a busy student.",
    "What are the pros and cons of electric cars?",
]
PATHS = {
    "transformers": dict(decoder="transformers"),
    "fast float32": dict(decoder="fast", weights="float32"),
    "fast int4": dict(decoder="fast", weights="int4"),
}


def bandwidth_gbs(gib: float = 1.0, reps: int = 3) -> float:
    """Read + write bytes per second of a large float32 tensor copy, best of ``reps``."""
    import torch

    a = torch.ones(int(gib * 2**30) // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(_timed(lambda: b.copy_(a))[1] for _ in range(reps))
    return 2 * a.numel() * 4 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def weight_bytes(backend) -> int:
    fast = backend.fast_decoder()
    if fast is not None:
        return fast.weight_bytes()
    model = backend.model  # every projection and the (tied) LM head, in the model's dtype
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if p.dim() == 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="New tokens per answer.")
    parser.add_argument("--batches", default="1,8,32", help="Batch sizes to time.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="Default: POPI_THREADS, ...")
    parser.add_argument("--thread-sweep", default="", help="e.g. 1,2: batch-1 speed per count.")
    parser.add_argument("--users", type=int, default=8, help="Users for summarize_many.")
    parser.add_argument("--eval", action="store_true", help="Score each path's summaries.")
    parser.add_argument("--paths", default=",".join(PATHS), help="Which paths, comma-separated.")
    args = parser.parse_args()

    import torch

    from popi_sdk.backends import GenerateOptions
    from popi_sdk.backends.hf import HFBackend
    from popi_sdk.data.synth import synth_users
    from popi_sdk.personalizer import Personalizer
    from popi_sdk.settings import torch_threads

    threads = torch_threads(args.threads)
    names = [n.strip() for n in args.paths.split(",")]
    backends = {n: HFBackend(threads=threads, **PATHS[n]) for n in names}
    build = {}
    for name, b in backends.items():
        b.model
        build[name] = _timed(b.fast_decoder)[1]
    torch.set_num_threads(threads)
    copy = bandwidth_gbs()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {threads} torch thread(s), "
          f"{args.tokens} new tokens, best of {args.repeats}; 1 GiB copy: {copy:.1f} GB/s (r+w)",
          flush=True)

    def n_tokens(backend, texts):
        return sum(backend.count_tokens(t) for t in texts)

    def speed(backend, convs, tokens, batch):
        backend.batch_size = batch
        texts, secs = _timed(lambda: backend.generate_batch(convs, GenerateOptions(max_new_tokens=tokens)))
        return texts, secs

    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    batches = [int(x) for x in args.batches.split(",") if x]
    results: dict[tuple, list[float]] = {}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, b in backends.items():
            ttft = [speed(b, [c], 1, 1)[1] for c in convs[:4]]
            results.setdefault((name, "ttft"), []).append(4 / sum(ttft))  # a rate: best = max
            for batch in batches:
                # Batch 1 answers four prompts in turn; a batch of B repeats the prompts to fill it.
                work = convs[:4] if batch == 1 else (convs * (batch // len(convs) + 1))[:batch]
                texts, secs = speed(b, work, args.tokens, batch)
                tokens = n_tokens(b, texts)
                results.setdefault((name, f"b{batch}"), []).append(tokens / secs)
                print(f"  {name}, batch {batch}: {results[(name, f'b{batch}')][-1]:.1f} tok/s", flush=True)
                if batch == 1:
                    outputs[name] = texts
                    # decode alone: the tokens after each answer's first, over the time after it
                    rate = (tokens - len(work)) / max(secs - sum(ttft), 1e-9)
                    results.setdefault((name, "decode"), []).append(rate)
                    print(f"  {name}, batch 1 after the first token: {rate:.1f} tok/s", flush=True)

    sweep = {}
    for n in [int(x) for x in args.thread_sweep.split(",") if x]:
        torch.set_num_threads(n)
        for _ in range(args.repeats):
            for name, b in backends.items():
                if name == "fast float32":
                    continue  # the sweep compares the old path with the default
                texts, secs = speed(b, convs[:4], args.tokens, 1)
                sweep.setdefault((name, n), []).append(n_tokens(b, texts) / secs)
                print(f"  {name}, {n} thread(s): {sweep[(name, n)][-1]:.1f} tok/s", flush=True)
    torch.set_num_threads(threads)

    users = synth_users("review", args.users, 0, examples=(2, 2))
    summaries: dict[str, list[str]] = {}
    per_min: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, b in backends.items():
                p = Personalizer(summarizer=b, generator=b, store=os.path.join(tmp, f"{name}.sqlite"))
                done, secs = _timed(lambda: p.summarize_many(users, refresh=True, progress=False))
                per_min.setdefault(name, []).append(60 * len(users) / secs)
                print(f"  {name}: {per_min[name][-1]:.1f} summaries/min", flush=True)
                summaries[name] = [s.text for s in done]

    base = names[0]
    print("\n| path | weights read per token | bandwidth bound (tok/s) | decoder build (s) | "
          + "decode tok/s, batch 1, after the first token | "
          + " | ".join(f"tok/s, batch {x}" for x in batches)
          + " | first token (ms) | summaries / min | greedy answers = transformers |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(batches) + "---:|---:|---:|")

    def cell(vals, invert=False):
        best, worst = max(vals), min(vals)
        if invert:
            return f"{1000 / best:.0f} (spread {best / worst:.2f})"
        return f"{best:.1f} (spread {best / worst:.2f})"

    for name, b in backends.items():
        wb = weight_bytes(b)
        same = sum(a == c for a, c in zip(outputs[name], outputs[base]))
        shown = len(outputs[base])
        row = [name, f"{wb / 1e6:.0f} MB", f"{copy * 1e9 / wb:.0f}", f"{build[name]:.1f}"]
        row += [cell(results[(name, "decode")])] + [cell(results[(name, f"b{x}")]) for x in batches]
        row += [cell(results[(name, "ttft")], invert=True), cell(per_min[name]), f"{same}/{shown}"]
        print("| " + " | ".join(row) + " |")
    for name in names[1:]:
        row = [f"**{name} / {base}**", "", "", ""]
        row += [f"**{max(results[(name, k)]) / max(results[(base, k)]):.1f}x**"
                for k in ["decode", *[f"b{x}" for x in batches]]]
        row += [f"{max(results[(name, 'ttft')]) / max(results[(base, 'ttft')]):.1f}x",
                f"{max(per_min[name]) / max(per_min[base]):.1f}x", ""]
        print("| " + " | ".join(row) + " |")
    print(f"\nsummaries identical to {base}'s: "
          + ", ".join(f"{n} {sum(a == c for a, c in zip(summaries[n], summaries[base]))}/{len(users)}"
                      for n in names[1:]))

    if sweep:
        counts = sorted({n for _, n in sweep})
        print("\n| path | " + " | ".join(f"batch-1 tok/s, {n} thread(s)" for n in counts) + " |")
        print("|---|" + "---:|" * len(counts))
        for name in names:
            if (name, counts[0]) in sweep:
                print(f"| {name} | " + " | ".join(cell(sweep[(name, n)]) for n in counts) + " |")

    if args.eval:
        from popi_sdk.scoring import ReferenceCache, SequenceScorer, summary_rewards

        scorer_backend = backends[base]
        scorer = SequenceScorer(scorer_backend.model, scorer_backend.tokenizer, batch_size=8)
        ref = ReferenceCache(scorer, scorer_backend.name)
        print("\n| summaries written by | (summary, pair) rewards | mean reward | reward accuracy |")
        print("|---|---:|---:|---:|")
        per_path = {}
        for name in names:
            ex, texts = [], []
            for row, text in zip(users, summaries[name]):
                for pair in row.examples:
                    ex.append([pair])
                    texts.append(text)
            rewards = summary_rewards(scorer, ref, ex, texts, beta=0.1)
            per_path[name] = rewards
            acc = sum(r > 0 for r in rewards) / len(rewards)
            print(f"| {name} | {len(rewards)} | {sum(rewards) / len(rewards):+.4f} | {acc:.1%} |")
        for name in names[1:]:
            diff = max(abs(a - c) for a, c in zip(per_path[name], per_path[base]))
            print(f"largest reward difference {name} vs {base}: {diff:.2e}")


if __name__ == "__main__":
    main()
