"""Train POPI end to end on CPU with the cpu-small preset and measure whether it learned.

    python benchmarks/train_cpu.py --out runs/cpu-small            # data, both stages, measures
    python benchmarks/train_cpu.py --out runs/cpu-small --eval     # ... then `popi eval` rows
    python benchmarks/train_cpu.py --out runs/tput --throughput --users 48 --test-fraction 0.34

``--throughput`` profiles stage-1 GRPO steps instead: the settings in ``SETTINGS`` (before: TRL's
stock trainer with the cpu-small settings of before; after: the current preset) each run in a
child process on the same machine, one after the other, and it prints, per setting, the time,
CPU time and peak resident memory of each part of a step (generation, reward, loss forward,
backward, optimizer, TRL's own overhead), sampled-and-scored summaries per CPU-minute, and the
largest difference between the rewards training used and ``popi_sdk.scoring.summary_rewards``
recomputed afterwards with a fresh float32 scorer on the same summaries.

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


# Stage-1 settings --throughput compares (config overrides on the cpu-small preset). "before" is
# the cpu-small of before the step was profiled, on TRL's stock GRPOTrainer.
SETTINGS = {
    "before": ["precision=fp32", "stage1.share_prompts=false", "stage1.num_generations=4",
               "stage1.batch_size=2", "stage1.gradient_accumulation_steps=1",
               "stage1.score_batch_size=16", "stage1.kl_weight=0"],
    "after": [],
}
PHASES = ("generation", "reward", "old/ref logps", "loss forward", "backward", "optimizer")


def _reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) of this process."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class StepProfile:
    """Wall time, CPU time and peak RSS per part of a GRPO step, by wrapping the trainer's methods.
    Each part restarts the peak counter, so a part's peak is its own (plus what it inherits)."""

    def __init__(self) -> None:
        from collections import defaultdict

        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.peak: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn, when=None):
        import functools

        @functools.wraps(fn)
        def timed(*a, **k):
            if when is not None and not when():
                return fn(*a, **k)
            _reset_peak_rss()
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.wall[name] += time.perf_counter() - w
                self.cpu[name] += time.process_time() - c
                self.peak[name] = max(self.peak[name], _peak_rss_mb())
        return timed

    def attach(self, trainer) -> None:
        import torch
        from transformers import TrainerCallback

        trainer._generate = self.wrap("generation", trainer._generate)
        trainer._calculate_rewards = self.wrap("reward", trainer._calculate_rewards)
        trainer._get_per_token_logps_and_entropies = self.wrap(
            "old/ref logps", trainer._get_per_token_logps_and_entropies,
            when=lambda: not torch.is_grad_enabled())
        trainer.compute_loss = self.wrap("loss forward", trainer.compute_loss)
        trainer.accelerator.backward = self.wrap("backward", trainer.accelerator.backward)
        prof = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.w, self.c = time.perf_counter(), time.process_time()

            def on_pre_optimizer_step(self, args, state, control, **kw):
                _reset_peak_rss()
                self.ow, self.oc = time.perf_counter(), time.process_time()

            def on_optimizer_step(self, args, state, control, **kw):
                prof.wall["optimizer"] += time.perf_counter() - self.ow
                prof.cpu["optimizer"] += time.process_time() - self.oc
                prof.peak["optimizer"] = max(prof.peak["optimizer"], _peak_rss_mb())

            def on_step_end(self, args, state, control, **kw):
                prof.wall["step"] += time.perf_counter() - self.w
                prof.cpu["step"] += time.process_time() - self.c

        trainer.add_callback(Clock())


