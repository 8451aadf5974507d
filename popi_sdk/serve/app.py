"""The ASGI app of ``popi serve``: OpenAI's chat completions and models endpoints, personalized
with each user's current summary, and the summary lifecycle under ``/v1/users/{id}``.

The request's ``user`` field (or an ``X-Popi-User`` header) names the user. Their current summary
is looked up in the store on every request (no cache: an edit or a ``forget`` takes effect on the
next request, in every process sharing the store) and enters the conversation through
:func:`popi_sdk.templates.personalize_messages`, the function ``Personalizer.generate`` uses too.
A request without a user, or for a user with no summary, is answered unpersonalized; the
``X-Popi-Personalized`` response header says which happened, ``X-Popi-Reason`` why not.

Who may act for which user is :mod:`popi_sdk.serve.auth` (every route that names a user calls
``authorize_user`` with the resolved id); what every request must pass before routing (Host and
Origin on a keyless server, body size, JSON content type) is :mod:`popi_sdk.serve.guard`.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from popi_sdk.errors import InputError, ModelNotFoundError, NotFoundError, PopiError
from popi_sdk.serve.auth import (
    KeyRing,
    ProxyAuthError,
    ProxyForbiddenError,
    ProxyKey,
    authorize_user,
)
from popi_sdk.serve.config import ServeConfig
from popi_sdk.serve.errors import (
    APIErrorBody,
    Redactor,
    install_log_redaction,
    one_line,
    to_api_error,
)
from popi_sdk.serve.guard import check_request, limit_body
from popi_sdk.serve.identity import body_user
from popi_sdk.serve.messages import add_messages_route
from popi_sdk.serve.responses import add_responses_route
from popi_sdk.serve.upstreams import Answer, Upstream, build_upstream
from popi_sdk.settings import max_body_bytes
from popi_sdk.signals import PreferencePair, Signals, Summary, SummaryScore
from popi_sdk.store import MemoryStore, SQLiteStore
from popi_sdk.templates import personalize_messages
from popi_sdk.user_ids import MAX_USER_ID, check_user_id

log = logging.getLogger("popi_sdk.serve")

USER_HEADER = "x-popi-user"
__all__ = ["MAX_USER_ID", "ProxyAuthError", "create_app", "resolve_user"]


class _UserIdConvertor(PathConvertor):
    """A user id in a route: any characters, ``/`` and line breaks included, so every id reaches
    the user-id rule and gets its 400 there instead of a 404 from routing."""

    regex = r"[\s\S]+?"


register_url_convertor("user_id", _UserIdConvertor())


def resolve_user(field: Any, header: str | list[str] | None) -> str | None:
    """The user a request is for: the body's ``user``, or the ``X-Popi-User`` header, checked
    and normalized by the one user-id rule (:mod:`popi_sdk.user_ids`; an empty value means no
    user). Both given and different is refused, and so is a repeated header (a gateway that
    appends its own must not be overridden by the client's): answering with either user's
    summary could be the wrong one."""
    if isinstance(header, list):
        if len(header) > 1:
            raise InputError("the X-Popi-User header was sent more than once: send it once")
        header = header[0] if header else None
    if field is not None and not isinstance(field, str):
        raise InputError("'user' must be a string: the id your app uses for the end user")
    field = check_user_id(field, what="'user'") if field else None
    header = check_user_id(header, what="the X-Popi-User header") if header else None
    if field and header and field != header:
        raise InputError(f"the body's user {field!r} and the X-Popi-User header {header!r} differ:"
                         " send one, or the same id in both")
    return field or header


def check_chat_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except RecursionError:  # a body nested deeper than the parser's stack: refused, not a 500
        raise InputError("the request body is nested too deeply to be a chat completion "
                         "request") from None
    except ValueError:
        raise InputError("the request body must be a JSON object (an OpenAI chat completion "
                         "request)") from None
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError("'messages' must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InputError(f"messages[{i}] must be an object with a 'role'")
    if not isinstance(body.get("stream", False), bool):
        raise InputError("'stream' must be true or false")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise InputError("'model' must be a string")
    return body


class SummaryEdit(BaseModel):
    """A summary written by the user (or by your app on their behalf)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, description="The new summary text; it becomes current.")


