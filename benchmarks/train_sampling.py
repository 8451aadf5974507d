"""The warm start's sampling, before and after, in one process: transformers' ``generate`` on every
(user, sample) row (``popi_sdk.train.validation.write_summaries``, how the warm start sampled
before) against the fast decoder with one prefill per user (``popi_sdk.train.sampling``).

    popi data synth elix --users 160 --pairs 2 --examples 3 --test-fraction 0.4 --seed 1 --out data/elix
    OMP_NUM_THREADS=1 python benchmarks/train_sampling.py --data data/elix --users 16
    OMP_NUM_THREADS=1 python benchmarks/train_sampling.py --data data/review --grpo
    OMP_NUM_THREADS=1 python benchmarks/train_sampling.py --data data/elix --users 48 --precision

``--grpo`` times GRPO's roll-outs instead: ``PopiGRPOTrainer._generate_single_turn`` of the
``cpu-small`` preset on one step's prompts (``stage1.batch_size`` users x ``num_generations``),
through ``generate`` from the shared prefill (old) and through the fast decoder (new), in
alternating rounds, then the greedy completions of both.

``--precision`` splits the new way's CPU time into its parts, then writes greedy summaries of the
same users with bf16 weights in the prompt pass, and in every product, and counts how many equal
float32's (the adapter's deltas drawn small and non-zero, as a trained adapter's are).

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
    ap.add_argument("--grpo", action="store_true", help="Time GRPO's roll-outs (cpu-small).")
    ap.add_argument("--precision", action="store_true",
                    help="Where the new way's CPU time goes, and whether bf16 products keep "
                         "its greedy summaries.")
    args = ap.parse_args()
    if args.grpo:
        grpo(args)
        return
    if args.precision:
        precision(args)
        return

    import torch

    from popi_sdk.train.sampling import sample_groups
    from popi_sdk.train.validation import write_summaries

    cfg, rows, examples, model, tokenizer = _policy(args)
    spec, n = cfg.summary, max(cfg.stage1.warm_start_samples, 1)
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


def grpo(args) -> None:
    """Old and new roll-outs of one GRPO step's prompts by the cpu-small trainer."""
    import torch

    from popi_sdk.train.config import load_config
    from popi_sdk.train.stage1 import build_trainer

    preset = "cpu-small" if args.preset == "cpu-learn" else args.preset
    cfg = load_config(preset=preset, overrides=args.set, data=args.data,
                      out=Path("/tmp/popi-train-sampling"))
    trainer = build_trainer(cfg).trainer
    g = cfg.stage1.num_generations
    prompts = [trainer.train_dataset[i]["prompt"] for i in range(cfg.stage1.batch_size)
               for _ in range(g)]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    config = trainer.generation_config
    print(f"{cfg.stage1.batch_size} users x {g} samples, prompts "
          f"{min(map(len, prompt_ids))}-{max(map(len, prompt_ids))} tokens, up to "
          f"{config.max_new_tokens} new tokens, temperature {config.temperature}, top_p "
          f"{config.top_p}, top_k {config.top_k}, {torch.get_num_threads()} torch thread(s)\n")

    def roll(name):
        trainer._fast_unsupported = name == "old"  # the trainer's own fallback: generate
        return trainer._generate_single_turn(prompt_ids, None, {}, g)[0]

    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    print("| round | way | completions | tokens | wall s | CPU s |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in range(args.rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            torch.manual_seed(args.seed + r)
            w, c = time.perf_counter(), time.process_time()
            out = roll(name)
            w, c = time.perf_counter() - w, time.process_time() - c
            times[name].append((w, c))
            print(f"| {r + 1} | {name} | {len(out)} | {sum(map(len, out))} | {w:.1f} | {c:.1f} |",
                  flush=True)
    config.do_sample = False
    greedy = {name: roll(name) for name in times}
    same = sum(a == b for a, b in zip(greedy["old"], greedy["new"]))
    wall = {k: sum(w for w, _ in v) for k, v in times.items()}
    cpu = {k: sum(c for _, c in v) for k, v in times.items()}
    print(f"\nnew vs old: {wall['old'] / wall['new']:.2f}x less wall time, "
          f"{cpu['old'] / cpu['new']:.2f}x less CPU time (old {cpu['old']:.1f}, new "
          f"{cpu['new']:.1f} CPU s); greedy completions identical: {same} of {len(greedy['old'])}")


def precision(args) -> None:
    """The fast way's CPU seconds by part (prompt pass, decode steps' layers, LM head, picking the
    token), then greedy summaries of the same users with bf16 weights in the prompt pass only, and
    in every product, against float32: how many stay identical."""
    import collections

    import torch

    import popi_sdk.backends.fast_decode as fd
    from popi_sdk.train import sampling

    cfg, rows, _, model, tokenizer = _policy(args)
    spec, n = cfg.summary, max(cfg.stage1.warm_start_samples, 1)
    torch.manual_seed(args.seed)
    for name, param in model.named_parameters():  # a trained adapter's deltas are not zero
        if "lora_B" in name:
            param.data.normal_(0, 0.002)
    messages = [row["prompt"] for row in rows]
    sample = dict(max_tokens=spec.max_tokens, clean=spec.clean, top_p=spec.train_top_p)

    parts: dict[str, float] = collections.defaultdict(float)
    originals = {name: getattr(fd.FastDecoder, name) for name in ("_forward", "logits")}
    pick = fd._pick

    def timed(key, fn):
        def run(*a, **k):
            c = time.process_time()
            out = fn(*a, **k)
            parts[key(a) if callable(key) else key] += time.process_time() - c
            return out
        return run

    fd.FastDecoder._forward = timed(lambda a: "prompt pass" if a[1].shape[1] > 1 else
                                    "decode steps (layers)", originals["_forward"])
    fd.FastDecoder.logits = timed("LM head", originals["logits"])
    fd._pick = timed("picking the token", pick)
    c = time.process_time()
    sampling.sample_groups(model, tokenizer, messages, n=n, temperature=spec.train_temperature,
                           **sample)
    total = time.process_time() - c
    fd.FastDecoder._forward, fd.FastDecoder.logits = originals["_forward"], originals["logits"]
    fd._pick = pick
    print(f"{len(messages)} users x {n} samples, the new way, CPU s by part\n")
    print("| part | CPU s | share |\n|---|---:|---:|")
    for key, value in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {key} | {value:.1f} | {value / total:.0%} |")
    print(f"| everything else | {total - sum(parts.values()):.1f} | "
          f"{(total - sum(parts.values())) / total:.0%} |\n| all | {total:.1f} | 100% |\n")

    plain = sampling.policy_decoder

    def bf16(everywhere):
        def build(m):
            decoder = plain(m)
            for layer in decoder.layers:
                layer.prompt = tuple(fd._Dense(p.weight, torch.bfloat16)
                                     for p in (layer.qkv, layer.o, layer.gate_up, layer.down))
                if everywhere:
                    layer.qkv, layer.o, layer.gate_up, layer.down = layer.prompt
            return decoder
        return build

    print("| weights in the products | greedy CPU s | greedy summaries identical to float32 |")
    print("|---|---:|---:|")
    greedy = {}
    for name, build in (("float32", plain), ("bf16 in the prompt pass", bf16(False)),
                        ("bf16 everywhere", bf16(True))):
        sampling.policy_decoder = build
        c = time.process_time()
        greedy[name] = sampling.sample_groups(model, tokenizer, messages, n=1, temperature=0.0,
                                              **sample)
        cpu = time.process_time() - c
        same = sum(a == b for a, b in zip(greedy["float32"], greedy[name]))
        print(f"| {name} | {cpu:.1f} | {same} of {len(messages)} |", flush=True)
    sampling.policy_decoder = plain


def _policy(args):
    """The preset's config, the first ``--users`` training users' warm-start rows and examples,
    and the policy (the embedded model with a fresh LoRA adapter) with its tokenizer."""
    from peft import get_peft_model

    from popi_sdk.data import read_users
    from popi_sdk.train import common
    from popi_sdk.train.config import load_config
    from popi_sdk.train.stage1 import build_rows

    cfg = load_config(preset=args.preset, overrides=args.set, data=args.data, out=Path("/tmp/unused"))
    users = [u for u in read_users(args.data / "train.jsonl") if u.examples][: args.users]
    rows, examples = build_rows(users, cfg)
    path, policy = common.load_policy(cfg.model)
    tokenizer = common.load_tokenizer(path)
    return cfg, rows, examples, get_peft_model(policy, common.lora_config(cfg)), tokenizer


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
