"""The store test-suite. Everything parametrized over ``store_spec`` runs unchanged over the
in-memory store, a SQLite file and a real PostgreSQL server on loopback."""

import multiprocessing as mp
import sqlite3
import threading

import pytest

from popi_sdk.errors import InputError, StoreError
from popi_sdk.signals import Summary, SummaryScore
from popi_sdk.store import MemoryStore, PostgresStore, SQLiteStore, SummaryStore, open_store


def _summary(user: str, i: int, text: str | None = None, source: str = "model") -> Summary:
    return Summary(
        user_id=user,
        text=text or f"{user} likes item {i}",
        summarizer="user" if source == "user" else "hf",
        signals_hash=f"h{i}",
        n_tokens=5,
        source=source,
    )


def _pair(i: int) -> dict:
    return {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}


# -- the protocol, over every store -----------------------------------------------------------
def test_store_protocol(store_spec):
    store = open_store(store_spec)
    assert isinstance(store, SummaryStore)
    assert store.get("a", "hf", "h1") is None and store.latest("a") is None
    assert store.history("a") == [] and store.user_ids() == []
    assert store.put(_summary("a", 1)).version == 1
    assert store.put(_summary("a", 2)).version == 2
    assert store.put(_summary("b", 1)).version == 1  # numbering is per user
    assert store.get("a", "hf", "h1").text == "a likes item 1"
    assert store.get("a", "hf", "h1").version == 1
    assert store.latest("a").signals_hash == "h2" and store.latest("a").version == 2
    assert [s.version for s in store.history("a")] == [1, 2]
    assert store.user_ids() == ["a", "b"]
    assert store.delete_user("a") == 2
    assert store.latest("a") is None and store.history("a") == [] and store.user_ids() == ["b"]
    assert store.get("a", "hf", "h1") is None
    assert store.latest("b").text == "b likes item 1"  # the other user is untouched


def test_versions_edits_and_scores(store_spec):
    store = open_store(store_spec)
    first = store.put(_summary("a", 1))
    edit = store.put(_summary("a", 1, "The user wants short answers.", source="user"))
    assert edit.version == 2 and store.latest("a").source == "user"
    # The cache lookup only ever returns what the model wrote, never a user's edit.
    assert store.get("a", "hf", "h1") == first
    assert store.get("a", "user", "h1") is None
    again = store.put(_summary("a", 1))  # the same key written again is a new version
    assert again.version == 3 and store.get("a", "hf", "h1").version == 3
    score = SummaryScore(reward_accuracy=0.75, margin_gain=0.5, n_examples=4, scorer="hf")
    store.set_score("a", 2, score)
    history = store.history("a")
    assert [s.source for s in history] == ["model", "user", "model"]
    assert history[1].score == score and history[0].score is None and history[2].score is None
    assert history[0].created_at == first.created_at  # times round-trip exactly


def test_signals_merge_with_oldest_first_eviction(store_spec):
    store = open_store(store_spec)
    assert store.signals("a") is None
    store.merge_signals(
        "a", {"signals": {"pairs": [_pair(1), _pair(2)], "persona": "old", "traits": {"x": 1.0}},
              "examples": [_pair(90)]}, limit=3,
    )
    merged = store.merge_signals(
        "a", {"signals": {"pairs": [_pair(3), _pair(1), _pair(4)], "traits": {"y": 0.5}},
              "examples": []}, limit=3,
    )
    # pair 2 (the oldest) is evicted; pair 1, seen again, counts as new.
    assert [p["prompt"] for p in merged["signals"]["pairs"]] == ["q3", "q1", "q4"]
    assert merged["signals"]["persona"] == "old"  # no new persona: the old one stays
    assert merged["signals"]["traits"] == {"x": 1.0, "y": 0.5}
    assert [p["prompt"] for p in merged["examples"]] == ["q90"]
    assert store.signals("a") == merged
    replaced = store.merge_signals(
        "a", {"signals": {"persona": "new"}, "examples": [_pair(91)]}, limit=3, replace=True
    )
    assert replaced["signals"]["pairs"] == [] and replaced["signals"]["persona"] == "new"
    assert [p["prompt"] for p in replaced["examples"]] == ["q90", "q91"]
    store.merge_signals("b", {"signals": {"persona": "b"}}, limit=3)
    assert store.user_ids() == ["a", "b"]
    store.delete_user("a")
    assert store.signals("a") is None and store.signals("b")["signals"]["persona"] == "b"


HOSTILE_IDS = ["a%", "a_", "A", "'; DROP TABLE popi_summary_versions; --", "../x", "عربي", "x" * 5000]


