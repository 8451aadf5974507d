"""The ``anthropic`` backend through the real ``anthropic`` client. Anthropic's API cannot run here,
so requests go through the client's ``httpx2`` mock transport, whose handler checks each request
body and answers the way the Messages API does, failures included."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest

from popi_sdk import Personalizer, UserSignals
from popi_sdk.backends import GenerateOptions, get_backend
from popi_sdk.backends.anthropic_backend import AnthropicBackend
from popi_sdk.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    InputError,
    ModelNotFoundError,
    RateLimitError,
)
from popi_sdk.templates import GENERATOR_SUMMARY_SYSTEM, SUMMARIZER_SYSTEM

MODEL = "claude-haiku-4-5"
USER = UserSignals(
    user_id="dr_chen",
    persona="I am a physics professor.",
    pairs=[
        {
            "prompt": "Why is the sky blue?",
            "chosen": "Rayleigh scattering: intensity scales as 1/lambda^4.",
            "rejected": "Because blue light bounces around a lot!",
        }
    ],
)


def message(text: str, model: str = MODEL) -> dict:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 4},
    }


def api_error(status: int, type_: str, text: str) -> httpx2.Response:
    return httpx2.Response(
        status,
        json={"type": "error", "error": {"type": type_, "message": text}, "request_id": "req_1"},
        headers={"retry-after-ms": "1"},
    )


class FakeClaude:
    """A handler that checks every request as the Messages API would see it and records it;
    ``reply(body)`` gives the answer: a message dict, or a whole response."""

    def __init__(self, reply=lambda body: message("A precise answer.")):
        self.requests: list[dict] = []
        self.reply = reply

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        try:
            assert request.method == "POST" and request.url.path == "/v1/messages"
            assert request.headers.get("authorization") == "Bearer sk-ant-test"
            assert set(body) <= {"model", "system", "messages", "max_tokens"}, sorted(body)
            assert body["model"] == MODEL and body["max_tokens"] >= 1
            assert all(m["role"] in ("user", "assistant") for m in body["messages"])  # no fake turns
            assert body["messages"][0]["role"] == "user"
        except AssertionError as e:  # raised in here it would surface as a connection error
            return api_error(400, "invalid_request_error", f"mock API refused the request: {e!r}")
        self.requests.append(body)
        reply = self.reply(body)
        return reply if isinstance(reply, httpx2.Response) else httpx2.Response(200, json=reply)

    def backend(self, **options) -> AnthropicBackend:
        options.setdefault("max_retries", 0)
        return AnthropicBackend(
            MODEL,
            api_key="sk-ant-test",
            http_client=httpx2.Client(transport=httpx2.MockTransport(self)),
            **options,
        )


def test_summary_goes_in_the_system_field(tmp_path):
    claude = FakeClaude()
    backend = claude.backend()
    p = Personalizer(summarizer=backend, generator=backend, store=tmp_path / "s.sqlite")
    answer = p.generate("Why is the sky blue?", summary="The user is a physicist.", max_new_tokens=50)
    assert answer.text == "A precise answer." and answer.backend == f"anthropic:{MODEL}"
    assert claude.requests == [
        {
            "model": MODEL,
            "system": GENERATOR_SUMMARY_SYSTEM.format(summary="The user is a physicist."),
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "max_tokens": 50,
        }
    ]


def test_claude_as_summarizer_then_cached(tmp_path):
    claude = FakeClaude(lambda body: message("The user prefers rigorous, technical answers."))
    p = Personalizer(summarizer=claude.backend(), generator=claude.backend(), store=tmp_path / "s.sqlite")
    summary = p.summarize(USER)
    assert summary.text == "The user prefers rigorous, technical answers."
    assert summary.summarizer == f"anthropic:{MODEL}"
    (request,) = claude.requests
    assert request["system"] == SUMMARIZER_SYSTEM and request["max_tokens"] == p.summary_spec.max_tokens == 96
    assert "Rayleigh scattering" in request["messages"][0]["content"]
    assert p.summarize(USER) == summary and len(claude.requests) == 1  # from the store
    p.generate("What is entropy?", user_id="dr_chen", max_new_tokens=20)
    assert claude.requests[-1]["system"] == GENERATOR_SUMMARY_SYSTEM.format(
        summary="The user prefers rigorous, technical answers."
    )


def test_only_the_length_cap_of_the_options_is_sent():
    claude = FakeClaude()
    options = GenerateOptions(max_new_tokens=5, temperature=0.7, top_p=0.9, seed=1)
    claude.backend().generate([{"role": "user", "content": "hi"}], options)
    assert claude.requests[-1] == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.mark.parametrize(
    ("status", "type_", "text", "expected", "match", "calls"),
    [
        (401, "authentication_error", "invalid x-api-key", AuthenticationError,
         "rejected.*ANTHROPIC_API_KEY", 1),
        (404, "not_found_error", f"model: {MODEL}", ModelNotFoundError, f"'{MODEL}'", 1),
        (429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.",
         RateLimitError, "after 2 retries.*rate limit", 3),
        (500, "api_error", "Internal server error", BackendError, r"server error \(500\) after 2 retries", 3),
        (529, "overloaded_error", "Overloaded", BackendError, r"\(529\) after 2 retries: Overloaded", 3),
    ],
)
def test_api_errors_become_popi_errors(status, type_, text, expected, match, calls):
    claude = FakeClaude(lambda body: api_error(status, type_, text))
    with pytest.raises(expected, match=match) as err:
        claude.backend(max_retries=2).generate([{"role": "user", "content": "hi"}], GenerateOptions())
    assert str(err.value).startswith(f"[anthropic:{MODEL}]")
    assert len(claude.requests) == calls  # the client's own retries, nothing more


def test_timeout_after_the_clients_retries():
    def handler(request: httpx2.Request) -> httpx2.Response:
        handler.calls += 1
        raise httpx2.ReadTimeout("timed out", request=request)

    handler.calls = 0
    backend = AnthropicBackend(
        MODEL, api_key="sk-ant-test", timeout=7, max_retries=1,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    with pytest.raises(BackendTimeoutError, match="https://api.anthropic.com within 7 s after 1 retries"):
        backend.generate([{"role": "user", "content": "hi"}], GenerateOptions())
    assert handler.calls == 2


def test_connection_refused_names_the_url():
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("[Errno 111] Connection refused", request=request)

    backend = AnthropicBackend(
        MODEL, api_key="sk-ant-test", base_url="http://127.0.0.1:9", max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    with pytest.raises(BackendConnectionError, match="could not connect to http://127.0.0.1:9.*refused"):
        backend.generate([{"role": "user", "content": "hi"}], GenerateOptions())


@pytest.fixture
def no_anthropic_env(monkeypatch, tmp_path):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE",
                "ANTHROPIC_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no credentials file either


def test_missing_key_names_the_variable(no_anthropic_env):
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        AnthropicBackend(MODEL)


def test_key_and_base_url_from_the_environment(no_anthropic_env, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://gateway.example")
    backend = get_backend("anthropic:claude-haiku-4-5", max_retries=0)
    assert isinstance(backend, AnthropicBackend) and backend.base_url == "https://gateway.example"
    assert backend.client.api_key == "sk-ant-test" and backend.name == "anthropic:claude-haiku-4-5"


def test_a_self_hosted_server_needs_no_key(no_anthropic_env):
    seen = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json=message("ok"))

    backend = AnthropicBackend(
        MODEL, base_url="http://127.0.0.1:8080",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    assert backend.generate([{"role": "user", "content": "hi"}], GenerateOptions()) == "ok"
    assert str(seen[0].url) == "http://127.0.0.1:8080/v1/messages"


def test_conversation_must_start_with_a_user_turn():
    backend = FakeClaude().backend()
    with pytest.raises(InputError, match="start with a user message"):
        backend.generate([{"role": "assistant", "content": "hi"}], GenerateOptions())


def test_async_summaries_and_answers_are_bounded():
    state = {"now": 0, "peak": 0, "requests": []}

    async def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        state["requests"].append(body)
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1
        if body["system"] == SUMMARIZER_SYSTEM:
            return httpx2.Response(200, json=message("The user prefers depth."))
        return httpx2.Response(200, json=message(f"answer to {body['messages'][0]['content']}"))

    backend = AnthropicBackend(
        MODEL, api_key="sk-ant-test", max_concurrency=3, max_retries=0,
        async_http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    p = Personalizer(summarizer=backend, generator=backend, store=":memory:")
    users = [USER.model_copy(update={"user_id": f"u{i}"}) for i in range(7)]

    async def app():
        summaries = await p.asummarize_many(users, progress=True)
        one = await p.agenerate("What is entropy?", user_id="u0", max_new_tokens=30)
        again = await p.asummarize(users[0])  # cached: no request
        return summaries, one, again

    summaries, one, again = asyncio.run(app())
    assert [s.user_id for s in summaries] == [f"u{i}" for i in range(7)]
    assert all(s.text == "The user prefers depth." for s in summaries)
    assert state["peak"] == 3
    assert one.text == "answer to What is entropy?" and again == summaries[0]
    assert len(state["requests"]) == 8
    assert state["requests"][-1]["system"] == GENERATOR_SUMMARY_SYSTEM.format(summary="The user prefers depth.")


def test_a_summary_written_by_openai_conditions_claude(tmp_path):
    """Transfer: Inference-Prompting with an OpenAI summarizer, answers from Claude, one summary."""
    from popi_sdk.backends.openai_backend import OpenAIBackend

    def openai_handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        assert body["model"] == "gpt-4o-mini" and body["messages"][0]["content"] == SUMMARIZER_SYSTEM
        return httpx2.Response(200, json={
            "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Summary: The user wants rigor."}}],
        })

    gpt = OpenAIBackend(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(openai_handler)))
    claude = FakeClaude()
    p = Personalizer(summarizer=gpt, generator=claude.backend(), store=tmp_path / "s.sqlite")
    summary = p.summarize(USER)
    assert summary.text == "The user wants rigor." and summary.summarizer == "openai:gpt-4o-mini"
    p.generate("What is entropy?", user_id=USER.user_id, max_new_tokens=40)
    assert claude.requests[-1]["system"] == GENERATOR_SUMMARY_SYSTEM.format(summary="The user wants rigor.")
