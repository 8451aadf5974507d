"""Training step times on a GPU: both stages of the `paper` preset on a randomly initialized model
of a Llama shape, full fine-tuning (the preset) against LoRA r=16, one after the other in one
command.

    python benchmarks/train_gpu.py --shape llama-3.2-1b --out runs/gpu --users 48 --steps 4

The model is written once by ``popi_sdk.train.random_model.random_llama`` (random weights, the
embedded model's tokenizer or ``--tokenizer``'s: no download), the data is synthetic ELIX users
(``--users``, 2 signal pairs, 2-3 labeled examples each). Each setting runs ``popi train all
--preset paper --max-steps N`` in a child process with vLLM off (``stage1.use_vllm=false``:
roll-outs through transformers on the training GPU) and no warm-up. The table gives, per setting
and stage, the seconds per optimizer step (stage 1: the mean of TRL's ``step_time`` without the
first step, which holds compilation and allocator warm-up; stage 2: ``train_runtime`` over the
steps, since DPO logs no step time), summaries or preference pairs per second, stage 1's mean
roll-out length, the whole run's wall time and the peak GPU memory that ``nvidia-smi`` saw
during it. Random weights write random summaries up to the token cap, so stage 1's roll-outs are
as long as the preset allows: an upper bound on a trained model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from popi_sdk.train.random_model import SHAPES

SETTINGS = {
    "full": [],  # the paper preset: no LoRA, bf16 on a GPU, gradient checkpointing
    "lora": ["lora.enabled=true", "lora.r=16"],
}


class GpuMemory:
    """Polls ``nvidia-smi`` for the memory in use on GPU 0; ``peak()`` is the largest seen (MiB)."""

    def __init__(self, every: float = 0.5):
        self.every, self.values, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True, text=True, timeout=10,
                ).stdout.strip()
                self.values.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> "GpuMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self) -> float | None:
        return max(self.values) if self.values else None


def stage_times(run: Path, stage: str) -> dict:
    """Per-step times of one stage: TRL's ``step_time`` where it logs one (GRPO), and the whole
    ``train_runtime`` with the step count (both stages)."""
    from popi_sdk.train.common import read_metrics

    rows = read_metrics(run, stage)
    steps = [r for r in rows if "loss" in r and "step" in r]
    summary = next((r for r in rows if "train_runtime" in r), {})
    return {
        "step_time": [float(r["step_time"]) for r in steps if "step_time" in r],
        "steps": len(steps),
        "train_runtime": float(summary.get("train_runtime", "nan")),
        "completion_length": [float(r["completions/mean_length"]) for r in steps
                              if "completions/mean_length" in r],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="Folder with the tokenizer files (default: the embedded model's, converted "
                         "under $POPI_HOME/models on first use).")
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES),
                    help="The model's shape (popi_sdk.train.random_model.SHAPES).")
    ap.add_argument("--out", type=Path, required=True, help="Folder for the model, data and runs.")
    ap.add_argument("--users", type=int, default=48, help="Synthetic ELIX users (3/4 train).")
    ap.add_argument("--steps", type=int, default=4, help="Optimizer steps per stage and setting.")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="Comma-separated: full, lora.")
    ap.add_argument("--set", action="append", default=[], help="Config override for every run.")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is left out of the mean)")
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")

    from popi_sdk.data.synth import write_benchmark
    from popi_sdk.train.random_model import random_llama

    root = args.out.resolve()
    model = root / f"model-{args.shape}"
    if not (model / "config.json").exists():
        t = time.perf_counter()
        if args.tokenizer is None:
            from popi_sdk.backends.hf import embedded_checkpoint

            args.tokenizer = embedded_checkpoint()
        random_llama(model, args.tokenizer, shape=args.shape)
        print(f"wrote a random {args.shape} model to {model} in {time.perf_counter() - t:.0f} s", flush=True)
    data = root / "data"
    if not (data / "train.jsonl").exists():
        write_benchmark("elix", data, args.users, 0, pairs=2, examples=(2, 3), test_fraction=0.25)

    results = {}
    for name in names:
        run = root / name
        cmd = [sys.executable, "-m", "popi_sdk.cli", "train", "all", "--preset", "paper",
               "--data", str(data), "--out", str(run), "--max-steps", str(args.steps),
               "--set", f"model={model}", "--set", "stage1.use_vllm=false",
               "--set", "stage1.warmup_steps=0", "--set", "stage2.warmup_steps=0",
               *[x for s in SETTINGS[name] + args.set for x in ("--set", s)]]
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        with GpuMemory() as mem:
            done = subprocess.run(cmd, env=os.environ.copy())
        if done.returncode:
            sys.exit(f"{name}: `popi train all` exited with {done.returncode}; its output is above")
        config = yaml.safe_load((run / "config.yaml").read_text())
        results[name] = {
            "wall": time.perf_counter() - t,
            "peak_mib": mem.peak(),
            "stage1": stage_times(run, "stage1"),
            "stage2": stage_times(run, "stage2"),
            "stage1_per_step": config["stage1"]["batch_size"] * config["stage1"]["num_generations"],
            "stage2_per_step": config["stage2"]["batch_size"],
        }
    (root / "train_gpu.json").write_text(json.dumps(results, indent=2))
    print_table(results, args)


def print_table(results: dict, args) -> None:
    print(f"\n{args.shape}, random weights, `paper` preset, {args.steps} steps per stage; s per step: "
          "stage 1 the mean of TRL's step_time over steps 2 and on, stage 2 train_runtime / steps "
          "(DPO logs no step time; its first step included)")
    print("\n| setting | stage | work per step | s per step | per second | mean roll-out tokens "
          "| whole run wall s | peak GPU MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    base = {}
    for name, r in results.items():
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        for stage, what in (("stage1", "summaries"), ("stage2", "pairs")):
            t = r[stage]
            later = t["step_time"][1:]
            mean = statistics.fmean(later) if later else t["train_runtime"] / max(t["steps"], 1)
            rate = r[f"{stage}_per_step"] / mean
            base.setdefault(stage, rate)
            length = f"{statistics.fmean(t['completion_length']):.0f}" if t["completion_length"] else ""
            print(f"| {name} | {stage} | {r[f'{stage}_per_step']} {what} | {mean:.2f} | "
                  f"{rate:.1f} ({rate / base[stage]:.2f}x) | {length} | {r['wall']:.0f} | {peak} |")


if __name__ == "__main__":
    main()
