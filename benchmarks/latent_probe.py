"""Where a latent-embedding baseline (LoRe, PAL-A, PAL-B) loses its users: the controls behind its
row in Table 1 (docs/results.md, "Table 1: every row").

Reward accuracy, as ``popi eval`` defines it (each example's margin against the base model's), of
one ``popi train latent`` checkpoint under four user vectors:

- ``train, learned``: training users with the weights training learned for them (in-sample: what
  the method fits at all);
- ``train, centre``: the same users at the uniform mixture (the population's centre), so the
  generator's joint fine-tuning alone, no user in it;
- ``held-out, centre``: the held-out users at the centre;
- ``held-out, fit N``: the held-out users with their weights fitted to their signal pairs for N
  Adam steps (``popi eval`` uses the run's ``infer_steps``), for each N of ``--fit-steps``.

If ``train, learned`` is no better than ``train, centre``, training learned no user; if it is
better but ``held-out, fit N`` is not, the new-user fit is where users are lost.

    python benchmarks/latent_probe.py --latent runs/latent-elix --methods lore,pal-a,pal-b \\
        --train data/elix/train.jsonl --test data/t1-elix/test.jsonl --users 32 --fit-steps 4,12
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latent", required=True, help="Run folder of `popi train latent`.")
    ap.add_argument("--methods", default="lore,pal-a,pal-b")
    ap.add_argument("--train", type=Path, required=True, help="The run's train.jsonl.")
    ap.add_argument("--test", type=Path, required=True, help="Held-out users (test.jsonl).")
    ap.add_argument("--users", type=int, default=32, help="Users of each file probed (the first N).")
    ap.add_argument("--fit-steps", default="", help="Comma-separated fit steps (default: the run's; "
                    "0 skips the fit, the slow part: each step is a backward pass per signal pair).")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import torch

    from popi_sdk.data import read_users
    from popi_sdk.eval import metrics as M
    from popi_sdk.eval.latent import LatentRun
    from popi_sdk.eval.runner import GeneratorRun
    from popi_sdk.train.latent_model import read_meta

    train_all = read_users(args.train)
    test = [u for u in read_users(args.test) if u.examples][: args.users]
    rows = []
    base_runs: dict[str, GeneratorRun] = {}
    for method in args.methods.split(","):
        folder = Path(args.latent) / method
        meta = read_meta(folder)
        base_spec = meta["base_model"]
        if base_spec not in base_runs:
            base_runs[base_spec] = GeneratorRun.load(base_spec, batch_size=args.batch_size, bf16=False)
        base = base_runs[base_spec]
        probe = LatentRun(folder, base.ref, batch_size=args.batch_size, progress=False)
        index = {uid: i for i, uid in enumerate(meta["train_users"])}
        train = [u for u in train_all if u.user_id in index and u.examples][: args.users]
        if not train:
            raise SystemExit(f"{args.train}: none of its users is one {folder} trained on")

        def accuracy(users, logits):
            key = tuple(u.user_id for u in users)  # LatentRun's caches, set to these logits
            probe._logits[key] = logits
            probe.margins.pop(key, None)
            mine = probe.margins_for(users)
            pairs = [p for u in users for p in u.examples]
            chosen, rejected = base.ref.pairs(pairs)
            theirs = M.margins(chosen.tolist(), rejected.tolist())
            outcomes = M.accuracy_outcomes(mine, theirs)
            return M.mean(outcomes), M.stderr(outcomes), len(outcomes)

        rank = probe.encoder.rank
        learned = probe.encoder.weights.detach()[torch.tensor([index[u.user_id] for u in train])]
        cases = [("train, learned", train, learned), ("train, centre", train, torch.zeros(len(train), rank)),
                 ("held-out, centre", test, torch.zeros(len(test), rank))]
        steps_list = [int(s) for s in args.fit_steps.split(",") if s] or [int(meta["infer_steps"])]
        steps_list = [s for s in steps_list if s > 0]
        for name, users, logits in cases:
            acc, se, n = accuracy(users, logits)
            rows.append((method, name, acc, se, n, None))
            print(f"{method}: {name}: {100 * acc:.1f} ± {100 * se:.1f} ({n} examples)", flush=True)
        for steps in steps_list:
            probe.meta = {**meta, "infer_steps": steps}
            key = tuple(u.user_id for u in test)
            probe._logits.pop(key, None)
            started = time.perf_counter()
            fitted = probe.logits(test)
            seconds = time.perf_counter() - started
            acc, se, n = accuracy(test, fitted)
            rows.append((method, f"held-out, fit {steps}", acc, se, n, seconds))
            print(f"{method}: held-out, fit {steps}: {100 * acc:.1f} ± {100 * se:.1f} ({n} examples, "
                  f"fit {seconds:.0f} s)", flush=True)

    print("\n| method | users, vector | reward accuracy (%) | examples | fit (s) |")
    print("|---|---|---:|---:|---:|")
    for method, name, acc, se, n, seconds in rows:
        fit = f"{seconds:.0f}" if seconds is not None else "-"
        print(f"| {method} | {name} | {100 * acc:.1f} ± {100 * se:.1f} | {n} | {fit} |")


if __name__ == "__main__":
    main()
