"""``POST /v1/messages``: Anthropic's Messages API, so an app on the ``anthropic`` client adopts the
proxy by changing its ``base_url``. The request is translated to a chat completion, personalized and
answered by the same path as ``/v1/chat/completions`` (whatever the generator is: Claude, an
OpenAI-compatible server, a local model), and translated back: a ``message`` object, or with
``stream: true`` the Messages API's events (``message_start`` ... ``content_block_delta`` ...
``message_stop``). Errors come in Anthropic's shape, ``{"type": "error", "error": {"type",
"message"}}``, so the ``anthropic`` client raises its usual exceptions.

The key may come as ``x-api-key`` (the ``anthropic`` client's ``api_key``) or as a Bearer token;
the user as ``metadata.user_id`` (or any of the fields :mod:`popi_sdk.serve.identity` reads).
Text only: tool use, images, documents and extended thinking are refused with a 400 naming the
field; ``top_k`` is ignored (OpenAI-compatible generators have no common equivalent).
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from popi_sdk.errors import InputError, PopiError
from popi_sdk.serve.chat_answer import read_completion, read_stream, sse
from popi_sdk.serve.errors import APIErrorBody, Redactor, to_api_error
from popi_sdk.serve.identity import body_user
from popi_sdk.serve.responses import check_int

log = logging.getLogger("popi_sdk.serve")

REFUSED = ("tools", "tool_choice", "mcp_servers", "container")
#: Chat finish reasons as the Messages API's stop reasons.
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
               "function_call": "tool_use", "content_filter": "refusal"}
#: HTTP status to the Messages API's error type (the ``anthropic`` client picks its exception
#: class by status; the type is what apps log).
ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error",
              403: "permission_error", 404: "not_found_error", 413: "request_too_large",
              429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}


AUTH_MISSING = ("no proxy API key: send one as x-api-key (the anthropic client's api_key) or "
                "as Authorization: Bearer KEY (its auth_token)")


def anthropic_error(err: APIErrorBody) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPE.get(err.status, "api_error"),
                                       "message": err.message}}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InputError(f"{where} must be a string or a list of text blocks", param=where)
    parts = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text":
            raise InputError(f"{where}[{j}] of type {kind!r} is not supported: this server "
                             "relays text blocks only", param=f"{where}[{j}]")
        parts.append(str(block.get("text", "")))
    return "".join(parts)


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion request a Messages API request amounts to."""
    for name in REFUSED:
        if body.get(name) not in (None, [], {}):
            raise InputError(f"'{name}' is not supported by this server's /v1/messages (it "
                             "relays text); leave it out", param=name)
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
        raise InputError("extended thinking is not supported by this server", param="thinking")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise InputError("'model' must be a string", param="model")
    if body.get("max_tokens") is None:
        raise InputError("'max_tokens' is required (the most tokens to write)", param="max_tokens")
    cap = check_int(body, "max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InputError("'stream' must be true or false", param="stream")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError("'messages' must be a non-empty list of {role, content} objects",
                         param="messages")
    turns = []
    system = body.get("system")
    if system is not None:
        text = _text(system, "system")
        if text:
            turns.append({"role": "system", "content": text})
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise InputError(f"messages[{i}] must be an object whose role is user or assistant",
                             param=f"messages[{i}].role")
        turns.append({"role": m["role"], "content": _text(m.get("content"),
                                                          f"messages[{i}].content")})
    chat: dict[str, Any] = {"messages": turns, "stream": stream, "max_tokens": cap}
    if body.get("model"):
        chat["model"] = body["model"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InputError("'stop_sequences' must be a list of strings", param="stop_sequences")
        chat["stop"] = stop
    user = body_user(body)
    if user is not None:
        chat["user"] = user
    if stream:  # so message_delta can carry usage, as the Messages API's does
        chat["stream_options"] = {"include_usage": True}
    return chat


def _message(id_: str, model: str, text: str | None, stop: str | None, usage: dict) -> dict:
    return {"id": id_, "type": "message", "role": "assistant", "model": model,
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": stop, "stop_sequence": None, "usage": usage}


async def stream_events(model: str, events: AsyncIterator[bytes],
                        redact: Redactor) -> AsyncIterator[bytes]:
    """The Messages API's event sequence for one text answer."""
    id_ = f"msg_{uuid.uuid4().hex}"
    yield sse("message_start", {"type": "message_start", "message": _message(
        id_, model, None, None, {"input_tokens": 0, "output_tokens": 0})})
    yield sse("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}})
    yield sse("ping", {"type": "ping"})
    finish, usage = None, None
    try:
        async for piece in read_stream(events):
            finish = piece.finish or finish
            usage = piece.usage or usage
            if piece.text:
                yield sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta",
                                                            "text": piece.text}})
    except Exception as exc:  # the status line is sent: the failure goes in the stream
        err = to_api_error(exc, redact)
        log.warning("stream failed -> %s", err.message)
        yield sse("error", anthropic_error(err))
        return
    yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    counts = ({"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
              if usage is not None else {"output_tokens": 0})
    yield sse("message_delta", {"type": "message_delta", "usage": counts, "delta": {
        "stop_reason": STOP_REASON.get(finish or "stop", "end_turn"), "stop_sequence": None}})
    yield sse("message_stop", {"type": "message_stop"})


def add_messages_route(app: FastAPI, personalized: Callable, check_key: Callable,
                       redact: Redactor) -> None:
    """Register ``POST /v1/messages`` on ``app``; ``personalized(chat_body, headers, key)`` is the
    chat completion path (user, summary, generator)."""

    async def answer(request: Request) -> Response:
        headers_in = request.headers
        key = headers_in.get("x-api-key")
        key = check_key(headers_in.get("authorization") or (f"Bearer {key}" if key else None))
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
            raise InputError("the request body must be a JSON object (a Messages API "
                             "request)") from None
        if not isinstance(body, dict):
            raise InputError("the request body must be a JSON object")
        answer, headers = await personalized(to_chat(body), headers_in, key)
        model = str(body.get("model") or "")
        if answer.body is not None:
            chat = read_completion(answer.body)
            usage = {"input_tokens": chat.usage.prompt_tokens if chat.usage else 0,
                     "output_tokens": chat.usage.completion_tokens if chat.usage else 0}
            out = _message(f"msg_{uuid.uuid4().hex}", chat.model or model, chat.text,
                           STOP_REASON.get(chat.finish, "end_turn"), usage)
            return JSONResponse(out, headers=headers)
        return StreamingResponse(stream_events(model, answer.events, redact),
                                 media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})

    @app.post("/v1/messages", tags=["chat"], openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["messages", "max_tokens"],
            "additionalProperties": True,
            "description": "An Anthropic Messages API request with text content.",
            "properties": {"model": {"type": "string"}, "messages": {"type": "array"},
                           "system": {}, "max_tokens": {"type": "integer"},
                           "metadata": {"type": "object", "properties": {
                               "user_id": {"type": "string"}}},
                           "stream": {"type": "boolean"}}}}}}})
    async def messages(request: Request) -> Response:
        """An Anthropic Messages API answer personalized with the user's current summary; key
        as ``x-api-key`` or Bearer; errors in Anthropic's shape."""
        from popi_sdk.serve.app import ProxyAuthError

        try:
            return await answer(request)
        except ProxyAuthError as exc:  # said in the anthropic client's terms
            message = (AUTH_MISSING if exc.code == "missing_api_key" else
                       "incorrect proxy API key: use one of the keys this server was started with")
            err = APIErrorBody(401, message, "authentication_error", exc.code)
        except Exception as exc:
            err = to_api_error(exc, redact)
            if not isinstance(exc, PopiError):  # a bug: its details go to the log only
                log.error("POST /v1/messages failed:\n%s",
                          redact("".join(traceback.format_exception(exc))))
        log.warning("POST /v1/messages -> %d %s", err.status, err.message)
        return JSONResponse(anthropic_error(err), status_code=err.status, headers=err.headers())
