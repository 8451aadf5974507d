"""Does a summarizer read what places the user? Two probes on the summarizer's own input.

1. **What it has learned to write.** For each user of ``--data``, the log-probability the
   summarizer gives each of the data's personas, worded as an instruction to the writer
   (``persona_instruction``), as its whole summary; the persona it ranks first is its choice.
   Prints how often that choice is the user's true persona and how much the log-probabilities
   move between users (a summarizer that ignores the signals gives every user the same ranking).
2. **What its input already holds** (``--probe-train``): a linear probe. The hidden state of the
   last prompt token, at every ``--layer-step``-th layer, for the users of ``--probe-train`` and
   of ``--data``; a logistic regression per layer fit on the first and scored on the second
   (true persona as the label). High held-out accuracy with a summarizer that writes one answer
   for everyone says the information is there and the training did not route it to the output.

Nothing is sampled. Both read the summary template the summarizer was trained with
(``--template``, ``--max-words``).

    python benchmarks/persona_probe.py --summarizer runs/sum-r10t/stage1 \
        --data data/dev-elix-traits/test.jsonl --probe-train data/r10-traits/train.jsonl
"""

from __future__ import annotations

import argparse
import statistics as st


def last_token_states(scorer, messages):
    """The last prompt token's hidden state at every layer (embeddings first): (layers, width),
    the prompt written as ``scorer`` (a ``SequenceScorer``) writes it for scoring."""
    import torch

    ids = torch.tensor([scorer.encode(scorer.prompt_text(messages))])
    with torch.no_grad():
        states = scorer.model(ids, output_hidden_states=True).hidden_states
    return torch.stack([h[0, -1] for h in states]).float()


def linear_probe(train_x, train_y, test_x, test_y, *, steps: int = 300) -> tuple[float, float]:
    """Train and held-out accuracy of a multinomial logistic regression (standardized features,
    a little L2), fit with L-BFGS."""
    import torch

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    classes = sorted(set(train_y))
    ys = torch.tensor([classes.index(y) for y in train_y])
    torch.manual_seed(0)
    w = torch.zeros(xs.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, ys) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = float(((xs @ w + b).argmax(1) == ys).float().mean())
        pred = (xt @ w + b).argmax(1).tolist()
    test_acc = st.mean(classes[p] == y for p, y in zip(pred, test_y)) if test_y else 0.0
    return train_acc, test_acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summarizer", default=None,
                    help="A trained summarizer folder (RUN/stage1); default the embedded model.")
    ap.add_argument("--data", required=True, help="Users to probe (JSONL with personas).")
    ap.add_argument("--probe-train", help="Users to fit the linear probe on (JSONL with personas).")
    ap.add_argument("--template", default="describe")
    ap.add_argument("--max-words", type=int, default=50)
    ap.add_argument("--layer-step", type=int, default=5)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.backends.hf import resolve_model
    from popi_sdk.data import read_users
    from popi_sdk.data.synth import persona_instruction
    from popi_sdk.scoring import SequenceScorer
    from popi_sdk.summary_spec import SummarySpec

    path = args.summarizer or resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    spec = SummarySpec(template=args.template, max_words=args.max_words, max_tokens=80)
    users = [u for u in read_users(args.data) if u.persona]
    if not users:
        raise SystemExit(f"{args.data}: no user has a persona to probe for")
    personas = sorted({u.persona for u in users})
    targets = [persona_instruction(p) or p for p in personas]

    # One group per user: the prompt runs once, the personas continue it in shared batches.
    scorer = SequenceScorer(model, tokenizer)
    scored = scorer.logprobs_forest(
        [([spec.messages(u.signals)], [targets]) for u in users])
    rows = [per_user[0].tolist() for per_user in scored]
    chosen = [personas[max(range(len(row)), key=row.__getitem__)] for row in rows]
    right = sum(c == u.persona for c, u in zip(chosen, users))
    spread = st.mean(max(col) - min(col) for col in zip(*rows))
    print(f"{path} on {args.data}: the persona ranked first is the user's own for {right} of "
          f"{len(users)} users; each persona's log-probability moves {spread:.2f} nats between users\n")
    print("| true persona | " + " | ".join(f"ranked first: {p}" for p in personas) + " |")
    print("|---|" + "---:|" * len(personas))
    for p in personas:
        counts = [sum(c == q for c, u in zip(chosen, users) if u.persona == p) for q in personas]
        print(f"| {p} | " + " | ".join(map(str, counts)) + " |")

    if args.probe_train:
        train = [u for u in read_users(args.probe_train) if u.persona]

        def states(group):
            return torch.stack([last_token_states(scorer, spec.messages(u.signals)) for u in group])

        train_x, test_x = states(train), states(users)
        print(f"\nLinear probe of the last prompt token's hidden state: fit on {len(train)} users "
              f"of {args.probe_train}, scored on the {len(users)} above\n")
        print("| layer | train accuracy | held-out accuracy |\n|---:|---:|---:|")
        for layer in range(0, train_x.shape[1], args.layer_step):
            fit, held = linear_probe(train_x[:, layer], [u.persona for u in train],
                                     test_x[:, layer], [u.persona for u in users])
            print(f"| {layer} | {fit:.2f} | {held:.2f} |")


if __name__ == "__main__":
    main()