class SignalsUpdate(BaseModel):
    """New signals for a user, merged into the stored ones before the summary is refreshed."""

    model_config = ConfigDict(extra="forbid")
    signals: Signals = Field(description="Pairs, history, persona, demographics, traits.")
    examples: list[PreferencePair] = Field(
        default_factory=list, description="Labeled pairs kept for scoring, never summarized.")
    with_current: bool = Field(
        default=False, description="Let the summarizer read the current summary (an incremental "
        "refresh); false (the default, as in the SDK) writes a fresh summary from the merged "
        "signals.")
    replace_user_edit: bool = Field(
        default=False, description="Replace a summary the user wrote; by default it is kept.")


class ScoreRequest(BaseModel):
    """Which pairs and version to score; by default the stored pairs and the current version."""

    model_config = ConfigDict(extra="forbid")
    examples: list[PreferencePair] | None = Field(
        default=None, description="Labeled pairs to score on (default: those stored).")
    version: int | None = Field(default=None, ge=1, description="A version (default: current).")


class Forgotten(BaseModel):
    user_id: str
    deleted: int = Field(description="How many stored summaries were removed.")


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "popi"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


_CHAT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["messages"],
            "additionalProperties": True,
            "description": "An OpenAI chat completion request. Every field is forwarded to an "
                           "OpenAI-compatible generator; `model` picks the generator.",
            "properties": {
                "model": {"type": "string", "description": "A model from GET /v1/models."},
                "messages": {"type": "array", "items": {"type": "object"}},
                "user": {"type": "string",
                         "description": "Your id for the end user; picks their summary."},
                "stream": {"type": "boolean", "default": False},
                "max_tokens": {"type": "integer"},
                "temperature": {"type": "number"},
            },
        }}},
    },
    "parameters": [{
        "name": "X-Popi-User", "in": "header", "required": False, "schema": {"type": "string"},
        "description": "The end user, for clients that cannot set `user` in the body.",
    }],
    "responses": {"200": {
        "description": "An OpenAI chat completion, or server-sent chunks with stream=true. "
                       "Header X-Popi-Personalized: true|false; X-Popi-Reason when false.",
        "content": {"application/json": {}, "text/event-stream": {}},
    }},
}


