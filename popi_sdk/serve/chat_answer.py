"""Reading a chat completion answer, whole or streamed, so the Responses and Messages endpoints can
re-shape it. Every upstream answers in the chat completion schema (an OpenAI-compatible server as
it is, the others translated by :mod:`popi_sdk.serve.upstreams`), so one reader serves them all."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from popi_sdk.errors import BackendError, BadResponseError


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return cls(prompt, completion)


@dataclass
class Chat:
    """The parts of a chat completion the other APIs need."""

    text: str
    finish: str
    usage: Usage | None
    model: str


def read_completion(data: bytes) -> Chat:
    """A whole ``chat.completion`` body."""
    try:
        body = json.loads(data)
        choice = body["choices"][0]
        return Chat(text=choice["message"].get("content") or "",
                    finish=choice.get("finish_reason") or "stop",
                    usage=Usage.of(body.get("usage")), model=str(body.get("model") or ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise BadResponseError(f"the generator's answer is not a chat completion ({e!r})") from e


@dataclass
class Piece:
    """One step of a streamed answer: some text, the finish reason, or the usage."""

    text: str = ""
    finish: str | None = None
    usage: Usage | None = None
    model: str | None = None


async def read_stream(events: AsyncIterator[bytes]) -> AsyncIterator[Piece]:
    """The pieces of a ``chat.completion.chunk`` event stream. An error event from the upstream
    is raised as a :class:`BackendError` with its message."""
    buffer = b""
    async for raw in events:
        buffer += raw.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n")
                              if line.startswith(b"data:"))
            if not data:
                continue
            if data == b"[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError as e:
                raise BadResponseError(f"the generator sent an event that is not JSON ({e})") from e
            if isinstance(chunk, dict) and chunk.get("error"):
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else str(error)
                raise BackendError(f"the generator failed while answering: {message}")
            yield _piece(chunk)


def _piece(chunk: Any) -> Piece:
    piece = Piece(usage=Usage.of(chunk.get("usage")), model=chunk.get("model"))
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        piece.text += delta.get("content") or ""
        piece.finish = choice.get("finish_reason") or piece.finish
    return piece


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event (both the Responses and the Messages APIs name theirs)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
