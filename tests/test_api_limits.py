"""What both API backends share: credentials in a base URL never reach a message, and a hung
server fails within a bound that is visible and set as argument, then environment, then default.
The real ``openai`` and ``anthropic`` clients throughout; a real socket for the hung server."""

from __future__ import annotations

import json

import socket
import threading
import time

import httpx2
import pytest

from popi_sdk.backends import GenerateOptions
from popi_sdk.backends.anthropic_backend import AnthropicBackend
from popi_sdk.backends.openai_backend import OpenAIBackend
from popi_sdk.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    BadResponseError,
    InputError,
)
from popi_sdk.redact import redact_text, redact_url
from popi_sdk.settings import DEFAULT_API_MAX_RETRIES, DEFAULT_API_TIMEOUT, api_total_bound

HI = [{"role": "user", "content": "hi"}]
TINY = GenerateOptions(max_new_tokens=4)
BACKENDS = {"openai": OpenAIBackend, "anthropic": AnthropicBackend}
SECRET = "hunter2-SECRET"


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for var in ("POPI_API_TIMEOUT", "POPI_API_CONNECT_TIMEOUT", "POPI_API_MAX_RETRIES",
                "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


# -- redaction --------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:PASS@host:8000/v1", "http://***@host:8000/v1"),
    ("https://TOKEN@gateway.example/v1", "https://***@gateway.example/v1"),
    ("https://h/v1?api-key=SK&region=eu", "https://h/v1?api-key=***&region=eu"),
    ("https://h/v1?access_token=a&X-Amz-Signature=b&sig=c", "https://h/v1?access_token=***&X-Amz-Signature=***&sig=***"),
    ("http://u:p@h/v1?key=k", "http://***@h/v1?key=***"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_redact_url_masks_userinfo_and_secret_query_values(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"could not reach {url}: refused") == f"could not reach {shown}: refused"


def _hostile_url(port: int) -> str:
    return f"http://admin:{SECRET}@127.0.0.1:{port}/v1?api-key={SECRET}&token={SECRET}"


@pytest.mark.parametrize("api", list(BACKENDS))
def test_credentials_in_the_base_url_never_reach_a_message(api):
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/refuse"):
            raise httpx2.ConnectError(f"refused by {request.url}", request=request)
        return httpx2.Response(401, json={"error": {"message": f"bad key for {request.url}"}})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    made = []
    for base in (_hostile_url(port), _hostile_url(port).replace("/v1?", "/refuse?")):
        backend = BACKENDS[api]("m", base_url=base, max_retries=0,
                                http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
        made.append(backend)
        with pytest.raises(BackendError) as info:
            backend.generate(HI, TINY)
        assert SECRET not in str(info.value) and "***@127.0.0.1" in str(info.value), str(info.value)
    assert all(SECRET not in repr(b) for b in made)
    # A real refused connection (nothing listens on the port) and a 200 that is not a reply.
    real = BACKENDS[api]("m", base_url=_hostile_url(port), max_retries=0)
    with pytest.raises(BackendConnectionError) as info:
        real.generate(HI, TINY)
    assert SECRET not in str(info.value)
    page = BACKENDS[api]("m", base_url=_hostile_url(port), max_retries=0, http_client=httpx2.Client(
        transport=httpx2.MockTransport(lambda r: httpx2.Response(200, text=f"<a href='{r.url}'>x</a>"))))
    with pytest.raises(BadResponseError) as info:
        page.generate(HI, TINY)
    assert SECRET not in str(info.value)


# -- timeouts and retries ---------------------------------------------------------------------
@pytest.mark.parametrize("api", list(BACKENDS))
def test_timeout_and_retries_resolve_argument_then_environment_then_default(api, monkeypatch):
    cls = BACKENDS[api]
    default = cls("m", api_key="k")
    assert (default.timeout, default.max_retries) == (DEFAULT_API_TIMEOUT, DEFAULT_API_MAX_RETRIES)
    # A long answer gets the official clients' 600 s; a dead server fails on the 5 s connect.
    timeout = default.client.timeout
    assert (timeout.connect, timeout.read, default.client.max_retries) == (5.0, 600.0, 2)
    assert default.connect_bound == pytest.approx(16.5)  # 3 x 5 s + 0.5 s + 1 s of backoff
    assert "timeout 600 s (connect 5 s) x 3 attempts" in repr(default)
    monkeypatch.setenv("POPI_API_TIMEOUT", "4.5")
    monkeypatch.setenv("POPI_API_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("POPI_API_MAX_RETRIES", "0")
    from_env = cls("m", api_key="k")
    assert (from_env.timeout, from_env.max_retries, from_env.total_bound) == (4.5, 0, 4.5)
    assert (from_env.client.timeout.connect, from_env.client.timeout.read) == (2.0, 4.5)
    given = cls("m", api_key="k", timeout=60, connect_timeout=1, max_retries=3)
    assert (given.client.timeout.read, given.client.timeout.connect) == (60.0, 1.0)
    assert given.client.max_retries == 3
    assert given.total_bound == api_total_bound(60, 3) == 60 * 4 + 0.5 + 1 + 2
    with pytest.raises(InputError, match="connect_timeout"):
        cls("m", api_key="k", connect_timeout=0)


class SlowServer:
    """A real OpenAI-compatible server whose answer takes ``delay`` seconds (non-streamed), or
    whose stream sends a chunk every ``delay`` seconds."""

    def __init__(self, delay: float, chunks: int = 1):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if not body.get("stream"):
                    time.sleep(outer.delay)
                    data = json.dumps({"id": "x", "object": "chat.completion", "created": 1,
                                       "model": "m", "choices": [{"index": 0, "finish_reason":
                                       "stop", "message": {"role": "assistant",
                                                           "content": "slow but complete"}}]})
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data.encode())
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for i in range(outer.chunks):
                    time.sleep(outer.delay)
                    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1,
                             "model": "m", "choices": [{"index": 0, "delta": {"content": f"{i} "},
                                                        "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.delay, self.chunks = delay, chunks
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_long_answer_is_not_cut_short_by_the_connect_timeout(monkeypatch):
    from popi_sdk.backends.openai_backend import OpenAIBackend

    monkeypatch.setenv("POPI_API_CONNECT_TIMEOUT", "0.3")  # connecting is quick on loopback
    server = SlowServer(delay=1.0)
    try:
        backend = OpenAIBackend("m", base_url=server.url, max_retries=0)
        assert backend.generate(HI, TINY) == "slow but complete"  # 1 s > the connect timeout
    finally:
        server.close()
    streaming = SlowServer(delay=0.4, chunks=4)  # 1.6 s in all, 0.4 s between chunks
    try:
        backend = OpenAIBackend("m", base_url=streaming.url, max_retries=0, timeout=1.0)
        assert "".join(backend.stream(HI, TINY)) == "0 1 2 3 "  # the limit is between chunks
    finally:
        streaming.close()


class HungServer:
    """A real TCP server that accepts connections and reads requests but never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)  # held open, never answered

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("api", list(BACKENDS))
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_hung_server_fails_within_the_visible_bound(api, mode, monkeypatch):
    import asyncio

    server = HungServer()
    monkeypatch.setenv("POPI_API_TIMEOUT", "0.4")
    monkeypatch.setenv("POPI_API_MAX_RETRIES", "1")
    try:
        backend = BACKENDS[api]("m", base_url=server.url)
        assert backend.total_bound == pytest.approx(0.4 * 2 + 0.5)
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError) as info:
            asyncio.run(backend.agenerate(HI, TINY)) if mode == "async" else backend.generate(HI, TINY)
        took = time.monotonic() - started
    finally:
        server.close()
    assert 0.4 * 2 <= took <= backend.total_bound + 2.0, took  # both attempts ran, no more
    assert server.accepted == 2
    message = str(info.value)
    assert "within 0.4 s after 1 retries (about 1 s in all)" in message
    assert "POPI_API_TIMEOUT" in message


def test_missing_key_error_is_unchanged_by_the_shared_constructor(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o")
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        AnthropicBackend("claude")
    # A self-hosted server that checks no key needs none, for either client.
    for cls in BACKENDS.values():
        assert cls("m", base_url="http://127.0.0.1:9/v1").client.api_key == "not-needed"
