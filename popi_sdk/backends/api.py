"""What the ``openai`` and ``anthropic`` backends share: concurrent batches, one async client per
event loop, and the translation of a client's exceptions into :mod:`popi_sdk.errors`.

Both official clients are generated from the same template, so their exception classes carry the
same names (``AuthenticationError``, ``RateLimitError``, ``APITimeoutError``, ...). Retries and
timeouts are the clients' own (``max_retries``, ``timeout``): by the time an exception reaches
:func:`translate_error` the client has already retried what was worth retrying.
"""

from __future__ import annotations

import asyncio
import importlib
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
    InputError,
    MissingDependencyError,
    ModelNotFoundError,
    RateLimitError,
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
    :meth:`_request` and :meth:`_arequest`; errors and concurrency are handled here.

    ``max_concurrency`` also tells :class:`~popi_sdk.Personalizer` that this backend is a server:
    batch work is sent as concurrent requests, at most that many in flight.
    """

    #: Client package (``"openai"``) and the command that installs it.
    client_module: str = ""
    install: str = ""
    #: Environment variables the client reads for the key and the base URL.
    key_env: str = ""
    base_url_env: str = ""
    #: The provider's own endpoint; any other base URL is a self-hosted or gateway server.
    official_base_url: str = ""
    #: Where, under the base URL, the server lists its models.
    models_path: str = "/models"

    def __init__(
        self,
        model: str,
        *,
        timeout: float,
        max_retries: int,
        max_concurrency: int,
    ):
        if timeout <= 0:
            raise InputError(f"timeout must be a positive number of seconds, got {timeout}")
        if max_retries < 0:
            raise InputError(f"max_retries must be 0 or more, got {max_retries}")
        if max_concurrency < 1:
            raise InputError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.base_url = self.official_base_url
        self.sdk = import_client(self.client_module, self.install)
        self._async_clients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}

    @property
    def is_official(self) -> bool:
        return self.base_url.rstrip("/") == self.official_base_url.rstrip("/")

    # -- what subclasses provide -----------------------------------------------------------
    def _request(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        raise NotImplementedError

    async def _arequest(
        self, client: Any, messages: Sequence[Message], options: GenerateOptions
    ) -> str:
        raise NotImplementedError

    def _new_async_client(self) -> Any:
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------
    def generate(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        try:
            return self._request(messages, options)
        except self.sdk.APIError as e:
            raise self.translate_error(e) from e

    async def agenerate(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        try:
            return await self._arequest(self._async_client(), messages, options)
        except self.sdk.APIError as e:
            raise self.translate_error(e) from e

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

    def translate_error(self, e: Exception) -> BackendError:
        """The popi error for a client exception: what failed, at which URL, and what to do."""
        sdk, name, url = self.sdk, self.name, self.base_url
        retried = f"after {self.max_retries} retries" if self.max_retries else "(retries are off)"
        said = server_message(e)
        if isinstance(e, sdk.APITimeoutError):
            return BackendTimeoutError(
                f"no answer from {url} within {self.timeout:g} s {retried}. Raise timeout=... "
                "(or max_retries=...) for long answers, or check that the server is up",
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
