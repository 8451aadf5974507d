"""Summary stores: a small protocol, an in-memory store, SQLite (the default) and PostgreSQL.

Every store keeps, per user, the numbered versions of their summary (oldest first; the highest
number is the current one) and the user's signals, so new signals can be merged in later. Users
never see each other's rows: every read and write is keyed by the user id.

=========================  =================================================================
``open_store(...)``        store
=========================  =================================================================
``None``                   ``$POPI_STORE``, else ``$POPI_HOME/summaries.sqlite``
a path                     :class:`SQLiteStore` on that file
``"postgresql://..."``     :class:`PostgresStore` (``pip install 'popi-sdk[postgres]'``)
``":memory:"``             :class:`MemoryStore`, gone when the process ends
=========================  =================================================================
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from popi_sdk.errors import InputError, UserForgottenError
from popi_sdk.signals import Summary, SummaryScore

#: Default of how many pairs, history items and labeled examples a store keeps per user (each
#: list separately); beyond it the oldest are evicted first.
DEFAULT_MAX_STORED_SIGNALS = 64

_LISTS = ("pairs", "history")


@runtime_checkable
class SummaryStore(Protocol):
    """Where summaries live. A user's summaries are versions 1, 2, ...; the highest is current.

    ``get`` is the cache lookup: the newest *model-written* version with that summarizer and
    signals hash. ``put`` appends a new version and returns it with its number. A user's signals
    are kept as one record (``{"signals": {...}, "examples": [...]}``), changed only through
    ``merge_signals``, which is atomic per user.

    ``forget`` wins over writes in flight: a write that takes time (summarizing) first takes a
    *lease* with ``begin_write(user_id)`` and passes it to every ``put`` and ``merge_signals``;
    ``delete_user`` deletes the user's leases with their rows, in the same transaction, and a
    write whose lease is gone raises :class:`~popi_sdk.errors.UserForgottenError` and stores
    nothing. ``end_write`` drops the lease when the write is done (whatever happened)."""

    def get(self, user_id: str, summarizer: str, signals_hash: str) -> Summary | None: ...

    def put(self, summary: Summary, *, lease: str | None = None) -> Summary: ...

    def begin_write(self, user_id: str) -> str: ...

    def end_write(self, lease: str) -> None: ...

    def latest(self, user_id: str) -> Summary | None: ...

    def history(self, user_id: str) -> list[Summary]: ...

    def set_score(self, user_id: str, version: int, score: SummaryScore) -> None: ...

    def signals(self, user_id: str) -> dict | None: ...

    def merge_signals(
        self, user_id: str, record: dict, *, limit: int, replace: bool = False,
        lease: str | None = None,
    ) -> dict: ...

    def delete_user(self, user_id: str) -> int: ...

    def user_ids(self) -> list[str]: ...


def new_lease() -> str:
    """A fresh lease token: random, so a lease never outlives the write that took it."""
    import secrets

    return secrets.token_hex(16)


def _key(item: dict) -> str:
    import json

    return json.dumps(item, sort_keys=True, ensure_ascii=False)


def _merge_list(old: list[dict], new: list[dict], limit: int) -> list[dict]:
    """``old`` then ``new``; an item seen again moves to the newest position; the oldest go first
    when more than ``limit`` remain."""
    merged: dict[str, dict] = {}
    for item in [*old, *new]:
        k = _key(item)
        merged.pop(k, None)
        merged[k] = item
    items = list(merged.values())
    return items[-limit:] if limit > 0 else []


def merge_records(old: dict | None, new: dict, *, limit: int, replace: bool = False) -> dict:
    """Merge a new signals record into a stored one (every store uses this).

    Lists (pairs, history, examples) are appended, deduplicated and cut to the newest ``limit``;
    ``persona`` and ``demographics`` take the newer value when one is given; ``traits`` are
    updated key by key. ``replace=True`` makes ``new``'s signals the user's signals (a fresh
    ``summarize`` of the full signals) while the labeled examples still merge."""
    old = old or {}
    old_signals = {} if replace else dict(old.get("signals") or {})
    new_signals = dict(new.get("signals") or {})
    signals: dict[str, Any] = {}
    for name in _LISTS:
        signals[name] = _merge_list(old_signals.get(name) or [], new_signals.get(name) or [], limit)
    for name in ("persona", "demographics"):
        value = new_signals.get(name)
        signals[name] = value if value is not None else old_signals.get(name)
    signals["traits"] = {**(old_signals.get("traits") or {}), **(new_signals.get("traits") or {})}
    examples = _merge_list(old.get("examples") or [], new.get("examples") or [], limit)
    return {"signals": signals, "examples": examples}


class MemoryStore:
    """A store that lives only as long as the process (handy in notebooks and tests). Safe to use
    from several threads at once (the SDK's async methods reach it from worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._versions: dict[str, list[Summary]] = {}
        self._signals: dict[str, dict] = {}
        self._leases: dict[str, str] = {}  # lease -> user id

    def get(self, user_id: str, summarizer: str, signals_hash: str) -> Summary | None:
        with self._lock:
            for s in reversed(self._versions.get(user_id, [])):
                if s.source == "model" and s.summarizer == summarizer and s.signals_hash == signals_hash:
                    return s.model_copy(deep=True)
        return None

    def begin_write(self, user_id: str) -> str:
        with self._lock:
            lease = new_lease()
            self._leases[lease] = user_id
            return lease

    def end_write(self, lease: str) -> None:
        with self._lock:
            self._leases.pop(lease, None)

    def _check_lease(self, user_id: str, lease: str | None) -> None:
        if lease is not None and self._leases.get(lease) != user_id:
            raise UserForgottenError(user_id)

    def put(self, summary: Summary, *, lease: str | None = None) -> Summary:
        with self._lock:
            self._check_lease(summary.user_id, lease)
            versions = self._versions.setdefault(summary.user_id, [])
            stored = summary.model_copy(update={"version": len(versions) + 1}, deep=True)
            versions.append(stored)
            return stored.model_copy(deep=True)

    def latest(self, user_id: str) -> Summary | None:
        with self._lock:
            versions = self._versions.get(user_id)
            return versions[-1].model_copy(deep=True) if versions else None

    def history(self, user_id: str) -> list[Summary]:
        with self._lock:
            return [s.model_copy(deep=True) for s in self._versions.get(user_id, [])]

    def set_score(self, user_id: str, version: int, score: SummaryScore) -> None:
        with self._lock:
            for i, s in enumerate(self._versions.get(user_id, [])):
                if s.version == version:
                    self._versions[user_id][i] = s.model_copy(update={"score": score})

    def signals(self, user_id: str) -> dict | None:
        with self._lock:
            record = self._signals.get(user_id)
            return _copy(record) if record is not None else None

    def merge_signals(
        self, user_id: str, record: dict, *, limit: int, replace: bool = False,
        lease: str | None = None,
    ) -> dict:
        with self._lock:
            self._check_lease(user_id, lease)
            merged = merge_records(self._signals.get(user_id), record, limit=limit, replace=replace)
            self._signals[user_id] = merged
            return _copy(merged)

    def delete_user(self, user_id: str) -> int:
        with self._lock:
            self._signals.pop(user_id, None)
            for lease in [k for k, u in self._leases.items() if u == user_id]:
                del self._leases[lease]
            return len(self._versions.pop(user_id, []))

    def user_ids(self) -> list[str]:
        with self._lock:
            return sorted(set(self._versions) | set(self._signals))


def _copy(record: dict) -> dict:
    import copy

    return copy.deepcopy(record)


def is_postgres_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def open_store(store: SummaryStore | str | os.PathLike | None = None) -> SummaryStore:
    """A store object from a store, a path to a SQLite file, a ``postgresql://`` URL,
    ``":memory:"``, or None (``$POPI_STORE``, else the default SQLite file)."""
    if store is None or isinstance(store, (str, Path, os.PathLike)):
        raw = store if store is not None else os.environ.get("POPI_STORE") or None
        if raw is not None and str(raw) == ":memory:":
            return MemoryStore()
        if is_postgres_url(raw):
            return PostgresStore(str(raw))
        return SQLiteStore(raw)
    if not isinstance(store, SummaryStore):
        raise InputError(
            "store must implement popi_sdk.store.SummaryStore (get, put, begin_write, "
            "end_write, latest, history, set_score, signals, merge_signals, delete_user, "
            "user_ids), a SQLite path, a "
            f"postgresql:// URL, ':memory:' or None; got {type(store).__name__}"
        )
    return store


from popi_sdk.store.postgres import PostgresStore  # noqa: E402
from popi_sdk.store.sqlite import SQLiteStore  # noqa: E402

__all__ = [
    "DEFAULT_MAX_STORED_SIGNALS",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "SummaryStore",
    "merge_records",
    "open_store",
]
