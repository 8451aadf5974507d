"""Judges for the win rate: which of two responses suits a user's ground-truth persona better.

- :class:`OracleJudge` scores synthetic personas deterministically from their attributes
  (:func:`popi_sdk.data.synth.persona_score`): no model, same verdict every run.
- :class:`LLMJudge` asks any backend (``openai:gpt-4o``, ``anthropic:...``, ``hf``) with a pairwise
  template after the paper's App. G; the two responses are shown in an order drawn from a seeded
  RNG, so position bias averages out and a rerun gives the same prompts.

A judge returns, per comparison, 1.0 when the *first* response (the method's) wins, 0.5 for a tie
and 0.0 when the second (the base model's) wins. Identical responses are a tie without asking.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from popi_sdk.backends.base import Message
from popi_sdk.errors import InputError


@dataclass(frozen=True)
class Comparison:
    """One judgment: ``response`` (the method's) against ``baseline`` (the base model's)."""

    persona: str
    prompt: str
    response: str
    baseline: str


class Judge:
    """Compares responses for a persona. Subclasses implement :meth:`_judge` for the pairs whose
    texts differ; :meth:`judge_many` handles identical pairs."""

    name = "judge"
    #: Verdicts that could not be read from the judge's answer (counted as ties); ``None`` for a
    #: judge whose verdicts always parse.
    unparsed: int | None = None

    def judge_many(self, items: Sequence[Comparison]) -> list[float]:
        out: list[float] = [0.5] * len(items)
        todo = [i for i, c in enumerate(items) if c.response.strip() != c.baseline.strip()]
        for i, verdict in zip(todo, self._judge([items[i] for i in todo])):
            out[i] = verdict
        return out

    def _judge(self, items: Sequence[Comparison]) -> list[float]:
        raise NotImplementedError

    def check(self, personas: dict[str, str | None]) -> None:
        """Fail before any model runs when this judge cannot judge these users (by user id)."""


class OracleJudge(Judge):
    """Deterministic judge for synthetic personas: the response with the higher
    :func:`~popi_sdk.data.synth.persona_score` wins; equal scores (within ``tolerance``) tie."""

    name = "oracle"

    def __init__(self, tolerance: float = 1e-9):
        self.tolerance = tolerance

    def check(self, personas: dict[str, str | None]) -> None:
        from popi_sdk.data.synth import persona_attributes

        for user_id, persona in personas.items():
            if not persona:
                raise InputError(
                    f"user {user_id!r} has no ground-truth 'persona'; the oracle judge needs one "
                    "(use an LLM judge, e.g. --judge openai:gpt-4o, for data without personas)"
                )
            try:
                persona_attributes(persona)
            except InputError as e:
                raise InputError(f"user {user_id!r}: {e}") from None

    def _judge(self, items: Sequence[Comparison]) -> list[float]:
        from popi_sdk.data.synth import persona_score

        out = []
        for item in items:
            if not item.persona:
                raise InputError(
                    "the oracle judge needs each row's ground-truth 'persona'; this row has none "
                    "(use an LLM judge, e.g. --judge openai:gpt-4o, for data without personas)"
                )
            diff = persona_score(item.persona, item.response) - persona_score(item.persona, item.baseline)
            out.append(1.0 if diff > self.tolerance else 0.0 if diff < -self.tolerance else 0.5)
        return out


JUDGE_SYSTEM = (
    "You are an impartial judge of how well AI assistant responses are personalized to a specific "
    "user. You are given the user's persona, the user's prompt, and two responses. Judge which "
    "response this particular user would prefer, considering content, tone, style, length and "
    "level of detail in light of the persona. Do not favor a response because of its position or "
    "its length alone."
)

JUDGE_TEMPLATE = """[User persona]
{persona}

[User prompt]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

Which response better fits this user's preferences? First explain your reasoning in one or two \
sentences, then give your verdict on the last line in exactly this format:
Verdict: A
(or "Verdict: B", or "Verdict: tie" if they are equally good for this user)."""

_VERDICT = re.compile(r"verdict\s*[:\-]?\s*\**\s*(A|B|tie)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(A|B|tie)\W*$", re.IGNORECASE)


def judge_messages(persona: str, prompt: str, response_a: str, response_b: str) -> list[Message]:
    """The pairwise judge prompt (after the paper's App. G)."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": JUDGE_TEMPLATE.format(
                persona=persona, prompt=prompt, response_a=response_a, response_b=response_b
            ),
        },
    ]


def parse_verdict(text: str) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from a judge's answer: its last ``Verdict:`` line, or an answer
    that is just the letter; ``None`` when the answer gives no verdict."""
    found = _VERDICT.findall(text)
    if found:
        v = found[-1]
    else:
        m = _BARE.match(text.strip())
        if not m:
            return None
        v = m.group(1)
    return "tie" if v.lower() == "tie" else v.upper()


class LLMJudge(Judge):
    """A pairwise judge on any backend. Positions are randomized per comparison with a
    seeded RNG (:meth:`swapped`); an answer without a verdict counts as a tie (and is counted in
    :attr:`unparsed`, which reports show)."""

    def __init__(self, backend: str | object, *, seed: int = 0, max_new_tokens: int = 256):
        from popi_sdk.backends import Backend, get_backend

        self.backend: Backend = get_backend(backend)  # type: ignore[arg-type]
        self.name = self.backend.name
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.unparsed = 0
        self.judged = 0

    def swapped(self, item: Comparison) -> bool:
        """Whether the method's response is shown second. Drawn from an RNG seeded by the judge's
        seed and the comparison itself, so it does not depend on batching or order."""
        key = "\x1f".join([str(self.seed), item.persona, item.prompt, item.response, item.baseline])
        return random.Random(key).random() < 0.5

    def _judge(self, items: Sequence[Comparison]) -> list[float]:
        from popi_sdk.backends import GenerateOptions

        swaps = [self.swapped(c) for c in items]
        conversations = [
            judge_messages(c.persona, c.prompt, *((c.baseline, c.response) if s else (c.response, c.baseline)))
            for c, s in zip(items, swaps)
        ]
        answers = self.backend.generate_batch(
            conversations, GenerateOptions(max_new_tokens=self.max_new_tokens, temperature=0.0)
        )
        out = []
        for answer, swapped in zip(answers, swaps):
            verdict = parse_verdict(answer)
            self.judged += 1
            if verdict is None:
                self.unparsed += 1
                out.append(0.5)
            elif verdict == "tie":
                out.append(0.5)
            else:
                method_wins = (verdict == "A") != swapped
                out.append(1.0 if method_wins else 0.0)
        return out


def get_judge(spec: str, *, seed: int = 0) -> Judge:
    """``"oracle"`` or any backend name (``"openai:gpt-4o"``, ``"hf"``) for an LLM judge."""
    if spec == "oracle":
        return OracleJudge()
    return LLMJudge(spec, seed=seed)
