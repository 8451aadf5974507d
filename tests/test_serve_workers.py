"""``popi serve --workers N``: several processes on one port, one store (a SQLite file, or a real
PostgreSQL server on loopback). Concurrent writes reach both workers through HTTP and the store
keeps every one of them: each user-written summary gets its own version, each signal POSTed is
merged. The summarizer is the ``openai`` backend against the loopback echo stub
(``serve_stub.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')

from serve_stub import EchoServer  # noqa: E402

from popi_sdk.serve.background import free_port, running  # noqa: E402
from popi_sdk.store import open_store  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="--workers needs fork")


@pytest.fixture(scope="module")
def upstream():
    stub = EchoServer(models=("echo-1", "summarizer"))
    with running(stub.app) as url:
        stub.url = f"{url}/v1"
        yield stub


def start(args: list[str], upstream) -> tuple[subprocess.Popen, object]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-upstream-test", "OPENAI_BASE_URL": upstream.url}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "popi_sdk.cli", "serve", "--no-access-log",
                             "--log-level", "warning", "-g", f"stub=openai:echo-1@{upstream.url}",
                             "--summarizer", "openai:summarizer", *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def output(log) -> str:
    log.seek(0)
    return log.read().decode()


def worker_pids(parent: int) -> list[int]:
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        return [int(p) for p in f.read().split()]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads workers' CPU time in /proc")
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_workers_share_one_store_under_concurrent_writes(kind, tmp_path, upstream, request):
    store = (tmp_path / "summaries.sqlite" if kind == "sqlite"
             else request.getfixturevalue("postgres_url"))
    port = free_port()
    proc, log = start(["--port", str(port), "--store", str(store), "--workers", "2"], upstream)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while "2 workers" not in output(log):
            assert proc.poll() is None and time.monotonic() < deadline, output(log)
            time.sleep(0.2)
        workers = worker_pids(proc.pid)
        assert len(workers) == 2, output(log)
        before = {pid: cpu_ticks(pid) for pid in workers}

        # A fresh connection per request, so the kernel hands requests to either worker.
        def edit(i: int) -> int:
            r = httpx2.put(f"{base}/v1/users/shared/summary", json={"text": f"edit number {i}"},
                           timeout=60)
            return r.status_code

        def signal(i: int) -> int:
            pair = {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
            r = httpx2.post(f"{base}/v1/users/merged/signals", json={"signals": {"pairs": [pair]}},
                            timeout=60)
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            edits = list(pool.map(edit, range(60)))
            signals = list(pool.map(signal, range(30)))
        assert edits == [200] * 60 and signals == [200] * 30, output(log)

        used = {pid: cpu_ticks(pid) - before[pid] for pid in workers}
        assert all(ticks > 0 for ticks in used.values()), f"a worker took no requests: {used}"

        # Every worker reads what any worker wrote.
        history = httpx2.get(f"{base}/v1/users/shared/summaries").json()
        assert sorted(v["version"] for v in history) == list(range(1, 61))
        assert sorted(v["text"] for v in history) == sorted(f"edit number {i}" for i in range(60))
        for _ in range(10):
            current = httpx2.get(f"{base}/v1/users/shared/summary").json()
            assert current["version"] == 60
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0, output(log)
    assert all(not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
               for pid in workers), "a worker outlived the server"

    kept = open_store(str(store))
    stored = kept.signals("merged")
    assert sorted(p["prompt"] for p in stored["signals"]["pairs"]) == sorted(f"question {i}" for i in range(30))
    assert len(kept.history("merged")) == 30  # one fresh summary per POST


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(tmp_path, upstream):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    proc, log = start(["--port", str(free_port()), "--store", str(blocked / "summaries.sqlite"),
                       "--workers", "3"], upstream)
    assert proc.wait(timeout=90) == 1
    text = output(log)
    assert "Error (worker 0): cannot open the summary store" in text
    assert "Point POPI_STORE" in text and "Traceback" not in text
    assert "worker 1" not in text  # the first worker fails alone; the others never start
