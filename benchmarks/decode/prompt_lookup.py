"""Would prompt-lookup decoding speed up batch-1 greedy decoding of the embedded model?

Prompt lookup drafts the next ``k`` tokens by copying what followed the last earlier occurrence
of the answer's final ``n`` tokens (in the prompt or the answer so far), and checks the draft in
one forward pass of ``1 + k`` rows: every drafted token the model would have picked itself is
accepted, plus the model's own next token. Greedy outputs stay the same; what it saves depends on
how often the text repeats its context, and on what a pass of ``1 + k`` rows costs against one
row.

This measures both, without changing the decoder:

1. the fast int4 decoder's own greedy outputs (``HFBackend()``) for ``inference.py``'s answer
   prompts (``--tokens`` each, no penalties) and for ``summarize_many`` on synthetic review users
   (the SDK's summary decoding settings, which ban repeating any 6-gram);
2. the time of a decode pass's 4-bit products (the 30 layers' four products and the LM head's
   shortlist, the bulk of a step) at ``r`` rows over one row, for ``r = 1 .. k + 1``;
3. per setting (``n`` from ``--max-ngram`` down to ``--min-ngram``, draft length ``k``), a replay
   of each recorded output: drafts, accepted tokens, tokens per pass, and the estimated speedup
   (tokens over the summed pass costs; the first token, from the prompt pass, is not counted).

    python benchmarks/decode/prompt_lookup.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# The prompts and the timing come from benchmarks/inference.py, one folder up, so the paths
# compared here are the ones that script measures.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inference import PROMPTS  # noqa: E402


def draft(seq: list[int], max_n: int, min_n: int, k: int) -> list[int]:
    """The ``k`` tokens after the last earlier occurrence of ``seq``'s longest matching tail."""
    for n in range(max_n, min_n - 1, -1):
        if len(seq) <= n:
            continue
        tail = seq[-n:]
        for s in range(len(seq) - n - 1, -1, -1):
            if seq[s : s + n] == tail:
                return seq[s + n : s + n + k]
    return []


def replay(records: list[tuple[list[int], list[int]]], max_n: int, min_n: int, k: int,
           cost: list[float]) -> tuple[float, float, float]:
    """(accepted share of drafted tokens, tokens per pass, estimated speedup) over ``records``."""
    tokens = passes = accepted = drafted = 0
    spent = 0.0
    for prompt, out in records:
        seq, i = list(prompt) + out[:1], 1
        while i < len(out):
            d = draft(seq, max_n, min_n, min(k, len(out) - i))
            n = 0
            while n < len(d) and d[n] == out[i + n]:
                n += 1
            emit = min(n + 1, len(out) - i)
            spent += cost[len(d)]
            passes, accepted, drafted, tokens = passes + 1, accepted + n, drafted + len(d), tokens + emit
            seq += out[i : i + emit]
            i += emit
    return accepted / max(drafted, 1), tokens / max(passes, 1), tokens / max(spent, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="New tokens per answer.")
    ap.add_argument("--users", type=int, default=8, help="Users for summarize_many.")
    ap.add_argument("--drafts", default="2,3,4,8", help="Draft lengths k to replay.")
    ap.add_argument("--max-ngram", type=int, default=3)
    ap.add_argument("--min-ngram", type=int, default=1)
    args = ap.parse_args()

    import torch

    from popi_sdk.backends import GenerateOptions, fast_decode
    from popi_sdk.backends.hf import HFBackend
    from popi_sdk.data.synth import synth_users
    from popi_sdk.personalizer import Personalizer

    backend = HFBackend()
    decoder = backend.fast_decoder()
    if decoder is None or decoder.weights != "int4":
        raise SystemExit("this benchmark needs the fast int4 decoder of the embedded model")
    torch.set_num_threads(backend.threads)
    records: dict[str, list[tuple[list[int], list[int]]]] = {"answers": [], "summaries": []}
    target = ["answers"]
    real_generate = fast_decode.FastDecoder.generate

    def recording(self, input_ids, attention_mask, **kw):
        result = real_generate(self, input_ids, attention_mask, **kw)
        for row, new in enumerate(result.tokens):
            records[target[0]].append((input_ids[row][attention_mask[row].bool()].tolist(), new))
        return result

    fast_decode.FastDecoder.generate = recording
    try:
        backend.batch_size = 1
        for prompt in PROMPTS:
            backend.generate([{"role": "user", "content": prompt}], GenerateOptions(max_new_tokens=args.tokens))
        target[0] = "summaries"
        users = synth_users("review", args.users, 0, examples=(2, 2))
        with tempfile.TemporaryDirectory() as tmp:
            p = Personalizer(summarizer=backend, generator=backend, store=os.path.join(tmp, "s.sqlite"))
            p.summarize_many(users, refresh=True, progress=False)
    finally:
        fast_decode.FastDecoder.generate = real_generate

    drafts = [int(x) for x in args.drafts.split(",") if x]
    widths = range(1, max(drafts) + 2)

    def products(rows: int) -> float:
        x, m = torch.randn(rows, decoder.hidden), torch.randn(rows, backend.model.config.intermediate_size)
        a = torch.randn(rows, decoder.n_heads * decoder.head_dim)

        def once():
            for layer in decoder.layers:
                layer.qkv(x), layer.o(a, keep=True), layer.gate_up(x, keep=True), layer.down(m, keep=True)
            decoder.lm_shortlist(x)

        for _ in range(3):
            once()
        t0 = time.perf_counter()
        for _ in range(20):
            once()
        return (time.perf_counter() - t0) / 20

    with torch.inference_mode():
        times = {r: products(r) for r in widths}
    cost = [times[r] / times[1] for r in widths]  # cost[d]: a pass checking d drafted tokens
    print(f"recorded {len(records['answers'])} answers, {len(records['summaries'])} summaries; "
          f"{backend.threads} thread(s)\n")
    print("| rows in the pass | 4-bit products (ms) | cost / one row |")
    print("|---:|---:|---:|")
    for r in widths:
        print(f"| {r} | {1e3 * times[r]:.2f} | {times[r] / times[1]:.2f} |")
    print("\n| output | n-gram | draft k | drafted tokens accepted | tokens per pass | estimated speedup |")
    print("|---|---|---:|---:|---:|---:|")
    for name, recs in records.items():
        for min_n in sorted({args.min_ngram, 2}):
            for k in drafts:
                share, per_pass, speedup = replay(recs, args.max_ngram, min_n, k, cost)
                print(f"| {name} | {args.max_ngram}..{min_n} | {k} | {share:.0%} | {per_pass:.2f} | {speedup:.2f}x |")


if __name__ == "__main__":
    main()
