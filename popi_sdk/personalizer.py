"""The SDK: summarize a user's signals once, cache the summary, condition any generator on it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from popi_sdk.backends import Backend, GenerateOptions, check_backend_name, get_backend
from popi_sdk.backends.base import Message
from popi_sdk.errors import EmptySummaryError, InputError, NotFoundError, describe_validation_error
from popi_sdk.progress import progress_bar
from popi_sdk.settings import DEFAULT_BACKEND, DEFAULT_SUMMARIZER, resolve
from popi_sdk.signals import PreferencePair, Signals, Summary, SummaryScore, UserRow, UserSignals
from popi_sdk.store import DEFAULT_MAX_STORED_SIGNALS, SummaryStore, open_store
from popi_sdk.summary_spec import SummarySpec, check_field, length_overrides
from popi_sdk.templates import cut_to_last_sentence, prompt_only_messages, summary_messages

SignalsLike = UserSignals | UserRow | dict

#: Decoding settings that keep the embedded 135M model from looping without derailing it
#: (a repetition penalty of 1.2 already sends it off topic): ``Personalizer(**SMALL_MODEL)``,
#: ``generate(..., **SMALL_MODEL)``.
SMALL_MODEL: dict[str, Any] = {"repetition_penalty": 1.05, "no_repeat_ngram_size": 6}


def server_concurrency(backend: Backend, requested: int | None = None) -> int | None:
    """How many requests to keep in flight for ``backend``, or ``None`` for a local model (which
    batches instead). A backend declares itself a server by its ``max_concurrency``, as the
    ``openai`` and ``anthropic`` backends do; ``requested`` overrides it."""
    if backend.max_concurrency is None:
        return None
    n = requested if requested is not None else backend.max_concurrency
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
    """A generated answer. ``str(generation)`` is its text; ``summary`` is the summary it was
    conditioned on, as given (a stored :class:`Summary` or the text passed), if any."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    text: str
    backend: str
    prompt: str
    summary: Summary | str | None = None

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


def _one_prompt_each(prompts: Sequence[str] | None, n: int) -> list[str | None]:
    if prompts is None:
        return [None] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise InputError(f"got {len(prompts)} prompts for {n} users: give one prompt per user")
    return prompts


