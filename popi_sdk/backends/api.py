"""What the ``openai`` and ``anthropic`` backends share: resolving the base URL, key, timeout and
retries; building the sync and async clients; concurrent batches, one async client per event loop;
checking that a reply is one the API defines; and the translation of a client's exceptions into
:mod:`popi_sdk.errors`.

Both official clients are generated from the same template, so their constructors take the same
options and their exception classes carry the same names (``AuthenticationError``,
``RateLimitError``, ``APITimeoutError``, ...). Retries and timeouts are the clients' own
(``max_retries``, ``timeout``): by the time an exception reaches :func:`translate_error` the client
has already retried what was worth retrying.

Timeouts and retries resolve as: argument, then ``POPI_API_TIMEOUT`` /
``POPI_API_CONNECT_TIMEOUT`` / ``POPI_API_MAX_RETRIES``, then 600 s for an answer (between chunks
when streaming), 5 s to connect, and 2 retries. A dead server fails fast (the connect timeout); a
long answer is not cut short (the answer timeout). :attr:`APIBackend.total_bound` is the longest
a failing call takes.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from popi_sdk.backends.base import Backend, GenerateOptions, Message
from popi_sdk.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    BadResponseError,
    InputError,
    MissingDependencyError,
    ModelNotFoundError,
    RateLimitError,
)
from popi_sdk.redact import redact_text, redact_url
from popi_sdk.settings import (
    api_connect_bound,
    api_connect_timeout,
    api_max_retries,
    api_timeout,
    api_total_bound,
)

#: A key for servers that check none (vLLM, ``transformers serve``); the clients refuse to start
#: without some key. Only used when the base URL is not the provider's own.
PLACEHOLDER_KEY = "not-needed"


def import_client(module: str, install: str) -> ModuleType:
    """Import an API client package, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"The '{module}' client", install) from e


