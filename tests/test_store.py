import multiprocessing as mp
import sqlite3

import pytest

from popi_sdk.errors import InputError, StoreError
from popi_sdk.signals import Summary
from popi_sdk.store import MemoryStore, SQLiteStore, SummaryStore, open_store


def _summary(user: str, i: int, text: str | None = None) -> Summary:
    return Summary(
        user_id=user, text=text or f"{user} likes item {i}", summarizer="hf", signals_hash=f"h{i}", n_tokens=5
    )


def _writer(path: str, worker: int, n: int) -> None:
    store = SQLiteStore(path, timeout=60)
    for i in range(n):
        store.put(_summary(f"w{worker}", i))


def test_concurrent_writer_processes_lose_no_row(store_path):
    SQLiteStore(store_path)  # create the schema first, as an application would on start
    workers, per_worker = 4, 100
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store_path), w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    conn = sqlite3.connect(store_path)
    assert conn.execute("SELECT COUNT(*) FROM summaries").fetchone()[0] == workers * per_worker
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("make", [SQLiteStore, lambda path: MemoryStore()])
def test_store_protocol(make, store_path):
    store = make(store_path)
    assert isinstance(store, SummaryStore)
    assert store.get("a", "hf", "h1") is None
    store.put(_summary("a", 1))
    store.put(_summary("a", 2))
    store.put(_summary("b", 1))
    assert store.get("a", "hf", "h1").text == "a likes item 1"
    assert store.latest("a").signals_hash == "h2"
    assert store.user_ids() == ["a", "b"]
    assert store.delete_user("a") == 2
    assert store.latest("a") is None and store.user_ids() == ["b"]


def test_forget_leaves_no_trace_in_the_file(store_path):
    store = SQLiteStore(store_path)
    secret = "The user secretly adores pineapple pizza"
    store.put(_summary("alice", 1, secret))
    store.put(_summary("bob", 1))
    assert store.delete_user("alice") == 1
    store.close()
    blobs = b"".join(p.read_bytes() for p in store_path.parent.glob(store_path.name + "*"))
    assert secret.encode() not in blobs
    assert b"bob likes item 1" in blobs


def test_unwritable_location_names_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="POPI_STORE"):
        SQLiteStore(blocker / "summaries.sqlite")


def test_open_store_variants(store_path):
    assert isinstance(open_store(":memory:"), MemoryStore)
    assert isinstance(open_store(store_path), SQLiteStore)
    with pytest.raises(InputError, match="SummaryStore"):
        open_store(42)
