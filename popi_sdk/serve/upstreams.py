"""Where a personalized chat request goes, and how its answer comes back in the OpenAI schema.

- :class:`OpenAIUpstream` forwards the request body as it is (only ``model`` and ``messages``
  change) to an OpenAI-compatible server, and passes the answer's bytes back untouched,
  server-sent events included: every field the app sends (tools, response_format, logprobs, ...)
  reaches the server and every field it answers reaches the app.
- :class:`AnthropicUpstream` translates to Anthropic's Messages API and back.
- :class:`BackendUpstream` answers with any in-process backend (the local ``hf`` model, a plugin).

All three raise :mod:`popi_sdk.errors` errors, translated by the backends' own
``translate_error``, so the proxy reports upstream failures exactly as the SDK does.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from popi_sdk.errors import InputError
from popi_sdk.serve.config import ANTHROPIC, OPENAI, GeneratorSpec

#: The Messages API requires a length cap; OpenAI's does not. Used when the request gives none.
ANTHROPIC_DEFAULT_MAX_TOKENS = 4096
#: Fields only the OpenAI schema can honour; a translated upstream refuses them instead of
#: silently dropping what the app relies on. Sampling knobs the target ignores are accepted.
UNTRANSLATABLE = ("tools", "tool_choice", "functions", "function_call", "response_format",
                  "logprobs", "top_logprobs", "audio", "modalities", "prediction", "web_search_options")

Chunks = AsyncIterator[bytes]


class Answer:
    """An upstream's answer: either whole JSON bytes, or an iterator of SSE bytes; ``headers``
    are the upstream's response headers worth passing on (request id, rate limits)."""

    def __init__(self, *, body: bytes | None = None, events: Chunks | None = None,
                 media_type: str = "application/json", headers: dict[str, str] | None = None):
        self.body = body
        self.events = events
        self.media_type = media_type
        self.headers = headers or {}


def passed_on(headers: Any) -> dict[str, str]:
    """The upstream's request id and rate-limit headers, which clients use to report and pace;
    nothing that describes the operator's account (organization, project)."""
    return {k: v for k, v in headers.items()
            if k.lower() == "x-request-id" or k.lower().startswith("x-ratelimit-")}


def text_of(content: Any, where: str) -> str:
    """A message's content as plain text: a string, or OpenAI content parts of type text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InputError(f"{where}: content part of type {kind!r} is not supported by "
                                 "this generator; send text only")
        return "".join(parts)
    raise InputError(f"{where}: content must be a string or a list of text parts")


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Role and text of each message, for generators that take text turns only."""
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise InputError(f"messages[{i}].role {role!r} is not supported by this generator: "
                             "use system, user or assistant")
        out.append({"role": role, "content": text_of(m.get("content"), f"messages[{i}]")})
    return out


def refuse_untranslatable(body: dict[str, Any], spec: GeneratorSpec) -> None:
    for name in UNTRANSLATABLE:
        if body.get(name) not in (None, [], {}):
            raise InputError(f"{name!r} is not supported with generator {spec.id!r} ({spec.target}):"
                             " only OpenAI-compatible generators take it through this proxy")
    if body.get("n") not in (None, 1):
        raise InputError(f"'n' must be 1 with generator {spec.id!r}")


def completion(model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
               id_: str | None = None) -> bytes:
    return json.dumps({
        "id": id_ or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }).encode()


