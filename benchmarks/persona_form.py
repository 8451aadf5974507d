"""The form of a description as a lever: the same persona written about the user (the data's
"The user is a preteen.") or as an instruction to the writer ("Generate a response that can be
easily understood by a preteen.", the form of P-Soups' personas), read by the plain model
(``oracle``) and by a trained generator (``user-edit``), on the same users and examples.

    python benchmarks/persona_form.py --data data/dev-elix/test.jsonl --generator runs/gen/stage2 \\
        --out runs/persona-form-elix

One ``popi eval`` folder per form under ``OUT/FORM`` (``python benchmarks/paired.py --diff
OUT/instruction:user-edit OUT/about:user-edit`` pairs them), then one table: reward accuracy,
win rate and echo rate per form and reader, and the paired difference of the instruction form
from the data's. The oracle judge always reads the data's own persona; only the summary's
wording changes. Synthetic ELIX, review and roleplay personas only (the forms are built from
their attributes); select on development users.

``--show-from TRAIN.jsonl`` adds a third form, ``shown``: the instruction, then "They like answers
such as:" and one preferred answer of a *training* user with the same persona (a labeled
example's chosen response, drawn with ``--seed``), never the test user's own. It measures what
a describe-then-show summary can reach for users with no pairs to quote (the candidates of
``stage1.warm_start_persona_show = "peers"``):

    python benchmarks/persona_form.py --data data/dev-elix/test.jsonl --show-from \
        data/dev-elix/train.jsonl --generator runs/gen/stage2 --out runs/persona-form-elix
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from popi_sdk.eval import metrics as M
from popi_sdk.eval.judges import Comparison, Judge, OracleJudge

sys.path.insert(0, str(Path(__file__).parent))
from paired import correct  # noqa: E402  (per-example outcomes of a RUN:METHOD)

FORMS = ("about", "instruction")


def instruction(persona: str) -> str:
    """The data's persona as an instruction to the writer, from its attributes."""
    from popi_sdk.data.synth import persona_instruction

    return persona_instruction(persona) or persona


class OriginalPersonaJudge(Judge):
    """The oracle judge on each user's own persona, whatever text the summary carries."""

    name = "oracle"

    def __init__(self, originals: dict[str, str]):
        self.inner, self.originals = OracleJudge(), originals

    def check(self, personas: dict[str, str | None]) -> None:
        self.inner.check({u: self.originals[p] for u, p in personas.items()})

    def _judge(self, items):
        return self.inner._judge([
            Comparison(self.originals[i.persona], i.prompt, i.response, i.baseline) for i in items
        ])


def shown(rows, train: str, seed: int) -> dict[str, str]:
    """Per test user, the instruction form of the persona, then a same-persona training user's
    preferred answer (the ``shown`` form)."""
    from popi_sdk.data import read_users
    from popi_sdk.templates import describe_then_show

    pool: dict[str, list[str]] = {}
    for u in read_users(train):
        pool.setdefault(u.persona, []).extend(e.chosen for e in u.examples)
    rng = random.Random(seed)
    out = {}
    for r in rows:
        if not pool.get(r.persona):
            raise SystemExit(f"{train}: no training user has the persona {r.persona!r} of test "
                             f"user {r.user_id}; pass the training split of the same benchmark")
        out[r.user_id] = describe_then_show(instruction(r.persona), rng.choice(pool[r.persona]))
    return out


def main() -> None:
    from popi_sdk.data import read_users
    from popi_sdk.eval.methods import parse_methods
    from popi_sdk.eval.report import write_results
    from popi_sdk.eval.runner import evaluate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="Test users with synthetic ELIX, review or roleplay personas.")
    ap.add_argument("--generator", required=True, help="Trained generator read by user-edit.")
    ap.add_argument("--prompts-per-user", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--limit", type=int, help="Only the first N users (a smoke run).")
    ap.add_argument("--show-from", help="Training users (JSON Lines) whose answers the 'shown' "
                    "form shows; without it, the about and instruction forms only.")
    ap.add_argument("--seed", type=int, default=0, help="Which same-persona answer is shown.")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    rows = read_users(args.data)[: args.limit]
    forms = FORMS + (("shown",) if args.show_from else ())
    texts = shown(rows, args.show_from, args.seed) if args.show_from else {}
    results = {}
    for form in forms:
        out = Path(args.out) / form
        if (out / "results.json").exists():  # rerunning skips a finished form
            results[form] = json.loads((out / "results.json").read_text())
            continue
        text = {r.user_id: (r.persona if form == "about" else texts[r.user_id] if form == "shown"
                            else instruction(r.persona)) for r in rows}
        users = [r.model_copy(update={"persona": text[r.user_id]}) for r in rows]
        originals = {text[r.user_id]: r.persona for r in rows}
        res, records = evaluate(
            users, parse_methods("base,oracle,user-edit", generator=args.generator),
            OriginalPersonaJudge(originals), generator=args.generator,
            max_new_tokens=args.max_new_tokens, prompts_per_user=args.prompts_per_user,
        )
        res["config"] = {"data": args.data, "form": form, "generator": args.generator,
                         "example_persona": users[0].persona}
        write_results(out, res, records)
        results[form] = res

    print(f"\n{args.data}: {results['about']['stats']['examples']} labeled examples\n")
    print("| form | reader | reward accuracy (%) | win rate (%) | echo rate (%) | − about (points) |")
    print("|---|---|---:|---:|---:|---:|")
    for method, reader in (("oracle", "plain model"), ("user-edit", "trained generator")):
        a = correct(f"{Path(args.out) / 'about'}:{method}")
        for form in forms:
            m = results[form]["methods"][method]
            b = correct(f"{Path(args.out) / form}:{method}")
            diff = [b[k] - a[k] for k in a if k in b]
            paired = f"{100 * M.mean(diff):+.1f} ± {100 * M.stderr(diff):.1f}" if form != "about" else ""
            echo = m.get("echo_rate")
            print(f"| {form} | {reader} | {100 * m['reward_accuracy']:.1f} ± {100 * m['reward_accuracy_se']:.1f} "
                  f"| {100 * m['win_rate']:.1f} | {'-' if echo is None else f'{100 * echo:.1f}'} | {paired} |")


if __name__ == "__main__":
    main()
