"""Errors as OpenAI-compatible clients expect them: ``{"error": {"message", "type", "param",
"code"}}`` with the HTTP status the ``openai`` client turns into the matching exception.

The SDK's own errors (:mod:`popi_sdk.errors`, which the backends already raise for 401, 429, 5xx,
timeouts and refused connections) map to a status here. A failure of the *upstream* is never told
to the client as its own fault: the upstream rejecting the proxy's key is a 502 (the client's key
was fine), an upstream timeout a 504, a refused connection a 502. Every message passes through a
:class:`Redactor`, so no upstream key leaves the server in a body or a log line.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from popi_sdk.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    InputError,
    MissingDependencyError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PopiError,
    RateLimitError,
    StoreError,
    UserForgottenError,
)

log = logging.getLogger("popi_sdk.serve")

#: Environment variables whose values are upstream credentials.
SECRET_ENVS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "VLLM_API_KEY",
               "HF_TOKEN")
# Key-shaped tokens, masked or not, as providers echo them ("Incorrect API key provided: sk-...").
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_*.\-]{3,}|sk_[A-Za-z0-9_*.\-]{3,}|hf_[A-Za-z0-9]{8,})")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")


class Redactor:
    """Removes secrets from text: the exact values it was given, and anything key-shaped."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    @classmethod
    def from_environment(cls, extra: Iterable[str] = ()) -> Redactor:
        return cls([*(os.environ.get(k, "") for k in SECRET_ENVS), *extra])

    def add(self, *secrets: str) -> None:
        self.secrets = sorted({*self.secrets, *(s for s in secrets if s and len(s) >= 4)},
                              key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        text = _BEARER.sub(r"\1[redacted]", text)
        return _KEYLIKE.sub("[redacted]", text)


@dataclass
class APIErrorBody:
    """One error as status, body and extra headers."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after: str | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()

    def sse(self) -> bytes:
        """The error as one server-sent event; the ``openai`` client raises it as ``APIError``."""
        return b"data: " + self.json_bytes() + b"\n\n"

    def headers(self) -> dict[str, str]:
        return {"retry-after": self.retry_after} if self.retry_after else {}


def _upstream_status(exc: BaseException) -> tuple[int | None, str | None]:
    """The upstream's HTTP status and Retry-After, from the client exception a backend wrapped."""
    cause = exc.__cause__
    status = getattr(cause, "status_code", None)
    response = getattr(cause, "response", None)
    retry = None
    if response is not None:
        try:
            retry = response.headers.get("retry-after")
        except Exception:  # a response without headers: nothing to forward
            retry = None
    return status, retry


def _upstream_said(exc: BaseException) -> tuple[str, str | None]:
    """What the upstream said about a request it refused (its error's message and ``param``):
    about the client's own request, so it is theirs to read."""
    body = getattr(exc.__cause__, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        param = error.get("param")
        return error["message"], param if isinstance(param, str) else None
    return str(getattr(exc.__cause__, "message", "") or "the request was refused"), None


#: Said to the client when the upstream fails: no URL, key variable or setting of the server (the
#: SDK's messages name them, for the operator, who finds them in the server's log).
_OPERATOR = "the server's log has the details"


def to_api_error(exc: BaseException, redact: Redactor) -> APIErrorBody:
    """The OpenAI-shaped error for ``exc``. Unexpected exceptions say only that the server failed:
    their details stay in the server log. So do an upstream failure's: the client learns what
    happened (unreachable, timed out, rate limited, rejected the operator's key) but not the
    server's setup (upstream URLs, key variables, settings), which are logged here."""
    from popi_sdk.serve.auth import ProxyAuthError, ProxyForbiddenError

    msg = redact(str(exc))
    if isinstance(exc, ProxyAuthError):
        return APIErrorBody(401, msg, "invalid_request_error", exc.code)
    if isinstance(exc, ProxyForbiddenError):  # every API's route, not only chat's
        return APIErrorBody(403, msg, "invalid_request_error", "permission_denied")
    if isinstance(exc, BackendError) and not isinstance(exc, InputError):
        err = _upstream_error(exc, msg, redact)
        if err is not None:
            log.warning("upstream failure (%s): %s", err.code, msg)
            return err
    if isinstance(exc, UserForgottenError):
        return APIErrorBody(409, msg, "invalid_request_error", "user_forgotten")
    if isinstance(exc, NotFoundError):
        return APIErrorBody(404, msg, "invalid_request_error", "not_found")
    if isinstance(exc, PayloadTooLargeError):
        return APIErrorBody(413, msg, "invalid_request_error", "payload_too_large")
    if isinstance(exc, InputError):
        return APIErrorBody(400, msg, "invalid_request_error", "invalid_value",
                            getattr(exc, "param", None))
    if isinstance(exc, StoreError):
        return APIErrorBody(503, msg, "server_error", "store_unavailable")
    if isinstance(exc, MissingDependencyError):
        return APIErrorBody(501, msg, "server_error", "not_installed")
    if isinstance(exc, PopiError):
        return APIErrorBody(500, msg, "server_error", None)
    return APIErrorBody(500, "the server failed on this request; its log has the details",
                        "server_error", None)


def _upstream_error(exc: BackendError, msg: str, redact: Redactor) -> APIErrorBody | None:
    status, retry = _upstream_status(exc)
    if isinstance(exc, ModelNotFoundError):
        if status is None:  # the proxy's own routing: the message lists the models to use
            return APIErrorBody(404, msg, "invalid_request_error", "model_not_found", "model")
        return APIErrorBody(404, "the generator does not serve the model this request was routed "
                            f"to; {_OPERATOR}", "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, AuthenticationError):
        return APIErrorBody(
            502, "the generator's upstream rejected this server's credentials (the proxy "
            f"operator's key, not yours: ask them to fix it; {_OPERATOR})", "upstream_error",
            "upstream_authentication")
    if isinstance(exc, RateLimitError):
        return APIErrorBody(429, "the generator's upstream is rate limiting this server: wait "
                            "(Retry-After, where given) and try again", "rate_limit_error",
                            "rate_limit_exceeded", retry_after=retry)
    if isinstance(exc, BackendTimeoutError):
        return APIErrorBody(504, f"the generator did not answer in time; try again ({_OPERATOR})",
                            "upstream_error", "upstream_timeout")
    if isinstance(exc, BackendConnectionError):
        return APIErrorBody(502, "the generator could not be reached, or its answer broke off "
                            f"before its end; try again ({_OPERATOR})", "upstream_error",
                            "upstream_unreachable")
    if status is not None and 400 <= status < 500:  # the request itself was refused
        said, param = _upstream_said(exc)
        return APIErrorBody(400 if status in (400, 422) else status,
                            redact(f"the generator rejected the request ({status}): {said}"),
                            "invalid_request_error", "upstream_rejected", param)
    if status is not None:
        return APIErrorBody(502, f"the generator failed with a server error ({status}); try "
                            f"again ({_OPERATOR})", "upstream_error", "upstream_failed")
    if type(exc) is BackendError or exc.__cause__ is not None:
        return APIErrorBody(502, f"the generator failed; {_OPERATOR}", "upstream_error",
                            "upstream_failed")
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` safe for one log line: control characters and line breaks become escapes, so a
    request's path or id can never write a line of its own (a forged ``INFO:`` entry)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


#: Loggers whose records may carry an upstream's words (and so, in theory, a key it echoed).
REDACTED_LOGGERS = ("popi_sdk.serve", "openai", "openai._base_client", "anthropic",
                    "anthropic._base_client", "httpx2", "uvicorn", "uvicorn.error", "uvicorn.access")


class RedactingFilter(logging.Filter):
    """Rewrites a log record's message (and traceback) through a :class:`Redactor`."""

    def __init__(self, redact: Redactor):
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


def install_log_redaction(redact: Redactor) -> RedactingFilter:
    """Redact every record of :data:`REDACTED_LOGGERS` from now on (one filter per server)."""
    found = RedactingFilter(redact)
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, RedactingFilter)]
        logger.addFilter(found)
    return found
