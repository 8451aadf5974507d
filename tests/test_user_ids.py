"""One user-id rule for the SDK, the CLI, chat and every ``/v1/users/{id}`` endpoint: the same
ids are accepted, normalized and refused everywhere, ids with ``/`` can be managed over HTTP, and
no id can forge a log line."""

from __future__ import annotations

import http.client
import json
import logging
from urllib.parse import urlsplit

import openai
import pytest
from typer.testing import CliRunner

from popi_sdk import Personalizer
from popi_sdk.cli import app as cli
from popi_sdk.errors import InputError
from popi_sdk.user_ids import MAX_USER_ID, check_user_id, quote_user_id

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')

from serve_stub import EchoServer  # noqa: E402

from popi_sdk.backends.openai_backend import OpenAIBackend  # noqa: E402
from popi_sdk.serve import ServeConfig, create_app, parse_generators  # noqa: E402
from popi_sdk.serve.background import running  # noqa: E402

HI = [{"role": "user", "content": "Hello"}]
BAD = [" alice", "alice ", "al\nice", "al\tice", "a\x00b", "a\u200bb", "", "x" * (MAX_USER_ID + 1)]


def test_the_rule():
    assert check_user_id("acme/alice@example.com") == "acme/alice@example.com"
    assert check_user_id("Jo Smith") == "Jo Smith"  # an inner space is fine
    assert check_user_id("e\u0301") == "\u00e9"  # NFC: one user however "é" was typed
    assert check_user_id("x" * MAX_USER_ID)
    for bad in BAD:
        with pytest.raises(InputError):
            check_user_id(bad)
    with pytest.raises(InputError, match="must be a string"):
        check_user_id(17)
    with pytest.raises(InputError, match=r"U\+000A") as e:
        check_user_id("a\nINFO:forged")
    assert "\n" not in str(e.value)
    assert quote_user_id("acme/al ice") == "acme%2Fal%20ice"


def test_the_sdk_applies_it_everywhere(tmp_path):
    p = Personalizer(summarizer=OpenAIBackend("s", base_url="http://127.0.0.1:9/v1"),
                     store=str(tmp_path / "s.sqlite"))
    p.edit_summary("alice", "Alice likes short answers.")
    for bad in BAD:
        for call in (lambda: p.edit_summary(bad, "x"), lambda: p.get_summary(bad),
                     lambda: p.history(bad), lambda: p.forget(bad),
                     lambda: p.add_signals(bad, {"persona": "x"}),
                     lambda: p.summarize({"user_id": bad, "persona": "x"}),
                     lambda: p.conditioning("hi", user_id=bad)):
            with pytest.raises(InputError):
                call()
    assert [s.text for s in p.history("alice")] == ["Alice likes short answers."]
    p.edit_summary("caf\u00e9", "composed")
    assert p.get_summary("cafe\u0301").text == "composed"  # the same user


def test_the_cli_applies_it(tmp_path):
    store = str(tmp_path / "s.sqlite")
    result = CliRunner().invoke(cli, ["forget", " alice", "--store", store])
    assert result.exit_code == 2 and "whitespace" in result.output
    result = CliRunner().invoke(cli, ["summary", "edit", "a\nb", "--text", "x", "--store", store])
    assert result.exit_code == 2 and "U+000A" in result.output


@pytest.fixture(scope="module")
def upstream():
    stub = EchoServer(models=("echo-1",))
    with running(stub.app) as url:
        stub.url = f"{url}/v1"
        yield stub


@pytest.fixture
def server(tmp_path, upstream):
    p = Personalizer(summarizer=OpenAIBackend("s", base_url=upstream.url, max_retries=0),
                     store=str(tmp_path / "s.sqlite"))
    config = ServeConfig(generators=parse_generators([f"stub=openai:echo-1@{upstream.url}"]),
                         max_retries=0)
    with running(create_app(p, config)) as base:
        yield base + "/v1", p


