"""``popi serve`` with real parts: the real ``openai`` client (sync and async, streaming and not)
talks to the proxy on loopback, and the proxy talks to a loopback OpenAI-compatible stub that
echoes the system message it received (``serve_stub.py``), so each test sees which summary reached
the generator. Anthropic's API cannot run here: its upstream is the real ``anthropic`` client over
an ``httpx2`` mock transport. The real ``transformers serve`` upstream is in test_serve_real.py."""

from __future__ import annotations

import asyncio
import json
import logging
import random

import httpx2
import openai
import pytest

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')

from serve_stub import EchoServer  # noqa: E402

from popi_sdk import Personalizer  # noqa: E402
from popi_sdk.errors import ConfigError  # noqa: E402
from popi_sdk.serve import ServeConfig, create_app, parse_generator, parse_generators  # noqa: E402
from popi_sdk.serve.background import free_port, running  # noqa: E402
from popi_sdk.signals import Summary  # noqa: E402
from popi_sdk.templates import (  # noqa: E402
    GENERATOR_SUMMARY_SYSTEM,
    personalize_messages,
    summary_messages,
)

SUMMARIES = {
    "maya": "Maya wants answers as short haiku.",
    "dr_chen": "Dr. Chen wants rigorous derivations with units.",
}
KEY = "proxy-key-0123456789abcdef"
HI = [{"role": "user", "content": "Why is the sky blue?"}]


def personal(text: str) -> str:
    return GENERATOR_SUMMARY_SYSTEM.format(summary=text)


def make_personalizer(tmp_path, summaries=SUMMARIES) -> Personalizer:
    p = Personalizer(summarizer="hf", store=tmp_path / "summaries.sqlite")
    for user, text in summaries.items():
        p.store.put(Summary(user_id=user, text=text, summarizer="test", signals_hash="h",
                            n_tokens=len(text.split())))
    return p


@pytest.fixture(scope="module")
def upstream():
    stub = EchoServer(models=("echo-1", "echo-2"))
    with running(stub.app) as url:
        stub.url = f"{url}/v1"
        yield stub


@pytest.fixture
def proxy(tmp_path, upstream):
    """Start a proxy: ``proxy(generators=[...], api_keys=[...], personalizer=...)`` -> base URL."""
    stack = []

    def start(generators=None, api_keys=(), personalizer=None, **options):
        generators = generators or [f"stub=openai:echo-1@{upstream.url}"]
        config = ServeConfig(generators=parse_generators(generators), api_keys=list(api_keys),
                             max_retries=options.pop("max_retries", 0), **options)
        app = create_app(personalizer or make_personalizer(tmp_path), config)
        cm = running(app)
        stack.append(cm)
        return cm.__enter__() + "/v1"

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def client(url, key="anything", **kw):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, **kw)


# -- the template ---------------------------------------------------------------------------
def test_summary_messages_is_personalize_messages_of_the_prompt():
    assert summary_messages("Q?", " The user likes tea. ") == [
        {"role": "system", "content": personal("The user likes tea.")},
        {"role": "user", "content": "Q?"},
    ]
    assert personalize_messages([{"role": "user", "content": "Q?"}], "z") == summary_messages("Q?", "z")


def test_personalize_messages_keeps_the_apps_system_message_first_and_copies():
    convo = [{"role": "system", "content": "You are ACME support."},
             {"role": "user", "content": "hi", "name": "bob"}]
    out = personalize_messages(convo, "Terse.")
    assert out == [{"role": "system", "content": "You are ACME support.\n\n" + personal("Terse.")},
                   {"role": "user", "content": "hi", "name": "bob"}]
    assert convo[0]["content"] == "You are ACME support."  # the input is not modified
    parts = personalize_messages([{"role": "developer", "content": [{"type": "text", "text": "A"}]},
                                  {"role": "user", "content": "hi"}], "Terse.")
    assert parts[0]["content"] == [{"type": "text", "text": "A"},
                                   {"type": "text", "text": personal("Terse.")}]


