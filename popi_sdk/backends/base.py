"""The backend contract: one abstract method, ``generate``; everything else has a default.

A backend turns chat messages into text. Built-in backends (``hf``, ``openai``, ``anthropic``)
register through :func:`popi_sdk.backends.register_backend`, the same route a plugin takes.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from popi_sdk.errors import InputError, range_rule

#: One chat message, ``{"role": "system" | "user" | "assistant", "content": "..."}``. Plain dicts,
#: so every backend (a local chat template, OpenAI, Anthropic's ``system`` field) can take them.
Message = dict[str, str]


class GenerateOptions(BaseModel):
    """Sampling options every backend understands. An unknown option, or a value out of its
    range, is an :class:`~popi_sdk.errors.InputError` naming the option and the valid range."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_new_tokens: int = Field(default=256, ge=1, le=32_768, description="Most tokens to write.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 means greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(default=None, description="Seed for sampling, where supported.")
    # Small models loop ("Plenty of views. Plenty of views."); these two curb it. Local models
    # apply them; API backends ignore them (their providers have no common equivalent).
    repetition_penalty: float = Field(
        default=1.0, ge=1.0, le=2.0, description="Above 1 discourages tokens already written (local models)."
    )
    no_repeat_ngram_size: int = Field(
        default=0, ge=0, le=16, description="Never repeat an n-gram of this size; 0 is off (local models)."
    )

    def __init__(self, **options: Any):
        try:
            super().__init__(**options)
        except ValidationError as e:
            raise InputError(_describe_options(e)) from None


def _describe_options(exc: ValidationError) -> str:
    """``max_new_tokens=0: must be from 1 to 32768`` for each bad option, or the known names."""
    fields = GenerateOptions.model_fields
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "(options)"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown option {name!r}; the options are: {', '.join(fields)}")
            continue
        rule = range_rule(fields[name]) if name in fields else None
        if rule is None:
            rule = err["msg"].removeprefix("Value error, ").lower()
        lines.append(f"{name}={err.get('input')!r}: {rule}")
    return "invalid generation option(s): " + "; ".join(lines)


_WORDISH = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class Backend(ABC):
    """A model that answers chat messages. Subclasses implement :meth:`generate`."""

    #: Registry name, e.g. ``"hf:smollm2"`` or ``"openai:gpt-4o"``; used as the summarizer id.
    name: str = "backend"

    # -- capabilities: what callers may rely on, declared rather than probed ------------------
    #: Requests to keep in flight for batch work, for a backend that is a server (``openai``,
    #: ``anthropic``); ``None`` for a local model, which batches in :meth:`generate_batch`.
    max_concurrency: int | None = None
    #: Whether ``model`` and ``tokenizer`` are a local causal LM whose log-probs can be read
    #: (evaluation and training score with them).
    supports_logprobs: bool = False
    #: The local checkpoint folder the weights come from, if any. A trained summarizer's folder
    #: holds ``popi_summary.json``, how it was trained to write summaries.
    checkpoint: str | None = None

    @abstractmethod
    def generate(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        """Answer one conversation; returns the assistant's text."""

    def generate_batch(
        self, batch: Sequence[Sequence[Message]], options: GenerateOptions
    ) -> list[str]:
        """Answer many conversations. The default calls :meth:`generate` one at a time."""
        return [self.generate(messages, options) for messages in batch]

    def generate_batch_reporting(
        self,
        batch: Sequence[Sequence[Message]],
        options: GenerateOptions,
        done: Callable[[int], object],
    ) -> list[str]:
        """:meth:`generate_batch` that calls ``done(n)`` whenever ``n`` more conversations are
        finished, for per-item progress. The default reports the whole batch at its end; a local
        model that decodes a batch together reports each row as it ends."""
        texts = self.generate_batch(batch, options)
        done(len(texts))
        return texts

    def stream(self, messages: Sequence[Message], options: GenerateOptions) -> Iterator[str]:
        """Yield the answer in pieces as it is written. The default yields it whole."""
        yield self.generate(messages, options)

    async def agenerate(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        """Async :meth:`generate`; the default runs it in a worker thread."""
        return await asyncio.to_thread(self.generate, messages, options)

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` for this model. The default is an estimate (words and punctuation,
        about what BPE tokenizers give for English); local backends use their real tokenizer."""
        return len(_WORDISH.findall(text))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
