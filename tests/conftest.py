"""Shared fixtures. Nothing here downloads: the hub is forced offline, and the embedded model is
converted once per test session into a temporary POPI_HOME (set POPI_TEST_HOME to reuse one)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_HOME = os.environ.get("POPI_TEST_HOME") or tempfile.mkdtemp(prefix="popi-test-home-")
os.environ["POPI_HOME"] = _HOME
os.environ.pop("POPI_STORE", None)
os.environ.pop("POPI_SUMMARIZER", None)
os.environ.pop("POPI_GENERATOR", None)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted embedded model folder (converted on first use in this session)."""
    from popi_sdk.backends.hf import embedded_checkpoint

    return embedded_checkpoint()


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """The embedded model as a backend, loaded once for the whole session."""
    from popi_sdk.backends import get_backend

    backend = get_backend("hf")
    backend.model  # load now so test timings are honest
    return backend


@pytest.fixture
def store_path(tmp_path) -> Path:
    return tmp_path / "summaries.sqlite"


@pytest.fixture
def demo_users_file() -> Path:
    return REPO / "examples" / "demo_users.jsonl"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def openai_server(smollm2_dir):
    """A real OpenAI-compatible server, ``transformers serve`` on 127.0.0.1, pinned to the
    converted embedded model; yields its base URL (``http://127.0.0.1:PORT/v1``). Request the model
    by ``str(smollm2_dir)``. Started once per session and stopped at its end."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
    pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving]")
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which(
        "transformers"
    )
    if exe is None:
        pytest.skip("the transformers command is not installed")
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [exe, "serve", str(smollm2_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        # One thread: a 135M model gains little from more, and on a busy machine torch's thread
        # pool contending with other processes slows every token down several times over.
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )

    def server_log() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-4000:]

    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{server_log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"transformers serve was not ready within 180 s:\n{server_log()}")
        time.sleep(0.3)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm2_dir):
    """A tiny randomly initialized Llama checkpoint with the SmolLM2 tokenizer (training tests)."""
    from popi_sdk.train.random_model import random_llama

    return random_llama(tmp_path_factory.mktemp("tiny") / "tiny", smollm2_dir)


def _postgres_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server on 127.0.0.1 for this test session (``initdb`` into a temporary
    folder, ``pg_ctl start`` on a free port; as the ``postgres`` user when running as root, which
    PostgreSQL refuses). Yields the URL of its ``postgres`` database. ``POPI_TEST_POSTGRES`` set to
    a URL uses that server instead. Skips, saying why, only where no server can be started."""
    import shutil
    import subprocess

    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'popi-sdk[postgres]')")
    if os.environ.get("POPI_TEST_POSTGRES"):
        yield os.environ["POPI_TEST_POSTGRES"]
        return
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl) on this machine: install "
                    "Debian's postgresql package, or set POPI_TEST_POSTGRES to a server's URL")
    root = Path(tempfile.mkdtemp(prefix="popi-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pg_user = None
        if runuser is None or pg_user is None:
            pytest.skip("running as root and there is no 'postgres' user (or no runuser) to run "
                        "the PostgreSQL server as")
        os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    data, logfile, port = root / "data", root / "server.log", _free_port()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)

    made = run(initdb, "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    if made.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb could not create a PostgreSQL cluster: {made.stderr.strip()[-800:]}")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    started = run(pg_ctl, "-D", str(data), "-l", str(logfile), "-w", "-t", "60", "-o", options, "start")
    if started.returncode != 0:
        text = logfile.read_text(errors="replace")[-800:] if logfile.exists() else started.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {text.strip()}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's PostgreSQL server, dropped after the test."""
    import uuid

    import psycopg

    name = f"popi_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_spec(request, tmp_path):
    """What ``open_store`` takes for each kind of store: ``":memory:"``, a SQLite path, a
    PostgreSQL URL. The store test-suite runs unchanged over all three."""
    if request.param == "memory":
        return ":memory:"
    if request.param == "sqlite":
        return str(tmp_path / "summaries.sqlite")
    return request.getfixturevalue("postgres_url")