class ChunkWriter:
    """Builds ``chat.completion.chunk`` server-sent events for one answer."""

    def __init__(self, model: str, id_: str | None = None):
        self.id = id_ or f"chatcmpl-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())

    def event(self, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                              "logprobs": None}]}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The last chunk with ``stream_options.include_usage``: no choices, the counts."""
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "choices": [],
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    DONE = b"data: [DONE]\n\n"


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether a streamed answer should end with a usage chunk, as OpenAI's does."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class Upstream:
    """One configured generator."""

    def __init__(self, spec: GeneratorSpec):
        self.spec = spec

    async def complete(self, body: dict[str, Any], stream: bool) -> Answer:
        raise NotImplementedError

    async def models(self) -> list[dict[str, Any]]:
        return [{"id": self.spec.id, "object": "model", "created": 0, "owned_by": "popi"}]

    def secrets(self) -> list[str]:
        """Credentials this upstream holds, for the redactor."""
        return []

    async def aclose(self) -> None:
        return None


# -- OpenAI-compatible servers --------------------------------------------------------------------
#: Statuses worth another attempt, as the ``openai`` client retries them.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIUpstream(Upstream):
    """Relays to an OpenAI-compatible server over aiohttp, the hot path of the proxy: ``httpx2``
    (what the ``openai`` client uses) costs several milliseconds per request here, aiohttp well
    under one (``benchmarks/serve.py``). Failures become the ``openai`` client's own exception
    classes and go through :meth:`OpenAIBackend.translate_error`, so they read as the SDK's do.
    Retries follow the client's rules: connection errors, 408, 409, 429 and 5xx, with backoff."""

    def __init__(self, spec: GeneratorSpec, *, timeout: float, max_retries: int, **client: Any):
        super().__init__(spec)
        from popi_sdk.backends.openai_backend import OpenAIBackend

        # The backend resolves the key and URL exactly as the SDK does and translates errors.
        self.backend = OpenAIBackend(spec.model or "(as requested)", base_url=spec.base_url,
                                     timeout=timeout, max_retries=max_retries, **client)
        self.timeout = timeout
        self.max_retries = max_retries
        # identity: the answer's bytes are relayed as they are, so they must not be compressed.
        self._headers = {"authorization": f"Bearer {self.backend.client.api_key}",
                         "content-type": "application/json", "accept-encoding": "identity"}
        self._sessions: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}

    def secrets(self) -> list[str]:
        return [self.backend.client.api_key]

    def _session(self) -> Any:
        """One aiohttp session per event loop (its connections belong to the loop)."""
        import aiohttp

        loop = asyncio.get_running_loop()
        held = self._sessions.get(id(loop))
        if held is None or held[0] is not loop or held[1].closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None,
                                              sock_connect=self.backend.connect_timeout,
                                              sock_read=self.timeout),
                auto_decompress=False,  # bytes are relayed as the server sent them
            )
            held = (loop, session)
            self._sessions[id(loop)] = held
        return held[1]

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        held = self._sessions.pop(id(loop), None)
        if held is not None:
            await held[1].close()

    def _translate(self, e: Exception, model: str) -> Exception:
        backend = self.backend
        if self.spec.passthrough:  # name the model the request asked for in the message
            backend = copy.copy(backend)
            backend.model = model
            backend.name = f"openai:{model}"
        return backend.translate_error(e)

    async def _status_error(self, response: Any, url: str) -> Exception:
        import httpx2

        content = await response.read()
        response.release()
        mirrored = httpx2.Response(response.status, headers=dict(response.headers),
                                   content=content, request=httpx2.Request("POST", url))
        return self.backend.client._make_status_error_from_response(mirrored)

    async def _send(self, method: str, path: str, payload: bytes | None, model: str) -> Any:
        """The server's response to a successful request (status < 400), after retries; the
        caller releases it. Raises the SDK's error for anything else."""
        import aiohttp
        import httpx2

        sdk = self.backend.sdk
        url = self.backend.base_url + path
        attempt = 0
        while True:
            retry_after = None
            try:
                response = await self._session().request(method, url, data=payload,
                                                         headers=self._headers)
                if response.status < 400:
                    return response
                error: Exception = await self._status_error(response, url)
                retryable = response.status in RETRY_STATUSES
                retry_after = response.headers.get("retry-after")
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
                error = sdk.APITimeoutError(request=httpx2.Request(method, url))
                error.__cause__, retryable = exc, True
            except aiohttp.ClientError as exc:
                error = sdk.APIConnectionError(message=str(exc), request=httpx2.Request(method, url))
                error.__cause__, retryable = exc, True
            if not retryable or attempt >= self.max_retries:
                raise self._translate(error, model) from error
            attempt += 1
            await asyncio.sleep(_backoff(attempt, retry_after))

    async def complete(self, body: dict[str, Any], stream: bool) -> Answer:
        model = body.get("model") or ""
        response = await self._send("POST", "/chat/completions", json.dumps(body).encode(), model)
        media = response.headers.get("content-type", "application/json")
        extra = passed_on(response.headers)
        if not stream:
            try:
                data = await response.read()
            except Exception as exc:  # the connection broke while the answer was read
                raise self._read_error(exc, model) from exc
            finally:
                response.release()
            return Answer(body=data, media_type=media, headers=extra)
        return Answer(events=self._relay(response, model), media_type=media, headers=extra)

    def _read_error(self, exc: Exception, model: str) -> Exception:
        from popi_sdk.errors import BackendConnectionError

        name = f"openai:{model}" if self.spec.passthrough else self.backend.name
        return BackendConnectionError(
            f"the answer from {self.backend.base_url} broke off before its end ({exc}). Try "
            "again; if it keeps happening, the server's log says why", backend=name)

    async def _relay(self, response: Any, model: str) -> Chunks:
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except Exception as exc:
            raise self._read_error(exc, model) from exc
        finally:
            response.release()

    async def models(self) -> list[dict[str, Any]]:
        if not self.spec.passthrough:
            return await super().models()
        response = await self._send("GET", "/models", None, "")
        try:
            listed = json.loads(await response.read()).get("data", [])
        except (ValueError, AttributeError):
            return []
        finally:
            response.release()
        return [m for m in listed if isinstance(m, dict) and m.get("id")]


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds before retry ``attempt``: the server's Retry-After when short, else 0.5 s doubling,
    at most 8 s (the ``openai`` client's schedule)."""
    if retry_after:
        try:
            wait = float(retry_after)
            if 0 <= wait <= 60:
                return wait
        except ValueError:
            pass
    return min(0.5 * 2 ** (attempt - 1), 8.0)


# -- Anthropic's Messages API ---------------------------------------------------------------------
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
         "tool_use": "tool_calls", "refusal": "content_filter"}