def server_message(exc: Exception) -> str:
    """The server's own explanation inside an API error, without the client's wrapping."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if body.get("detail"):  # FastAPI servers (transformers serve)
            return str(body["detail"])
    return str(getattr(exc, "message", None) or exc)


class APIBackend(Backend):
    """A model behind an HTTP API. Subclasses set the class attributes and implement
    :meth:`_params`, :meth:`_endpoint` and :meth:`_text`; clients, errors and concurrency are
    handled here.

    ``max_concurrency`` also tells :class:`~popi_sdk.Personalizer` that this backend is a server:
    batch work is sent as concurrent requests, at most that many in flight.
    """

    #: Client package (``"openai"``), its sync and async client classes, and the install command.
    client_module: str = ""
    client_class: str = ""
    async_client_class: str = ""
    install: str = ""
    #: Environment variables the client reads for the key and the base URL.
    key_env: str = ""
    base_url_env: str = ""
    #: The provider's own endpoint; any other base URL is a self-hosted or gateway server.
    official_base_url: str = ""
    #: Where, under the base URL, the server lists its models.
    models_path: str = "/models"
    #: What a reply is called in messages (``"chat completion"``).
    reply_kind: str = "reply"
    default_model: str = ""

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        connect_timeout: float | None = None,
        max_concurrency: int = 8,
        http_client: Any = None,
        async_http_client: Any = None,
    ):
        timeout = api_timeout(timeout)
        connect_timeout = api_connect_timeout(connect_timeout)
        max_retries = api_max_retries(max_retries)
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InputError(f"{name} must be a positive number of seconds, got {value}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InputError(f"max_retries must be a whole number, 0 or more, got {max_retries}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise InputError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.model = model or self.default_model
        self.name = f"{self.client_module}:{self.model}"
        self.timeout = float(timeout)
        self.connect_timeout = min(float(connect_timeout), self.timeout)
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.base_url = (
            base_url or os.environ.get(self.base_url_env) or self.official_base_url
        ).rstrip("/")
        self.sdk = import_client(self.client_module, self.install)
        self._client_options: dict[str, Any] = {
            "base_url": self.base_url,
            # Connecting and answering get separate limits: the first is short (a dead server
            # fails fast), the second long (the time between bytes of the answer, which for a
            # non-streamed answer is the whole time the model writes).
            "timeout": _client_timeout(self.timeout, self.connect_timeout),
            "max_retries": self.max_retries,
        }
        if api_key:
            self._client_options["api_key"] = api_key
        elif not self._finds_key():
            if self.is_official:
                raise self.missing_key_error()
            self._client_options["api_key"] = PLACEHOLDER_KEY
        self.client = self._new_client(http_client)
        self._async_http_client = async_http_client
        self._async_clients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}

    @property
    def is_official(self) -> bool:
        return self.base_url.rstrip("/") == self.official_base_url.rstrip("/")

    @property
    def shown_url(self) -> str:
        """The base URL as messages and logs show it: credentials masked."""
        return redact_url(self.base_url)

    @property
    def total_bound(self) -> float:
        """Seconds a failing call may take before its error is raised: every attempt timing out,
        plus the client's backoff between them (a server's ``Retry-After`` comes on top)."""
        return api_total_bound(self.timeout, self.max_retries)

    @property
    def connect_bound(self) -> float:
        """Seconds a call to a server that accepts no connection takes before its error."""
        return api_connect_bound(self.connect_timeout, self.max_retries)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} at {self.shown_url}, timeout {self.timeout:g} s "
            f"(connect {self.connect_timeout:g} s) x {self.max_retries + 1} attempts>"
        )

    # -- clients ---------------------------------------------------------------------------
    def _finds_key(self) -> bool:
        """Whether the client finds a key by itself when none is passed."""
        return bool(os.environ.get(self.key_env))

    def _new_client(self, http_client: Any = None) -> Any:
        return getattr(self.sdk, self.client_class)(**self._client_options, http_client=http_client)

    def _new_async_client(self) -> Any:
        return getattr(self.sdk, self.async_client_class)(
            **self._client_options, http_client=self._async_http_client
        )

    # -- what subclasses provide -----------------------------------------------------------
    def _params(self, messages: Sequence[Message], options: GenerateOptions) -> dict[str, Any]:
        """The request body for these messages and options."""
        raise NotImplementedError

    def _endpoint(self, client: Any) -> Any:
        """The client resource whose ``create`` sends the request (``client.messages``)."""
        raise NotImplementedError

    def _text(self, reply: Any) -> str:
        """The answer's text in a parsed reply; ``ValueError`` saying what is missing when the
        reply is not shaped as the API defines."""
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------
    def generate(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        params = self._params(messages, options)
        try:
            raw = self._endpoint(self.client).with_raw_response.create(**params)
        except self.sdk.APIError as e:
            raise self.translate_error(e) from e
        try:
            reply = raw.parse()
        except ValueError as e:  # the body is not JSON (JSONDecodeError)
            raise self.bad_reply(raw.http_response, f"not JSON ({e})") from e
        return self._checked_text(raw.http_response, reply)

    async def agenerate(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        params = self._params(messages, options)
        try:
            raw = await self._endpoint(self._async_client()).with_raw_response.create(**params)
        except self.sdk.APIError as e:
            raise self.translate_error(e) from e
        try:
            reply = raw.parse()
            if inspect.isawaitable(reply):  # anthropic's async raw response parses by awaiting
                reply = await reply
        except ValueError as e:
            raise self.bad_reply(raw.http_response, f"not JSON ({e})") from e
        return self._checked_text(raw.http_response, reply)

    def _checked_text(self, http_response: Any, reply: Any) -> str:
        try:
            return self._text(reply)
        except ValueError as e:
            raise self.bad_reply(http_response, str(e)) from None

    def generate_batch(
        self, batch: Sequence[Sequence[Message]], options: GenerateOptions
    ) -> list[str]:
        """Concurrent requests, at most ``max_concurrency`` in flight; order is kept. The first
        failure cancels the requests not yet sent and is raised."""
        if len(batch) <= 1:
            return [self.generate(m, options) for m in batch]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batch))) as pool:
            futures = [pool.submit(self.generate, m, options) for m in batch]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _async_client(self) -> Any:
        """One async client per running event loop: an async client's connections belong to the
        loop that opened them, and apps (or successive ``asyncio.run`` calls) may use several."""
        loop = asyncio.get_running_loop()
        held = self._async_clients.get(id(loop))
        if held is None or held[0] is not loop:
            self._async_clients = {
                k: v for k, v in self._async_clients.items() if not v[0].is_closed()
            }
            held = (loop, self._new_async_client())
            self._async_clients[id(loop)] = held
        return held[1]

    # -- errors ----------------------------------------------------------------------------
    def missing_key_error(self) -> AuthenticationError:
        return AuthenticationError(
            f"no API key found: set the {self.key_env} environment variable or pass "
            f"api_key=... (a self-hosted server that checks no key needs neither: give its "
            f"base_url, or set {self.base_url_env})",
            backend=self.name,
        )

    def bad_reply(self, http_response: Any, why: str) -> BadResponseError:
        """The error for a 200 reply that is not one the API defines: what it lacked, and the
        start of what the server sent (an HTML page usually means a wrong base URL)."""
        status = getattr(http_response, "status_code", "?")
        kind = (getattr(http_response, "headers", None) or {}).get("content-type", "no content type")
        try:
            body = " ".join(http_response.text.split())
        except Exception:  # an unread or undecodable body: say so rather than fail again
            body = "(unreadable body)"
        shown = body[:200] + ("..." if len(body) > 200 else "") if body else "(an empty body)"
        return BadResponseError(
            f"{self.shown_url} answered {status} ({kind}) with something that is not a "
            f"{self.reply_kind}: {why}. It sent: {shown}. Check that the base URL is the API's own "
            f"(base_url=... or {self.base_url_env}), not a web page or a proxy's error page",
            backend=self.name,
        )

    def translate_error(self, e: Exception) -> BackendError:
        """The popi error for a client exception: what failed, at which URL, and what to do."""
        sdk, name, url = self.sdk, self.name, self.shown_url
        retried = f"after {self.max_retries} retries" if self.max_retries else "(retries are off)"
        said = redact_text(server_message(e))
        if isinstance(e, sdk.APITimeoutError) and _is_connect_timeout(e):
            return BackendTimeoutError(
                f"could not connect to {url} within {self.connect_timeout:g} s {retried} (about "
                f"{self.connect_bound:.0f} s in all). Check that the server is up and the URL is "
                f"right, or raise connect_timeout=... / POPI_API_CONNECT_TIMEOUT",
                backend=name,
            )
        if isinstance(e, sdk.APITimeoutError):
            return BackendTimeoutError(
                f"no answer from {url} within {self.timeout:g} s {retried} (about "
                f"{self.total_bound:.0f} s in all). Raise timeout=... or POPI_API_TIMEOUT (or "
                "max_retries=... / POPI_API_MAX_RETRIES) for long answers, or check that the "
                "server is up",
                backend=name,
            )
        if isinstance(e, sdk.APIConnectionError):
            return BackendConnectionError(
                f"could not connect to {url}: {e.__cause__ or said}. Check that the server is "
                f"running and the URL is right (base_url=... or {self.base_url_env})",
                backend=name,
            )
        status = getattr(e, "status_code", None)
        if isinstance(e, (sdk.AuthenticationError, sdk.PermissionDeniedError)):
            return AuthenticationError(
                f"the API key was rejected by {url} ({status}: {said}). Check {self.key_env} "
                "(or api_key=...): it may be wrong, revoked, or lack access to this model",
                backend=name,
            )
        if isinstance(e, sdk.RateLimitError):
            return RateLimitError(
                f"rate limited by {url} (429) {retried}: {said}. Wait and try again, send fewer "
                "requests at once (max_concurrency=...), raise max_retries=..., or check your "
                "quota and billing",
                backend=name,
            )
        if isinstance(e, sdk.NotFoundError) or _names_unknown_model(e, self.model, said):
            return ModelNotFoundError(
                f"{url} does not serve model {self.model!r} ({status}: {said}). Check the model "
                f"name; the server lists its models at GET {url}{self.models_path}",
                backend=name,
            )
        if isinstance(e, sdk.APIStatusError) and status is not None and status >= 500:
            return BackendError(
                f"{url} failed with a server error ({status}) {retried}: {said}. "
                "Try again later",
                backend=name,
            )
        if isinstance(e, sdk.APIStatusError):
            return BackendError(f"{url} rejected the request ({status}): {said}", backend=name)
        return BackendError(f"request to {url} failed: {said}", backend=name)


def _names_unknown_model(e: Exception, model: str, said: str) -> bool:
    """A 400/404 about the model itself. OpenAI says ``code: model_not_found``; self-hosted
    servers (vLLM, ``transformers serve``) answer 400 naming the model they were asked for."""
    if getattr(e, "code", None) == "model_not_found":
        return True
    return getattr(e, "status_code", None) == 400 and f"'{model}'" in said


def _client_timeout(timeout: float, connect: float) -> Any:
    """The clients' timeout: ``connect`` to connect, ``timeout`` for everything else."""
    import httpx2

    return httpx2.Timeout(timeout, connect=connect)


def _is_connect_timeout(e: BaseException) -> bool:
    import httpx2

    cause = e.__cause__ or e.__context__
    return isinstance(cause, httpx2.ConnectTimeout) or type(cause).__name__ == "ConnectTimeout"
