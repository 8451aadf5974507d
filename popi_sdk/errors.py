"""The PopiError tree. Every message says what went wrong *and how to fix it*.

Provider and library errors are wrapped with ``raise PopiError(...) from exc`` so the cause stays
visible in the traceback while the first line a user reads is ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class PopiError(Exception):
    """Root of every error popi-sdk raises on purpose."""


class InputError(PopiError, ValueError):
    """A user-supplied value (signals, prompt, option) is invalid."""


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
        super().__init__(prefix + message)


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


class StoreError(PopiError):
    """The summary store could not be opened or written."""


class NotFoundError(PopiError, LookupError):
    """A requested object (e.g. a user's summary) does not exist."""


# -- describing pydantic validation errors in our words ------------------------------------
_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove it (or check its spelling)",
    "string_type": "give a JSON string",
    "list_type": "give a JSON list",
    "dict_type": "give a JSON object",
    "float_type": "give a number",
    "float_parsing": "give a number",
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


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One human line per pydantic error: field path, message, and a fix where we know one."""
    lines = []
    for err in exc.errors():
        where = format_loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(err["type"])
        lines.append(f"field {where}: {msg}" + (f". Fix: {fix}" if fix else ""))
    return lines
