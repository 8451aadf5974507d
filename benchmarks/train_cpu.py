"""Train POPI end to end on CPU with the cpu-small preset and measure whether it learned.

    python benchmarks/train_cpu.py --out runs/cpu-small            # data, both stages, measures
    python benchmarks/train_cpu.py --out runs/cpu-small --eval     # ... then `popi eval` rows

What it reports (and writes to RUN/benchmark.json):

1. wall time of each stage on this machine;
2. the stage-1 reward per GRPO step (RUN/metrics.jsonl): mean of the first and last third of the
   steps and the least-squares slope; each step sees different users, so it is noisy;
3. the same reward on *fixed* users, before and after stage 1: greedy summaries by the base and
   by the trained summarizer, scored with the frozen base generator on every example of each
   held-out test user with :func:`popi_sdk.scoring.summary_rewards`;
4. compression: raw-signal tokens over summary tokens, on the test users and on other test users
   with 8 signal pairs (longer histories than training saw);
5. with ``--eval``, ``popi eval`` on the test users with the trained checkpoints (POPI rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def curve(run: Path) -> dict:
    from popi_sdk.train.common import read_metrics

    steps = [r for r in read_metrics(run, "stage1") if "reward" in r]
    if not steps:
        return {}
    xs = [float(r["step"]) for r in steps]
    ys = [float(r["reward"]) for r in steps]
    third = max(1, len(ys) // 3)
    return {
        "steps": len(ys),
        "first_third_mean": statistics.fmean(ys[:third]),
        "last_third_mean": statistics.fmean(ys[-third:]),
        "slope_per_step": slope(xs, ys),
        "mean_step_seconds": statistics.fmean(r.get("step_time", float("nan")) for r in steps),
    }


def fixed_user_rewards(cfg, users, store: Path, summarizers: dict[str, str]) -> dict:
    """Mean reward of greedy summaries by each summarizer on the same users, scored with the frozen
    base generator on every example of each user. Every summarizer writes under the run's summary
    spec (what stage 1 trained with, as ``popi eval`` does), so only the weights differ. Summaries
    go to ``store`` (popi eval's store, so a later ``popi eval --out`` on the same folder reuses
    them)."""
    from popi_sdk import Personalizer
    from popi_sdk.backends import get_backend
    from popi_sdk.backends.hf import resolve_model
    from popi_sdk.scoring import ReferenceCache, SequenceScorer, summary_rewards

    generator = get_backend(resolve_model(cfg.generator_model))
    scorer = SequenceScorer(generator.model, generator.tokenizer, batch_size=16)
    ref = ReferenceCache(scorer, "base")
    out = {}
    for name, summarizer in summarizers.items():
        p = Personalizer(summarizer=summarizer, store=store, summary=cfg.summary)
        summaries = p.summarize_many(users, progress=False)
        rewards = summary_rewards(scorer, ref, [u.examples for u in users],
                                  [s.text for s in summaries], beta=cfg.beta,
                                  loss_type=cfg.loss_type)
        out[name] = {
            "mean_reward": statistics.fmean(rewards),
            "summary_tokens": statistics.fmean(s.n_tokens for s in summaries),
            "raw_signal_tokens": statistics.fmean(
                p.summarizer.count_tokens(_raw(u)) for u in users),
            "example": summaries[0].text,
        }
    return out


def _raw(user) -> str:
    from popi_sdk.templates import render_signals

    return render_signals(user.signals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Run folder.")
    ap.add_argument("--users", type=int, default=80, help="Synthetic review users (train+test).")
    ap.add_argument("--pairs", type=int, default=2, help="Signal pairs per user.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None, help="Override both stages' steps.")
    ap.add_argument("--set", action="append", default=[], help="Config override key=value.")
    ap.add_argument("--eval", action="store_true", help="Run `popi eval` with the checkpoints.")
    ap.add_argument("--stage1-only", action="store_true", help="Train and measure stage 1 only.")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="Share of users held out.")
    ap.add_argument("--long-pairs", type=int, default=8,
                    help="Also measure on test users with this many signal pairs (0: skip).")
    ap.add_argument("--eval-prompts", type=int, default=1,
                    help="Examples per user judged for win rate by `popi eval`.")
    args = ap.parse_args()

    from popi_sdk.data import read_users
    from popi_sdk.data.synth import write_benchmark
    from popi_sdk.train import stage1, stage2
    from popi_sdk.train.config import load_config

    run = args.out.resolve()
    data = run / "data"
    if not (data / "train.jsonl").exists():
        write_benchmark("review", data, args.users, args.seed, pairs=args.pairs, examples=(2, 3),
                        test_fraction=args.test_fraction)
    cfg = load_config(preset="cpu-small", overrides=args.set, max_steps=args.max_steps,
                      data=data, out=run)
    report: dict = {"command": " ".join(sys.argv), "config": cfg.model_dump(mode="json"),
                    "threads": __import__("torch").get_num_threads()}

    t0 = time.perf_counter()
    stage1.main(cfg)
    t1 = time.perf_counter()
    if not args.stage1_only:
        stage2.main(cfg)
    t2 = time.perf_counter()
    report["seconds"] = {"stage1": round(t1 - t0), "stage2": round(t2 - t1)}
    report["stage1_curve"] = curve(run)
    (run / "benchmark.json").write_text(json.dumps(report, indent=2))

    # The base summarizer under the name popi eval gives it ("hf"), the trained one by its folder.
    base = "hf" if cfg.model.lower() in ("smollm2", "default", "hf") else cfg.model
    summarizers = {"base": base, "stage1": str(run / "stage1")}
    store = run / "eval" / "summaries.sqlite"
    store.parent.mkdir(parents=True, exist_ok=True)
    test = read_users(data / "test.jsonl")
    report["fixed_users"] = {"test": fixed_user_rewards(cfg, test, store, summarizers)}
    if args.long_pairs:
        long_dir = run / "data-long"
        if not (long_dir / "test.jsonl").exists():
            write_benchmark("review", long_dir, 32, args.seed + 1, pairs=args.long_pairs,
                            examples=(2, 3), test_fraction=0.25)
        long_users = read_users(long_dir / "test.jsonl")
        report["fixed_users"][f"test_{args.long_pairs}pairs"] = fixed_user_rewards(
            cfg, long_users, run / "bench_summaries.sqlite", summarizers)
    report["seconds"]["measure"] = round(time.perf_counter() - t2)
    (run / "benchmark.json").write_text(json.dumps(report, indent=2))

    if args.eval and not args.stage1_only:
        t3 = time.perf_counter()
        cmd = ["popi", "eval", "--data", str(data / "test.jsonl"),
               "--methods", "base,raw,inference,popi,popi-full",
               "--summarizer", str(run / "stage1"), "--generator", str(run / "stage2"),
               "--prompts-per-user", str(args.eval_prompts), "--out", str(run / "eval"),
               "--no-progress"]
        report["eval_command"] = " ".join(cmd)
        subprocess.run(cmd, check=True, env=os.environ.copy())
        report["seconds"]["eval"] = round(time.perf_counter() - t3)
        report["eval"] = json.loads((run / "eval" / "results.json").read_text())

    (run / "benchmark.json").write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict) -> None:
    s = report["seconds"]
    print(f"\nstage 1: {s['stage1']} s, stage 2: {s['stage2']} s, measuring: {s['measure']} s"
          + (f", eval: {s['eval']} s" if "eval" in s else ""))
    c = report.get("stage1_curve") or {}
    if c:
        print(f"stage-1 reward per step ({c['steps']} steps): first third {c['first_third_mean']:.4f}, "
              f"last third {c['last_third_mean']:.4f}, slope {c['slope_per_step']:+.5f}/step, "
              f"{c['mean_step_seconds']:.0f} s/step")
    print("\n| users | summarizer | mean reward | summary tokens | raw signal tokens | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for group, rows in report["fixed_users"].items():
        for name, r in rows.items():
            ratio = (f"{r['raw_signal_tokens'] / r['summary_tokens']:.1f}x"
                     if r["summary_tokens"] else "n/a")
            print(f"| {group} | {name} | {r['mean_reward']:.4f} | {r['summary_tokens']:.1f} | "
                  f"{r['raw_signal_tokens']:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
