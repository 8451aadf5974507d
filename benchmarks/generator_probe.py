"""Does the generator's greedy answer follow what it is told about a user, and from where?

``popi demo`` shows each user's personalized answer beside the plain one. With the untrained
embedded SmolLM2-135M as generator the two read alike, although the trained summaries raise the
likelihood of the users' preferred answers (``docs/results.md``). This probe separates the summary
from the way it reaches the generator and from the generator that reads it: for each demo user
and question, the greedy answer (the demo's decoding settings) under

- ``plain``: the question alone;
- ``trained summary, system``: the shipped summarizer's summary (``hf:popi``) where the SDK puts it,
  the system message (``templates.summary_messages``);
- ``untrained summary, system``: the untrained embedded summarizer's summary, same place;
- ``persona, system``: the user's own description of themselves, same place;
- ``persona, user turn``: the same words in the user's message, before the question;
- ``trained summary, trained generator``: the ``hf:popi`` summary read by the shipped stage-2
  generator (``hf:popi-generator``, trained on ``hf:popi``'s summaries: POPI-Full). Every other
  condition is answered by the untrained embedded model (``hf``); ``--generator`` adds another
  generator for the trained summary (e.g. a ``RUN/stage2`` folder).

Per condition and user it prints the answers' mean length in words, mean letters per word (the
child should get shorter, plainer words, the expert longer, more technical ones) and how many
answers are identical to the plain ones.

    python benchmarks/generator_probe.py                  # examples/demo_users.jsonl, 3 questions
    python benchmarks/generator_probe.py --show --generator runs/x/stage2
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

QUESTIONS = ["How does the internet work?", "Why do we have seasons?", "How do vaccines work?"]
DEMO_USERS = Path(__file__).resolve().parent.parent / "examples" / "demo_users.jsonl"


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'-]*", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default=str(DEMO_USERS), help="Users file (JSON Lines) with personas.")
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--show", action="store_true", help="Print every answer too.")
    ap.add_argument("--generator", action="append", default=[],
                    help="Another generator for the trained summary (repeatable): a backend name "
                    "or checkpoint folder.")
    args = ap.parse_args()

    from popi_sdk import Personalizer
    from popi_sdk.backends import GenerateOptions, get_backend
    from popi_sdk.data import read_users
    from popi_sdk.personalizer import SMALL_MODEL
    from popi_sdk.summary_spec import SummarySpec
    from popi_sdk.templates import cut_to_last_sentence, prompt_only_messages, summary_messages

    rows = read_users(args.users)
    trained = Personalizer(summarizer="hf:popi", store=":memory:",
                           summary=SummarySpec.from_checkpoint(get_backend("hf:popi").checkpoint))
    untrained = Personalizer(summarizer="hf", store=":memory:", summary=SummarySpec(max_words=40),
                             **SMALL_MODEL)
    summaries = {
        "trained summary, system": [s.text for s in trained.summarize_many(rows, progress=False)],
        "untrained summary, system": [s.text for s in untrained.summarize_many(rows, progress=False)],
        "persona, system": [r.signals.persona or "" for r in rows],
    }
    # condition -> (generator, per user the conversations)
    conditions: dict[str, tuple[str, list[list[dict]]]] = {}
    trained_generators = {f"trained summary, {g}": g for g in ("hf:popi-generator", *args.generator)}
    for name in ("plain", *summaries, "persona, user turn", *trained_generators):
        per_user = []
        for i, row in enumerate(rows):
            convs = []
            for q in QUESTIONS:
                if name == "plain":
                    convs.append(prompt_only_messages(q))
                elif name == "persona, user turn":
                    convs.append([{"role": "user", "content": f"{row.signals.persona}\n\n{q}"}])
                elif name in trained_generators:
                    convs.append(summary_messages(q, summaries["trained summary, system"][i]))
                else:
                    convs.append(summary_messages(q, summaries[name][i]))
            per_user.append(convs)
        conditions[name] = (trained_generators.get(name, "hf"), per_user)

    options = GenerateOptions(max_new_tokens=args.max_new_tokens, **SMALL_MODEL)
    answers: dict[str, list[list[str]]] = {}
    for name, (generator, per_user) in conditions.items():
        flat = [c for convs in per_user for c in convs]
        texts = [cut_to_last_sentence(t) for t in get_backend(generator).generate_batch(flat, options)]
        answers[name] = [texts[i * len(QUESTIONS):(i + 1) * len(QUESTIONS)] for i in range(len(rows))]

    for name, text in summaries.items():
        for row, s in zip(rows, text):
            print(f"{name} for {row.user_id}: {s!r}")
    print(f"\n{len(QUESTIONS)} questions per user, greedy, at most {args.max_new_tokens} new tokens\n")
    print("| condition | " + " | ".join(f"{r.user_id}: words | letters/word | = plain"
                                      for r in rows) + " |")
    print("|---|" + "---:|---:|---:|" * len(rows))
    for name, per_user in answers.items():
        cells = []
        for i, texts in enumerate(per_user):
            ws = [words(t) for t in texts]
            n = sum(len(w) for w in ws) / len(ws)
            letters = sum(len(x) for w in ws for x in w) / max(1, sum(len(w) for w in ws))
            same = sum(t == p for t, p in zip(texts, answers["plain"][i]))
            cells.append(f"{n:.0f} | {letters:.2f} | {same}/{len(texts)}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.show:
        for name, per_user in answers.items():
            for row, texts in zip(rows, per_user):
                for q, t in zip(QUESTIONS, texts):
                    print(f"\n[{name} | {row.user_id} | {q}]\n{t}")


if __name__ == "__main__":
    main()
