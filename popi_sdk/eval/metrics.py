"""The paper's three metrics (§5.1): reward accuracy, average context overhead, win rate.

Pure functions over numbers, so they are easy to check by hand; the log-probs come from
:mod:`popi_sdk.scoring` and the verdicts from :mod:`popi_sdk.eval.judges`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from popi_sdk.backends.base import Message
from popi_sdk.errors import InputError
from popi_sdk.templates import prompt_only_messages


def margins(chosen: Sequence[float], rejected: Sequence[float]) -> list[float]:
    """``log π(y_c|·) − log π(y_r|·)`` per example."""
    if len(chosen) != len(rejected):
        raise InputError("chosen and rejected log-probs must have the same length")
    return [float(c) - float(r) for c, r in zip(chosen, rejected)]


def accuracy_outcomes(method: Sequence[float], base: Sequence[float]) -> list[float]:
    """1 where the method's margin beats the base model's, 0.5 on an exact tie, else 0."""
    if len(method) != len(base):
        raise InputError(
            f"need one base margin per method margin ({len(method)} != {len(base)})"
        )
    return [1.0 if m > b else 0.5 if m == b else 0.0 for m, b in zip(method, base)]


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean; ``None`` for no values (a metric that was not measured)."""
    return sum(values) / len(values) if values else None


def reward_accuracy(method: Sequence[float], base: Sequence[float]) -> float | None:
    """Share of examples whose margin beats the base model's margin (ties count half): the base
    model itself scores exactly 0.5."""
    return mean(accuracy_outcomes(method, base))


def win_rate(outcomes: Sequence[float]) -> float | None:
    """Mean of judge outcomes (1 win, 0.5 tie, 0 loss) against the base model's response."""
    for o in outcomes:
        if o not in (0.0, 0.5, 1.0):
            raise InputError(f"a judge outcome must be 0, 0.5 or 1, got {o!r}")
    return mean(outcomes)


def stderr(outcomes: Sequence[float]) -> float | None:
    """Standard error of a mean of outcomes (for the ± in reports)."""
    n = len(outcomes)
    if n < 2:
        return None
    mu = sum(outcomes) / n
    var = sum((o - mu) ** 2 for o in outcomes) / (n - 1)
    return (var / n) ** 0.5


#: Consecutive words an answer must share with its conditioning text to count as an echo.
ECHO_WORDS = 8


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9']+", text.lower())


def echoes(conditioning: str, answer: str, n: int = ECHO_WORDS) -> bool:
    """Whether ``answer`` repeats ``n`` or more consecutive words of ``conditioning`` (case and
    punctuation ignored): a generator that echoes its summary instead of answering. Answers
    shorter than ``n`` words never echo."""
    source, said = _words(conditioning), _words(answer)
    if len(source) < n or len(said) < n:
        return False
    grams = {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}
    return any(tuple(said[i : i + n]) in grams for i in range(len(said) - n + 1))


def chat_tokens(tokenizer: Any, messages: Sequence[Message]) -> int:
    """Tokens the generator reads for ``messages`` (its chat template, generation prompt included)."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_overhead(tokenizer: Any, messages: Sequence[Message], prompt: str) -> int:
    """Extra tokens the conditioning adds: the chat-templated ``messages`` minus the chat-templated
    prompt alone, in the generator's tokenizer. (A template's default system prompt, which some
    models insert when no system message is given, counts on the "without" side.)"""
    return chat_tokens(tokenizer, messages) - chat_tokens(tokenizer, prompt_only_messages(prompt))
