"""What the stores leave on disk: forget, file modes, the SQLite schema migration."""

import multiprocessing as mp
import os
import sqlite3
import stat
import threading
import time

import pytest

from popi_sdk.errors import ForgetIncompleteError
from popi_sdk.signals import Summary
from popi_sdk.store import PostgresStore, SQLiteStore
from popi_sdk.store.sqlite import SCHEMA_VERSION


def _summary(user: str, text: str, i: int = 0) -> Summary:
    return Summary(user_id=user, text=text, summarizer="hf", signals_hash=f"h{i}", n_tokens=5)


def _store_bytes(path) -> bytes:
    """The database, -wal and -shm files, concatenated."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# -- forget on SQLite ----------------------------------------------------------------------------
def test_forget_leaves_no_trace_in_the_files(store_path):
    store = SQLiteStore(store_path)
    secret = "The user secretly adores pineapple pizza"
    store.put(_summary("alice-7f3a", secret))
    store.put(_summary("alice-7f3a", secret + " and anchovies", 1))
    store.merge_signals("alice-7f3a", {"signals": {"persona": "pineapple fan 7f3a"}}, limit=8)
    store.put(_summary("bob", "bob likes item 1"))
    assert store.delete_user("alice-7f3a") == 2
    blobs = _store_bytes(store_path)
    assert (store_path.parent / (store_path.name + "-wal")).exists()  # checked while still open
    for needle in (secret, "pineapple fan", "alice-7f3a"):
        assert needle.encode() not in blobs
    assert b"bob likes item 1" in blobs


def test_forget_with_a_reader_holding_the_log_says_so_and_a_retry_finishes(store_path):
    """Issue 13.1: a reader keeps a snapshot open past the store's timeout, so the write-ahead
    log cannot be truncated. forget used to report success with the text still in the -wal file;
    now it raises, and calling it again once the reader is done leaves no trace."""
    store = SQLiteStore(store_path, timeout=0.5)
    secret = "Alice confided that she is allergic to cats"
    store.put(_summary("alice", secret))
    store.put(_summary("bob", "bob likes item 1"))
    reader = sqlite3.connect(store_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM summary_versions").fetchone()  # holds the old snapshot
    with pytest.raises(ForgetIncompleteError, match=r"not yet complete on disk.*forget\('alice'\) again") as err:
        store.delete_user("alice")
    assert err.value.deleted == 1 and err.value.user_id == "alice"
    assert store.latest("alice") is None  # the rows are gone for every reader from now on
    assert secret.encode() in _store_bytes(store_path)  # ...but not yet from the disk
    reader.execute("COMMIT")
    assert store.delete_user("alice") == 0  # the retry finishes the deletion
    blobs = _store_bytes(store_path)
    assert secret.encode() not in blobs and b"alice" not in blobs
    assert b"bob likes item 1" in blobs
    reader.close()


def _forgetter(path: str, worker: int, n: int, incomplete, leaks) -> None:
    store = SQLiteStore(path, timeout=60)
    files = [path, path + "-wal", path + "-shm"]
    for j in range(n):
        gone = f"gone{worker}x{j:04d}z"
        store.put(_summary(gone, f"secret of {gone}: likes opera"))
        store.merge_signals(gone, {"signals": {"persona": f"persona of {gone}"}}, limit=8)
        store.put(_summary(f"keep{worker}x{j:04d}z", f"kept text {worker}x{j:04d}"))
        while True:
            try:
                store.delete_user(gone)
                break
            except ForgetIncompleteError:  # the documented way to finish: call it again
                with incomplete.get_lock():
                    incomplete.value += 1
        # Right after forget returns, while the other processes keep writing: nothing left.
        blob = b"".join(open(f, "rb").read() for f in files if os.path.exists(f))
        if gone.encode() in blob:
            with leaks.get_lock():
                leaks.value += 1


def _reader(path: str, stop) -> None:
    """Holds short read transactions, so checkpoints meet readers on old snapshots."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    while not stop.is_set():
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*), MAX(text) FROM summary_versions").fetchone()
        time.sleep(0.05)
        conn.execute("COMMIT")
        time.sleep(0.02)
    conn.close()


@pytest.mark.slow  # about 80 s on 2 busy cores
def test_a_thousand_forgets_under_six_writer_processes_leave_nothing(store_path):
    """Issue 13.1: 6 processes write and forget at once (1,002 forgets in all) while a seventh
    keeps opening read transactions. Right after each forget, and at the end, none of the
    forgotten users' ids or texts is anywhere in the database, -wal or -shm file."""
    workers, per_worker = 6, 167
    SQLiteStore(store_path)
    holder = sqlite3.connect(store_path)  # keeps -wal and -shm in place for the final check
    holder.execute("PRAGMA journal_mode").fetchone()
    ctx = mp.get_context("spawn")
    incomplete, leaks, stop = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Event()
    reader = ctx.Process(target=_reader, args=(str(store_path), stop))
    reader.start()
    procs = [
        ctx.Process(target=_forgetter, args=(str(store_path), w, per_worker, incomplete, leaks))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=900)
        assert p.exitcode == 0
    stop.set()
    reader.join(timeout=60)
    assert leaks.value == 0
    files = [store_path, store_path.with_name(store_path.name + "-wal"),
             store_path.with_name(store_path.name + "-shm")]
    assert all(f.exists() for f in files)
    blob = b"".join(f.read_bytes() for f in files)
    leaked = [
        f"gone{w}x{j:04d}z" for w in range(workers) for j in range(per_worker)
        if f"gone{w}x{j:04d}z".encode() in blob
    ]
    assert leaked == [] and b"likes opera" not in blob and b"persona of gone" not in blob
    assert sum(f"kept text {w}x{j:04d}".encode() in blob
               for w in range(workers) for j in range(per_worker)) == workers * per_worker
    holder.close()


