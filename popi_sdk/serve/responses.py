"""``POST /v1/responses``: OpenAI's Responses API, translated to a chat completion, personalized
and answered by the same path as ``/v1/chat/completions``, and translated back: a ``response``
object, or with ``stream: true`` the Responses API's named events (``response.created`` ...
``response.output_text.delta`` ... ``response.completed``).

Text in, text out: ``input`` as a string or a list of messages with text content, ``instructions``
(the system message, ahead of the summary), ``max_output_tokens``, ``temperature``, ``top_p``,
``text.format`` (JSON output) and the user fields. Tools, files, images, stored conversations
(``previous_response_id``, ``conversation``) and background runs are refused with a 400 that
names the field: the proxy keeps no state and relays text only.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from popi_sdk.errors import InputError
from popi_sdk.serve.chat_answer import Usage, read_completion, read_stream, sse
from popi_sdk.serve.errors import Redactor, to_api_error
from popi_sdk.serve.identity import body_user

#: Fields this endpoint cannot honour: refused rather than silently dropped.
REFUSED = ("tools", "previous_response_id", "conversation", "prompt", "background", "reasoning",
           "include", "max_tool_calls")
_TEXT_PARTS = ("input_text", "output_text", "text")


def check_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"'{name}' must be a positive integer, got {value!r}", param=name)
    return value


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InputError(f"{where}.content must be a string or a list of text parts",
                         param=f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            raise InputError(f"{where}.content[{j}] of type {kind!r} is not supported: this "
                             "server relays text parts only (input_text)",
                             param=f"{where}.content[{j}]")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def input_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """``instructions`` and ``input`` as chat messages."""
    messages = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InputError("'instructions' must be a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for i, item in enumerate(given):
            where = f"input[{i}]"
            if not isinstance(item, dict):
                raise InputError(f"{where} must be a message object", param=where)
            kind = item.get("type", "message")
            if kind != "message":
                raise InputError(f"{where} of type {kind!r} is not supported: send messages with "
                                 "text content", param=where)
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InputError(f"{where}.role must be user, assistant, system or developer, "
                                 f"got {role!r}", param=f"{where}.role")
            messages.append({"role": role, "content": _text(item.get("content"), where)})
    else:
        raise InputError("'input' must be a string or a list of messages", param="input")
    if not any(m["role"] in ("user", "assistant") for m in messages):
        raise InputError("'input' holds no user message", param="input")
    return messages


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise InputError(f"text.format of type {fmt['type']!r} is not supported", param="text.format")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion request a Responses API request amounts to."""
    for name in REFUSED:
        if body.get(name) not in (None, [], {}, False):
            raise InputError(f"'{name}' is not supported by this server's /v1/responses (it "
                             "relays text and keeps no state); leave it out", param=name)
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise InputError("'model' must be a string", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InputError("'stream' must be true or false", param="stream")
    chat: dict[str, Any] = {"messages": input_messages(body), "stream": stream}
    if body.get("model"):
        chat["model"] = body["model"]
    cap = check_int(body, "max_output_tokens")
    if cap is not None:
        chat["max_tokens"] = cap
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    fmt = _response_format(body)
    if fmt is not None:
        chat["response_format"] = fmt
    user = body_user(body)  # checks that the user fields agree
    for name in ("user", "safety_identifier"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if user is not None and "user" not in chat and "safety_identifier" not in chat:
        chat["user"] = user  # named in metadata.user_id only
    if stream:  # so the final event can carry usage, as the Responses API's does
        chat["stream_options"] = {"include_usage": True}
    return chat


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


class ResponseWriter:
    """Builds the ``response`` object and the stream's events for one request."""

    def __init__(self, request: dict[str, Any]):
        self.request = request
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.sequence = 0

    def message(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [
            {"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant",
                "content": content}

    def response(self, model: str, status: str, output: list[dict], usage: Usage | None,
                 finish: str | None = None, error: dict | None = None) -> dict[str, Any]:
        r = self.request
        text = r.get("text") if isinstance(r.get("text"), dict) else {"format": {"type": "text"}}
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
            "instructions": r.get("instructions"), "max_output_tokens": r.get("max_output_tokens"),
            "model": model, "output": output, "parallel_tool_calls": True,
            "previous_response_id": None, "reasoning": None, "store": False,
            "temperature": r.get("temperature"), "top_p": r.get("top_p"), "text": text,
            "tool_choice": "auto", "tools": [], "truncation": "disabled",
            "usage": _usage(usage), "user": r.get("user"),
            "safety_identifier": r.get("safety_identifier"), "metadata": r.get("metadata") or {},
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(kind, data)


def finished(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"


async def stream_events(writer: ResponseWriter, model: str, events: AsyncIterator[bytes],
                        redact: Redactor) -> AsyncIterator[bytes]:
    """The Responses API's event sequence for one text answer."""
    w = writer
    yield w.event("response.created", response=w.response(model, "in_progress", [], None))
    yield w.event("response.in_progress", response=w.response(model, "in_progress", [], None))
    yield w.event("response.output_item.added", output_index=0,
                  item=w.message(None, "in_progress"))
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    yield w.event("response.content_part.added", item_id=w.item_id, output_index=0,
                  content_index=0, part=empty)
    text, finish, usage = "", None, None
    try:
        async for piece in read_stream(events):
            model = piece.model or model
            finish = piece.finish or finish
            usage = piece.usage or usage
            if piece.text:
                text += piece.text
                yield w.event("response.output_text.delta", item_id=w.item_id, output_index=0,
                              content_index=0, delta=piece.text, logprobs=[])
    except Exception as exc:  # the status line is sent: the failure goes in the stream
        err = to_api_error(exc, redact)
        yield w.event("error", code=err.code, message=err.message, param=err.param)
        yield w.event("response.failed", response=w.response(
            model, "failed", [], usage, error={"code": "server_error", "message": err.message}))
        return
    status = finished(finish)
    part = {**empty, "text": text}
    item = w.message(text, status)
    yield w.event("response.output_text.done", item_id=w.item_id, output_index=0,
                  content_index=0, text=text, logprobs=[])
    yield w.event("response.content_part.done", item_id=w.item_id, output_index=0,
                  content_index=0, part=part)
    yield w.event("response.output_item.done", output_index=0, item=item)
    kind = "response.completed" if status == "completed" else "response.incomplete"
    yield w.event(kind, response=w.response(model, status, [item], usage, finish))


def add_responses_route(app: FastAPI, personalized: Callable, check_key: Callable,
                        redact: Redactor) -> None:
    """Register ``POST /v1/responses`` on ``app``; ``personalized(chat_body, headers, key)`` is the
    chat completion path (user, summary, generator)."""

    @app.post("/v1/responses", tags=["chat"], openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["input"], "additionalProperties": True,
            "description": "An OpenAI Responses API request with text input.",
            "properties": {"model": {"type": "string"}, "input": {},
                           "instructions": {"type": "string"},
                           "user": {"type": "string"}, "safety_identifier": {"type": "string"},
                           "stream": {"type": "boolean"},
                           "max_output_tokens": {"type": "integer"}}}}}},
        "security": [{"HTTPBearer": []}]})
    async def responses(request: Request) -> Any:
        """A Responses API answer personalized with the user's current summary."""
        key = check_key(request.headers.get("authorization"))
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
            raise InputError("the request body must be a JSON object (a Responses API "
                             "request)") from None
        if not isinstance(body, dict):
            raise InputError("the request body must be a JSON object")
        answer, headers = await personalized(to_chat(body), request.headers, key)
        writer = ResponseWriter(body)
        model = str(body.get("model") or "")
        if answer.body is not None:
            chat = read_completion(answer.body)
            status = finished(chat.finish)
            out = writer.response(chat.model or model, status,
                                  [writer.message(chat.text, status)], chat.usage, chat.finish)
            return JSONResponse(out, headers=headers)
        return StreamingResponse(stream_events(writer, model, answer.events, redact),
                                 media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})