# -- configuration --------------------------------------------------------------------------
def test_generator_names():
    g = parse_generator("openai:popi-generator@http://10.0.0.5:8000/v1/")
    assert (g.kind, g.model, g.base_url, g.id) == ("openai", "popi-generator", "http://10.0.0.5:8000/v1", "popi-generator")
    g = parse_generator("fast=anthropic:claude-haiku-4-5")
    assert (g.kind, g.model, g.id, g.ids) == ("anthropic", "claude-haiku-4-5", "fast",
                                              ("fast", "claude-haiku-4-5", "anthropic:claude-haiku-4-5"))
    g = parse_generator("http://127.0.0.1:8000/v1")
    assert g.passthrough and g.base_url == "http://127.0.0.1:8000/v1"
    assert parse_generator("hf").kind == "backend"
    with pytest.raises(ConfigError, match="names no model"):
        parse_generator("openai:")
    with pytest.raises(ConfigError, match="two generators are named 'a'"):
        parse_generators(["a=openai:x", "a=openai:y"])
    with pytest.raises(ConfigError, match="at least one --generator"):
        parse_generators([])


def test_keys_are_required_off_loopback():
    gens = parse_generators(["openai:x@http://127.0.0.1:1/v1"])
    with pytest.raises(ConfigError, match="--api-key KEY or set POPI_SERVE_API_KEYS"):
        ServeConfig(generators=gens, host="0.0.0.0")
    ServeConfig(generators=gens, host="0.0.0.0", api_keys=[KEY])
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.9"):
        ServeConfig(generators=gens, host=host)


# -- chat completions through the real client ----------------------------------------------
def test_sync_client_gets_the_users_summary_streaming_and_not(proxy, upstream):
    url = proxy()
    c = client(url)
    raw = c.chat.completions.with_raw_response.create(model="stub", user="maya", messages=HI)
    answer = raw.parse()
    assert raw.headers["x-popi-personalized"] == "true"
    assert raw.headers["x-request-id"] == "req-stub-1" and raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert "openai-organization" not in raw.headers
    assert answer.choices[0].message.content == (
        f"SYSTEM[{personal(SUMMARIES['maya'])}] MODEL[echo-1] LAST[Why is the sky blue?]")
    sent, headers = upstream.requests[-1]
    assert sent["user"] == "maya" and sent["model"] == "echo-1"
    assert sent["messages"] == summary_messages("Why is the sky blue?", SUMMARIES["maya"])
    assert "proxy-key" not in json.dumps(headers)  # the client's key is not forwarded upstream

    chunks = list(c.chat.completions.create(model="stub", user="dr_chen", messages=HI, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert personal(SUMMARIES["dr_chen"]) in text and SUMMARIES["maya"] not in text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_generate_and_the_proxy_send_the_generator_the_same_messages(proxy, upstream, tmp_path):
    """The proxy conditions exactly as ``Personalizer.generate`` does (one template function)."""
    p = make_personalizer(tmp_path)
    url = proxy(personalizer=p)
    client(url).chat.completions.create(model="stub", user="maya", messages=HI)
    messages, _ = p.conditioning(HI[0]["content"], user_id="maya")
    assert upstream.requests[-1][0]["messages"] == messages


def test_async_client_streaming_and_not(proxy):
    url = proxy()

    async def main():
        c = openai.AsyncOpenAI(base_url=url, api_key="anything", max_retries=0)
        whole = await c.chat.completions.create(model="stub", user="maya", messages=HI)
        stream = await c.chat.completions.create(model="stub", user="maya", messages=HI, stream=True)
        pieces = [ch.choices[0].delta.content or "" async for ch in stream]
        await c.close()
        return whole.choices[0].message.content, "".join(pieces)

    whole, streamed = asyncio.run(main())
    assert whole == streamed and personal(SUMMARIES["maya"]) in whole


def test_a_user_without_summary_gets_the_plain_answer_and_a_header_saying_so(proxy, upstream):
    c = client(proxy())
    raw = c.chat.completions.with_raw_response.create(model="stub", user="stranger", messages=HI)
    assert raw.headers["x-popi-personalized"] == "false"
    assert raw.headers["x-popi-reason"] == "no-summary"
    assert raw.parse().choices[0].message.content.startswith("SYSTEM[-]")
    assert upstream.requests[-1][0]["messages"] == HI
    raw = c.chat.completions.with_raw_response.create(model="stub", messages=HI)
    assert raw.headers["x-popi-reason"] == "no-user"


def test_the_user_header_selects_the_user_and_must_agree_with_the_body(proxy):
    c = client(proxy())
    answer = c.chat.completions.create(model="stub", messages=HI,
                                       extra_headers={"X-Popi-User": "dr_chen"})
    assert personal(SUMMARIES["dr_chen"]) in answer.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="X-Popi-User header 'dr_chen' differ"):
        c.chat.completions.create(model="stub", user="maya", messages=HI,
                                  extra_headers={"X-Popi-User": "dr_chen"})


def test_the_apps_own_system_message_comes_first(proxy, upstream):
    c = client(proxy())
    c.chat.completions.create(model="stub", user="maya", messages=[
        {"role": "system", "content": "You are ACME's assistant."}, *HI])
    system = upstream.requests[-1][0]["messages"][0]
    assert system == {"role": "system",
                      "content": "You are ACME's assistant.\n\n" + personal(SUMMARIES["maya"])}


def test_model_picks_among_generators_and_models_lists_them(proxy, upstream):
    url = proxy(generators=[f"first=openai:echo-1@{upstream.url}",
                            f"openai:echo-2@{upstream.url}"])
    c = client(url)
    assert "MODEL[echo-1]" in c.chat.completions.create(model="first", messages=HI).choices[0].message.content
    assert "MODEL[echo-2]" in c.chat.completions.create(model="echo-2", messages=HI).choices[0].message.content
    assert "MODEL[echo-2]" in c.chat.completions.create(model="openai:echo-2", messages=HI).choices[0].message.content
    assert [m.id for m in c.models.list()] == ["first", "echo-2"]
    assert c.models.retrieve("first").id == "first"
    with pytest.raises(openai.NotFoundError, match="'gpt-9' is not served here; use one of: echo-2, first"):
        c.chat.completions.create(model="gpt-9", messages=HI)


def test_a_bare_server_url_forwards_any_model(proxy, upstream):
    c = client(proxy(generators=[upstream.url]))
    assert "MODEL[echo-2]" in c.chat.completions.create(model="echo-2", user="maya", messages=HI).choices[0].message.content
    assert [m.id for m in c.models.list()] == ["echo-1", "echo-2"]


def test_every_field_the_app_sends_reaches_an_openai_compatible_upstream(proxy, upstream):
    c = client(proxy())
    c.chat.completions.create(model="stub", user="maya", messages=HI, temperature=0.3,
                              max_tokens=17, stop=["\n"], response_format={"type": "json_object"},
                              extra_body={"top_k": 5})
    sent = upstream.requests[-1][0]
    assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["top_k"]) == (0.3, 17, ["\n"], 5)
    assert sent["response_format"] == {"type": "json_object"}


