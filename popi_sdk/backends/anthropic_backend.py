"""``anthropic:<model>``: Claude through Anthropic's Messages API.

The conditioning (the preference summary, or the summarizer's instructions) travels in the
Messages API's ``system`` field, where the API wants context about the conversation; the
conversation itself keeps only user and assistant turns.

Each setting resolves as: explicit argument, then the client's own resolution, then the default.
The key: ``api_key``, then ``ANTHROPIC_API_KEY`` (or ``ANTHROPIC_AUTH_TOKEN``, or an
``ANTHROPIC_PROFILE``); a server other than Anthropic's that checks no key needs none. The base
URL: ``base_url``, then ``ANTHROPIC_BASE_URL``, then ``https://api.anthropic.com``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from popi_sdk.backends.api import PLACEHOLDER_KEY, APIBackend
from popi_sdk.backends.base import GenerateOptions, Message
from popi_sdk.errors import InputError

DEFAULT_MODEL = "claude-sonnet-4-5"


def split_system(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, str]]]:
    """``(system, turns)``: system messages joined into one text, the rest as API turns."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
    for turn in turns:
        if turn["role"] not in ("user", "assistant"):
            raise InputError(
                f"message role {turn['role']!r} is not one the Messages API takes: use "
                "'system', 'user' or 'assistant'"
            )
    if not turns or turns[0]["role"] != "user":
        raise InputError("the conversation must start with a user message after any system text")
    return (system or None), turns


class AnthropicBackend(APIBackend):
    """Messages through the official ``anthropic`` client.

    Args:
        model: Claude model name (default ``claude-sonnet-4-5``).
        api_key: key (then ``ANTHROPIC_API_KEY`` and the client's other credential sources).
        base_url: endpoint (then ``ANTHROPIC_BASE_URL``, then Anthropic's).
        timeout: seconds per request attempt, passed to the client.
        max_retries: the client's own retries on connection errors, 408, 409, 429 and 5xx.
        max_concurrency: most requests in flight during batch work.
        http_client / async_http_client: ``httpx2`` clients to send requests through (proxies,
            custom TLS, or a mock transport in tests).

    Of :class:`GenerateOptions` only ``max_new_tokens`` applies: the Messages API (anthropic 2.x)
    takes no temperature, top_p or seed, so Claude samples as it always does.
    """

    client_module = "anthropic"
    install = 'pip install "anthropic>=2"'
    key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    official_base_url = "https://api.anthropic.com"
    models_path = "/v1/models"

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
        self.name = f"anthropic:{self.model}"
        self.base_url = (
            base_url or os.environ.get(self.base_url_env) or self.official_base_url
        ).rstrip("/")
        self._client_kwargs: dict[str, Any] = {
            "base_url": self.base_url,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
        }
        if api_key:
            self._client_kwargs["api_key"] = api_key
        self.client = self.sdk.Anthropic(**self._client_kwargs, http_client=http_client)
        if not (self.client.api_key or self.client.auth_token or self.client.credentials):
            if self.is_official:
                raise self.missing_key_error()
            self._client_kwargs["api_key"] = PLACEHOLDER_KEY
            self.client = self.sdk.Anthropic(**self._client_kwargs, http_client=http_client)
        self._async_http_client = async_http_client

    def __repr__(self) -> str:
        return f"<AnthropicBackend {self.name} at {self.base_url}>"

    def _new_async_client(self) -> Any:
        return self.sdk.AsyncAnthropic(**self._client_kwargs, http_client=self._async_http_client)

    def _params(self, messages: Sequence[Message], options: GenerateOptions) -> dict[str, Any]:
        system, turns = split_system(messages)
        # The Messages API of anthropic 2.x takes no sampling parameters (temperature, top_p and
        # seed left the API and the client), so only the length cap travels.
        params: dict[str, Any] = {
            "model": self.model,
            "messages": turns,
            "max_tokens": options.max_new_tokens,
        }
        if system:
            params["system"] = system
        return params

    @staticmethod
    def _text(response: Any) -> str:
        return "".join(b.text for b in response.content if b.type == "text").strip()

    def _request(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        return self._text(self.client.messages.create(**self._params(messages, options)))

    async def _arequest(
        self, client: Any, messages: Sequence[Message], options: GenerateOptions
    ) -> str:
        return self._text(await client.messages.create(**self._params(messages, options)))