def create_app(personalizer: Any, config: ServeConfig, *,
               clients: dict[str, Any] | None = None,
               upstreams: list[Upstream] | None = None) -> PopiProxy:
    """The proxy app. ``personalizer`` (a :class:`popi_sdk.Personalizer`) holds the store and does
    the lifecycle work; ``config`` names the generators and proxy keys. ``clients`` passes
    ``http_client``/``async_http_client`` to the API generators (a mock transport, a proxy);
    ``upstreams`` replaces the generators built from ``config`` altogether."""
    built = upstreams if upstreams is not None else [
        build_upstream(s, timeout=config.timeout, max_retries=config.max_retries, clients=clients)
        for s in config.generators
    ]
    by_name: dict[str, Upstream] = {}
    for up in built:
        for name in up.spec.ids:
            by_name.setdefault(name, up)
    passthrough = next((u for u in built if u.spec.passthrough), None)
    redact = Redactor.from_environment([s for u in built for s in u.secrets()])
    store_url = getattr(personalizer.store, "url", None)  # a PostgreSQL URL may hold a password
    if isinstance(store_url, str):
        from popi_sdk.store.postgres import url_secrets

        redact.add(*url_secrets(store_url))
    install_log_redaction(redact)
    keys = KeyRing.of(config.api_keys, getattr(config, "scoped_keys", []))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for up in built:
            await up.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="popi serve",
        version="1",
        description="An OpenAI-compatible proxy that personalizes every chat completion with the "
                    "requesting user's preference summary, and manages those summaries.",
        # /openapi.json and /docs are served below, behind the proxy key like every endpoint.
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False, description="A proxy API key (the OpenAI client's "
                        "api_key). Required unless the server is bound to loopback without keys.")

    check_key = keys.authenticate

    async def require_key(
        creds: HTTPAuthorizationCredentials | None = Security(bearer),
    ) -> ProxyKey | None:
        return check_key(f"Bearer {creds.credentials}" if creds is not None else None)

    async def scoped_user(user_id: str, key: ProxyKey | None = Depends(require_key)) -> str:
        """The path's user id, normalized, once the request's key may act for it."""
        return authorize_user(key, user_id)

    # -- errors --------------------------------------------------------------------------
    def error_response(err: APIErrorBody, request: Request) -> JSONResponse:
        log.warning("%s %s -> %d %s", request.method, one_line(request.url.path), err.status,
                    one_line(err.message))
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers())

    @app.exception_handler(ProxyAuthError)
    async def _auth_error(request: Request, exc: ProxyAuthError) -> JSONResponse:
        return error_response(APIErrorBody(401, str(exc), "invalid_request_error", exc.code),
                              request)

    @app.exception_handler(ProxyForbiddenError)
    async def _forbidden(request: Request, exc: ProxyForbiddenError) -> JSONResponse:
        return error_response(APIErrorBody(403, str(exc), "invalid_request_error",
                                           "permission_denied"), request)

    @app.exception_handler(PopiError)
    async def _popi_error(request: Request, exc: PopiError) -> JSONResponse:
        return error_response(to_api_error(exc, redact), request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return error_response(APIErrorBody(400, redact(f"invalid request: {problems}"),
                                           "invalid_request_error", "invalid_value"), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return error_response(APIErrorBody(exc.status_code, str(exc.detail),
                                           "invalid_request_error", code), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed:\n%s", request.method, one_line(request.url.path),
                  redact("".join(traceback.format_exception(exc))))
        return JSONResponse(to_api_error(exc, redact).body(), status_code=500)

    # -- chat ----------------------------------------------------------------------------
    def route(model: str | None) -> tuple[Upstream, str | None]:
        if not model:
            up = built[0]
        elif model in by_name:
            up = by_name[model]
        elif passthrough is not None:
            return passthrough, model
        else:
            known = ", ".join(sorted({u.spec.id for u in built}))
            raise ModelNotFoundError(f"model {model!r} is not served here; use one of: {known} "
                                     "(GET /v1/models lists them)")
        return up, (up.spec.model if up.spec.model is not None else model)

    def current_summary(user_id: str) -> Summary | None:
        return personalizer.get_summary(user_id)

    # A local store (a SQLite file in WAL mode, where readers never wait for writers, or memory)
    # answers in tens of microseconds: reading it on the event loop costs less than the hop to a
    # worker thread. A server store (PostgreSQL) is read in a worker thread, off the loop.
    local_store = isinstance(personalizer.store, (SQLiteStore, MemoryStore))

    async def lookup(user_id: str) -> Summary | None:
        if local_store:
            return current_summary(user_id)
        return await run_in_threadpool(current_summary, user_id)

    async def guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay events; a failure mid-stream becomes one error event the client raises."""
        try:
            async for chunk in events:
                yield chunk
        except Exception as exc:  # the status line is already sent: report in the stream
            err = to_api_error(exc, redact)
            log.warning("stream failed -> %s", err.message)
            yield err.sse()

    async def personalized(body: dict[str, Any], headers_in: Any, key: Any) -> tuple[Answer, dict[str, str]]:
        """The upstream's answer to a chat completion ``body``, personalized for the user it
        names, and the ``X-Popi-*`` headers saying how. The Responses and Messages endpoints
        translate to and from this, so every API personalizes the same way. ``key`` is the proxy
        key the request was checked with: its scope decides which users it may name."""
        user = resolve_user(body_user(body), headers_in.getlist(USER_HEADER))
        if user is not None:
            user = authorize_user(key, user)
        upstream, model = route(body.get("model"))
        summary = await lookup(user) if user else None
        headers = {"x-popi-generator": upstream.spec.id}
        if summary is not None:
            body["messages"] = personalize_messages(body["messages"], summary.text)
            headers["x-popi-personalized"] = "true"
            headers["x-popi-summary-version"] = str(summary.version)
        else:
            headers["x-popi-personalized"] = "false"
            headers["x-popi-reason"] = "no-summary" if user else "no-user"
        if model is not None:
            body["model"] = model
        answer = await upstream.complete(body, bool(body.get("stream")))
        headers.update(answer.headers)
        return answer, headers

    # The hot path checks the key inline rather than through a FastAPI dependency, and
    # :class:`PopiProxy` calls it directly: FastAPI's routing was the largest cost per request.
    @app.post("/v1/chat/completions", openapi_extra={**_CHAT_SCHEMA, "security": [{"HTTPBearer": []}]},
              tags=["chat"])
    async def chat_completions(request: Request) -> Response:
        """A chat completion personalized with the user's current summary."""
        headers_in = request.headers
        key = check_key(headers_in.get("authorization"))
        body = check_chat_body(await request.body())
        answer, headers = await personalized(body, headers_in, key)
        if answer.body is not None:
            return Response(answer.body, media_type=answer.media_type, headers=headers)
        return StreamingResponse(guarded(answer.events), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})

    add_responses_route(app, personalized, check_key, redact)
    add_messages_route(app, personalized, check_key, redact)

    @app.get("/v1/models", dependencies=[Depends(require_key)], response_model=ModelList,
             tags=["chat"])
    async def list_models() -> dict[str, Any]:
        """The models a request may name: one per configured generator (a bare server URL
        contributes the server's own list)."""
        data: list[dict[str, Any]] = []
        for up in built:
            data.extend(await up.models())
        unique = {m["id"]: m for m in data}
        return {"object": "list", "data": list(unique.values())}

    @app.get("/v1/models/{model:path}", dependencies=[Depends(require_key)],
             response_model=ModelCard, tags=["chat"])
    async def get_model(model: str) -> dict[str, Any]:
        """One model, as ``GET /v1/models`` lists it."""
        for up in built:
            for card in await up.models():
                if card["id"] == model or (model in up.spec.ids and card["id"] == up.spec.id):
                    return card
        raise ModelNotFoundError(f"model {model!r} is not served here (GET /v1/models)")

    # -- the summary lifecycle -------------------------------------------------------------
    def _summary_or_404(user_id: str) -> Summary:
        summary = current_summary(user_id)
        if summary is None:
            raise NotFoundError(f"no summary stored for user {user_id!r}: POST its signals to "
                                "/v1/users/ID/signals, or PUT a summary text")
        return summary

    # Every route below takes the user id through scoped_user: checked by the user-id rule and
    # by the key's prefix. The id may hold "/" (sent as %2F, or bare): hence the path converter.
    users = [Depends(require_key)]  # FastAPI runs it once per request, cached for scoped_user
    user_dep = Depends(scoped_user)

    @app.get("/v1/users/{user_id:user_id}/summary", response_model=Summary, dependencies=users,
             tags=["users"])
    async def get_summary(user_id: str = user_dep) -> Summary:
        """The user's current summary (the one chat completions use)."""
        return await run_in_threadpool(_summary_or_404, user_id)

    @app.get("/v1/users/{user_id:user_id}/summaries", response_model=list[Summary], dependencies=users,
             tags=["users"])
    async def history(user_id: str = user_dep) -> list[Summary]:
        """Every version of the user's summary, oldest first."""
        return await run_in_threadpool(personalizer.history, user_id)

    @app.put("/v1/users/{user_id:user_id}/summary", response_model=Summary, dependencies=users,
             tags=["users"])
    async def edit_summary(edit: SummaryEdit, user_id: str = user_dep) -> Summary:
        """Store a user-written summary as the new current version; re-summarizing never
        overwrites it unless asked."""
        return await run_in_threadpool(personalizer.edit_summary, user_id, edit.text)

    @app.post("/v1/users/{user_id:user_id}/signals", response_model=Summary, dependencies=users,
              tags=["users"])
    async def add_signals(update: SignalsUpdate, user_id: str = user_dep) -> Summary:
        """Merge new signals into the user's stored ones (oldest evicted beyond the store's
        per-user limit) and re-summarize; returns the new current summary. A summary the user
        wrote is kept unless ``replace_user_edit`` is true."""
        return await run_in_threadpool(
            lambda: personalizer.add_signals(
                user_id, update.signals, examples=update.examples,
                with_current=update.with_current, replace_user_edit=update.replace_user_edit))

    @app.post("/v1/users/{user_id:user_id}/score", response_model=SummaryScore, dependencies=users,
              tags=["users"])
    async def score(request: ScoreRequest | None = None, user_id: str = user_dep) -> SummaryScore:
        """The summary's usefulness on the user's labeled pairs: reward accuracy and mean margin
        gain over no summary, with a local scoring model; stored with the version, so
        ``/summaries`` shows it."""
        request = request or ScoreRequest()
        return await run_in_threadpool(
            lambda: personalizer.score(user_id, request.examples, version=request.version))

    @app.delete("/v1/users/{user_id:user_id}", response_model=Forgotten, dependencies=users,
                tags=["users"])
    async def forget(user_id: str = user_dep) -> Forgotten:
        """Remove every stored summary version and signal of the user."""
        deleted = await run_in_threadpool(personalizer.forget, user_id)
        return Forgotten(user_id=user_id, deleted=deleted)

    @app.get("/openapi.json", include_in_schema=False, dependencies=users)
    async def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=users)
    async def docs() -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="popi serve")

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, str]:
        """Liveness, without a key."""
        return {"status": "ok"}

    app.state.upstreams = built
    app.state.keyless = not keys
    app.state.max_body = max_body_bytes(getattr(config, "max_body_bytes", None))
    app.state.redact = redact

    async def answer_error(exc: Exception, request: Request) -> JSONResponse:
        if isinstance(exc, ProxyAuthError):
            return await _auth_error(request, exc)
        if isinstance(exc, ProxyForbiddenError):
            return await _forbidden(request, exc)
        if isinstance(exc, PopiError):
            return await _popi_error(request, exc)
        return await _unexpected(request, exc)

    return PopiProxy(app, chat_completions, answer_error)