def test_requests_for_many_users_at_once_never_mix_summaries(proxy, tmp_path):
    """Isolation: 40 users, 240 concurrent requests (half streamed); every answer carries the
    requesting user's summary and no other's."""
    summaries = {f"u{i:02d}": f"Marker-{i:02d}-{'x' * (i % 5)} likes topic {i}." for i in range(40)}
    url = proxy(personalizer=make_personalizer(tmp_path, summaries))
    rng = random.Random(0)
    users = [rng.choice(sorted(summaries)) for _ in range(240)]

    async def ask(c, i, user):
        if i % 2:
            stream = await c.chat.completions.create(model="stub", user=user, messages=HI, stream=True)
            return "".join([ch.choices[0].delta.content or "" async for ch in stream])
        r = await c.chat.completions.create(model="stub", user=user, messages=HI)
        return r.choices[0].message.content

    async def main():
        c = openai.AsyncOpenAI(base_url=url, api_key="anything", max_retries=0)
        out = await asyncio.gather(*(ask(c, i, u) for i, u in enumerate(users)))
        await c.close()
        return out

    for user, text in zip(users, asyncio.run(main())):
        assert personal(summaries[user]) in text
        others = [u for u in summaries if u != user and f"Marker-{u[1:]}-" in text]
        assert not others, (user, others)


