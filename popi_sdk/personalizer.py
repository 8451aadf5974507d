"""The SDK: summarize a user's signals once, cache the summary, condition any generator on it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from typing import Any

from pydantic import ValidationError

from popi_sdk.answering import answer_all, gather_bounded, server_concurrency
from popi_sdk.backends import Backend, check_backend_name, get_backend
from popi_sdk.backends.base import Message
from popi_sdk.errors import EmptySummaryError, InputError, describe_validation_error
from popi_sdk.generation import Generation, GenerationMethods
from popi_sdk.lifecycle import SignalsLike, SummaryLifecycle, check_storable
from popi_sdk.progress import progress_bar
from popi_sdk.settings import DEFAULT_BACKEND, DEFAULT_SUMMARIZER, resolve
from popi_sdk.signals import Summary, UserRow, UserSignals
from popi_sdk.store import DEFAULT_MAX_STORED_SIGNALS, SummaryStore, open_store
from popi_sdk.summary_spec import SummarySpec, check_field, length_overrides
from popi_sdk.user_ids import check_user_id

__all__ = [
    "SMALL_MODEL", "Generation", "Personalizer", "answer_all", "as_user_signals",
    "server_concurrency",
]


#: Decoding settings that keep the embedded 135M model from looping without derailing it
#: (a repetition penalty of 1.2 already sends it off topic): ``Personalizer(**SMALL_MODEL)``,
#: ``generate(..., **SMALL_MODEL)``.
SMALL_MODEL: dict[str, Any] = {"repetition_penalty": 1.05, "no_repeat_ngram_size": 6}


def as_user_signals(value: SignalsLike) -> UserSignals:
    """Accept :class:`UserSignals`, a dataset :class:`UserRow`, or a plain dict; the user id
    must follow the user-id rule (:mod:`popi_sdk.user_ids`) and comes back normalized."""
    if isinstance(value, UserSignals):
        user = value
    elif isinstance(value, UserRow):
        user = value.user_signals()
    elif isinstance(value, dict):
        try:
            user = UserSignals.model_validate(value)
        except ValidationError as e:
            details = "; ".join(describe_validation_error(e))
            raise InputError(f"invalid user signals: {details}") from None
    else:
        raise InputError(
            f"expected UserSignals, a UserRow or a dict of signals, got {type(value).__name__}"
        )
    user_id = check_user_id(user.user_id)
    check_storable(user.signals().model_dump(mode="json"), f"the signals of {user_id!r}")
    return user if user_id == user.user_id else user.model_copy(update={"user_id": user_id})


def _one_prompt_each(prompts: Sequence[str] | None, n: int) -> list[str | None]:
    if prompts is None:
        return [None] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise InputError(f"got {len(prompts)} prompts for {n} users: give one prompt per user")
    return prompts


class Personalizer(SummaryLifecycle, GenerationMethods):
    """Summarize users' preferences with a summarizer model and answer with a generator model.

    Each argument resolves as: explicit argument, then environment variable, then default.

    Args:
        summarizer: backend name or instance that writes summaries
            (``POPI_SUMMARIZER``; default ``hf:popi``, the embedded SmolLM2-135M with the
            shipped trained summarizer adapter; ``hf`` is the untrained model).
        generator: backend that answers prompts (``POPI_GENERATOR``; default ``hf``).
            A trained checkpoint folder works for either (``"runs/x/stage1"``).
        store: a :class:`SummaryStore`, a SQLite path, a ``postgresql://`` URL, or ``":memory:"``
            (``POPI_STORE``; default ``$POPI_HOME/summaries.sqlite``).
        summary: how summaries are written (:class:`~popi_sdk.summary_spec.SummarySpec`);
            default: the spec a trained summarizer saved with its weights
            (``RUN/stage1/popi_summary.json``), else the defaults.
        summary_tokens: override of the spec's ``max_tokens``, the most tokens a summary may have
            (default 96, or the trained summarizer's).
        summary_words: override of the spec's ``max_words``, the length the summarizer is asked
            for (default 60 words, or the trained summarizer's). A summary that reaches the
            token cap is cut back to its last complete sentence.
        repetition_penalty, no_repeat_ngram_size: overrides of the spec's summary decoding
            settings that keep a small local model from looping (default off;
            :data:`SMALL_MODEL` holds values that suit the embedded model). API backends ignore
            them.
        max_stored_signals: how many pairs, history items and labeled examples the store keeps
            per user, each (default 64); beyond it the oldest are evicted first.

    An override changes the cache key: the same signals summarized under other settings are a
    different summary.

    Backend names are checked here, so a typo fails at once with the known names; models are
    loaded on first use. The summary's lifecycle (versions, edits, new signals, scores, forget)
    lives in :mod:`popi_sdk.lifecycle`, generation in :mod:`popi_sdk.generation`.
    """

    def __init__(
        self,
        summarizer: str | Backend | None = None,
        generator: str | Backend | None = None,
        store: SummaryStore | str | os.PathLike | None = None,
        *,
        summary: SummarySpec | None = None,
        summary_tokens: int | None = None,
        summary_words: int | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        max_stored_signals: int = DEFAULT_MAX_STORED_SIGNALS,
    ):
        if summary is not None and not isinstance(summary, SummarySpec):
            raise InputError(f"summary must be a SummarySpec, got {type(summary).__name__}")
        self._overrides: dict[str, Any] = length_overrides(summary_tokens, summary_words)
        for name, value in (
            ("repetition_penalty", repetition_penalty),
            ("no_repeat_ngram_size", no_repeat_ngram_size),
        ):
            if value is not None:
                check_field(name, value)
                self._overrides[name] = value
        self._summarizer_spec = summarizer if isinstance(summarizer, Backend) else resolve(
            summarizer, "POPI_SUMMARIZER", DEFAULT_SUMMARIZER
        )
        self._generator_spec = generator if isinstance(generator, Backend) else resolve(
            generator, "POPI_GENERATOR", DEFAULT_BACKEND
        )
        for spec in (self._summarizer_spec, self._generator_spec):
            if isinstance(spec, str):
                check_backend_name(spec)
        self.store = open_store(store)
        self._summary = summary
        self._resolved: SummarySpec | None = None
        if not isinstance(max_stored_signals, int) or isinstance(max_stored_signals, bool) or (
            max_stored_signals < 1
        ):
            raise InputError(
                f"max_stored_signals must be an integer of at least 1, got {max_stored_signals!r}"
            )
        self.max_stored_signals = max_stored_signals

    @property
    def summarizer(self) -> Backend:
        return get_backend(self._summarizer_spec)

    @property
    def generator(self) -> Backend:
        return get_backend(self._generator_spec)

    @property
    def summary_spec(self) -> SummarySpec:
        """How this personalizer writes summaries: the given spec, else the trained summarizer's
        saved one, else the defaults; then the explicit overrides."""
        if self._resolved is None:
            base = self._summary or SummarySpec.of_backend(self.summarizer)
            self._resolved = base.replace(**self._overrides)
        return self._resolved

    def __repr__(self) -> str:
        return (
            f"Personalizer(summarizer={self._summarizer_spec!r}, "
            f"generator={self._generator_spec!r}, store={self.store!r})"
        )

    # -- summaries -------------------------------------------------------------------------
    def summarizer_input(
        self, signals: SignalsLike, *, prompt: str | None = None, current_summary: str | None = None
    ) -> list[Message]:
        """The exact messages the summarizer reads for these signals (with ``current_summary``:
        the incremental-refresh variant that also reads the user's current summary)."""
        return self.summary_spec.messages(
            as_user_signals(signals), prompt, current_summary=current_summary
        )

    def cache_hash(
        self, signals: SignalsLike, *, prompt: str | None = None, current_summary: str | None = None
    ) -> str:
        """The store key of these signals' summary: their content and this personalizer's
        summary spec (the same signals summarized under another spec are a different summary),
        and for a refresh, the current summary it was written from."""
        return self._hash(as_user_signals(signals), prompt, current_summary)

    def _hash(
        self, user: UserSignals, prompt: str | None = None, current_summary: str | None = None
    ) -> str:
        settings = self.summary_spec.cache_key(prompt)
        if current_summary is not None:
            settings += ";current=" + hashlib.sha256(current_summary.encode()).hexdigest()[:16]
        return user.signals_hash(settings=settings)

    def _make_summary(
        self, summarizer: Backend, user: UserSignals, key: str, text: str, *, allow_empty: bool = False
    ) -> Summary:
        """The summary to store for ``text``; every path that stores one comes through here, so
        an empty answer is refused once, for every backend, before anything is stored. A summary
        stopped by the length cap is cut back to its last complete sentence."""
        raw, spec = text, self.summary_spec
        text = spec.clean(text.replace("\x00", ""))  # no store can hold a NUL
        if not text.strip() and not allow_empty:
            shown = raw if len(raw) <= 200 else raw[:200] + "..."
            raise EmptySummaryError(
                f"the summarizer wrote no summary for user {user.user_id!r} (it returned "
                f"{shown!r}); nothing was stored. Try again, check the summarizer model, or "
                "raise summary_tokens if the answer was cut off",
                backend=summarizer.name,
            )
        n_tokens = summarizer.count_tokens(text)
        if spec.at_cap(n_tokens):  # stopped by the cap, likely mid-sentence
            cut = spec.clean(text, capped=True)
            if cut != text:
                text, n_tokens = cut, summarizer.count_tokens(cut)
        return Summary(
            user_id=user.user_id,
            text=text,
            summarizer=summarizer.name,
            signals_hash=key,
            n_tokens=n_tokens,
        )

    def cached(self, signals: SignalsLike, *, prompt: str | None = None) -> Summary | None:
        """The stored summary for exactly these signals, spec and summarizer, if any."""
        user = as_user_signals(signals)
        return self.store.get(user.user_id, self.summarizer.name, self._hash(user, prompt))

    def summarize(
        self,
        signals: SignalsLike,
        *,
        prompt: str | None = None,
        refresh: bool = False,
        replace_user_edit: bool = False,
    ) -> Summary:
        """The user's preference summary: from the store when these signals were already
        summarized by this summarizer under this spec (no model call), else written now and
        stored as the user's newest version (with the signals, so :meth:`add_signals` can extend
        them). ``prompt`` is the upcoming question, for a prompt-dependent summarizer.

        A summary the user wrote (:meth:`edit_summary`) stays current and is returned as it is,
        unless ``replace_user_edit=True``."""
        user = as_user_signals(signals)
        summarizer, spec = self.summarizer, self.summary_spec
        key = self._hash(user, prompt)
        with self._writing(user.user_id) as lease:
            if (kept := self._kept_edit(user.user_id, replace_user_edit)) is not None:
                return kept
            if not refresh and (hit := self._hit(summarizer, user, key, replace_user_edit, lease)):
                return hit
            text = summarizer.generate(spec.messages(user, prompt), spec.options())
            return self._store_new(user, self._make_summary(summarizer, user, key, text), lease)

    def summarize_many(
        self,
        users: Iterable[SignalsLike],
        *,
        prompts: Sequence[str] | None = None,
        batch_size: int = 8,
        refresh: bool = False,
        progress: bool = True,
        max_concurrency: int | None = None,
        replace_user_edit: bool = False,
        keep_empty: bool = False,
    ) -> list[Summary]:
        """Summarize many users; cached users (and users whose own edit is current) cost
        nothing. Order is kept. ``prompts`` (one per user) are the upcoming questions, for a
        prompt-dependent summarizer.

        A local summarizer works in batches of ``batch_size``; a server summarizer (``openai:``,
        ``anthropic:``) gets concurrent requests, at most ``max_concurrency`` in flight (default:
        the backend's own). Each summary is stored as soon as it is written, so a run that fails
        part-way resumes where it stopped.

        An empty summary raises :class:`EmptySummaryError`; with ``keep_empty=True`` it is
        returned instead (text ``""``, for callers that use whatever the model wrote, as training
        does), but still never stored."""
        todo = [as_user_signals(u) for u in users]
        asked = _one_prompt_each(prompts, len(todo))
        summarizer = self.summarizer
        keys = [self._hash(user, prompt) for user, prompt in zip(todo, asked)]
        out: list[Summary | None] = [None] * len(todo)
        missing = []
        leases = ExitStack()  # one lease per user for the whole run: forget wins over it
        with leases:
            held = [leases.enter_context(self._writing(user.user_id)) for user in todo]
            for i, (user, key) in enumerate(zip(todo, keys)):
                hit = self._kept_edit(user.user_id, replace_user_edit)
                if hit is None and not refresh:
                    hit = self._hit(summarizer, user, key, replace_user_edit, held[i])
                if hit is None:
                    missing.append(i)
                out[i] = hit
            self._summarize_missing(
                todo, asked, keys, missing, out, held, batch_size=batch_size, progress=progress,
                max_concurrency=max_concurrency, keep_empty=keep_empty,
            )
        return [s for s in out if s is not None]

    def _summarize_missing(self, todo, asked, keys, missing, out, held, *, batch_size, progress,
                           max_concurrency, keep_empty) -> None:
        summarizer, spec = self.summarizer, self.summary_spec

        def store(j: int, text: str) -> None:
            i = missing[j]
            try:
                summary = self._make_summary(summarizer, todo[i], keys[i], text)
            except EmptySummaryError:
                if not keep_empty:
                    raise
                out[i] = self._make_summary(summarizer, todo[i], keys[i], text, allow_empty=True)
                return
            out[i] = self._store_new(todo[i], summary, held[i])

        with progress_bar("Summarizing", len(todo), enabled=progress, unit="users") as advance:
            advance(len(todo) - len(missing))
            answer_all(
                summarizer,
                [spec.messages(todo[i], asked[i]) for i in missing],
                spec.options(),
                on_answer=store,
                advance=advance,
                batch_size=batch_size,
                max_concurrency=max_concurrency,
            )

    async def asummarize(
        self,
        signals: SignalsLike,
        *,
        prompt: str | None = None,
        refresh: bool = False,
        replace_user_edit: bool = False,
    ) -> Summary:
        """Async :meth:`summarize`: the summarizer call awaits (server backends use their async
        client); the store is read and written in a worker thread."""
        user = as_user_signals(signals)
        summarizer, spec = self.summarizer, self.summary_spec
        key = self._hash(user, prompt)
        lease = await asyncio.to_thread(self.store.begin_write, user.user_id)
        try:
            kept = await asyncio.to_thread(self._kept_edit, user.user_id, replace_user_edit)
            if kept is not None:
                return kept
            if not refresh:
                hit = await asyncio.to_thread(
                    self._hit, summarizer, user, key, replace_user_edit, lease
                )
                if hit is not None:
                    return hit
            text = await summarizer.agenerate(spec.messages(user, prompt), spec.options())
            summary = self._make_summary(summarizer, user, key, text)
            return await asyncio.to_thread(self._store_new, user, summary, lease)
        finally:
            await asyncio.to_thread(self._release, user.user_id, lease)

    async def asummarize_many(
        self,
        users: Iterable[SignalsLike],
        *,
        prompts: Sequence[str] | None = None,
        refresh: bool = False,
        progress: bool = True,
        max_concurrency: int | None = None,
        batch_size: int = 8,
        replace_user_edit: bool = False,
    ) -> list[Summary]:
        """Async :meth:`summarize_many`: a server summarizer gets at most ``max_concurrency``
        requests in flight (default: the backend's own); a local one runs
        :meth:`summarize_many` in a worker thread. Order is kept."""
        todo = [as_user_signals(u) for u in users]
        asked = _one_prompt_each(prompts, len(todo))
        limit = server_concurrency(self.summarizer, max_concurrency)
        if limit is None:
            return await asyncio.to_thread(
                self.summarize_many,
                todo,
                prompts=prompts,
                batch_size=batch_size,
                refresh=refresh,
                progress=progress,
                replace_user_edit=replace_user_edit,
            )
        with progress_bar("Summarizing", len(todo), enabled=progress, unit="users") as advance:
            jobs = [
                lambda u=u, q=q: self.asummarize(
                    u, prompt=q, refresh=refresh, replace_user_edit=replace_user_edit
                )
                for u, q in zip(todo, asked)
            ]
            return await gather_bounded(jobs, limit, advance)

