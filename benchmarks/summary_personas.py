"""Which persona each trained summary of a ``popi eval`` run names, from the run's own files.

Reads ``EVAL/results.json`` (the data file and the trained summarizer it used) and
``EVAL/summaries.sqlite`` (the summaries the run wrote), and prints, per run, how many users'
summaries name their true persona (as the data writes it or as an instruction to the writer,
``persona_instruction``; the text before "They like answers such as:") and the confusion table:
true persona by the persona the summary names ("other": none of the data's personas), and for a
file that mixes user groups (ids "persona-elix-00001", "traits-elix-00002", ...) the count per
group. For users with pairs it also counts the summaries that quote one of the user's own
preferred responses (its first 40 characters) rather than writing an answer of their own, and
the summaries' mean tokens against the raw signals' (``render_signals``, the same tokenizer). For
summaries that show an answer (after "They like answers such as:") it counts the answers in the
user's style: those the oracle's own ``persona_score`` puts at or above the midpoint of the
user's labeled chosen and rejected responses' mean scores, in all and per true persona, with the
count another user's shown answer would give (the chance control). A roleplay persona names two or three
of five axes, so an exact match is rare: for roleplay users it also counts the persona's poles
the description names, and the poles it names against the persona (the axis's other pole).
Nothing is sampled again; the counts are of the summaries the reported accuracies read.
Run it from the folder the eval ran in (the data path in results.json is relative to it).

    python benchmarks/summary_personas.py runs/eval-r8both-persona runs/eval-r8about-persona
    python benchmarks/summary_personas.py runs/eval-r8g6i-full-persona --accuracy popi-full
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from reward_selects import confusion, description, wordings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="popi eval output folders with a trained summarizer.")
    ap.add_argument("--accuracy", metavar="METHOD",
                    help="Also print METHOD's reward accuracy (e.g. popi, popi-full) over the users "
                         "whose summary names their true persona and over the others.")
    args = ap.parse_args()

    from popi_sdk.data import read_users
    from popi_sdk.data.synth import infer_kind
    from popi_sdk.templates import SHOW_LEAD

    for run in map(Path, args.runs):
        results, store = run / "results.json", run / "summaries.sqlite"
        if not results.is_file() or not store.is_file():
            raise SystemExit(f"{run}: needs results.json and summaries.sqlite (a finished popi eval)")
        info = json.loads(results.read_text(encoding="utf-8"))
        trained = info.get("summaries", {}).get("trained")
        if not trained:
            raise SystemExit(f"{run}: ran no trained summarizer (methods popi / popi-full)")
        users = {u.user_id: u for u in read_users(info["config"]["data"]) if u.persona}
        with sqlite3.connect(store) as db:
            rows = db.execute(
                "SELECT user_id, text FROM summary_versions WHERE summarizer = ? ORDER BY user_id, version",
                (trained["summarizer"],)).fetchall()
        latest = dict(rows)  # the last version of each user's summary
        named = [u for u in latest if u in users]
        ok = {u: description(latest[u]) in wordings(users[u].persona) for u in named}
        print(f"{run}: {sum(ok.values())} of {len(named)} summaries name the user's true persona "
              f"({trained['mean_tokens']:.1f} tokens on average)\n")
        summary_tokens, raw_tokens = token_counts(trained["summarizer"], [latest[u] for u in named],
                                                  [users[u].signals for u in named])
        print(f"tokens per user: summary {summary_tokens:.1f}, raw signals {raw_tokens:.1f} "
              f"(ratio {summary_tokens / raw_tokens:.2f}; the issue's bar is 1/3)\n")
        with_pairs = [u for u in named if users[u].signals.pairs]
        if with_pairs:
            quoted = sum(any(p.chosen.strip()[:40] in latest[u] for p in users[u].signals.pairs)
                         for u in with_pairs)
            print(f"{quoted} of {len(with_pairs)} summaries of users with pairs quote one of the "
                  "user's own preferred responses\n")
        shown = {u: latest[u].split(SHOW_LEAD, 1)[1].strip() for u in named
                 if SHOW_LEAD in latest[u] and users[u].examples}
        if shown:
            fit = {u: in_style(users[u], answer) for u, answer in shown.items()}
            print(f"{sum(fit.values())} of {len(shown)} answers the summaries show are in the user's "
                  "style (scored nearer the user's chosen responses than the rejected ones); "
                  f"{len(set(shown.values()))} distinct answers\n")
            if len(shown) > 1:
                print(f"by chance: {chance_in_style(users, shown):.1f} of {len(shown)} (each user "
                      "checked against every other user's shown answer instead, averaged)\n")
            by_persona: dict[str, list[bool]] = {}
            for u, ok_style in fit.items():
                by_persona.setdefault(users[u].persona, []).append(ok_style)
            print("| user's persona | shown answers in the user's style |\n|---|---:|")
            for persona, marks in sorted(by_persona.items()):
                print(f"| {persona} | {sum(marks)} of {len(marks)} |")
            print()
        poles = [pole_counts(users[u].persona, description(latest[u])) for u in named
                 if infer_kind(users[u].persona) == "roleplay"]
        if poles:
            right, wrong, total = (sum(c[i] for c in poles) for i in range(3))
            print(f"roleplay: the descriptions name {right} of the {total} poles the personas "
                  f"name, and {wrong} poles against them\n")
        print(confusion([users[u] for u in named], [[latest[u]] for u in named]))
        groups: dict[str, list[bool]] = {}
        for u in named:  # users of several groups in one file ("persona-elix-00001"): by group
            groups.setdefault(u.split("-")[0], []).append(ok[u])
        if len(groups) > 1:
            print("| user group | summaries that name the true persona |\n|---|---:|")
            for group, right in groups.items():
                print(f"| {group} | {sum(right)} of {len(right)} |")
            print()
        if args.accuracy:
            split: dict[bool, list[float]] = {True: [], False: []}
            for line in (run / "examples.jsonl").read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if row.get("method") == args.accuracy and row.get("kind") == "example" and row["user_id"] in ok:
                    split[ok[row["user_id"]]].append(row["correct"])
            if not split[True] and not split[False]:
                raise SystemExit(f"{run}: no labeled examples of method {args.accuracy!r} in examples.jsonl")
            for right, label in ((True, "right"), (False, "wrong")):
                xs = split[right]
                acc = f"{100 * sum(xs) / len(xs):.1f}%" if xs else "-"
                print(f"{args.accuracy}, users whose summary names a {label} persona: {acc} of {len(xs)} examples")
            print()


def token_counts(summarizer: str, summaries: list[str], signals: list) -> tuple[float, float]:
    """Mean tokens (the summarizer backend's ``count_tokens``, no weights loaded) of the summaries
    and of the same users' raw signals as the summarizer reads them (``render_signals``): the
    "≤ 1/3 of the raw signals' tokens" check, on the summaries the reported accuracies read."""
    from popi_sdk.backends import get_backend
    from popi_sdk.templates import render_signals

    count = get_backend(summarizer).count_tokens
    return (sum(map(count, summaries)) / len(summaries),
            sum(count(render_signals(s)) for s in signals) / len(signals))


def pole_counts(persona: str, described: str) -> tuple[int, int, int]:
    """For a roleplay persona: (its poles that ``described`` names, its axes where ``described``
    names the other pole, its poles in all)."""
    from popi_sdk.data.synth import persona_attributes, roleplay

    attrs = persona_attributes(persona, "roleplay")
    right = sum(roleplay.PHRASES[pole] in described for pole in attrs.values())
    wrong = sum(roleplay.PHRASES[other] in described for axis, pole in attrs.items()
                for other in roleplay.AXES[axis] if other != pole)
    return right, wrong, len(attrs)


def chance_in_style(users: dict, shown: dict[str, str]) -> float:
    """How many of the ``shown`` answers (by user id) would be in their user's style if each
    user's were another user's: for each user the share of the other users' shown answers in
    that user's style, summed. The control for the count of answers in style: a summarizer that
    shows answers unrelated to the user scores this."""
    keys = sorted(shown)
    return sum(sum(in_style(users[u], shown[v]) for v in keys if v != u) / (len(keys) - 1)
               for u in keys)


def in_style(user, answer: str) -> bool:
    """Whether ``answer`` scores (``persona_score``, the oracle's scoring) at least halfway from
    the mean of ``user``'s rejected labeled responses to the mean of their chosen ones."""
    from popi_sdk.data.synth import persona_score

    chosen = sum(persona_score(user.persona, e.chosen) for e in user.examples) / len(user.examples)
    rejected = sum(persona_score(user.persona, e.rejected) for e in user.examples) / len(user.examples)
    return persona_score(user.persona, answer) >= (chosen + rejected) / 2


if __name__ == "__main__":
    main()