class Personalizer:
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
    loaded on first use.
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
        text = spec.clean(text)
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

    def _record_signals(self, user: UserSignals, *, replace: bool, examples=()) -> dict:
        record = {
            "signals": user.signals().model_dump(mode="json"),
            "examples": [PreferencePair.model_validate(e).model_dump(mode="json") for e in examples],
        }
        return self.store.merge_signals(
            user.user_id, record, limit=self.max_stored_signals, replace=replace
        )

    def _kept_edit(self, user_id: str, replace_user_edit: bool) -> Summary | None:
        """The user's own edit when it is current and must not be replaced."""
        if replace_user_edit:
            return None
        current = self.store.latest(user_id)
        return current if current is not None and current.source == "user" else None

    def _hit(
        self, summarizer: Backend, user: UserSignals, key: str, replace_user_edit: bool
    ) -> Summary | None:
        hit = self.store.get(user.user_id, summarizer.name, key)
        if hit is not None and replace_user_edit:
            current = self.store.latest(user.user_id)
            if current is not None and current.source == "user":
                # The caller asked to replace the user's edit: the cached model summary becomes
                # current again, as a new version.
                hit = self.store.put(hit.model_copy(update={"score": None}))
        return hit

    def _store_new(self, user: UserSignals, summary: Summary) -> Summary:
        """Store a newly written summary as the user's next version, with its signals."""
        stored = self.store.put(summary)
        self._record_signals(user, replace=True)
        return stored

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
        if (kept := self._kept_edit(user.user_id, replace_user_edit)) is not None:
            return kept
        summarizer, spec = self.summarizer, self.summary_spec
        key = self._hash(user, prompt)
        if not refresh and (hit := self._hit(summarizer, user, key, replace_user_edit)) is not None:
            return hit
        text = summarizer.generate(spec.messages(user, prompt), spec.options())
        return self._store_new(user, self._make_summary(summarizer, user, key, text))

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
        summarizer, spec = self.summarizer, self.summary_spec
        keys = [self._hash(user, prompt) for user, prompt in zip(todo, asked)]
        out: list[Summary | None] = [None] * len(todo)
        missing = []
        for i, (user, key) in enumerate(zip(todo, keys)):
            hit = self._kept_edit(user.user_id, replace_user_edit)
            if hit is None and not refresh:
                hit = self._hit(summarizer, user, key, replace_user_edit)
            if hit is None:
                missing.append(i)
            out[i] = hit

        def store(j: int, text: str) -> None:
            i = missing[j]
            try:
                summary = self._make_summary(summarizer, todo[i], keys[i], text)
            except EmptySummaryError:
                if not keep_empty:
                    raise
                out[i] = self._make_summary(summarizer, todo[i], keys[i], text, allow_empty=True)
                return
            out[i] = self._store_new(todo[i], summary)

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
        return [s for s in out if s is not None]

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
        kept = await asyncio.to_thread(self._kept_edit, user.user_id, replace_user_edit)
        if kept is not None:
            return kept
        summarizer, spec = self.summarizer, self.summary_spec
        key = self._hash(user, prompt)
        if not refresh:
            hit = await asyncio.to_thread(self._hit, summarizer, user, key, replace_user_edit)
            if hit is not None:
                return hit
        text = await summarizer.agenerate(spec.messages(user, prompt), spec.options())
        summary = self._make_summary(summarizer, user, key, text)
        return await asyncio.to_thread(self._store_new, user, summary)

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
            return await _gather_bounded(jobs, limit, advance)

    # -- the summary's life: versions, edits, new signals, usefulness ----------------------
    def get_summary(self, user_id: str) -> Summary | None:
        """The current summary of ``user_id`` (its newest version), or None if none is stored."""
        return self.store.latest(user_id)

    def history(self, user_id: str) -> list[Summary]:
        """Every stored version of ``user_id``'s summary, oldest first (the last is current)."""
        return self.store.history(user_id)

    def edit_summary(self, user_id: str, text: str) -> Summary:
        """Store ``text``, written by the user (or for them), as their current summary.

        It becomes a new version with ``source="user"``; later ``summarize`` calls, cache hits
        and :meth:`add_signals` refreshes return it unchanged unless they are called with
        ``replace_user_edit=True``."""
        if not isinstance(user_id, str) or not user_id.strip():
            raise InputError("user_id must be a non-empty string")
        if not isinstance(text, str) or not text.strip():
            raise InputError(
                f"the edited summary of {user_id!r} is empty; write the preferences as text "
                f"(use forget({user_id!r}) to remove the user's summaries instead)"
            )
        text = text.strip()
        current = self.store.latest(user_id)
        return self.store.put(
            Summary(
                user_id=user_id,
                text=text,
                summarizer="user",
                source="user",
                signals_hash=current.signals_hash if current is not None else "",
                n_tokens=self.summarizer.count_tokens(text),
            )
        )

    def stored_signals(self, user_id: str) -> UserSignals | None:
        """The signals the store keeps for ``user_id`` (merged by :meth:`add_signals`), if any."""
        record = self.store.signals(user_id)
        if not record:
            return None
        return UserSignals(user_id=user_id, **record["signals"])

    def add_signals(
        self,
        user_id: str,
        signals: SignalsLike | Signals,
        *,
        examples: Sequence[PreferencePair | dict] = (),
        with_current: bool = False,
        replace_user_edit: bool = False,
    ) -> Summary:
        """Merge new ``signals`` into what the store keeps for ``user_id`` and re-summarize.

        Pairs and history items are appended (an item seen again moves to the end) and at most
        ``max_stored_signals`` of each are kept, the oldest evicted first; a new persona or
        demographics replaces the old one; traits update key by key. Labeled ``examples`` (and
        a :class:`UserRow`'s ``examples``) are kept the same way, for :meth:`score`.

        By default a fresh summary is written from the merged signals; ``with_current=True``
        also gives the summarizer the current summary as extra context (an incremental refresh).
        Measured on synthetic users with the embedded model, the fresh summary scored better
        (docs/lifecycle.md, ``benchmarks/refresh.py``). A current user edit is kept (and
        returned) unless ``replace_user_edit=True``; the signals are stored either way."""
        if not isinstance(user_id, str) or not user_id.strip():
            raise InputError("user_id must be a non-empty string")
        examples = list(examples)
        if isinstance(signals, UserRow):
            examples = [*signals.examples, *examples]
            signals = signals.signals
        if isinstance(signals, UserSignals) and signals.user_id != user_id:
            raise InputError(
                f"the signals are for user {signals.user_id!r}, not {user_id!r}; pass the same id"
            )
        if isinstance(signals, dict):
            signals = {k: v for k, v in signals.items() if k != "user_id"}
            try:
                signals = Signals.model_validate(signals)
            except ValidationError as e:
                details = "; ".join(describe_validation_error(e))
                raise InputError(f"invalid signals for user {user_id!r}: {details}") from None
        if not isinstance(signals, Signals):
            raise InputError(
                f"expected Signals, UserSignals, a UserRow or a dict of signals, got "
                f"{type(signals).__name__}"
            )
        try:
            examples = [PreferencePair.model_validate(e) for e in examples]
        except ValidationError as e:
            details = "; ".join(describe_validation_error(e))
            raise InputError(f"invalid examples for user {user_id!r}: {details}") from None
        fields = signals.model_dump(include=set(Signals.model_fields))
        before = self.store.signals(user_id)
        merged = self._record_signals(
            UserSignals(user_id=user_id, **fields), replace=False, examples=examples
        )
        user = UserSignals(user_id=user_id, **merged["signals"])
        if (kept := self._kept_edit(user_id, replace_user_edit)) is not None:
            return kept
        current = self.store.latest(user_id)
        if current is not None and before is not None and before["signals"] == merged["signals"]:
            return current  # nothing new to summarize
        context = current.text if with_current and current is not None else None
        summarizer, spec = self.summarizer, self.summary_spec
        key = self._hash(user, current_summary=context)
        hit = self.store.get(user_id, summarizer.name, key)
        if hit is not None:
            if current is not None and hit.version == current.version:
                return hit
            return self.store.put(hit.model_copy(update={"score": None}))
        text = summarizer.generate(spec.messages(user, current_summary=context), spec.options())
        return self.store.put(self._make_summary(summarizer, user, key, text))

    def score(
        self,
        user_id: str,
        examples: Sequence[PreferencePair | dict] | None = None,
        *,
        scorer: str | Backend | None = None,
        version: int | None = None,
    ) -> SummaryScore:
        """How useful the user's current summary (or ``version``) is, measured on labeled pairs.

        The scoring model reads each pair's prompt with the summary as system context, and
        without it; ``reward_accuracy`` is the share of pairs on which the summary raises the
        margin ``log π(chosen) − log π(rejected)`` over the no-summary margin (ties count half;
        0.5 means no better than no summary), ``margin_gain`` the mean raise in nats. This is
        the evaluation's reward accuracy (:mod:`popi_sdk.eval.metrics`) with the same scoring
        function (:mod:`popi_sdk.scoring`).

        ``examples`` default to the labeled pairs stored for the user (:meth:`add_signals`);
        ``scorer`` is a local model (``hf`` or a checkpoint folder; default: the generator when
        it is local, else the embedded model). The score is stored with the version."""
        from popi_sdk.eval import metrics as M
        from popi_sdk.scoring import ReferenceCache, SequenceScorer, summary_logprobs

        versions = self.store.history(user_id)
        if not versions:
            raise NotFoundError(
                f"no summary stored for user {user_id!r}: call summarize(signals) first"
            )
        if version is None:
            summary = versions[-1]
        else:
            found = [s for s in versions if s.version == version]
            if not found:
                raise NotFoundError(
                    f"user {user_id!r} has no summary version {version}; versions are "
                    f"1..{versions[-1].version}"
                )
            summary = found[0]
        if examples is None:
            record = self.store.signals(user_id) or {}
            examples = record.get("examples") or []
            if not examples:
                raise InputError(
                    f"no labeled pairs stored for user {user_id!r} to score the summary on: pass "
                    "examples=[...] (pairs the summary was not written from), or store them with "
                    "add_signals(user_id, signals, examples=[...])"
                )
        try:
            pairs = [PreferencePair.model_validate(e) for e in examples]
        except ValidationError as e:
            details = "; ".join(describe_validation_error(e))
            raise InputError(f"invalid examples for user {user_id!r}: {details}") from None
        if not pairs:
            raise InputError("examples is empty; give at least one labeled preference pair")
        model = self._scoring_backend(scorer)
        seq = SequenceScorer(model.model, model.tokenizer)
        ((chosen, rejected),) = summary_logprobs(seq, [pairs], [summary.text])
        base_chosen, base_rejected = ReferenceCache(seq, model.name).pairs(pairs)
        with_summary = M.margins(chosen.tolist(), rejected.tolist())
        without = M.margins(base_chosen.tolist(), base_rejected.tolist())
        result = SummaryScore(
            reward_accuracy=M.reward_accuracy(with_summary, without),
            margin_gain=M.mean([m - b for m, b in zip(with_summary, without)]),
            n_examples=len(pairs),
            scorer=model.name,
        )
        self.store.set_score(user_id, summary.version, result)
        return result

    def _scoring_backend(self, scorer: str | Backend | None) -> Backend:
        if scorer is not None:
            model = scorer if isinstance(scorer, Backend) else get_backend(scorer)
        else:
            model = self.generator
            if not (hasattr(model, "model") and hasattr(model, "tokenizer")):
                model = get_backend(DEFAULT_BACKEND)
        if not (hasattr(model, "model") and hasattr(model, "tokenizer")):
            raise InputError(
                f"scorer {model.name!r} cannot score: scoring needs a local model's log-probs "
                "(use 'hf' or a checkpoint folder)"
            )
        return model

    def forget(self, user_id: str) -> int:
        """Remove every stored trace of ``user_id`` (every version of their summary and their
        stored signals); returns how many summary versions were deleted. See the store for what
        is guaranteed on disk (``docs/lifecycle.md``)."""
        return self.store.delete_user(user_id)

    # -- generation ------------------------------------------------------------------------
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
            texts = await _gather_bounded(jobs, limit, advance)
        texts = [_finish(t, model, options, whole_sentences) for t in texts]
        return [
            Generation(text=t, backend=model.name, prompt=p, summary=s)
            for t, p, (_, s) in zip(texts, prompts, prepared)
        ]
