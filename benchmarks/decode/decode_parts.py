"""Where the fast decoder's time goes: its matrix products by precision and rows, and a profile
of the int4 decode step of the embedded model.

- Products: one projection of the embedded model's shapes (576 -> 3072, gate/up; 1536 -> 576,
  down) timed with float32 weights, bf16 weights and the packed int4 CPU kernel (bf16 inputs), at
  1 row (a decode step) and at ``--rows`` rows (a prompt pass). This is why the int4 decoder's
  prompt pass uses bf16 weights. Two 8-bit alternatives are timed beside them: ``torch.ao``
  dynamic quantization (``quantize_dynamic``, qint8) and torch's int8 weight-only kernel
  (``_weight_int8pack_mm``, per-row scales, bf16 inputs).
- Step profile: ``torch.profiler`` over one greedy int4 decode of ``--tokens`` tokens after a short
  chat prompt; the share of the packed int4 kernel and the top ops.

    python benchmarks/decode/decode_parts.py                  # 1 thread, 200 rows, 64 tokens
"""

from __future__ import annotations

import argparse
import time


#: (out, in, label) of the embedded model's projections the product tables time.
PROJECTIONS = ((3072, 576, "gate/up 576→3072"), (576, 1536, "down 1536→576"))


def _per_call_ms(fn, n: int) -> float:
    for _ in range(max(3, n // 10)):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=200, help="Rows of the prompt-pass product.")
    ap.add_argument("--tokens", type=int, default=64, help="Tokens of the profiled decode.")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from popi_sdk.backends.fast_decode import FastDecoder, _Int4

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| product | rows | float32 (ms) | bf16 weights (ms) | int4 kernel (ms) "
          "| torch.ao dynamic int8 (ms) | int8 weight-only kernel (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for n, k, name in PROJECTIONS:
            w = torch.randn(n, k) * 0.02
            w16, q4 = w.bfloat16(), _Int4(w)
            linear = torch.nn.Linear(k, n, bias=False)
            linear.weight.data = w
            import warnings

            with warnings.catch_warnings():  # torch.ao's deprecation notice of quantized tensors
                warnings.simplefilter("ignore")
                q8 = torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
            scales = w.abs().amax(1) / 127
            w8, s16 = torch.round(w / scales[:, None]).to(torch.int8), scales.bfloat16()
            for rows in (1, args.rows):
                x = torch.randn(rows, k)
                x16 = x.bfloat16()
                reps = 300 if rows == 1 else 20
                times = (_per_call_ms(lambda: F.linear(x, w), reps),
                         _per_call_ms(lambda: F.linear(x16, w16), reps),
                         _per_call_ms(lambda: q4(x), reps),
                         _per_call_ms(lambda: q8(x), reps),
                         _per_call_ms(lambda: torch._weight_int8pack_mm(x16, w8, s16), reps))
                print(f"| {name} | {rows} | " + " | ".join(f"{t:.3f}" for t in times) + " |")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.backends.hf import embedded_checkpoint

    path = embedded_checkpoint()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    dec = FastDecoder(model, "int4")
    ids = tok.apply_chat_template([{"role": "user", "content": "Explain how the internet works."}],
                                  add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=args.tokens, eos_ids=[-1], pad_id=0)  # no stop: exactly N tokens
    dec.generate(ids, mask, **kw)
    runs = [dec.generate(ids, mask, **kw) for _ in range(3)]
    per_token = min((r.total_s - r.first_token_s) / (r.steps - 1) for r in runs) * 1e3
    print(f"\nint4 decode without the profiler, best of 3: {per_token:.1f} ms per token after the "
          f"first ({1e3 / per_token:.1f} tok/s)")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        dec.generate(ids, mask, **kw)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    int4 = sum(e.self_cpu_time_total for e in events if "int4pack_mm" in e.key)
    print(f"under the profiler: the packed int4 kernel is {100 * int4 / total:.0f}% of self CPU time, "
          f"{int4 / 1e3 / args.tokens:.1f} ms per token\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
