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

from collections.abc import Iterator, Sequence
from typing import Any

from popi_sdk.backends.api import APIBackend
from popi_sdk.backends.base import GenerateOptions, Message

DEFAULT_MODEL = "gpt-4o-mini"


class OpenAIBackend(APIBackend):
    """Chat completions through the official ``openai`` client.

    Args:
        model: model name as the server knows it (default ``gpt-4o-mini``); for
            ``transformers serve`` and ``vllm serve`` the id or folder the server loaded.
        api_key: key (then ``OPENAI_API_KEY``).
        base_url: endpoint ending in ``/v1`` (then ``OPENAI_BASE_URL``, then OpenAI's).
        timeout: seconds an attempt may wait for the answer; when streaming, for each next
            chunk (then ``POPI_API_TIMEOUT``, then 600).
        connect_timeout: seconds an attempt may take to connect (then
            ``POPI_API_CONNECT_TIMEOUT``, then 5), so a dead server fails fast.
        max_retries: the client's own retries on connection errors, 408, 409, 429 and 5xx (then
            ``POPI_API_MAX_RETRIES``, then 2).
        max_concurrency: most requests in flight during batch work.
        http_client / async_http_client: ``httpx2`` clients to send requests through (proxies,
            custom TLS, or a mock transport in tests).
    """

    client_module = "openai"
    client_class = "OpenAI"
    async_client_class = "AsyncOpenAI"
    install = 'pip install "openai>=3"'
    key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    official_base_url = "https://api.openai.com/v1"
    reply_kind = "chat completion"
    default_model = DEFAULT_MODEL

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

    def _endpoint(self, client: Any) -> Any:
        return client.chat.completions

    def _text(self, reply: Any) -> str:
        # The client builds replies without validating them, so a reply of the wrong shape
        # arrives as a str, a list, or a completion with fields missing.
        choices = getattr(reply, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise ValueError("it has no choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if content is None:
            refusal = getattr(message, "refusal", None)
            if refusal:
                raise ValueError(f"the model refused: {refusal}")
            raise ValueError("its first choice has no message content")
        if not isinstance(content, str):
            raise ValueError(f"its message content is a {type(content).__name__}, not text")
        return content.strip()

    def stream(self, messages: Sequence[Message], options: GenerateOptions) -> Iterator[str]:
        """Chat completions with ``stream=True``: each delta as it arrives."""
        try:
            chunks = self._endpoint(self.client).create(**self._params(messages, options), stream=True)
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except self.sdk.APIError as e:
            raise self.translate_error(e) from e
