"""A loopback OpenAI-compatible server for the proxy's tests: it answers with the system message it
received (so a test sees exactly which summary reached the generator) and fails on request."""

from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

#: What the stub says when it is asked to reject the proxy's key: providers echo part of the key.
LEAKY_401 = "Incorrect API key provided: {key}. You can find your API key at example.invalid."


def echo_text(body: dict) -> str:
    system = [m["content"] for m in body["messages"] if m["role"] == "system"]
    last = body["messages"][-1]["content"]
    return f"SYSTEM[{' || '.join(system) if system else '-'}] MODEL[{body['model']}] LAST[{last}]"


class EchoServer:
    """``app`` serves ``/v1/chat/completions`` and ``/v1/models``; ``requests`` records each
    request's JSON body and headers. The requested model chooses a failure: ``fail-401``,
    ``fail-429``, ``fail-500``, ``fail-400``, ``slow`` (sleeps 2 s), ``fail-midstream`` (breaks off
    a stream after its first chunk)."""

    def __init__(self, models=("echo-1",)):
        self.requests: list[tuple[dict, dict]] = []
        self.models = list(models)
        # Compressed like a real server's answers, whenever the client accepts it.
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
        ], middleware=[Middleware(GZipMiddleware, minimum_size=1)])

    async def list_models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1, "owned_by": "stub"} for m in self.models]})

    async def chat(self, request: Request):
        body = await request.json()
        self.requests.append((body, dict(request.headers)))
        model = body["model"]
        if model == "fail-401":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            return JSONResponse({"error": {"message": LEAKY_401.format(key=key), "type":
                                           "invalid_request_error", "code": "invalid_api_key"}},
                                status_code=401)
        if model == "fail-429":
            return JSONResponse({"error": {"message": "Rate limit reached", "type": "requests"}},
                                status_code=429, headers={"retry-after": "7"})
        if model == "fail-500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}},
                                status_code=500)
        if model == "fail-400":
            return JSONResponse({"error": {"message": "max_tokens is too large", "type":
                                           "invalid_request_error"}}, status_code=400)
        if model == "slow":
            await asyncio.sleep(2)
        text = echo_text(body)
        if body.get("stream"):
            usage = (body.get("stream_options") or {}).get("include_usage", False)
            return StreamingResponse(self._chunks(model, text, usage),
                                     media_type="text/event-stream")
        return JSONResponse({
            "id": "chatcmpl-stub", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        }, headers={"x-request-id": "req-stub-1", "x-ratelimit-remaining-requests": "99",
                    "openai-organization": "org-operator"})

    @staticmethod
    async def _chunks(model: str, text: str, usage: bool = False):
        third = max(1, len(text) // 3)
        pieces = [text[:third], text[third: 2 * third], text[2 * third:]]
        for i, piece in enumerate(pieces):
            delta = {"content": piece} if i else {"role": "assistant", "content": piece}
            chunk = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1,
                     "model": model, "choices": [{"index": 0, "delta": delta,
                                                   "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            await asyncio.sleep(0)
            if model == "fail-midstream":  # the server dies after its first chunk
                raise ConnectionAbortedError("the stub stops in the middle of its answer")
        done = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(done)}\n\n"
        if usage:  # as OpenAI does with stream_options.include_usage: one more chunk, no choices
            counts = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
            last = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1,
                    "model": model, "choices": [], "usage": counts}
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"
