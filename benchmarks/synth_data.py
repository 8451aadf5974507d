"""Size and speed of the synthetic benchmarks: generation time, and token counts in the embedded
model's tokenizer (what the CPU presets budget for).

    python benchmarks/synth_data.py --users 200 --seed 0

Prints two Markdown tables (pair signals; then each signal kind on its own, as rendered for the
summarizer); docs/data.md records their output.
"""

from __future__ import annotations

import argparse
import statistics
import time

from popi_sdk.data.synth import KINDS, persona_score, signal_kinds, synth_users
from popi_sdk.templates import render_signals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from popi_sdk.backends.hf import embedded_checkpoint

    tok = AutoTokenizer.from_pretrained(str(embedded_checkpoint()))

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False).input_ids)

    print(f"{args.users} users, seed {args.seed}, tokens of SmolLM2-135M-Instruct\n")
    print("| benchmark | generate (s) | pairs/user | signal texts (tokens, mean / max) "
          "| rendered signals (mean / max) | response (mean / max) | oracle prefers chosen |")
    print("|---|---|---|---|---|---|---|")
    for kind in KINDS:
        started = time.perf_counter()
        rows = synth_users(kind, args.users, args.seed)
        seconds = time.perf_counter() - started
        texts = [sum(n(p.prompt) + n(p.chosen) + n(p.rejected) for p in r.signals.pairs) for r in rows]
        rendered = [n(render_signals(r.signals)) for r in rows]
        pairs = [(r.persona, p) for r in rows for p in [*r.signals.pairs, *r.examples]]
        responses = [n(t) for _, p in pairs for t in (p.chosen, p.rejected)]
        agree = sum(persona_score(persona, p.chosen) > persona_score(persona, p.rejected) for persona, p in pairs)
        print(
            f"| {kind} | {seconds:.2f} | {len(rows[0].signals.pairs)} "
            f"| {statistics.mean(texts):.0f} / {max(texts)} "
            f"| {statistics.mean(rendered):.0f} / {max(rendered)} "
            f"| {statistics.mean(responses):.0f} / {max(responses)} "
            f"| {agree}/{len(pairs)} |"
        )

    print("\nRendered signals by kind, one kind per user (tokens, mean / max):\n")
    every = [k for k in signal_kinds("elix")]
    print("| benchmark | " + " | ".join(every) + " | mixed |")
    print("|---|" + "---|" * (len(every) + 1))
    for kind in KINDS:
        cells = []
        for signals in [*every, "mixed"]:
            if signals not in (*signal_kinds(kind), "mixed"):
                cells.append("—")
                continue
            rows = synth_users(kind, args.users, args.seed, signals=signals)
            rendered = [n(render_signals(r.signals)) for r in rows]
            cells.append(f"{statistics.mean(rendered):.0f} / {max(rendered)}")
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
