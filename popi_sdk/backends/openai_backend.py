"""``openai:<model>``: OpenAI's Chat Completions API, or any OpenAI-compatible server.

The same backend talks to OpenAI, a ``vllm serve`` endpoint, ``transformers serve`` or a company
gateway; only the base URL differs::

    get_backend("openai:gpt-4o")                                   # api.openai.com
    get_backend("openai:meta-llama/Llama-3.2-3B-Instruct", base_url="http://127.0.0.1:8000/v1")

Each setting resolves as: explicit argument, then the client's own environment variable, then the
default. The key: ``api_key``, then ``OPENAI_API_KEY``; a server other than OpenAI's that checks
no key needs none. The base URL: ``base_url``, then ``OPENAI_BASE_URL``, then
``https://api.openai.com/v1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from popi_sdk.backends.api import PLACEHOLDER_KEY, APIBackend
from popi_sdk.backends.base import GenerateOptions
from popi_sdk.templates import Message

DEFAULT_MODEL = "gpt-4o-mini"


class OpenAIBackend(APIBackend):
    """Chat completions through the official ``openai`` client.

    Args:
        model: model name as the server knows it (default ``gpt-4o-mini``); for
            ``transformers serve`` and ``vllm serve`` the id or folder the server loaded.
        api_key: key (then ``OPENAI_API_KEY``).
        base_url: endpoint ending in ``/v1`` (then ``OPENAI_BASE_URL``, then OpenAI's).
        timeout: seconds per request attempt, passed to the client.
        max_retries: the client's own retries on connection errors, 408, 409, 429 and 5xx.
        max_concurrency: most requests in flight during batch work.
        http_client / async_http_client: ``httpx2`` clients to send requests through (proxies,
            custom TLS, or a mock transport in tests).
    """

    client_module = "openai"
    install = 'pip install "openai>=3"'
    key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    official_base_url = "https://api.openai.com/v1"

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        http_client: Any = None,
        async_http_client: Any = None,
    ):
        super().__init__(
            model or DEFAULT_MODEL,
            timeout=timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
        )
        self.name = f"openai:{self.model}"
        self.base_url = (
            base_url or os.environ.get(self.base_url_env) or self.official_base_url
        ).rstrip("/")
        key = api_key or os.environ.get(self.key_env)
        if not key:
            if self.is_official:
                raise self.missing_key_error()
            key = PLACEHOLDER_KEY
        self._api_key = key
        self._async_http_client = async_http_client
        self.client = self.sdk.OpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=http_client,
        )

    def __repr__(self) -> str:
        return f"<OpenAIBackend {self.name} at {self.base_url}>"

    def _new_async_client(self) -> Any:
        return self.sdk.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=self._async_http_client,
        )

    def _params(self, messages: Sequence[Message], options: GenerateOptions) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": options.temperature,
        }
        # OpenAI's current name for the length cap is max_completion_tokens (its reasoning models
        # refuse max_tokens); self-hosted servers all understand max_tokens, not all the new name.
        length_field = "max_completion_tokens" if self.is_official else "max_tokens"
        params[length_field] = options.max_new_tokens
        if options.top_p < 1.0:
            params["top_p"] = options.top_p
        if options.seed is not None:
            params["seed"] = options.seed
        return params

    @staticmethod
    def _text(response: Any) -> str:
        if not response.choices:
            return ""
        return (response.choices[0].message.content or "").strip()

    def _request(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        return self._text(self.client.chat.completions.create(**self._params(messages, options)))

    async def _arequest(
        self, client: Any, messages: Sequence[Message], options: GenerateOptions
    ) -> str:
        response = await client.chat.completions.create(**self._params(messages, options))
        return self._text(response)

    def stream(self, messages: Sequence[Message], options: GenerateOptions) -> Iterator[str]:
        """Chat completions with ``stream=True``: each delta as it arrives."""
        try:
            chunks = self.client.chat.completions.create(**self._params(messages, options), stream=True)
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except self.sdk.APIError as e:
            raise self.translate_error(e) from e
