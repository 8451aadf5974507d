"""The warm start's sampling, before and after, in one process: transformers' ``generate`` on every
(user, sample) row (``popi_sdk.train.validation.write_summaries``, how the warm start sampled
before) against the fast decoder with one prefill per user (``popi_sdk.train.sampling``).

    popi data synth elix --users 160 --pairs 2 --examples 3 --test-fraction 0.4 --seed 1 --out data/elix
    OMP_NUM_THREADS=1 python benchmarks/train_sampling.py --data data/elix --users 16

The policy is the ``cpu-learn`` preset's (the embedded SmolLM2-135M-Instruct with a fresh LoRA
adapter, as the warm start samples it), its prompts the preset's summary prompts of the first
``--users`` training users, ``warm_start_samples`` summaries each at the preset's training
temperature and token cap. The two ways alternate in rounds (old, new, then new, old, ...), so both
see the same machine load; each round's wall and CPU seconds are printed. Then, per way:

- the mean reward of its sampled summaries (the warm start's reward, the frozen generator's
  −loss on each user's examples): a different random stream, so close, not equal;
- greedy summaries (temperature 0) of the same users by both ways: how many are identical (in
  float32 all of them, unless two tokens tie to rounding).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="Folder with train.jsonl.")
    ap.add_argument("--preset", default="cpu-learn")
    ap.add_argument("--users", type=int, default=16, help="Training users sampled for.")
    ap.add_argument("--rounds", type=int, default=2, help="Rounds of (old, new) timings.")
    ap.add_argument("--set", action="append", default=[], help="Config override key=value.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from peft import get_peft_model

    from popi_sdk.data import read_users
    from popi_sdk.train import common
    from popi_sdk.train.config import load_config
    from popi_sdk.train.sampling import sample_groups
    from popi_sdk.train.stage1 import build_rows
    from popi_sdk.train.validation import write_summaries

    cfg = load_config(preset=args.preset, overrides=args.set, data=args.data, out=Path("/tmp/unused"))
    spec, n = cfg.summary, max(cfg.stage1.warm_start_samples, 1)
    users = [u for u in read_users(args.data / "train.jsonl") if u.examples][: args.users]
    rows, examples = build_rows(users, cfg)
    path, policy = common.load_policy(cfg.model)
    tokenizer = common.load_tokenizer(path)
    model = get_peft_model(policy, common.lora_config(cfg))
    messages = [row["prompt"] for row in rows]
    prompt_tokens = [len(tokenizer(tokenizer.apply_chat_template(m, tokenize=False,
                                                                add_generation_prompt=True),
                                   add_special_tokens=False)["input_ids"]) for m in messages]
    sample = dict(max_tokens=spec.max_tokens, clean=spec.clean, temperature=spec.train_temperature,
                  top_p=spec.train_top_p)

    def old(temperature=None):
        kw = {**sample, **({"temperature": temperature} if temperature is not None else {})}
        return write_summaries(model, tokenizer, [m for m in messages for _ in range(n)], **kw)

    def new(temperature=None):
        kw = {**sample, **({"temperature": temperature} if temperature is not None else {})}
        return sample_groups(model, tokenizer, messages, n=n, **kw)

    ways = {"old": old, "new": new}
    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    texts: dict[str, list[str]] = {"old": [], "new": []}
    print(f"{len(messages)} users x {n} samples, prompts {min(prompt_tokens)}-{max(prompt_tokens)} "
          f"tokens (mean {statistics.fmean(prompt_tokens):.0f}), up to {spec.max_tokens} new tokens, "
          f"temperature {spec.train_temperature}, top_p {spec.train_top_p}, "
          f"{torch.get_num_threads()} torch thread(s)\n")
    print("| round | way | summaries | wall s | CPU s |")
    print("|---:|---|---:|---:|---:|")
    for r in range(args.rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            torch.manual_seed(args.seed + r)
            w, c = time.perf_counter(), time.process_time()
            out = ways[name]()
            w, c = time.perf_counter() - w, time.process_time() - c
            times[name].append((w, c))
            texts[name] += out
            print(f"| {r + 1} | {name} | {len(out)} | {w:.1f} | {c:.1f} |", flush=True)

    reward = _reward(cfg, model, tokenizer, examples)
    keys = [row["example_key"] for row in rows for _ in range(n)]
    with reward.generator_context():
        mean_reward = {
            name: statistics.fmean(reward.score(
                [examples[k] for k in keys] * args.rounds, texts[name]))
            for name in ways
        }
    greedy = {name: fn(temperature=0.0) for name, fn in ways.items()}
    same = sum(a == b for a, b in zip(greedy["old"], greedy["new"]))

    wall = {k: sum(w for w, _ in v) for k, v in times.items()}
    cpu = {k: sum(c for _, c in v) for k, v in times.items()}
    print("\n| way | wall s (all rounds) | CPU s (all rounds) | summaries per CPU-minute | "
          "mean reward of the samples |")
    print("|---|---:|---:|---:|---:|")
    for name in ways:
        per_min = len(texts[name]) / (cpu[name] / 60)
        print(f"| {name} | {wall[name]:.1f} | {cpu[name]:.1f} | {per_min:.2f} | "
              f"{mean_reward[name]:.4f} |")
    print(f"\nnew vs old: {wall['old'] / wall['new']:.2f}x less wall time, "
          f"{cpu['old'] / cpu['new']:.2f}x less CPU time; greedy summaries identical: "
          f"{same} of {len(greedy['old'])}")


def _reward(cfg, model, tokenizer, examples):
    """The warm start's reward: the policy's base (adapter off) scoring, float32."""
    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train.stage1 import SummaryReward

    scorer = SequenceScorer(model.get_base_model(), tokenizer,
                            batch_size=cfg.stage1.score_batch_size)
    reward = SummaryReward(scorer, ReferenceCache(scorer, cfg.generator_model), examples,
                           beta=cfg.beta, loss_type=cfg.loss_type, spec=cfg.summary)
    reward.share_base_with(model)
    return reward


if __name__ == "__main__":
    main()
