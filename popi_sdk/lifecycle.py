"""A summary's life: versions, edits, new signals, usefulness, and ``forget``.

These are :class:`~popi_sdk.Personalizer` methods. Every write of a user's summary or signals
goes through :meth:`SummaryLifecycle._writing`, which holds a store *lease* for the whole
operation (the summarizer call included); ``forget`` deletes the user's leases with their rows,
so a write that was in flight when the user was forgotten stores nothing and raises
:class:`~popi_sdk.errors.UserForgottenError`. That is the one place ``forget`` wins over writes
in flight, in every store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydantic import ValidationError

from popi_sdk.backends import Backend, get_backend
from popi_sdk.errors import InputError, NotFoundError, PopiError, describe_validation_error
from popi_sdk.settings import DEFAULT_BACKEND, max_summary_chars
from popi_sdk.user_ids import check_user_id
from popi_sdk.signals import PreferencePair, Signals, Summary, SummaryScore, UserRow, UserSignals

SignalsLike = UserSignals | UserRow | dict

log = logging.getLogger(__name__)


def check_storable(value: object, what: str) -> None:
    """Refuse a NUL character before anything is stored: PostgreSQL cannot hold one in text or
    JSON, and a store must not fail half-way through a write because of the input."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InputError(f"{what} contains a NUL character (\\x00), which cannot be stored; "
                             "remove it and send the text again")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, what)
            check_storable(item, what)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_storable(item, what)


class SummaryLifecycle:
    """The lifecycle half of :class:`~popi_sdk.Personalizer` (it supplies ``store``,
    ``summarizer``, ``summary_spec``, ``max_stored_signals``, ``_hash`` and ``_make_summary``)."""

    # -- writing under a lease: forget wins ------------------------------------------------
    @contextmanager
    def _writing(self, user_id: str) -> Iterator[str]:
        """A lease on ``user_id`` for one write operation; every store write inside passes it."""
        lease = self.store.begin_write(user_id)
        try:
            yield lease
        finally:
            try:
                self.store.end_write(lease)
            except PopiError as e:  # never hide the operation's own outcome behind this
                log.warning("could not release a write lease of user %r: %s", user_id, e)

    def _release(self, user_id: str, lease: str) -> None:
        """End a lease taken without :meth:`_writing` (the async paths)."""
        try:
            self.store.end_write(lease)
        except PopiError as e:
            log.warning("could not release a write lease of user %r: %s", user_id, e)

    def _record_signals(
        self, user: UserSignals, lease: str, *, replace: bool, examples=()
    ) -> dict:
        record = {
            "signals": user.signals().model_dump(mode="json"),
            "examples": [PreferencePair.model_validate(e).model_dump(mode="json") for e in examples],
        }
        return self.store.merge_signals(
            user.user_id, record, limit=self.max_stored_signals, replace=replace, lease=lease
        )

    def _kept_edit(self, user_id: str, replace_user_edit: bool) -> Summary | None:
        """The user's own edit when it is current and must not be replaced."""
        if replace_user_edit:
            return None
        current = self.store.latest(user_id)
        return current if current is not None and current.source == "user" else None

    def _hit(
        self, summarizer: Backend, user: UserSignals, key: str, replace_user_edit: bool, lease: str
    ) -> Summary | None:
        hit = self.store.get(user.user_id, summarizer.name, key)
        if hit is not None and replace_user_edit:
            current = self.store.latest(user.user_id)
            if current is not None and current.source == "user":
                # The caller asked to replace the user's edit: the cached model summary becomes
                # current again, as a new version.
                hit = self.store.put(hit.model_copy(update={"score": None}), lease=lease)
        return hit

    def _store_new(self, user: UserSignals, summary: Summary, lease: str) -> Summary:
        """Store a newly written summary as the user's next version, with its signals."""
        stored = self.store.put(summary, lease=lease)
        self._record_signals(user, lease, replace=True)
        return stored

    # -- the summary's life: versions, edits, new signals, usefulness ----------------------
    def get_summary(self, user_id: str) -> Summary | None:
        """The current summary of ``user_id`` (its newest version), or None if none is stored."""
        return self.store.latest(check_user_id(user_id))

    def history(self, user_id: str) -> list[Summary]:
        """Every stored version of ``user_id``'s summary, oldest first (the last is current)."""
        return self.store.history(check_user_id(user_id))

    def edit_summary(self, user_id: str, text: str) -> Summary:
        """Store ``text``, written by the user (or for them), as their current summary.

        It becomes a new version with ``source="user"``; later ``summarize`` calls, cache hits
        and :meth:`add_signals` refreshes return it unchanged unless they are called with
        ``replace_user_edit=True``."""
        user_id = check_user_id(user_id)
        if not isinstance(text, str) or not text.strip():
            raise InputError(
                f"the edited summary of {user_id!r} is empty; write the preferences as text "
                f"(use forget({user_id!r}) to remove the user's summaries instead)"
            )
        text = text.strip()
        check_storable(text, f"the edited summary of {user_id!r}")
        if len(text) > (limit := max_summary_chars()):
            raise InputError(
                f"the edited summary of {user_id!r} is {len(text)} characters; a summary may have "
                f"at most {limit} (it is sent with every personalized request): shorten it, or "
                "raise POPI_MAX_SUMMARY_CHARS"
            )
        with self._writing(user_id) as lease:
            current = self.store.latest(user_id)
            return self.store.put(
                Summary(
                    user_id=user_id,
                    text=text,
                    summarizer="user",
                    source="user",
                    signals_hash=current.signals_hash if current is not None else "",
                    n_tokens=self.summarizer.count_tokens(text),
                ),
                lease=lease,
            )

    def stored_signals(self, user_id: str) -> UserSignals | None:
        """The signals the store keeps for ``user_id`` (merged by :meth:`add_signals`), if any."""
        user_id = check_user_id(user_id)
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
        user_id = check_user_id(user_id)
        examples = list(examples)
        if isinstance(signals, UserRow):
            examples = [*signals.examples, *examples]
            signals = signals.signals
        if isinstance(signals, UserSignals) and check_user_id(signals.user_id) != user_id:
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
        check_storable(signals.model_dump(mode="json"), f"the signals of {user_id!r}")
        check_storable([e.model_dump(mode="json") for e in examples], f"the examples of {user_id!r}")
        with self._writing(user_id) as lease:
            return self._merge_and_refresh(
                UserSignals(user_id=user_id, **fields), examples, lease,
                with_current=with_current, replace_user_edit=replace_user_edit,
            )

    def _merge_and_refresh(
        self, new: UserSignals, examples: list, lease: str, *, with_current: bool,
        replace_user_edit: bool,
    ) -> Summary:
        user_id = new.user_id
        before = self.store.signals(user_id)
        merged = self._record_signals(new, lease, replace=False, examples=examples)
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
            return self.store.put(hit.model_copy(update={"score": None}), lease=lease)
        text = summarizer.generate(spec.messages(user, current_summary=context), spec.options())
        return self.store.put(self._make_summary(summarizer, user, key, text), lease=lease)

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

        user_id = check_user_id(user_id)
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
        is guaranteed on disk (``docs/lifecycle.md``).

        ``forget`` wins over writes in flight: an ``add_signals``, ``summarize`` or
        ``edit_summary`` for this user that began before it stores nothing afterwards and raises
        :class:`~popi_sdk.errors.UserForgottenError`."""
        return self.store.delete_user(check_user_id(user_id))
