"""Conditioned generation, ``y = g(x, z)``: the :class:`~popi_sdk.Personalizer` methods that
answer prompts with a user's summary in context."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from popi_sdk.answering import answer_all, gather_bounded, server_concurrency
from popi_sdk.backends import Backend, GenerateOptions, get_backend
from popi_sdk.backends.base import Message
from popi_sdk.errors import InputError, NotFoundError
from popi_sdk.progress import progress_bar
from popi_sdk.signals import Summary
from popi_sdk.templates import cut_to_last_sentence, prompt_only_messages, summary_messages


def _finish(text: str, model: Backend, options: GenerateOptions, whole_sentences: bool) -> str:
    """With ``whole_sentences``, an answer stopped by the length cap loses its last fragment."""
    if whole_sentences and model.count_tokens(text) >= options.max_new_tokens - 2:
        return cut_to_last_sentence(text)
    return text


class Generation(BaseModel):
    """A generated answer. ``str(generation)`` is its text; ``summary`` is the summary it was
    conditioned on, as given (a stored :class:`Summary` or the text passed), if any."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    text: str
    backend: str
    prompt: str
    summary: Summary | str | None = None

    def __str__(self) -> str:
        return self.text


class GenerationMethods:
    """The generation half of :class:`~popi_sdk.Personalizer` (it supplies ``generator`` and
    ``get_summary``)."""

    def conditioning(
        self, prompt: str, *, user_id: str | None = None, summary: Summary | str | None = None
    ) -> tuple[list[Message], Summary | str | None]:
        """The generator's messages for ``prompt`` and the summary they carry: summary-conditioned
        when a summary (a :class:`Summary` or its text) is given or stored for ``user_id``; the
        plain prompt when neither ``user_id`` nor ``summary`` is given."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt must be a non-empty string")
        if summary is None and user_id is not None:
            summary = self.get_summary(user_id)
            if summary is None:
                raise NotFoundError(
                    f"no summary stored for user {user_id!r}: call summarize(signals) first, "
                    "or pass summary=... to generate()"
                )
        if summary is None:
            return prompt_only_messages(prompt), None
        text = summary if isinstance(summary, str) else summary.text
        return summary_messages(prompt, text), summary

    def generate(
        self,
        prompt: str,
        *,
        user_id: str | None = None,
        summary: Summary | str | None = None,
        backend: str | Backend | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        whole_sentences: bool = False,
        **backend_options: Any,
    ) -> Generation:
        """Answer ``prompt`` for a user.

        ``user_id`` uses that user's stored summary; ``summary`` (a :class:`Summary` or text) is
        used directly; with neither, the prompt is answered un-personalized. ``backend`` overrides
        the generator for this call (any registered name, e.g. ``"openai:gpt-4o"``).
        ``repetition_penalty`` / ``no_repeat_ngram_size`` curb a small local model's loops
        (:data:`SMALL_MODEL`); ``whole_sentences`` cuts an answer stopped by ``max_new_tokens``
        back to its last complete sentence.
        """
        # Options first: a bad value is reported before any store read or model load.
        options = GenerateOptions(
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        )
        messages, used = self.conditioning(prompt, user_id=user_id, summary=summary)
        model = get_backend(backend, **backend_options) if backend is not None else self.generator
        text = _finish(model.generate(messages, options), model, options, whole_sentences)
        return Generation(text=text, backend=model.name, prompt=prompt, summary=used)

    def stream(
        self,
        prompt: str,
        *,
        user_id: str | None = None,
        summary: Summary | str | None = None,
        backend: str | Backend | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        **backend_options: Any,
    ) -> Iterator[str]:
        """:meth:`generate`, yielding the answer in pieces as the backend writes it (a backend
        that cannot stream yields it whole)."""
        messages, _ = self.conditioning(prompt, user_id=user_id, summary=summary)
        model = get_backend(backend, **backend_options) if backend is not None else self.generator
        options = GenerateOptions(
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        )
        yield from model.stream(messages, options)

    async def agenerate(
        self,
        prompt: str,
        *,
        user_id: str | None = None,
        summary: Summary | str | None = None,
        backend: str | Backend | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        whole_sentences: bool = False,
        **backend_options: Any,
    ) -> Generation:
        """Async :meth:`generate`, for web apps: server backends use their async client."""
        options = GenerateOptions(
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        )
        messages, used = await asyncio.to_thread(
            self.conditioning, prompt, user_id=user_id, summary=summary
        )
        model = get_backend(backend, **backend_options) if backend is not None else self.generator
        text = _finish(await model.agenerate(messages, options), model, options, whole_sentences)
        return Generation(text=text, backend=model.name, prompt=prompt, summary=used)

    def _prepare_many(
        self,
        prompts: Sequence[str],
        user_ids: Sequence[str | None] | None,
        summaries: Sequence[Summary | str | None] | None,
    ) -> list[tuple[list[Message], Summary | str | None]]:
        n = len(prompts)
        user_ids = list(user_ids) if user_ids is not None else [None] * n
        summaries = list(summaries) if summaries is not None else [None] * n
        if not (len(user_ids) == len(summaries) == n):
            raise InputError("prompts, user_ids and summaries must have the same length")
        return [
            self.conditioning(p, user_id=u, summary=s) for p, u, s in zip(prompts, user_ids, summaries)
        ]

    def generate_many(
        self,
        prompts: Sequence[str],
        *,
        user_ids: Sequence[str | None] | None = None,
        summaries: Sequence[Summary | str | None] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        whole_sentences: bool = False,
        max_concurrency: int | None = None,
        progress: bool = False,
    ) -> list[Generation]:
        """Answer many prompts (one user id or summary per prompt). Order is kept.

        A local generator answers in batches; a server generator gets concurrent requests, at
        most ``max_concurrency`` in flight (default: the backend's own)."""
        options = GenerateOptions(
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        )
        prepared = self._prepare_many(prompts, user_ids, summaries)
        model = self.generator
        texts = [""] * len(prepared)

        def keep(i: int, text: str) -> None:
            texts[i] = _finish(text, model, options, whole_sentences)

        with progress_bar("Generating", len(prepared), enabled=progress, unit="answers") as advance:
            answer_all(
                model,
                [m for m, _ in prepared],
                options,
                on_answer=keep,
                advance=advance,
                max_concurrency=max_concurrency,
            )
        return [
            Generation(text=t, backend=model.name, prompt=p, summary=s)
            for t, p, (_, s) in zip(texts, prompts, prepared)
        ]

    async def agenerate_many(
        self,
        prompts: Sequence[str],
        *,
        user_ids: Sequence[str | None] | None = None,
        summaries: Sequence[Summary | str | None] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        whole_sentences: bool = False,
        max_concurrency: int | None = None,
        progress: bool = False,
    ) -> list[Generation]:
        """Async :meth:`generate_many`: a server generator gets at most ``max_concurrency``
        requests in flight; a local one runs :meth:`generate_many` in a worker thread."""
        options = GenerateOptions(
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        )
        model = self.generator
        limit = server_concurrency(model, max_concurrency)
        if limit is None:
            return await asyncio.to_thread(
                self.generate_many,
                prompts,
                user_ids=user_ids,
                summaries=summaries,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
                repetition_penalty=repetition_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size,
                whole_sentences=whole_sentences,
                progress=progress,
            )
        prepared = await asyncio.to_thread(self._prepare_many, prompts, user_ids, summaries)
        with progress_bar("Generating", len(prepared), enabled=progress, unit="answers") as advance:
            jobs = [lambda m=m: model.agenerate(m, options) for m, _ in prepared]
            texts = await gather_bounded(jobs, limit, advance)
        texts = [_finish(t, model, options, whole_sentences) for t in texts]
        return [
            Generation(text=t, backend=model.name, prompt=p, summary=s)
            for t, p, (_, s) in zip(texts, prompts, prepared)
        ]

