"""Input a real client or attacker sends that the server must refuse cleanly, over both stores:
oversized bodies and summaries, NUL characters, JSON nested too deep; plus the signals default,
a PostgreSQL password in the query string, and pooled connections the server has dropped."""

from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlsplit

import httpx2
import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')

from serve_stub import EchoServer  # noqa: E402

from popi_sdk import Personalizer  # noqa: E402
from popi_sdk.backends.openai_backend import OpenAIBackend  # noqa: E402
from popi_sdk.cli import app as cli  # noqa: E402
from popi_sdk.errors import InputError  # noqa: E402
from popi_sdk.serve import ServeConfig, create_app, parse_generators  # noqa: E402
from popi_sdk.serve.background import running  # noqa: E402
from popi_sdk.store import PostgresStore  # noqa: E402
from popi_sdk.store.postgres import redact_url  # noqa: E402

KEY = "proxy-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def upstream():
    stub = EchoServer(models=("echo-1", "summarizer"))
    with running(stub.app) as url:
        stub.url = f"{url}/v1"
        yield stub


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path, upstream):
    store = (str(tmp_path / "summaries.sqlite") if request.param == "sqlite"
             else request.getfixturevalue("postgres_url"))
    summarizer = OpenAIBackend("summarizer", base_url=upstream.url, max_retries=0)
    p = Personalizer(summarizer=summarizer, store=store)
    config = ServeConfig(generators=parse_generators([f"stub=openai:echo-1@{upstream.url}"]),
                         api_keys=[KEY], max_retries=0, max_body_bytes=64_000)
    with running(create_app(p, config)) as base:
        yield base + "/v1", p


def test_bodies_and_summaries_have_a_size_limit(server, monkeypatch):
    url, p = server
    http = httpx2.Client(base_url=url, headers=AUTH, timeout=60)
    big = {"model": "stub", "messages": [{"role": "user", "content": "x" * 100_000}]}
    r = http.post("/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = http.put("/users/maya/summary", json={"text": "y" * 100_000})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the limit holds while the body is read
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i:i + 8192]

    r = http.post("/chat/completions", content=chunks(),
                  headers={"content-type": "application/json"})
    assert r.status_code == 413
    monkeypatch.setenv("POPI_MAX_SUMMARY_CHARS", "100")
    r = http.put("/users/maya/summary", json={"text": "z" * 101})
    assert r.status_code == 400 and "at most 100" in r.json()["error"]["message"]
    assert http.put("/users/maya/summary", json={"text": "Short."}).status_code == 200
    assert [s.text for s in p.history("maya")] == ["Short."]


def test_nul_characters_are_refused_before_anything_is_stored(server):
    url, p = server
    http = httpx2.Client(base_url=url, headers=AUTH, timeout=60)
    r = http.put("/users/maya/summary", json={"text": "a\x00b"})
    assert r.status_code == 400 and "NUL" in r.json()["error"]["message"]
    r = http.post("/users/maya/signals", json={"signals": {"persona": "I am \x00six."}})
    assert r.status_code == 400
    with pytest.raises(InputError, match="NUL"):
        p.summarize({"user_id": "maya", "persona": "I am \x00six."})
    assert p.history("maya") == [] and p.store.signals("maya") is None  # nothing half-stored


def test_json_nested_too_deep_is_a_400(server):
    url, _ = server
    deep = ("[" * 20_000 + "]" * 20_000).encode()  # under the body limit, over any parser stack
    body = b'{"model": "stub", "messages": ' + deep + b"}"
    for path, method in (("/chat/completions", "POST"), ("/users/maya/summary", "PUT"),
                         ("/users/maya/signals", "POST")):
        r = httpx2.request(method, url + path, content=body,
                           headers={**AUTH, "content-type": "application/json"}, timeout=60)
        assert r.status_code == 400, (path, r.status_code, r.text[:200])


def test_signals_endpoint_defaults_to_a_fresh_summary_as_the_sdk(server, upstream):
    url, _ = server
    http = httpx2.Client(base_url=url, headers=AUTH, timeout=60)
    http.post("/users/maya/signals", json={"signals": {"persona": "I am six."}})
    http.post("/users/maya/signals", json={"signals": {"persona": "I am seven."}})
    read = upstream.requests[-1][0]["messages"][-1]["content"]
    assert "I am seven." in read and "current summary" not in read.lower()


def test_a_query_string_password_is_never_printed(postgres_url):
    host = urlsplit(postgres_url)
    url = f"postgresql://nobody@127.0.0.1:1/db?password=s3cret-pw&connect_timeout=1"
    assert "s3cret-pw" not in redact_url(url)
    result = CliRunner().invoke(cli, ["forget", "maya", "--store", url])
    assert result.exit_code != 0 and "s3cret-pw" not in result.output
    assert host.hostname  # the fixture's server is running; the URL above points elsewhere


def test_pooled_connections_dropped_by_the_server_are_replaced(postgres_url):
    import psycopg

    store = PostgresStore(postgres_url)
    p = Personalizer(summarizer=OpenAIBackend("s", base_url="http://127.0.0.1:9/v1"), store=store)
    p.edit_summary("maya", "Maya likes short answers.")
    failures: list[Exception] = []

    def work(n: int) -> None:
        for _ in range(n):
            try:
                assert p.get_summary("maya").text == "Maya likes short answers."
            except Exception as e:  # noqa: BLE001 - counted, then reported
                failures.append(e)

    threads = [threading.Thread(target=work, args=(1,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # What a server restart does to every pooled connection: the server ends it.
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    work(200)
    assert failures == []
