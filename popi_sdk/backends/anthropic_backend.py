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

from collections.abc import Sequence
from typing import Any

from popi_sdk.backends.api import APIBackend
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
        timeout: seconds an attempt may wait for the answer; when streaming, for each next
            chunk (then ``POPI_API_TIMEOUT``, then 600).
        connect_timeout: seconds an attempt may take to connect (then
            ``POPI_API_CONNECT_TIMEOUT``, then 5), so a dead server fails fast.
        max_retries: the client's own retries on connection errors, 408, 409, 429 and 5xx (then
            ``POPI_API_MAX_RETRIES``, then 2).
        max_concurrency: most requests in flight during batch work.
        http_client / async_http_client: ``httpx2`` clients to send requests through (proxies,
            custom TLS, or a mock transport in tests).

    Of :class:`GenerateOptions` only ``max_new_tokens`` applies: the Messages API (anthropic 2.x)
    takes no temperature, top_p or seed, so Claude samples as it always does.
    """

    client_module = "anthropic"
    client_class = "Anthropic"
    async_client_class = "AsyncAnthropic"
    install = 'pip install "anthropic>=2"'
    key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    official_base_url = "https://api.anthropic.com"
    models_path = "/v1/models"
    reply_kind = "Messages API reply"
    default_model = DEFAULT_MODEL

    def _finds_key(self) -> bool:
        # The client has several credential sources (ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN, an
        # ANTHROPIC_PROFILE); a client built without a key says whether it found one.
        probe = self.sdk.Anthropic(**self._client_options)
        try:
            return bool(probe.api_key or probe.auth_token or probe.credentials)
        finally:
            probe.close()

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

    def _endpoint(self, client: Any) -> Any:
        return client.messages

    def _text(self, reply: Any) -> str:
        # The client builds replies without validating them: check the shape here.
        content = getattr(reply, "content", None)
        if not isinstance(content, list):
            raise ValueError("it has no content list")
        texts = [getattr(b, "text", None) for b in content if getattr(b, "type", None) == "text"]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("a text block of its content has no text")
        return "".join(texts).strip()