def test_hostile_user_ids_stay_apart(store_spec):
    store = open_store(store_spec)
    for i, user in enumerate(HOSTILE_IDS):
        store.put(_summary(user, i))
        store.merge_signals(user, {"signals": {"persona": f"p{i}"}}, limit=3)
    store.put(_summary("a", 99))
    assert sorted(store.user_ids()) == sorted([*HOSTILE_IDS, "a"])
    for i, user in enumerate(HOSTILE_IDS):
        assert [s.text for s in store.history(user)] == [f"{user} likes item {i}"]
        assert store.signals(user)["signals"]["persona"] == f"p{i}"
    assert store.delete_user("a%") == 1  # no LIKE pattern: 'a' and 'a_' stay
    assert store.latest("a").version == 1 and store.latest("a_") is not None


def test_threads_share_a_store(store_spec):
    """Threads writing, reading and forgetting at once (the SDK's async methods reach the store
    from worker threads). The in-memory store used to raise 'dictionary changed size during
    iteration' and kill the writer threads."""
    import sys

    store = open_store(store_spec)
    for i in range(300):
        store.put(_summary(f"bulk{i}", 0))
    errors: list[BaseException] = []
    n = 60

    def work(t: int) -> None:
        try:
            for i in range(n):
                store.put(_summary(f"t{t}", i))
                store.latest(f"t{t}")
                store.user_ids()
                store.history(f"bulk{i}")
                store.merge_signals(f"t{t}", {"signals": {"pairs": [_pair(i)]}}, limit=1000)
                if i % 10 == 9:
                    store.put(_summary(f"gone{t}", i))
                    store.delete_user(f"gone{t}")
        except BaseException as e:  # noqa: BLE001 - every failure is reported below
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up at once
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    for t in range(4):
        assert [s.version for s in store.history(f"t{t}")] == list(range(1, n + 1))
        assert len(store.signals(f"t{t}")["signals"]["pairs"]) == n
        assert store.latest(f"gone{t}") is None


def test_memory_store_iteration_races_are_gone():
    """The exact failure of issue 13.5: ``latest`` iterating while another thread ``put``s."""
    import sys

    store = MemoryStore()
    for i in range(2000):
        store.put(_summary(f"u{i}", 0))
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                store.put(_summary(f"new{i}", 0))
                store.delete_user(f"new{i - 5}")
                i += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader() -> None:
        try:
            for _ in range(1000):
                store.latest("u7")
                store.user_ids()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        w, r = threading.Thread(target=writer), threading.Thread(target=reader)
        w.start()
        r.start()
        r.join()
        stop.set()
        w.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []


# -- several processes -------------------------------------------------------------------------
def _writer(spec: str, worker: int, n: int) -> None:
    store = open_store(spec)
    for i in range(n):
        store.put(_summary(f"w{worker}", i, f"w{worker} version {i}"))
        store.put(_summary("shared", i, f"shared from w{worker} #{i}"))


def _run_writers(spec: str, workers: int, per_worker: int) -> None:
    open_store(spec)  # create the schema first, as an application would on start
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(spec, w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    store = open_store(spec)
    for w in range(workers):
        history = store.history(f"w{w}")
        assert [s.version for s in history] == list(range(1, per_worker + 1))
        assert [s.text for s in history] == [f"w{w} version {i}" for i in range(per_worker)]
        assert {s.user_id for s in history} == {f"w{w}"}
    shared = store.history("shared")
    assert [s.version for s in shared] == list(range(1, workers * per_worker + 1))  # no gap, no dup
    assert sorted(s.text for s in shared) == sorted(
        f"shared from w{w} #{i}" for w in range(workers) for i in range(per_worker)
    )
    assert store.user_ids() == sorted(["shared", *(f"w{w}" for w in range(workers))])


def test_concurrent_writer_processes_lose_no_version_sqlite(store_path):
    _run_writers(str(store_path), workers=4, per_worker=50)
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_eight_processes_against_postgres_lose_no_version(postgres_url):
    _run_writers(postgres_url, workers=8, per_worker=40)


# -- opening stores ----------------------------------------------------------------------------
def test_unwritable_location_names_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="POPI_STORE"):
        SQLiteStore(blocker / "summaries.sqlite")


def test_open_store_variants(store_path, monkeypatch):
    assert isinstance(open_store(":memory:"), MemoryStore)
    assert isinstance(open_store(store_path), SQLiteStore)
    monkeypatch.setenv("POPI_STORE", str(store_path))
    assert open_store().path == store_path
    with pytest.raises(InputError, match="SummaryStore"):
        open_store(42)


def test_postgres_url_from_the_environment(postgres_url, monkeypatch):
    monkeypatch.setenv("POPI_STORE", postgres_url)
    store = open_store()
    assert isinstance(store, PostgresStore)
    store.put(_summary("a", 1))
    assert open_store(postgres_url).latest("a").text == "a likes item 1"


def test_unreachable_postgres_names_the_server_without_the_password():
    import socket

    pytest.importorskip("psycopg")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    url = f"postgresql://popi:s3cret@127.0.0.1:{port}/nope"
    with pytest.raises(StoreError, match="cannot open the summary store") as err:
        PostgresStore(url, timeout=2)
    assert "s3cret" not in str(err.value) and "127.0.0.1" in str(err.value)
