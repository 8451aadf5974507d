"""The default store: one SQLite file (``$POPI_STORE`` or ``$POPI_HOME/summaries.sqlite``).

The file is in WAL mode, so many processes can read while one writes and concurrent writers wait
instead of failing. It is created readable by its owner only (0600; SQLite gives the ``-wal`` and
``-shm`` files the same mode). ``secure_delete`` is on, so deleted rows are overwritten in the
database file, and ``forget`` checkpoints and truncates the write-ahead log, so no copy of a
forgotten user's text or id stays in any of the three files; when another connection keeps the
log from being truncated, ``forget`` raises :class:`~popi_sdk.errors.ForgetIncompleteError`
instead of reporting success, and calling it again finishes the job.

Schema versions (``PRAGMA user_version``): 0 is the first release's single ``summaries`` table
(one row per cache key); 1 keeps every version of a user's summary and the user's signals; 2 adds
the write leases through which ``forget`` wins over writes in flight. An older file is migrated in
place, in one transaction, the first time it is opened.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from popi_sdk.errors import ForgetIncompleteError, StoreError, UserForgottenError
from popi_sdk.settings import store_path
from popi_sdk.signals import Summary, SummaryScore

SCHEMA_VERSION = 2

_TABLES = [
    """CREATE TABLE IF NOT EXISTS summary_versions (
        user_id      TEXT NOT NULL,
        version      INTEGER NOT NULL,
        source       TEXT NOT NULL,
        summarizer   TEXT NOT NULL,
        signals_hash TEXT NOT NULL,
        text         TEXT NOT NULL,
        n_tokens     INTEGER NOT NULL,
        created_at   TEXT NOT NULL,
        score        TEXT,
        PRIMARY KEY (user_id, version)
    )""",
    "CREATE INDEX IF NOT EXISTS summary_versions_by_key "
    "ON summary_versions (user_id, summarizer, signals_hash)",
    """CREATE TABLE IF NOT EXISTS user_signals (
        user_id    TEXT PRIMARY KEY,
        record     TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    # One row per write in flight; forget deletes a user's rows here with the rest.
    """CREATE TABLE IF NOT EXISTS write_leases (
        lease   TEXT PRIMARY KEY,
        user_id TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS write_leases_by_user ON write_leases (user_id)",
]

_COLUMNS = "user_id, version, source, summarizer, signals_hash, text, n_tokens, created_at, score"


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (an existing file keeps its mode),
    and its folder with mode 0700 when the folder has to be created."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SQLiteStore:
    """The default store: one SQLite file, safe with several processes writing at once.

    Args:
        path: the file (default ``$POPI_STORE``, else ``$POPI_HOME/summaries.sqlite``).
        timeout: seconds a call waits for another writer (or, in ``forget``, for readers to let
            the write-ahead log be truncated) before giving up.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 30.0):
        self.path = store_path(path)
        self.timeout = timeout
        self._local = threading.local()
        try:
            create_private_file(self.path)
            self._migrate(self._connect())
        except (sqlite3.Error, OSError) as e:
            raise StoreError(
                f"cannot open the summary store {self.path}: {e}. Point POPI_STORE (or "
                "POPI_HOME) at a writable location."
            ) from e

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- connections and transactions ------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=ON")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    @contextmanager
    def _write(self):
        """A write transaction that takes the write lock up front (no upgrade deadlocks)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"summary store {self.path}: {e}") from e

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._connect().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"summary store {self.path}: {e}") from e

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see version 1
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for sql in _TABLES:
                    conn.execute(sql)
                old = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='summaries'"
                ).fetchone()
                if old:  # version 0: one row per cache key becomes one version each, by age
                    conn.execute(
                        f"INSERT INTO summary_versions ({_COLUMNS}) "
                        "SELECT user_id, ROW_NUMBER() OVER (PARTITION BY user_id "
                        "ORDER BY created_at, rowid), 'model', summarizer, signals_hash, text, "
                        "n_tokens, created_at, NULL FROM summaries"
                    )
                    conn.execute("DROP INDEX IF EXISTS summaries_by_user")
                    conn.execute("DROP TABLE summaries")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- rows ------------------------------------------------------------------------------
    @staticmethod
    def _row(row: tuple) -> Summary:
        user_id, version, source, summarizer, signals_hash, text, n_tokens, created_at, score = row
        return Summary(
            user_id=user_id,
            version=version,
            source=source,
            summarizer=summarizer,
            signals_hash=signals_hash,
            text=text,
            n_tokens=n_tokens,
            created_at=datetime.fromisoformat(created_at),
            score=SummaryScore.model_validate_json(score) if score else None,
        )

    def get(self, user_id: str, summarizer: str, signals_hash: str) -> Summary | None:
        rows = self._run(
            f"SELECT {_COLUMNS} FROM summary_versions WHERE user_id=? AND summarizer=? AND "
            "signals_hash=? AND source='model' ORDER BY version DESC LIMIT 1",
            (user_id, summarizer, signals_hash),
        )
        return self._row(rows[0]) if rows else None

    def begin_write(self, user_id: str) -> str:
        from popi_sdk.store import new_lease

        lease = new_lease()
        with self._write() as conn:
            conn.execute("INSERT INTO write_leases (lease, user_id) VALUES (?, ?)", (lease, user_id))
        return lease

    def end_write(self, lease: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM write_leases WHERE lease=?", (lease,))

    @staticmethod
    def _check_lease(conn: sqlite3.Connection, user_id: str, lease: str | None) -> None:
        if lease is None:
            return
        row = conn.execute(
            "SELECT 1 FROM write_leases WHERE lease=? AND user_id=?", (lease, user_id)
        ).fetchone()
        if row is None:
            raise UserForgottenError(user_id)

    def put(self, summary: Summary, *, lease: str | None = None) -> Summary:
        with self._write() as conn:
            self._check_lease(conn, summary.user_id, lease)
            version = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM summary_versions WHERE user_id=?",
                (summary.user_id,),
            ).fetchone()[0]
            stored = summary.model_copy(update={"version": version})
            conn.execute(
                f"INSERT INTO summary_versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.user_id,
                    version,
                    stored.source,
                    stored.summarizer,
                    stored.signals_hash,
                    stored.text,
                    stored.n_tokens,
                    stored.created_at.isoformat(),
                    stored.score.model_dump_json() if stored.score else None,
                ),
            )
        return stored

    def latest(self, user_id: str) -> Summary | None:
        rows = self._run(
            f"SELECT {_COLUMNS} FROM summary_versions WHERE user_id=? ORDER BY version DESC LIMIT 1",
            (user_id,),
        )
        return self._row(rows[0]) if rows else None

    def history(self, user_id: str) -> list[Summary]:
        rows = self._run(
            f"SELECT {_COLUMNS} FROM summary_versions WHERE user_id=? ORDER BY version", (user_id,)
        )
        return [self._row(r) for r in rows]

    def set_score(self, user_id: str, version: int, score: SummaryScore) -> None:
        self._run(
            "UPDATE summary_versions SET score=? WHERE user_id=? AND version=?",
            (score.model_dump_json(), user_id, version),
        )

    def signals(self, user_id: str) -> dict | None:
        rows = self._run("SELECT record FROM user_signals WHERE user_id=?", (user_id,))
        return json.loads(rows[0][0]) if rows else None

    def merge_signals(
        self, user_id: str, record: dict, *, limit: int, replace: bool = False,
        lease: str | None = None,
    ) -> dict:
        from popi_sdk.store import merge_records

        with self._write() as conn:
            self._check_lease(conn, user_id, lease)
            row = conn.execute("SELECT record FROM user_signals WHERE user_id=?", (user_id,)).fetchone()
            merged = merge_records(json.loads(row[0]) if row else None, record, limit=limit, replace=replace)
            conn.execute(
                "INSERT INTO user_signals (user_id, record, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET record=excluded.record, "
                "updated_at=excluded.updated_at",
                (user_id, json.dumps(merged, ensure_ascii=False), datetime.now().astimezone().isoformat()),
            )
        return merged

    def delete_user(self, user_id: str) -> int:
        """Delete every version of ``user_id``'s summary and their stored signals, then make sure no
        copy of them stays on disk: deleted rows are overwritten in the database file
        (``secure_delete``), and the write-ahead log, which still holds the pages as they were
        before the delete, is checkpointed and truncated to zero bytes. Returns the number of
        versions removed.

        Raises :class:`ForgetIncompleteError` when the log could not be truncated within the
        store's timeout (another connection kept a read transaction open); the rows are deleted
        by then, and calling ``delete_user`` again finishes the job."""
        with self._write() as conn:
            n = conn.execute(
                "SELECT COUNT(*) FROM summary_versions WHERE user_id=?", (user_id,)
            ).fetchone()[0]
            conn.execute("DELETE FROM summary_versions WHERE user_id=?", (user_id,))
            conn.execute("DELETE FROM user_signals WHERE user_id=?", (user_id,))
            conn.execute("DELETE FROM write_leases WHERE user_id=?", (user_id,))
        self._truncate_log(user_id, int(n))
        return int(n)

    def _truncate_log(self, user_id: str, deleted: int) -> None:
        # A TRUNCATE checkpoint waits (busy handler, up to the timeout) for the writer lock and
        # for every reader to reach the newest snapshot; only then is the log emptied. It reports
        # busy=1 when that did not happen, and the log may still hold the old pages.
        deadline = time.monotonic() + self.timeout
        while True:
            busy, _, _ = self._run("PRAGMA wal_checkpoint(TRUNCATE)")[0]
            if not busy:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise ForgetIncompleteError(
            f"the summaries of user {user_id!r} are deleted from {self.path}, but the deletion is "
            f"not yet complete on disk: its write-ahead log ({self.path.name}-wal) still holds "
            f"copies of them because another connection kept a read transaction open for over "
            f"{self.timeout:g} s. Call forget({user_id!r}) again (or run `popi forget {user_id}`) "
            "once that connection is done; it finishes the deletion.",
            user_id=user_id,
            deleted=deleted,
        )

    def user_ids(self) -> list[str]:
        return [
            r[0]
            for r in self._run(
                "SELECT user_id FROM summary_versions UNION SELECT user_id FROM user_signals "
                "ORDER BY user_id"
            )
        ]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
