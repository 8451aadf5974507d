"""A store on a PostgreSQL server, so several app servers share one set of summaries.

``PostgresStore("postgresql://user:pass@host:5432/db")`` (or ``POPI_STORE=postgresql://...``)
needs psycopg 3: ``pip install 'popi-sdk[postgres]'``. The tables (``popi_summary_versions``,
``popi_user_signals``) are created on first use. Writes of one user are serialized with a
transaction-scoped advisory lock on the user id, so concurrent writers on any number of hosts
never lose or duplicate a version number, and users never wait for each other (beyond a rare
hash collision).

What ``forget`` guarantees here: the user's rows are deleted in one committed transaction (no
query can return them afterwards), then the store runs ``VACUUM`` on its two tables, which
removes the dead row versions from the tables and indexes once no older transaction can still
see them. PostgreSQL does not overwrite the freed bytes: they stay in the table's free space
until reused, and in the server's write-ahead log until its segments are recycled, and in any
replica, WAL archive or backup. Erasing them from disk is the database operator's job
(``VACUUM FULL popi_summary_versions, popi_user_signals`` rewrites the tables; then
``CHECKPOINT``; backups and archives expire on their own schedule).
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import ExitStack, contextmanager
from typing import Any

from popi_sdk.errors import MissingDependencyError, StoreError, UserForgottenError
from popi_sdk.redact import redact_url as _redact_url
from popi_sdk.signals import Summary, SummaryScore

log = logging.getLogger(__name__)

_SCHEMA_LOCK = 0x706F7069  # "popi": one process creates the tables, the others wait
_TABLES = [
    """CREATE TABLE IF NOT EXISTS popi_summary_versions (
        user_id      TEXT NOT NULL,
        version      INTEGER NOT NULL,
        source       TEXT NOT NULL,
        summarizer   TEXT NOT NULL,
        signals_hash TEXT NOT NULL,
        text         TEXT NOT NULL,
        n_tokens     INTEGER NOT NULL,
        created_at   TIMESTAMPTZ NOT NULL,
        score        JSONB,
        PRIMARY KEY (user_id, version)
    )""",
    "CREATE INDEX IF NOT EXISTS popi_summary_versions_by_key "
    "ON popi_summary_versions (user_id, summarizer, signals_hash)",
    """CREATE TABLE IF NOT EXISTS popi_user_signals (
        user_id    TEXT PRIMARY KEY,
        record     JSONB NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    # One row per write in flight; forget deletes a user's rows here with the rest.
    """CREATE TABLE IF NOT EXISTS popi_write_leases (
        lease   TEXT PRIMARY KEY,
        user_id TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS popi_write_leases_by_user ON popi_write_leases (user_id)",
]
_COLUMNS = "user_id, version, source, summarizer, signals_hash, text, n_tokens, created_at, score"


# Every URL shown goes through the one redactor: it masks the userinfo and the query string's
# "password=" (libpq takes a password there too) and other secret-looking parameters.
redact_url = _redact_url


def url_secrets(url: str) -> list[str]:
    """The passwords a PostgreSQL URL holds, for a redactor."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    found = [unquote(parts.password)] if parts.password else []
    for name, values in parse_qs(parts.query).items():
        if name.lower() in ("password", "sslpassword"):
            found.extend(v for v in values if v)
    return found


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise MissingDependencyError(
            "psycopg (needed for a postgresql:// summary store)", "pip install 'popi-sdk[postgres]'"
        ) from None
    return psycopg


class PostgresStore:
    """The :class:`~popi_sdk.store.SummaryStore` protocol on PostgreSQL (psycopg 3).

    Args:
        url: ``postgresql://user:password@host:port/database``.
        timeout: seconds to wait for the server to accept a connection and for a statement
            (a lock) before giving up.
        vacuum_on_forget: run ``VACUUM`` on the store's tables after each ``forget`` (see the
            module documentation for what that does and does not erase).
    """

    def __init__(self, url: str, *, timeout: float = 30.0, vacuum_on_forget: bool = True):
        self.url = url
        self.timeout = timeout
        self.vacuum_on_forget = vacuum_on_forget
        self._local = threading.local()
        psycopg = _psycopg()
        try:
            conn = self._connect()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for sql in _TABLES:
                    conn.execute(sql)
        except psycopg.Error as e:
            raise StoreError(
                f"cannot open the summary store {redact_url(url)}: {str(e).strip()}. Check that "
                "the server is running and the URL (POPI_STORE) names a database this user may "
                "create tables in."
            ) from e

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self.url)!r})"

    # -- connections ----------------------------------------------------------------------
    def _connect(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or getattr(self._local, "pid", None) != os.getpid():
            psycopg = _psycopg()
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self.timeout)),
                options=f"-c statement_timeout={int(self.timeout * 1000)}",
            )
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _begin(self):
        """This thread's connection with a transaction begun. A kept connection the server has
        dropped since (a restart, an idle timeout, a failover) fails on ``BEGIN``, before any
        statement ran: it is replaced and the transaction begun once more on a new one."""
        psycopg = _psycopg()
        for attempt in (0, 1):
            conn = self._connect()
            stack = ExitStack()
            try:
                stack.enter_context(conn.transaction())
                return conn, stack
            except psycopg.OperationalError:
                if attempt or not (conn.broken or conn.closed):
                    raise
                log.info("the summary store's connection was closed by the server; reconnecting")
                conn.close()
                self._local.conn = None
        raise AssertionError("unreachable")

    @contextmanager
    def _transaction(self, user_id: str | None = None):
        """A transaction; with ``user_id``, holding that user's advisory lock until it ends."""
        psycopg = _psycopg()
        try:
            conn, begun = self._begin()
            with begun:
                if user_id is not None:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user_id,))
                yield conn
        except psycopg.Error as e:
            raise StoreError(f"summary store {redact_url(self.url)}: {str(e).strip()}") from e

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._transaction() as conn:
            return conn.execute(sql, args).fetchall()

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
            created_at=created_at,
            score=SummaryScore.model_validate(score) if score else None,
        )

    @staticmethod
    def _json(value: Any):
        from psycopg.types.json import Jsonb

        return Jsonb(value)

    # -- the protocol ---------------------------------------------------------------------
    def get(self, user_id: str, summarizer: str, signals_hash: str) -> Summary | None:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM popi_summary_versions WHERE user_id=%s AND summarizer=%s "
            "AND signals_hash=%s AND source='model' ORDER BY version DESC LIMIT 1",
            (user_id, summarizer, signals_hash),
        )
        return self._row(rows[0]) if rows else None

    def begin_write(self, user_id: str) -> str:
        from popi_sdk.store import new_lease

        lease = new_lease()
        with self._transaction(user_id) as conn:
            conn.execute(
                "INSERT INTO popi_write_leases (lease, user_id) VALUES (%s, %s)", (lease, user_id)
            )
        return lease

    def end_write(self, lease: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM popi_write_leases WHERE lease=%s", (lease,))

    @staticmethod
    def _check_lease(conn, user_id: str, lease: str | None) -> None:
        # Called under the user's advisory lock, which delete_user holds too: a lease seen here
        # cannot be deleted before this transaction commits.
        if lease is None:
            return
        row = conn.execute(
            "SELECT 1 FROM popi_write_leases WHERE lease=%s AND user_id=%s", (lease, user_id)
        ).fetchone()
        if row is None:
            raise UserForgottenError(user_id)

    def put(self, summary: Summary, *, lease: str | None = None) -> Summary:
        with self._transaction(summary.user_id) as conn:
            self._check_lease(conn, summary.user_id, lease)
            version = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM popi_summary_versions WHERE user_id=%s",
                (summary.user_id,),
            ).fetchone()[0]
            stored = summary.model_copy(update={"version": version})
            conn.execute(
                f"INSERT INTO popi_summary_versions ({_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    stored.user_id,
                    version,
                    stored.source,
                    stored.summarizer,
                    stored.signals_hash,
                    stored.text,
                    stored.n_tokens,
                    stored.created_at,
                    self._json(stored.score.model_dump(mode="json")) if stored.score else None,
                ),
            )
        return stored

    def latest(self, user_id: str) -> Summary | None:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM popi_summary_versions WHERE user_id=%s "
            "ORDER BY version DESC LIMIT 1",
            (user_id,),
        )
        return self._row(rows[0]) if rows else None

    def history(self, user_id: str) -> list[Summary]:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM popi_summary_versions WHERE user_id=%s ORDER BY version",
            (user_id,),
        )
        return [self._row(r) for r in rows]

    def set_score(self, user_id: str, version: int, score: SummaryScore) -> None:
        with self._transaction(user_id) as conn:
            conn.execute(
                "UPDATE popi_summary_versions SET score=%s WHERE user_id=%s AND version=%s",
                (self._json(score.model_dump(mode="json")), user_id, version),
            )

    def signals(self, user_id: str) -> dict | None:
        rows = self._rows("SELECT record FROM popi_user_signals WHERE user_id=%s", (user_id,))
        return rows[0][0] if rows else None

    def merge_signals(
        self, user_id: str, record: dict, *, limit: int, replace: bool = False,
        lease: str | None = None,
    ) -> dict:
        from popi_sdk.store import merge_records

        with self._transaction(user_id) as conn:
            self._check_lease(conn, user_id, lease)
            row = conn.execute(
                "SELECT record FROM popi_user_signals WHERE user_id=%s", (user_id,)
            ).fetchone()
            merged = merge_records(row[0] if row else None, record, limit=limit, replace=replace)
            conn.execute(
                "INSERT INTO popi_user_signals (user_id, record, updated_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (user_id) DO UPDATE SET record=EXCLUDED.record, updated_at=now()",
                (user_id, self._json(merged)),
            )
        return merged

    def delete_user(self, user_id: str) -> int:
        """Delete every version and the signals of ``user_id`` in one transaction, then
        ``VACUUM`` the tables (see the module documentation for the exact guarantee)."""
        with self._transaction(user_id) as conn:
            n = conn.execute(
                "DELETE FROM popi_summary_versions WHERE user_id=%s", (user_id,)
            ).rowcount
            conn.execute("DELETE FROM popi_user_signals WHERE user_id=%s", (user_id,))
            conn.execute("DELETE FROM popi_write_leases WHERE user_id=%s", (user_id,))
        if self.vacuum_on_forget:
            self.vacuum()
        return int(n)

    def vacuum(self) -> None:
        """``VACUUM`` the store's tables: dead row versions (of forgotten users, replaced signals)
        are removed from the tables and indexes."""
        psycopg = _psycopg()
        try:
            conn = self._connect()
            conn.execute("VACUUM popi_summary_versions, popi_user_signals, popi_write_leases")
        except psycopg.errors.InsufficientPrivilege as e:
            log.warning(
                "the summary store's database user may not VACUUM its tables (%s); dead rows of "
                "forgotten users stay until autovacuum runs", str(e).strip()
            )
        except psycopg.Error as e:
            raise StoreError(f"summary store {redact_url(self.url)}: VACUUM failed: {str(e).strip()}") from e

    def user_ids(self) -> list[str]:
        return [
            r[0]
            for r in self._rows(
                "SELECT user_id FROM popi_summary_versions UNION "
                "SELECT user_id FROM popi_user_signals ORDER BY user_id"
            )
        ]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
