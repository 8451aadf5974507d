"""The SDK: summarize a user's signals once, cache the summary, condition any generator on it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from popi_sdk.backends import Backend, GenerateOptions, check_backend_name, get_backend
from popi_sdk.data.jsonl import describe_validation_error
from popi_sdk.errors import EmptySummaryError, InputError, NotFoundError
from popi_sdk.progress import progress_bar
from popi_sdk.settings import DEFAULT_BACKEND, resolve
from popi_sdk.signals import Summary, UserRow, UserSignals
from popi_sdk.store import SummaryStore, open_store
from popi_sdk.templates import (
    Message,
    clean_summary,
    cut_to_last_sentence,
    prompt_only_messages,
    summarizer_messages,
    summary_messages,
)

SignalsLike = UserSignals | UserRow | dict

#: Decoding settings that keep the embedded 135M model from looping without derailing it
#: (a repetition penalty of 1.2 already sends it off topic): ``Personalizer(**SMALL_MODEL)``,
#: ``generate(..., **SMALL_MODEL)``.
SMALL_MODEL: dict[str, Any] = {"repetition_penalty": 1.05, "no_repeat_ngram_size": 6}


def server_concurrency(backend: Backend, requested: int | None = None) -> int | None:
    """How many requests to keep in flight for ``backend``, or ``None`` for a local model (which
    batches instead). A backend declares itself a server by having a ``max_concurrency``
    attribute, as the ``openai`` and ``anthropic`` backends do; ``requested`` overrides it."""
    own = getattr(backend, "max_concurrency", None)
    if own is None:
        return None
    n = requested if requested is not None else own
    if n < 1:
        raise InputError(f"max_concurrency must be at least 1, got {n}")
    return n


def answer_all(
    backend: Backend,
    conversations: Sequence[Sequence[Message]],
    options: GenerateOptions,
    *,
    on_answer: Callable[[int, str], None],
    advance: Callable[[int], Any],
    batch_size: int | None = None,
    max_concurrency: int | None = None,
) -> None:
    """Answer every conversation, calling ``on_answer(i, text)`` as each one is done.

    A server backend gets concurrent requests, at most ``max_concurrency`` in flight (default:
    the backend's own), so answers arrive one by one and nothing done is lost when a later request
    fails. A local model gets batches of ``batch_size`` (default: everything in one call)."""
    if not conversations:
        return
    workers = server_concurrency(backend, max_concurrency)
    if workers is None:
        step = batch_size or len(conversations)
        for start in range(0, len(conversations), step):
            texts = backend.generate_batch_reporting(conversations[start : start + step], options, advance)
            for i, text in enumerate(texts, start=start):
                on_answer(i, text)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(conversations))) as pool:
        futures = {pool.submit(backend.generate, c, options): i for i, c in enumerate(conversations)}
        try:
            for future in as_completed(futures):
                on_answer(futures[future], future.result())
                advance(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


async def _gather_bounded(jobs: Sequence[Callable[[], Any]], limit: int, advance: Callable) -> list:
    """Run async ``jobs`` with at most ``limit`` at once, in order; the first failure cancels the
    rest and is raised."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Any]) -> Any:
        async with gate:
            result = await job()
        advance(1)
        return result

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _finish(text: str, model: Backend, options: GenerateOptions, whole_sentences: bool) -> str:
    """With ``whole_sentences``, an answer stopped by the length cap loses its last fragment."""
    if whole_sentences and model.count_tokens(text) >= options.max_new_tokens - 2:
        return cut_to_last_sentence(text)
    return text


class Generation(BaseModel):
    """A generated answer. ``str(generation)`` is its text."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    text: str
    backend: str
    prompt: str
    summary: Summary | None = None

    def __str__(self) -> str:
        return self.text


def as_user_signals(value: SignalsLike) -> UserSignals:
    """Accept :class:`UserSignals`, a dataset :class:`UserRow`, or a plain dict."""
    if isinstance(value, UserSignals):
        return value
    if isinstance(value, UserRow):
        return value.user_signals()
    if isinstance(value, dict):
        try:
            return UserSignals.model_validate(value)
        except ValidationError as e:
            details = "; ".join(describe_validation_error(e))
            raise InputError(f"invalid user signals: {details}") from None
    raise InputError(
        f"expected UserSignals, a UserRow or a dict of signals, got {type(value).__name__}"
    )


class Personalizer:
    """Summarize users' preferences with a summarizer model and answer with a generator model.

    Each argument resolves as: explicit argument, then environment variable, then default.

    Args:
        summarizer: backend name or instance that writes summaries
            (``POPI_SUMMARIZER``; default ``hf``, the embedded SmolLM2-135M).
        generator: backend that answers prompts (``POPI_GENERATOR``; default ``hf``).
            A trained checkpoint folder works for either (``"runs/x/stage1"``).
        store: a :class:`SummaryStore`, a SQLite path, or ``":memory:"``
            (``POPI_STORE``; default ``$POPI_HOME/summaries.sqlite``).
        summary_tokens: most tokens a summary may have (default 96). A summary that reaches
            the cap is cut back to its last complete sentence.
        summary_words: length the summarizer is asked for (default 60 words).
        repetition_penalty, no_repeat_ngram_size: summary decoding settings that keep a small
            local model from looping (default off; :data:`SMALL_MODEL` holds values that suit
            the embedded model). API backends ignore them.

    Backend names are checked here, so a typo fails at once with the known names; models are
    loaded on first use.
    """

    def __init__(
        self,
        summarizer: str | Backend | None = None,
        generator: str | Backend | None = None,
        store: SummaryStore | str | os.PathLike | None = None,
        *,
        summary_tokens: int = 96,
        summary_words: int = 60,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ):
        self._summarizer_spec = summarizer if isinstance(summarizer, Backend) else resolve(
            summarizer, "POPI_SUMMARIZER", DEFAULT_BACKEND
        )
        self._generator_spec = generator if isinstance(generator, Backend) else resolve(
            generator, "POPI_GENERATOR", DEFAULT_BACKEND
        )
        for spec in (self._summarizer_spec, self._generator_spec):
            if isinstance(spec, str):
                check_backend_name(spec)
        self.store = open_store(store)
        self.summary_tokens = summary_tokens
        self.summary_words = summary_words
        self._summary_options_ = GenerateOptions(
            max_new_tokens=summary_tokens,
            temperature=0.0,
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )

    @property
    def summarizer(self) -> Backend:
        return get_backend(self._summarizer_spec)

    @property
    def generator(self) -> Backend:
        return get_backend(self._generator_spec)

    def __repr__(self) -> str:
        return (
            f"Personalizer(summarizer={self._summarizer_spec!r}, "
            f"generator={self._generator_spec!r}, store={self.store!r})"
        )

    # -- summaries -------------------------------------------------------------------------
    def _summary_options(self) -> GenerateOptions:
        return self._summary_options_

    def summarizer_input(self, signals: SignalsLike) -> list[Message]:
        """The exact messages the summarizer reads for these signals."""
        return summarizer_messages(as_user_signals(signals), max_words=self.summary_words)

    def cache_hash(self, signals: SignalsLike) -> str:
        """The store key of these signals' summary: their content and this personalizer's summary
        length settings (the same signals summarized at another length are a different summary)."""
        settings = f"tokens={self.summary_tokens};words={self.summary_words}"
        o = self._summary_options_
        if o.repetition_penalty != 1.0 or o.no_repeat_ngram_size:
            settings += f";rep={o.repetition_penalty:g};ngram={o.no_repeat_ngram_size}"
        return as_user_signals(signals).signals_hash(settings=settings)

    def _make_summary(self, user: UserSignals, text: str, *, allow_empty: bool = False) -> Summary:
        """The summary to store for ``text``; every path that stores one comes through here, so
        an empty answer is refused once, for every backend, before anything is stored. A summary
        stopped by the length cap is cut back to its last complete sentence."""
        raw = text
        text = clean_summary(text)
        summarizer = self.summarizer
        if not text.strip() and not allow_empty:
            shown = raw if len(raw) <= 200 else raw[:200] + "..."
            raise EmptySummaryError(
                f"the summarizer wrote no summary for user {user.user_id!r} (it returned "
                f"{shown!r}); nothing was stored. Try again, check the summarizer model, or "
                "raise summary_tokens if the answer was cut off",
                backend=summarizer.name,
            )
        n_tokens = summarizer.count_tokens(text)
        if n_tokens >= self.summary_tokens - 2:  # stopped by the cap, likely mid-sentence
            cut = cut_to_last_sentence(text)
            if cut != text:
                text, n_tokens = cut, summarizer.count_tokens(cut)
        return Summary(
            user_id=user.user_id,
            text=text,
            summarizer=summarizer.name,
            signals_hash=self.cache_hash(user),
            n_tokens=n_tokens,
        )

    def cached(self, signals: SignalsLike) -> Summary | None:
        """The stored summary for exactly these signals, settings and summarizer, if any."""
        user = as_user_signals(signals)
        return self.store.get(user.user_id, self.summarizer.name, self.cache_hash(user))

    def summarize(self, signals: SignalsLike, *, refresh: bool = False) -> Summary:
        """The user's preference summary: from the store when these signals were already
        summarized by this summarizer (no model call), else written now and stored."""
        user = as_user_signals(signals)
        if not refresh and (hit := self.cached(user)) is not None:
            return hit
        text = self.summarizer.generate(self.summarizer_input(user), self._summary_options())
        summary = self._make_summary(user, text)
        self.store.put(summary)
        return summary

    def summarize_many(
        self,
        users: Iterable[SignalsLike],
        *,
        batch_size: int = 8,
        refresh: bool = False,
        progress: bool = True,
        max_concurrency: int | None = None,
        keep_empty: bool = False,
    ) -> list[Summary]:
        """Summarize many users; cached users cost nothing. Order is kept.

        A local summarizer works in batches of ``batch_size``; a server summarizer (``openai:``,
        ``anthropic:``) gets concurrent requests, at most ``max_concurrency`` in flight (default:
        the backend's own). Each summary is stored as soon as it is written, so a run that fails
        part-way resumes where it stopped.

        An empty summary raises :class:`EmptySummaryError`; with ``keep_empty=True`` it is
        returned instead (text ``""``, for callers that use whatever the model wrote, as training
        does), but still never stored."""
        todo = [as_user_signals(u) for u in users]
        out: list[Summary | None] = [None] * len(todo)
        missing = []
        for i, user in enumerate(todo):
            hit = None if refresh else self.cached(user)
            if hit is None:
                missing.append(i)
            out[i] = hit

        def store(j: int, text: str) -> None:
            i = missing[j]
            try:
                summary = self._make_summary(todo[i], text)
            except EmptySummaryError:
                if not keep_empty:
                    raise
                out[i] = self._make_summary(todo[i], text, allow_empty=True)
                return
            self.store.put(summary)
            out[i] = summary

        with progress_bar("Summarizing", len(todo), enabled=progress, unit="users") as advance:
            advance(len(todo) - len(missing))
            answer_all(
                self.summarizer,
                [self.summarizer_input(todo[i]) for i in missing],
                self._summary_options(),
                on_answer=store,
                advance=advance,
                batch_size=batch_size,
                max_concurrency=max_concurrency,
            )
        return [s for s in out if s is not None]

    async def asummarize(self, signals: SignalsLike, *, refresh: bool = False) -> Summary:
        """Async :meth:`summarize`: the summarizer call awaits (server backends use their async
        client); the store is read and written in a worker thread."""
        user = as_user_signals(signals)
        if not refresh and (hit := await asyncio.to_thread(self.cached, user)) is not None:
            return hit
        text = await self.summarizer.agenerate(self.summarizer_input(user), self._summary_options())
        summary = self._make_summary(user, text)
        await asyncio.to_thread(self.store.put, summary)
        return summary

    async def asummarize_many(
        self,
        users: Iterable[SignalsLike],
        *,
        refresh: bool = False,
        progress: bool = True,
        max_concurrency: int | None = None,
        batch_size: int = 8,
    ) -> list[Summary]:
        """Async :meth:`summarize_many`: a server summarizer gets at most ``max_concurrency``
        requests in flight (default: the backend's own); a local one runs
        :meth:`summarize_many` in a worker thread. Order is kept."""
        todo = [as_user_signals(u) for u in users]
        limit = server_concurrency(self.summarizer, max_concurrency)
        if limit is None:
            return await asyncio.to_thread(
                self.summarize_many, todo, batch_size=batch_size, refresh=refresh, progress=progress
            )
        with progress_bar("Summarizing", len(todo), enabled=progress, unit="users") as advance:
            jobs = [lambda u=u: self.asummarize(u, refresh=refresh) for u in todo]
            return await _gather_bounded(jobs, limit, advance)

    def get_summary(self, user_id: str) -> Summary:
        """The most recent stored summary of ``user_id``."""
        summary = self.store.latest(user_id)
        if summary is None:
            raise NotFoundError(
                f"no summary stored for user {user_id!r}: call summarize(signals) first, "
                "or pass summary=... to generate()"
            )
        return summary

    def forget(self, user_id: str) -> int:
        """Remove every stored trace of ``user_id``; returns how many summaries were deleted."""
        return self.store.delete_user(user_id)

    # -- generation ------------------------------------------------------------------------
    def conditioning(
        self, prompt: str, *, user_id: str | None = None, summary: Summary | str | None = None
    ) -> tuple[list[Message], Summary | None]:
        """The generator's messages for ``prompt``: summary-conditioned when a summary is given or
        stored for ``user_id``; the plain prompt when neither ``user_id`` nor ``summary`` is given."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt must be a non-empty string")
        if summary is None and user_id is not None:
            summary = self.get_summary(user_id)
        if summary is None:
            return prompt_only_messages(prompt), None
        if isinstance(summary, str):
            summary = Summary(
                user_id=user_id or "", text=summary, summarizer="given", signals_hash="", n_tokens=0
            )
        return summary_messages(prompt, summary.text), summary

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
    ) -> list[tuple[list[Message], Summary | None]]:
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
            texts = await _gather_bounded(jobs, limit, advance)
        texts = [_finish(t, model, options, whole_sentences) for t in texts]
        return [
            Generation(text=t, backend=model.name, prompt=p, summary=s)
            for t, p, (_, s) in zip(texts, prompts, prepared)
        ]
