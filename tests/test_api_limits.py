"""What both API backends share: credentials in a base URL never reach a message, and a hung
server fails within a bound that is visible and set as argument, then environment, then default.
The real ``openai`` and ``anthropic`` clients throughout; a real socket for the hung server."""

from __future__ import annotations

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
)
from popi_sdk.redact import redact_text, redact_url
from popi_sdk.settings import DEFAULT_API_MAX_RETRIES, DEFAULT_API_TIMEOUT, api_total_bound

HI = [{"role": "user", "content": "hi"}]
TINY = GenerateOptions(max_new_tokens=4)
BACKENDS = {"openai": OpenAIBackend, "anthropic": AnthropicBackend}
SECRET = "hunter2-SECRET"


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for var in ("POPI_API_TIMEOUT", "POPI_API_MAX_RETRIES", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
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
    assert (default.client.timeout, default.client.max_retries) == (15.0, 2)
    # 3 attempts x 15 s + 0.5 s + 1 s of backoff: under the 60 s most gateways allow.
    assert default.total_bound == pytest.approx(46.5) and default.total_bound < 60
    assert "timeout 15 s x 3 attempts" in repr(default)
    monkeypatch.setenv("POPI_API_TIMEOUT", "4.5")
    monkeypatch.setenv("POPI_API_MAX_RETRIES", "0")
    from_env = cls("m", api_key="k")
    assert (from_env.timeout, from_env.max_retries, from_env.total_bound) == (4.5, 0, 4.5)
    given = cls("m", api_key="k", timeout=60, max_retries=3)
    assert (given.client.timeout, given.client.max_retries) == (60.0, 3)
    assert given.total_bound == api_total_bound(60, 3) == 60 * 4 + 0.5 + 1 + 2


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
