"""The ``openai`` backend through the real ``openai`` client.

End to end against a real OpenAI-compatible server (``transformers serve`` with the embedded model,
the ``openai_server`` fixture); OpenAI's own error replies, which no local server produces, through
the client's ``httpx2`` mock transport.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx2
import pytest

from popi_sdk import Personalizer, UserSignals
from popi_sdk.backends import GenerateOptions, get_backend
from popi_sdk.backends.openai_backend import OpenAIBackend
from popi_sdk.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ModelNotFoundError,
    RateLimitError,
)
from popi_sdk.templates import summary_messages

TINY = GenerateOptions(max_new_tokens=8)
USER = UserSignals(
    user_id="kid",
    persona="I am 8 years old and love dinosaurs.",
    pairs=[
        {
            "prompt": "What is rain?",
            "chosen": "Rain is water falling from clouds, like a big sky shower!",
            "rejected": "Precipitation occurs when condensed atmospheric water vapour coalesces.",
        }
    ],
)


@pytest.fixture
def no_openai_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def served(openai_server, smollm2_dir, no_openai_env):
    """The backend for the local server: no key set, as for any self-hosted server."""
    return OpenAIBackend(str(smollm2_dir), base_url=openai_server, timeout=300, max_retries=0)


# -- a real server ---------------------------------------------------------------------------
def test_generate_through_a_real_server(served):
    text = served.generate(summary_messages("Name one color.", "The user likes short answers."), TINY)
    assert isinstance(text, str) and text.strip()


def test_personalizer_summarizes_and_generates_through_the_server(served, tmp_path):
    p = Personalizer(summarizer=served, generator=served, store=tmp_path / "s.sqlite", summary_tokens=16)
    summary = p.summarize(USER)
    assert summary.text and summary.summarizer == served.name
    assert p.summarize(USER).created_at == summary.created_at  # second time: from the store
    answer = p.generate("What is a volcano?", user_id="kid", max_new_tokens=8)
    assert answer.text and answer.backend == served.name and answer.summary.text == summary.text


def test_async_and_concurrent_batches_through_the_server(served, tmp_path):
    p = Personalizer(summarizer=served, generator=served, store=tmp_path / "s.sqlite")
    prompts = ["Name a fruit.", "Name a planet."]
    batch = p.generate_many(prompts, summaries=["Likes one-word answers."] * 2, max_new_tokens=6,
                            max_concurrency=2)
    assert [g.prompt for g in batch] == prompts and all(g.text for g in batch)
    one = asyncio.run(p.agenerate("Name a bird.", summary="Likes one-word answers.", max_new_tokens=6))
    assert one.text and one.summary == "Likes one-word answers."  # the summary as given


def test_unknown_model_on_a_real_server(openai_server, no_openai_env):
    backend = OpenAIBackend("no-such-model", base_url=openai_server, max_retries=0)
    with pytest.raises(ModelNotFoundError, match="no-such-model") as err:
        backend.generate([{"role": "user", "content": "hi"}], TINY)
    assert openai_server in str(err.value)


# -- configuration ---------------------------------------------------------------------------
def test_base_url_resolves_argument_then_env_then_openai(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert OpenAIBackend("gpt-4o").base_url == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gateway.internal/v1")
    assert OpenAIBackend("gpt-4o").base_url == "http://gateway.internal/v1"
    assert OpenAIBackend("gpt-4o", base_url="http://127.0.0.1:9/v1/").base_url == "http://127.0.0.1:9/v1"


def test_registry_name_and_options(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    backend = get_backend("openai:gpt-4o", base_url="http://127.0.0.1:9/v1", max_retries=0)
    assert isinstance(backend, OpenAIBackend) and backend.name == "openai:gpt-4o"
    assert backend.client.max_retries == 0
    assert get_backend("openai").model == "gpt-4o-mini"


def test_missing_key_names_the_variable(no_openai_env):
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o")


def test_connection_refused_names_the_url(no_openai_env):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    backend = OpenAIBackend("m", base_url=url, max_retries=0)
    with pytest.raises(BackendConnectionError, match=f"could not connect to {url}"):
        backend.generate([{"role": "user", "content": "hi"}], TINY)


# -- OpenAI's own replies, through the real client and a mock transport ----------------------
def completion(text: str, model: str = "gpt-4o") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def error(message: str, type_: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def official(handler, **options) -> OpenAIBackend:
    return OpenAIBackend(
        "gpt-4o",
        api_key="sk-test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        **options,
    )


def test_request_body_on_the_official_endpoint():
    seen = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        assert request.url == "https://api.openai.com/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-test"
        return httpx2.Response(200, json=completion("Short and sweet."))

    backend = official(handler)
    messages = summary_messages("Why is the sky blue?", "The user is a child.")
    assert backend.generate(messages, GenerateOptions(max_new_tokens=12, seed=3)) == "Short and sweet."
    assert seen == [
        {
            "model": "gpt-4o",
            "messages": messages,
            "temperature": 0.0,
            "max_completion_tokens": 12,
            "seed": 3,
        }
    ]


@pytest.mark.parametrize(
    ("status", "body", "expected", "match"),
    [
        (401, error("Incorrect API key provided: sk-test.", "invalid_request_error", "invalid_api_key"),
         AuthenticationError, "rejected.*OPENAI_API_KEY"),
        (404, error("The model `gpt-4o` does not exist or you do not have access to it.",
                    "invalid_request_error", "model_not_found"), ModelNotFoundError, "'gpt-4o'"),
        (429, error("Rate limit reached for gpt-4o.", "requests", "rate_limit_exceeded"),
         RateLimitError, "after 2 retries.*Rate limit reached"),
        (500, error("The server had an error.", "server_error", None), BackendError,
         r"server error \(500\) after 2 retries"),
    ],
)
def test_api_errors_become_popi_errors(status, body, expected, match):
    calls = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(status, json=body, headers={"retry-after-ms": "1"})

    with pytest.raises(expected, match=match) as err:
        official(handler, max_retries=2).generate([{"role": "user", "content": "hi"}], TINY)
    assert str(err.value).startswith("[openai:gpt-4o]")
    assert len(calls) == (3 if status in (429, 500) else 1)  # the client's own retries only


def test_timeout_after_the_clients_retries():
    calls = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        raise httpx2.ReadTimeout("timed out", request=request)

    with pytest.raises(BackendTimeoutError, match="within 5 s after 1 retries"):
        official(handler, max_retries=1, timeout=5).generate([{"role": "user", "content": "hi"}], TINY)
    assert len(calls) == 2


def test_batches_keep_at_most_max_concurrency_requests_in_flight():
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def handler(request: httpx2.Request) -> httpx2.Response:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        prompt = json.loads(request.content)["messages"][-1]["content"]
        return httpx2.Response(200, json=completion(f"answer to {prompt}"))

    backend = official(handler, max_concurrency=3)
    p = Personalizer(summarizer=backend, generator=backend, store=":memory:")
    prompts = [f"q{i}" for i in range(10)]
    out = p.generate_many(prompts, max_new_tokens=4, progress=True)
    assert [g.text for g in out] == [f"answer to q{i}" for i in range(10)]
    assert 1 < state["peak"] <= 3


def test_async_batches_are_bounded_too():
    state = {"now": 0, "peak": 0}

    async def handler(request: httpx2.Request) -> httpx2.Response:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1
        prompt = json.loads(request.content)["messages"][-1]["content"]
        return httpx2.Response(200, json=completion(f"answer to {prompt}"))

    backend = OpenAIBackend(
        "gpt-4o",
        api_key="sk-test",
        async_http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        max_concurrency=2,
    )
    p = Personalizer(summarizer=backend, generator=backend, store=":memory:")
    out = asyncio.run(p.agenerate_many([f"q{i}" for i in range(6)], max_new_tokens=4))
    assert [g.text for g in out] == [f"answer to q{i}" for i in range(6)]
    assert state["peak"] == 2


def test_cli_generate_with_base_url(openai_server, smollm2_dir, no_openai_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from popi_sdk.cli import app

    monkeypatch.setenv("POPI_API_TIMEOUT", "300")  # a CPU server: far slower than the default

    result = CliRunner().invoke(app, [
        "generate", "--prompt", "Name one color.", "--backend", f"openai:{smollm2_dir}",
        "--base-url", openai_server, "--max-new-tokens", "4", "--store", str(tmp_path / "s.sqlite"),
    ])
    assert result.exit_code == 0, result.output
    assert result.output.strip()


def test_missing_client_says_how_to_install(monkeypatch):
    import sys

    from popi_sdk.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "openai", None)  # what an uninstalled package looks like
    with pytest.raises(MissingDependencyError, match=r'pip install "openai>=3"'):
        OpenAIBackend("gpt-4o", api_key="sk-test")


def test_a_failed_batch_keeps_what_was_done_and_resumes(tmp_path):
    failing = {"on": True}
    asked = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        signals = json.loads(request.content)["messages"][-1]["content"]
        asked.append(signals)
        if failing["on"] and "user number 3" in signals:
            return httpx2.Response(400, json=error("This request is malformed.", "invalid_request_error", None))
        return httpx2.Response(200, json=completion("The user prefers brevity."))

    users = [UserSignals(user_id=f"u{i}", persona=f"I am user number {i}.") for i in range(5)]
    p = Personalizer(summarizer=official(handler), store=tmp_path / "s.sqlite")
    with pytest.raises(BackendError, match=r"rejected the request \(400\): This request is malformed"):
        p.summarize_many(users, max_concurrency=1, progress=False)
    assert [p.cached(u) is not None for u in users] == [True, True, True, False, False]
    failing["on"] = False
    asked.clear()
    summaries = p.summarize_many(users, max_concurrency=1, progress=False)
    assert [s.user_id for s in summaries] == [u.user_id for u in users]
    assert len(asked) == 2  # only the two users not stored yet
