"""The PopiError tree. Every message says what went wrong *and how to fix it*.

Provider and library errors are wrapped with ``raise PopiError(...) from exc`` so the cause stays
visible in the traceback while the first line a user reads is ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from popi_sdk.redact import redact_text

if TYPE_CHECKING:
    from pydantic import ValidationError


class PopiError(Exception):
    """Root of every error popi-sdk raises on purpose."""


class InputError(PopiError, ValueError):
    """A user-supplied value (signals, prompt, option) is invalid. ``param`` names the request
    field at fault, where there is one (``popi serve`` reports it as the error's ``param``)."""

    def __init__(self, *args: object, param: str | None = None):
        super().__init__(*args)
        self.param = param


class PayloadTooLargeError(InputError):
    """A request body over the server's limit (HTTP 413)."""


class DataFileError(InputError):
    """One or more rows of a data file are invalid; ``problems`` lists every one of them."""

    def __init__(self, path: str, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        body = "\n".join(f"  {p}" for p in shown)
        super().__init__(
            f"{self.path}: {len(problems)} problem(s) found; nothing was processed.\n{body}{more}"
        )


class ConfigError(InputError):
    """A configuration file or override is invalid."""


class SettingError(PopiError):
    """An environment variable setting (``POPI_...``) is invalid; the message names it.

    Deliberately not a ``ValueError``: a setting read while validating a user's data must not be
    reported by pydantic as a problem of the field being validated."""


class MissingDependencyError(PopiError, ImportError):
    """An optional dependency is not installed; the message gives the install command."""

    def __init__(self, what: str, install: str):
        self.install = install
        super().__init__(f"{what} is not installed. Install it with:\n    {install}")


class BackendError(PopiError):
    """A model backend failed. ``backend`` names it (e.g. ``openai:gpt-4o``)."""

    def __init__(self, message: str, backend: str | None = None):
        self.backend = backend
        prefix = f"[{backend}] " if backend else ""
        # Messages quote base URLs and servers' own words; neither may leak a credential.
        super().__init__(redact_text(prefix + message))


class UnknownBackendError(BackendError, InputError):
    """No backend is registered under the requested name."""


class ModelNotFoundError(BackendError):
    """The backend does not know the requested model (a missing folder, hub id or API model)."""


class AuthenticationError(BackendError):
    """An API key is missing or was rejected."""


class RateLimitError(BackendError):
    """The provider kept answering 429 after the client's own retries."""


class BackendConnectionError(BackendError):
    """The backend's server could not be reached (refused, DNS, TLS)."""


class BackendTimeoutError(BackendError):
    """A request timed out after the client's own retries."""


class BadResponseError(BackendError):
    """The server answered 200 but not with a reply of its API (not JSON, an HTML page, a
    reply without choices or content); the message quotes what it sent."""


class EmptySummaryError(BackendError):
    """The summarizer wrote no usable text; nothing was stored."""


class StoreError(PopiError):
    """The summary store could not be opened or written."""


class NotFoundError(PopiError, LookupError):
    """A requested object (e.g. a user's summary) does not exist."""


class ForgetIncompleteError(StoreError):
    """``forget`` deleted a user's rows, but copies of their text may still be on disk (another
    connection kept the store from compacting). Calling ``forget`` again finishes the job."""

    def __init__(self, message: str, user_id: str, deleted: int):
        self.user_id = user_id
        self.deleted = deleted
        super().__init__(message)


class UserForgottenError(PopiError):
    """The user was forgotten while this write was in flight; nothing of it was stored. ``forget``
    wins over every write that began before it: send the data again to start afresh."""

    def __init__(self, user_id: str):
        self.user_id = user_id
        super().__init__(
            f"user {user_id!r} was forgotten while this write was in flight, so nothing of it was "
            "stored; send the signals or summary again to start the user afresh"
        )


class LaunchError(PopiError):
    """SkyPilot could not launch the task (no capacity, a rejected request)."""


class CloudSetupError(LaunchError):
    """No cloud is enabled in SkyPilot, or the chosen cloud's credentials are missing or rejected."""


# -- describing pydantic validation errors in our words ------------------------------------
_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove it (or check its spelling)",
    "string_type": "give a JSON string",
    "list_type": "give a JSON list",
    "dict_type": "give a JSON object",
    "float_type": "give a number",
    "float_parsing": "give a number",
    "finite_number": "give a finite number (JSON cannot store NaN or Infinity)",
    "model_type": "give a JSON object",
    "model_attributes_type": "give a JSON object",
}


def format_loc(loc: Iterable[object]) -> str:
    """``('signals', 'pairs', 0, 'chosen')`` -> ``signals.pairs[0].chosen``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(row)"


def range_rule(field: Any) -> str | None:
    """``"must be a whole number from 1 to 32768"`` for a pydantic field bounded on both sides
    (its ``ge``/``gt`` and ``le`` constraints), else ``None``."""
    bounds = {type(m).__name__: m for m in field.metadata}
    high = bounds.get("Le")
    if high is None or not ("Ge" in bounds or "Gt" in bounds):
        return None
    kind = "a whole number" if field.annotation is int else "a number"
    if "Ge" in bounds:
        return f"must be {kind} from {bounds['Ge'].ge} to {high.le}"
    return f"must be {kind} greater than {bounds['Gt'].gt} and at most {high.le}"


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One human line per pydantic error: field path, message, and a fix where we know one."""
    lines = []
    for err in exc.errors():
        where = format_loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(err["type"])
        lines.append(f"field {where}: {msg}" + (f". Fix: {fix}" if fix else ""))
    return lines