def profile_child(name: str, args) -> None:
    """One setting's stage-1 steps, profiled (runs in its own process); writes OUT/profile.json."""
    import statistics

    import popi_sdk.scoring as scoring
    from popi_sdk.backends import get_backend
    from popi_sdk.backends.hf import resolve_model
    from popi_sdk.train import stage1
    from popi_sdk.train.config import load_config

    run = args.out.resolve()
    cfg = load_config(preset="cpu-small", overrides=[*SETTINGS[name], *args.set],
                      max_steps=args.steps, data=run.parent / "data", out=run)
    cfg.save_steps = 10_000  # checkpoints are not part of a step
    seen: list[tuple[list, list[str], list[float]]] = []
    plain_rewards = scoring.summary_rewards

    def recording(scorer, ref, examples, summaries, **kw):
        out = plain_rewards(scorer, ref, examples, summaries, **kw)
        seen.append(([list(e) for e in examples], list(summaries), list(out)))
        return out

    scoring.summary_rewards = recording
    _reset_peak_rss()
    w, c = time.perf_counter(), time.process_time()
    trainer = stage1.build_trainer(cfg).trainer
    setup = {"wall": time.perf_counter() - w, "cpu": time.process_time() - c, "peak": _peak_rss_mb()}
    prof = StepProfile()
    prof.attach(trainer)
    trainer.train()
    scoring.summary_rewards = plain_rewards
    peak_train = max(prof.peak.values())

    # The same summaries, rescored by summary_rewards with a fresh float32 scorer of the base model.
    base = get_backend(resolve_model(cfg.generator_model))
    scorer = scoring.SequenceScorer(base.model, base.tokenizer)
    ref = scoring.ReferenceCache(scorer, "base")
    diffs, n = [], 0
    for examples, summaries, used in seen:
        again = plain_rewards(scorer, ref, examples, summaries, beta=cfg.beta, loss_type=cfg.loss_type)
        diffs += [abs(a - b) for a, b in zip(used, again)]
        n += len(summaries)
    result = {
        "setting": name, "overrides": SETTINGS[name], "steps": args.steps, "summaries": n,
        "threads": __import__("torch").get_num_threads(),
        "setup": setup, "wall": dict(prof.wall), "cpu": dict(prof.cpu), "peak_mb": dict(prof.peak),
        "peak_train_mb": peak_train,
        "reward_max_abs_diff": max(diffs), "reward_mean": statistics.fmean(r for *_, rs in seen for r in rs),
        "config": {k: getattr(cfg.stage1, k) for k in ("batch_size", "num_generations",
                   "score_batch_size", "share_prompts")}
                  | {"max_summary_tokens": cfg.summary.max_tokens, "kl": cfg.kl},
    }
    (run / "profile.json").write_text(json.dumps(result, indent=2))


def throughput(args) -> None:
    """Run every setting of SETTINGS as a child process and print the comparison."""
    from popi_sdk.data.synth import write_benchmark

    root = args.out.resolve()
    data = root / "data"
    if not (data / "train.jsonl").exists():
        write_benchmark("review", data, args.users, args.seed, pairs=args.pairs, examples=(2, 3),
                        test_fraction=args.test_fraction)
    results = {}
    for name in SETTINGS:
        cmd = [sys.executable, __file__, "--profile-child", name, "--out", str(root / name),
               "--steps", str(args.steps), *[f"--set={s}" for s in args.set]]
        subprocess.run(cmd, check=True, env=os.environ.copy())
        results[name] = json.loads((root / name / "profile.json").read_text())
    (root / "throughput.json").write_text(json.dumps(results, indent=2))
    print_throughput(results)


def print_throughput(results: dict) -> None:
    names = list(results)
    print(f"\nstage-1 GRPO, {results[names[0]]['steps']} steps per setting, "
          f"{results[names[0]]['threads']} torch thread(s); seconds summed over the steps")
    print("\n| part of the step | " + " | ".join(f"{n} wall s | {n} CPU s | {n} peak RSS MB"
                                                  for n in names) + " |")
    print("|---|" + "---:|" * (3 * len(names)))
    rows = [*PHASES, "TRL overhead", "whole step", "setup (load, reference)"]
    for part in rows:
        cells = []
        for n in names:
            r = results[n]
            if part == "TRL overhead":
                w = r["wall"].get("step", 0) - sum(r["wall"].get(p, 0) for p in PHASES)
                c = r["cpu"].get("step", 0) - sum(r["cpu"].get(p, 0) for p in PHASES)
                cells += [f"{w:.1f}", f"{c:.1f}", ""]
            elif part == "whole step":
                cells += [f"{r['wall'].get('step', 0):.1f}", f"{r['cpu'].get('step', 0):.1f}",
                          f"{r['peak_train_mb']:.0f}"]
            elif part.startswith("setup"):
                s = r["setup"]
                cells += [f"{s['wall']:.1f}", f"{s['cpu']:.1f}", f"{s['peak']:.0f}"]
            else:
                cells += [f"{r['wall'].get(part, 0):.1f}", f"{r['cpu'].get(part, 0):.1f}",
                          f"{r['peak_mb'].get(part, 0):.0f}" if part in r["peak_mb"] else ""]
        print(f"| {part} | " + " | ".join(cells) + " |")
    print("\n| setting | config | summaries | per CPU-minute | per wall-minute | "
          "reward max abs diff vs summary_rewards |")
    print("|---|---|---:|---:|---:|---:|")
    base = None
    for n in names:
        r = results[n]
        per_cpu = r["summaries"] / (r["cpu"]["step"] / 60)
        per_wall = r["summaries"] / (r["wall"]["step"] / 60)
        base = base or per_cpu
        print(f"| {n} | {r['config']} | {r['summaries']} | {per_cpu:.2f} ({per_cpu / base:.2f}x) | "
              f"{per_wall:.2f} | {r['reward_max_abs_diff']:.2e} |")


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
    ap.add_argument("--throughput", action="store_true",
                    help="Profile stage-1 steps of each setting in SETTINGS and compare them.")
    ap.add_argument("--steps", type=int, default=2, help="GRPO steps per setting (--throughput).")
    ap.add_argument("--profile-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile_child:
        profile_child(args.profile_child, args)
        return
    if args.throughput:
        throughput(args)
        return

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