class AnthropicUpstream(Upstream):
    def __init__(self, spec: GeneratorSpec, *, timeout: float, max_retries: int, **client: Any):
        super().__init__(spec)
        from popi_sdk.backends.anthropic_backend import AnthropicBackend

        self.backend = AnthropicBackend(spec.model, base_url=spec.base_url, timeout=timeout,
                                        max_retries=max_retries, **client)

    def secrets(self) -> list[str]:
        c = self.backend.client
        return [s for s in (c.api_key, c.auth_token) if s]

    def _params(self, body: dict[str, Any]) -> dict[str, Any]:
        from popi_sdk.backends.anthropic_backend import split_system

        refuse_untranslatable(body, self.spec)
        system, turns = split_system(plain_messages(body["messages"]))
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise InputError(f"max_tokens must be a positive integer, got {cap!r}",
                             param="max_tokens")
        params: dict[str, Any] = {"model": self.backend.model, "messages": turns,
                                  "max_tokens": cap or ANTHROPIC_DEFAULT_MAX_TOKENS}
        if system:
            params["system"] = system
        stop = body.get("stop")
        if stop:
            params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        return params

    async def complete(self, body: dict[str, Any], stream: bool) -> Answer:
        params = self._params(body)
        client = self.backend._async_client()
        sdk = self.backend.sdk
        try:
            if stream:
                events = await client.messages.create(**params, stream=True)
                return Answer(events=self._relay(events, wants_usage(body)),
                              media_type="text/event-stream")
            msg = await client.messages.create(**params)
        except sdk.APIError as e:
            raise self.backend.translate_error(e) from e
        text = "".join(b.text for b in msg.content if b.type == "text")
        usage = msg.usage
        return Answer(body=completion(
            msg.model, text, _STOP.get(msg.stop_reason or "", "stop"), usage.input_tokens,
            usage.output_tokens, id_=f"chatcmpl-{msg.id}"))

    async def _relay(self, events: Any, usage: bool = False) -> Chunks:
        writer = ChunkWriter(self.backend.model)
        finish = "stop"
        prompt_tokens = completion_tokens = 0
        try:
            async for event in events:
                if event.type == "message_start":
                    writer.id, writer.model = f"chatcmpl-{event.message.id}", event.message.model
                    prompt_tokens = event.message.usage.input_tokens or 0
                    yield writer.event({"role": "assistant", "content": ""})
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    yield writer.event({"content": event.delta.text})
                elif event.type == "message_delta":
                    if event.delta.stop_reason:
                        finish = _STOP.get(event.delta.stop_reason, "stop")
                    # the final counts: output always, input where the API restates it
                    completion_tokens = event.usage.output_tokens
                    prompt_tokens = event.usage.input_tokens or prompt_tokens
            yield writer.event({}, finish)
            if usage:
                yield writer.usage(prompt_tokens, completion_tokens)
            yield writer.DONE
        except self.backend.sdk.APIError as e:  # the app turns it into an error event
            raise self.backend.translate_error(e) from e
        finally:
            await events.close()