# -- forget on PostgreSQL ---------------------------------------------------------------------------
def test_postgres_forget_leaves_no_row_version(postgres_url):
    """On PostgreSQL, forget deletes and then VACUUMs: no row version, live or dead, of the user
    is left in the table pages (pageinspect reads them raw)."""
    import psycopg

    store = PostgresStore(postgres_url)
    for i in range(30):
        store.put(_summary(f"u{i:02d}", f"user {i:02d} secret marker {i:02d}"))
        store.merge_signals(f"u{i:02d}", {"signals": {"persona": f"persona marker {i:02d}"}}, limit=8)
    assert store.delete_user("u07") == 1
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        except psycopg.Error as e:
            pytest.skip(f"pageinspect is not available to read the pages: {e}")
        for table in ("popi_summary_versions", "popi_user_signals"):
            pages = conn.execute(
                "SELECT pg_relation_size(%s) / current_setting('block_size')::int", (table,)
            ).fetchone()[0]
            tuples = [
                bytes(row[0])
                for page in range(pages)
                for row in conn.execute(
                    "SELECT t_data FROM heap_page_items(get_raw_page(%s, %s)) WHERE t_data IS NOT NULL",
                    (table, page),
                ).fetchall()
            ]
            assert tuples, table
            assert not [t for t in tuples if b"marker 07" in t or b"u07" in t], table
            assert any(b"marker 08" in t for t in tuples), table


# -- file modes ------------------------------------------------------------------------------------
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_store_is_private_to_its_owner(tmp_path, monkeypatch, umask_022):
    """Issue 13.11: the store used to be created 0644 in a 0755 POPI_HOME."""
    from popi_sdk.settings import popi_home

    home = tmp_path / "home" / "popi"
    monkeypatch.setenv("POPI_HOME", str(home))
    monkeypatch.delenv("POPI_STORE", raising=False)
    store = SQLiteStore()
    store.put(_summary("a", "a text"))
    assert store.path == home / "summaries.sqlite"
    assert _mode(home) == 0o700
    for name in ("summaries.sqlite", "summaries.sqlite-wal", "summaries.sqlite-shm"):
        assert _mode(home / name) == 0o600, name
    assert popi_home() == home and _mode(home) == 0o700


def test_an_existing_folder_keeps_its_mode(tmp_path, umask_022):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    SQLiteStore(shared / "summaries.sqlite").put(_summary("a", "a text"))
    assert _mode(shared) == 0o755 and _mode(shared / "summaries.sqlite") == 0o600
    nested = tmp_path / "new" / "deeper" / "s.sqlite"
    SQLiteStore(nested)
    assert _mode(nested.parent) == 0o700 and _mode(nested) == 0o600


# -- the schema migration --------------------------------------------------------------------------
# The first release's schema, verbatim: a file made by it must open and keep its summaries.
RELEASE_0_1_SCHEMA = """
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


def _release_0_1_file(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(RELEASE_0_1_SCHEMA)
    rows = [
        ("alice", "hf", "old", "Alice liked long answers.", 5, "2025-01-01T10:00:00+00:00"),
        ("alice", "hf", "new", "Alice likes short answers.", 5, "2025-02-01T10:00:00+00:00"),
        ("bob", "openai:gpt-4o", "b1", "Bob likes puns.", 4, "2025-01-15T10:00:00+00:00"),
    ]
    conn.executemany("INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()


def test_a_store_from_the_first_release_opens_and_keeps_its_summaries(store_path):
    _release_0_1_file(store_path)
    store = SQLiteStore(store_path)
    alice = store.history("alice")
    assert [(s.version, s.signals_hash, s.text) for s in alice] == [
        (1, "old", "Alice liked long answers."), (2, "new", "Alice likes short answers.")
    ]
    assert all(s.source == "model" and s.score is None for s in alice)
    assert store.latest("alice").text == "Alice likes short answers."
    assert store.get("bob", "openai:gpt-4o", "b1").text == "Bob likes puns."  # cache hits survive
    assert store.user_ids() == ["alice", "bob"]
    assert store.put(_summary("alice", "newer")).version == 3
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='summaries'").fetchone() is None
    conn.close()
    again = SQLiteStore(store_path)  # opening a migrated file again changes nothing
    assert [s.text for s in again.history("alice")][-1] == "newer"


def _open(path: str) -> None:
    SQLiteStore(path, timeout=60).latest("alice")


def test_several_processes_opening_an_old_file_migrate_it_once(store_path):
    _release_0_1_file(store_path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open, args=(str(store_path),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert [s.version for s in SQLiteStore(store_path).history("alice")] == [1, 2]