# -- authentication -------------------------------------------------------------------------
def test_proxy_keys(proxy):
    url = proxy(api_keys=[KEY, "second-key-0123456789"])
    with pytest.raises(openai.AuthenticationError, match="incorrect proxy API key"):
        client(url, key="wrong-key").chat.completions.create(model="stub", messages=HI)
    for key in (KEY, "second-key-0123456789"):
        assert client(url, key=key).chat.completions.create(model="stub", messages=HI).choices
    r = httpx2.get(url + "/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx2.get(url + "/users/maya/summary", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert httpx2.get(url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


# -- errors -----------------------------------------------------------------------------------
UPSTREAM_KEY = "sk-upstream-Zq8uXv3KpL0tW9yR"


def test_upstream_key_never_reaches_a_response_or_a_log(proxy, upstream, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", UPSTREAM_KEY)
    caplog.set_level(logging.DEBUG)
    url = proxy(generators=[f"bad=openai:fail-401@{upstream.url}"])
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(model="bad", messages=HI)
    err = caught.value
    assert err.status_code == 502 and err.body["code"] == "upstream_authentication"
    assert "rejected this server's credentials" in err.message
    assert "OPENAI_API_KEY" not in err.message  # the server's setup is for its log, not clients
    assert upstream.requests[-1][1]["authorization"] == f"Bearer {UPSTREAM_KEY}"  # it was sent...
    assert UPSTREAM_KEY not in err.response.text and "sk-upstream" not in err.response.text
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "rejected" in logged and UPSTREAM_KEY not in logged and "Zq8uXv" not in logged


@pytest.mark.parametrize("model, status, error, says", [
    ("fail-429", 429, openai.RateLimitError, "rate limiting this server"),
    ("fail-500", 502, openai.APIStatusError, "failed with a server error (500)"),
    ("fail-400", 400, openai.BadRequestError, "max_tokens is too large"),
])
def test_upstream_failures_map_to_openai_errors(proxy, upstream, model, status, error, says):
    url = proxy(generators=[f"m=openai:{model}@{upstream.url}"])
    with pytest.raises(error) as caught:
        client(url).chat.completions.create(model="m", messages=HI, stream=model == "fail-500")
    assert caught.value.status_code == status and says in caught.value.message
    if model == "fail-429":
        assert caught.value.response.headers["retry-after"] == "7"


def test_unreachable_and_slow_upstreams(proxy, upstream):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    url = proxy(generators=[f"dead=openai:x@{dead}", f"slow=openai:slow@{upstream.url}"],
                timeout=0.5)
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(model="dead", messages=HI)
    assert caught.value.status_code == 502 and "could not be reached" in caught.value.message
    # The client learns what happened, not the server's setup (its upstream URL, its settings).
    for setup in (dead, "127.0.0.1", "base_url", "OPENAI_BASE_URL", "timeout"):
        assert setup not in caught.value.response.text, setup
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(model="slow", messages=HI)
    assert caught.value.status_code == 504 and "did not answer in time" in caught.value.message
    assert "POPI_API_TIMEOUT" not in caught.value.response.text and upstream.url not in caught.value.response.text


def test_a_stream_that_breaks_off_ends_with_an_error_event(proxy, upstream):
    c = client(proxy(generators=[f"m=openai:fail-midstream@{upstream.url}"]))
    stream = c.chat.completions.create(model="m", user="maya", messages=HI, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content
    with pytest.raises(openai.APIError, match="broke off before its end"):
        list(stream)


def test_redactor_removes_keys_and_key_shaped_text():
    from popi_sdk.serve.errors import Redactor

    redact = Redactor(["my-secret-upstream-value"])
    text = ("key my-secret-upstream-value; Incorrect API key provided: sk-proj-****abcd; "
            "header Authorization: Bearer abc.def; token hf_abcdefghijkl")
    cleaned = redact(text)
    for leak in ("my-secret-upstream-value", "sk-proj", "abcd;", "abc.def", "hf_abcdefghijkl"):
        assert leak not in cleaned
    assert cleaned.count("[redacted]") == 4 and redact("a plain task-list stays") == "a plain task-list stays"


def test_bad_requests_get_openai_shaped_400s(proxy):
    url = proxy()
    for body, says in [(b"not json", "must be a JSON object"),
                       (b'{"model": "stub", "messages": []}', "'messages' must be a non-empty list"),
                       (b'{"messages": [{"content": "x"}]}', "messages[0] must be an object with a 'role'"),
                       (b'{"messages": [{"role": "user", "content": "x"}], "user": 5}', "'user' must be a string")]:
        r = httpx2.post(url + "/chat/completions", content=body,
                        headers={"content-type": "application/json"})
        assert r.status_code == 400, body
        error = r.json()["error"]
        assert says in error["message"] and error["type"] == "invalid_request_error"
    r = httpx2.get(url + "/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- Anthropic upstream: the real client, a mock transport -----------------------------------
def _sse(events):
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


class ClaudeStub:
    def __init__(self):
        self.requests = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        assert request.url.path == "/v1/messages"
        text = f"CLAUDE SYSTEM[{body.get('system', '-')}]"
        if body.get("stream"):
            events = [
                {"type": "message_start", "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                    "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": 9, "output_tokens": 0}}},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[:7]}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[7:]}},
                {"type": "content_block_stop", "index": 0},
                {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                 "usage": {"output_tokens": 4}},
                {"type": "message_stop"},
            ]
            return httpx2.Response(200, text=_sse(events), headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, json={
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 4}})


def test_anthropic_upstream_through_the_real_client(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key-123")
    claude = ClaudeStub()
    config = ServeConfig(generators=parse_generators(["claude=anthropic:claude-haiku-4-5"]),
                         max_retries=0)
    app = create_app(make_personalizer(tmp_path), config, clients={
        "async_http_client": httpx2.AsyncClient(transport=httpx2.MockTransport(claude))})
    with running(app) as base:
        c = client(base + "/v1")
        answer = c.chat.completions.create(model="claude", user="maya", max_tokens=50, messages=[
            {"role": "system", "content": "Be kind."}, *HI])
        assert answer.choices[0].message.content == (
            f"CLAUDE SYSTEM[Be kind.\n\n{personal(SUMMARIES['maya'])}]")
        assert answer.choices[0].finish_reason == "stop" and answer.usage.total_tokens == 13
        sent = claude.requests[-1]
        assert sent["max_tokens"] == 50 and sent["messages"] == HI and sent["model"] == "claude-haiku-4-5"

        chunks = list(c.chat.completions.create(model="claude", user="dr_chen", messages=HI, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
        assert text == f"CLAUDE SYSTEM[{personal(SUMMARIES['dr_chen'])}]"
        assert chunks[-1].choices[0].finish_reason == "length"
        assert claude.requests[-1]["max_tokens"] == 4096  # the Messages API needs a cap

        with pytest.raises(openai.BadRequestError, match="'tools' is not supported with generator 'claude'"):
            c.chat.completions.create(model="claude", messages=HI, tools=[{"type": "function", "function": {"name": "f"}}])
        with pytest.raises(openai.BadRequestError, match="must start with a user message"):
            c.chat.completions.create(model="claude", messages=[{"role": "assistant", "content": "hi"}])


# -- the command --------------------------------------------------------------------------------
def _start_cli(args, env):
    import subprocess
    import sys
    import tempfile

    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "popi_sdk.cli", "serve", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def test_popi_serve_command(tmp_path, upstream):
    import os
    import time

    port = free_port()
    p = make_personalizer(tmp_path)
    env = {**os.environ, "POPI_SERVE_API_KEYS": f"{KEY},other-key-0123456789",
           "OPENAI_API_KEY": UPSTREAM_KEY}
    proc, log = _start_cli(["--port", str(port), "--store", str(p.store.path), "--no-access-log",
                            "-g", f"stub=openai:echo-1@{upstream.url}",
                            "-g", f"bad=openai:fail-401@{upstream.url}"], env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "popi serve did not start"
            time.sleep(0.2)
        c = client(f"http://127.0.0.1:{port}/v1", key=KEY)
        answer = c.chat.completions.create(model="stub", user="maya", messages=HI)
        assert personal(SUMMARIES["maya"]) in answer.choices[0].message.content
        with pytest.raises(openai.APIStatusError):
            c.chat.completions.create(model="bad", user="maya", messages=HI)
        with pytest.raises(openai.AuthenticationError):
            client(f"http://127.0.0.1:{port}/v1", key="nope").models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log.seek(0)
    output = log.read().decode()
    assert "2 proxy key(s)" in output and "rejected this server's credentials" in output
    assert UPSTREAM_KEY not in output and KEY not in output


def test_popi_serve_refuses_an_open_host_without_keys(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "POPI_SERVE_API_KEYS"}
    done = subprocess.run([sys.executable, "-m", "popi_sdk.cli", "serve", "--host", "0.0.0.0",
                           "-g", "openai:x@http://127.0.0.1:9/v1"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "needs proxy API keys: pass --api-key KEY or set POPI_SERVE_API_KEYS" in done.stderr
    assert "Traceback" not in done.stderr


def test_openapi_documents_every_endpoint(proxy):
    url = proxy(api_keys=[KEY])
    root = url.removesuffix("/v1")
    for path in ("/openapi.json", "/docs"):  # behind the key, as every endpoint but /health
        assert httpx2.get(root + path).status_code == 401
        assert httpx2.get(root + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    schema = httpx2.get(root + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    paths = schema["paths"]
    assert {"/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/models",
            "/v1/users/{user_id}/summary",
            "/v1/users/{user_id}/summaries", "/v1/users/{user_id}/signals",
            "/v1/users/{user_id}/score", "/v1/users/{user_id}"} <= set(paths)
    assert set(paths["/v1/users/{user_id}/summary"]) == {"get", "put"}
    assert "delete" in paths["/v1/users/{user_id}"]
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"HTTPBearer": []}]
    assert "user" in chat["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in paths.values():
        for op in path.values():
            assert op.get("description") or op.get("summary"), op