# -- any in-process backend -----------------------------------------------------------------------
class BackendUpstream(Upstream):
    """A backend answered in this process. A local model (no ``max_concurrency``) answers one
    request at a time: generation already uses every core, and a model is not shared safely."""

    def __init__(self, spec: GeneratorSpec, backend: Any):
        super().__init__(spec)
        self.backend = backend
        self._gate = asyncio.Lock() if getattr(backend, "max_concurrency", None) is None else None

    def _options(self, body: dict[str, Any]) -> Any:
        from popi_sdk.backends import GenerateOptions

        refuse_untranslatable(body, self.spec)
        # (request field, option): the error names the field the client sent, as its ``param``.
        cap = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        fields = [(cap, "max_new_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                  ("seed", "seed")]
        wanted = {}
        for field_, option in fields:
            if body.get(field_) is None:
                continue
            try:
                GenerateOptions(**{option: body[field_]})
            except InputError as e:
                raise InputError(str(e).replace(f"{option}=", f"{field_}="), param=field_) from None
            wanted[option] = body[field_]
        return GenerateOptions(**wanted)

    async def complete(self, body: dict[str, Any], stream: bool) -> Answer:
        options = self._options(body)
        messages = plain_messages(body["messages"])
        if self._gate is None:
            text = await self.backend.agenerate(messages, options)
        else:
            async with self._gate:
                text = await self.backend.agenerate(messages, options)
        prompt_tokens = prompt_token_count(self.backend, messages)
        done = self.backend.count_tokens(text)
        finish = "length" if done >= options.max_new_tokens else "stop"
        model = self.spec.id
        if not stream:
            return Answer(body=completion(model, text, finish, prompt_tokens, done))
        usage = (prompt_tokens, done) if wants_usage(body) else None
        return Answer(events=self._events(model, text, finish, usage),
                      media_type="text/event-stream")

    @staticmethod
    async def _events(model: str, text: str, finish: str,
                      usage: tuple[int, int] | None = None) -> Chunks:
        writer = ChunkWriter(model)
        yield writer.event({"role": "assistant", "content": ""})
        yield writer.event({"content": text})
        yield writer.event({}, finish)
        if usage is not None:
            yield writer.usage(*usage)
        yield writer.DONE


def prompt_token_count(backend: Any, messages: list[dict[str, str]]) -> int:
    """The tokens the model reads for ``messages``: the chat template's text where the backend
    has one (role markers and the generation prompt count, as they do for a provider's bill),
    else the sum over the messages' texts."""
    chat_text = getattr(backend, "chat_text", None)
    if chat_text is not None:
        return backend.count_tokens(chat_text(messages))
    return sum(backend.count_tokens(m["content"]) for m in messages)


def build_upstream(spec: GeneratorSpec, *, timeout: float, max_retries: int,
                   clients: dict[str, Any] | None = None) -> Upstream:
    """The upstream for ``spec``. ``clients`` may give ``http_client``/``async_http_client``
    for the API backends (a proxy, custom TLS, or a mock transport in tests)."""
    clients = clients or {}
    if spec.kind == OPENAI:
        return OpenAIUpstream(spec, timeout=timeout, max_retries=max_retries, **clients)
    if spec.kind == ANTHROPIC:
        return AnthropicUpstream(spec, timeout=timeout, max_retries=max_retries, **clients)
    from popi_sdk.backends import get_backend

    return BackendUpstream(spec, get_backend(spec.target))