def _raw(base: str, method: str, path: str, body: dict | None = None,
         headers: list[tuple[str, str]] = ()) -> tuple[int, dict]:
    """One request with exactly these headers, repeats included (clients merge repeats)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest(method, url.path + path)  # the path as given, already percent-encoded
    data = json.dumps(body).encode() if body is not None else b""
    for name, value in [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                        *headers]:
        conn.putheader(name, value)
    conn.endheaders(data)
    response = conn.getresponse()
    payload = json.loads(response.read() or b"null")
    conn.close()
    return response.status, payload


def test_chat_and_endpoints_share_the_rule(server):
    base, p = server
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    p.edit_summary("alice", "Alice likes short answers.")
    with pytest.raises(openai.BadRequestError, match="whitespace"):  # never alice's summary
        client.chat.completions.create(model="stub", messages=HI, user=" alice")
    with pytest.raises(openai.BadRequestError, match="whitespace"):
        client.put("/users/%20alice/summary", body={"text": "x"}, cast_to=object)
    long_id = "x" * 10_000
    with pytest.raises(openai.BadRequestError, match="at most 256"):
        client.put(f"/users/{long_id}/summary", body={"text": "x"}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="at most 256"):
        client.chat.completions.create(model="stub", messages=HI, user=long_id)
    assert p.store.user_ids() == ["alice"]


def test_ids_with_a_slash_are_managed_over_http(server):
    base, p = server
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    for path in ("acme%2Falice", "acme/alice"):  # encoded or not
        client.put(f"/users/{path}/summary", body={"text": f"via {path}"}, cast_to=object)
        assert client.get(f"/users/{path}/summary", cast_to=object)["text"] == f"via {path}"
    assert len(client.get("/users/acme%2Falice/summaries", cast_to=object)) == 2
    answer = client.chat.completions.create(model="stub", messages=HI, user="acme/alice")
    assert "via acme/alice" in answer.choices[0].message.content
    assert client.delete("/users/acme%2Falice", cast_to=object) == {
        "user_id": "acme/alice", "deleted": 2}
    assert p.history("acme/alice") == []


def test_a_repeated_user_header_is_refused(server):
    base, p = server
    p.edit_summary("alice", "Alice likes short answers.")
    status, body = _raw(base, "POST", "/chat/completions", {"model": "stub", "messages": HI},
                        [("X-Popi-User", "mallory"), ("X-Popi-User", "alice")])
    assert status == 400 and "more than once" in body["error"]["message"]
    status, _ = _raw(base, "POST", "/chat/completions", {"model": "stub", "messages": HI},
                     [("X-Popi-User", "alice")])
    assert status == 200


def test_an_id_cannot_forge_a_log_line(server, caplog):
    base, _ = server
    caplog.set_level(logging.INFO)
    status, _ = _raw(base, "GET", "/users/a%0AINFO:popi:forged/summary")
    assert status == 400
    status, _ = _raw(base, "POST", "/chat/completions",
                     {"model": "stub", "messages": HI, "user": "a\nINFO:popi:forged"})
    assert status == 400
    lines = [line for r in caplog.records for line in r.getMessage().splitlines()]
    assert lines and not any(line.startswith("INFO:popi:forged") for line in lines)


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_server(request, tmp_path, upstream):
    store = (str(tmp_path / "s.sqlite") if request.param == "sqlite"
             else request.getfixturevalue("postgres_url"))
    p = Personalizer(summarizer=OpenAIBackend("s", base_url=upstream.url, max_retries=0),
                     store=store)
    config = ServeConfig(generators=parse_generators([f"stub=openai:echo-1@{upstream.url}"]),
                         max_retries=0)
    with running(create_app(p, config)) as base:
        yield base + "/v1", p


def test_every_endpoint_refuses_a_bad_id_on_both_stores(any_store_server):
    from urllib.parse import quote

    base, p = any_store_server
    p.edit_summary("alice", "Alice likes short answers.")
    for bad in (" alice", "al\nice", "a\x00b", "x" * 300):
        path = f"/users/{quote(bad, safe='')}"
        for method, suffix, body in (("GET", "/summary", None), ("GET", "/summaries", None),
                                     ("PUT", "/summary", {"text": "x"}),
                                     ("POST", "/signals", {"signals": {"persona": "x"}}),
                                     ("POST", "/score", {}), ("DELETE", "", None)):
            status, payload = _raw(base, method, path + suffix, body)
            assert status == 400, (method, suffix, repr(bad), status, payload)
        status, _ = _raw(base, "POST", "/chat/completions",
                         {"model": "stub", "messages": HI, "user": bad})
        assert status == 400
    assert p.store.user_ids() == ["alice"]
    assert [s.text for s in p.history("alice")] == ["Alice likes short answers."]
