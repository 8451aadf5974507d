"""Summary stores: a small protocol and its default SQLite implementation.

The SQLite store is one file (``$POPI_STORE`` or ``$POPI_HOME/summaries.sqlite``) in WAL mode,
so many processes can read while one writes and concurrent writers wait instead of failing.
``secure_delete`` is on, so ``forget`` overwrites a user's text instead of leaving it in free pages.
A shared server-backed store only has to implement :class:`SummaryStore`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from popi_sdk.errors import InputError, StoreError
from popi_sdk.settings import store_path
from popi_sdk.signals import Summary


@runtime_checkable
class SummaryStore(Protocol):
    """Where summaries live. Keys: (user id, summarizer name, signals hash)."""

    def get(self, user_id: str, summarizer: str, signals_hash: str) -> Summary | None: ...

    def put(self, summary: Summary) -> None: ...

    def latest(self, user_id: str) -> Summary | None: ...

    def delete_user(self, user_id: str) -> int: ...

    def user_ids(self) -> list[str]: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS summaries (
    user_id      TEXT NOT NULL,
    summarizer   TEXT NOT NULL,
    signals_hash TEXT NOT NULL,
    text         TEXT NOT NULL,
    n_tokens     INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (user_id, summarizer, signals_hash)
);
CREATE INDEX IF NOT EXISTS summaries_by_user ON summaries (user_id, created_at);
"""


class SQLiteStore:
    """The default store: one SQLite file, safe with several processes writing at once."""

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 30.0):
        self.path = store_path(path)
        self.timeout = timeout
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(
                f"cannot open the summary store {self.path}: {e}. Point POPI_STORE (or "
                "POPI_HOME) at a writable location."
            ) from e

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
        return conn

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            conn = self._connect()
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"summary store {self.path}: {e}") from e

    @staticmethod
    def _row(row: tuple) -> Summary:
        user_id, summarizer, signals_hash, text, n_tokens, created_at = row
        return Summary(
            user_id=user_id,
            summarizer=summarizer,
            signals_hash=signals_hash,
            text=text,
            n_tokens=n_tokens,
            created_at=datetime.fromisoformat(created_at),
        )

    def get(self, user_id: str, summarizer: str, signals_hash: str) -> Summary | None:
        rows = self._run(
            "SELECT user_id, summarizer, signals_hash, text, n_tokens, created_at FROM summaries "
            "WHERE user_id=? AND summarizer=? AND signals_hash=?",
            (user_id, summarizer, signals_hash),
        )
        return self._row(rows[0]) if rows else None

    def put(self, summary: Summary) -> None:
        self._run(
            "INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?, ?, ?)",
            (
                summary.user_id,
                summary.summarizer,
                summary.signals_hash,
                summary.text,
                summary.n_tokens,
                summary.created_at.isoformat(),
            ),
        )

    def latest(self, user_id: str) -> Summary | None:
        rows = self._run(
            "SELECT user_id, summarizer, signals_hash, text, n_tokens, created_at FROM summaries "
            "WHERE user_id=? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (user_id,),
        )
        return self._row(rows[0]) if rows else None

    def delete_user(self, user_id: str) -> int:
        """Delete every summary of ``user_id`` and checkpoint the WAL so no copy of the text stays
        behind in the write-ahead log. Returns the number of summaries removed."""
        n = self._run("SELECT COUNT(*) FROM summaries WHERE user_id=?", (user_id,))[0][0]
        self._run("DELETE FROM summaries WHERE user_id=?", (user_id,))
        self._run("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(n)

    def user_ids(self) -> list[str]:
        return [r[0] for r in self._run("SELECT DISTINCT user_id FROM summaries ORDER BY user_id")]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class MemoryStore:
    """A store that lives only as long as the process (handy in notebooks and tests)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], Summary] = {}

    def get(self, user_id: str, summarizer: str, signals_hash: str) -> Summary | None:
        return self._rows.get((user_id, summarizer, signals_hash))

    def put(self, summary: Summary) -> None:
        self._rows[(summary.user_id, summary.summarizer, summary.signals_hash)] = summary

    def latest(self, user_id: str) -> Summary | None:
        mine = [s for (u, _, _), s in self._rows.items() if u == user_id]
        return max(mine, key=lambda s: s.created_at) if mine else None

    def delete_user(self, user_id: str) -> int:
        keys = [k for k in self._rows if k[0] == user_id]
        for k in keys:
            del self._rows[k]
        return len(keys)

    def user_ids(self) -> list[str]:
        return sorted({k[0] for k in self._rows})


def open_store(store: SummaryStore | str | os.PathLike | None = None) -> SummaryStore:
    """A store object from a store, a path to a SQLite file, ``":memory:"``, or None (default)."""
    if store is None or isinstance(store, (str, Path, os.PathLike)):
        if str(store) == ":memory:":
            return MemoryStore()
        return SQLiteStore(store)
    if not isinstance(store, SummaryStore):
        raise InputError(
            f"store must implement popi_sdk.store.SummaryStore (get, put, latest, delete_user, "
            f"user_ids), a path, or None; got {type(store).__name__}"
        )
    return store