class PopiProxy:
    """The ASGI app: chat completions go straight to their handler, everything else through
    FastAPI. Routing a request through FastAPI's middleware and dependency machinery cost more CPU
    than the rest of the proxy's work together in the load benchmark; the route stays registered
    in FastAPI too, so the OpenAPI schema documents it."""

    CHAT = "/v1/chat/completions"

    def __init__(self, api: FastAPI, chat: Any, on_error: Any):
        self.api = api
        self._chat = chat
        self._on_error = on_error

    @property
    def state(self) -> Any:
        return self.api.state

    def openapi(self) -> dict[str, Any]:
        return self.api.openapi()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        state = self.api.state
        if scope["type"] == "http" and (
            refused := check_request(scope, keyless=state.keyless, max_body=state.max_body)
        ) is not None:  # before any route: a forged Host or Origin, a body too big or not JSON
            log.warning("%s %s -> %d %s", scope["method"], one_line(scope["path"]),
                        refused.status, refused.message)
            await JSONResponse(refused.body(), status_code=refused.status)(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == self.CHAT and scope["method"] == "POST":
            request = Request(scope, limit_body(receive, state.max_body))
            try:
                response = await self._chat(request)
            except Exception as exc:
                response = await self._on_error(exc, request)
            await response(scope, receive, send)
            return
        if scope["type"] == "http":
            receive = limit_body(receive, state.max_body)
        await self.api(scope, receive, send)
