"""The one rule for user ids, shared by the SDK, the CLI, ``popi serve`` (chat and every
``/v1/users/{id}`` endpoint) and the stores behind them.

A user id is your app's name for an end user (``"u17"``, ``"alice@example.com"``,
``"acme/alice"``). It is a string of 1 to :data:`MAX_USER_ID` characters after Unicode NFC
normalization (so a composed and a decomposed ``"é"`` are the same user), with:

- no leading or trailing whitespace (``" alice"`` is refused, never silently trimmed into
  ``"alice"``: a trimmed id would read another user's summary);
- no control, format, surrogate, private-use or unassigned characters, and no whitespace other
  than the plain space (no newline can reach a log line, no NUL a database);

In a URL the id is one path segment, percent-encoded (:func:`quote_user_id`; a ``/`` is sent as
``%2F``), and ``popi serve`` accepts it with or without the ``/`` encoded.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from popi_sdk.errors import InputError

#: The longest user id, in characters (after normalization).
MAX_USER_ID = 256


def _bad_character(user_id: str) -> tuple[int, str] | None:
    for i, ch in enumerate(user_id):
        category = unicodedata.category(ch)
        if ch != " " and (category[0] == "C" or category[0] == "Z" or ch.isspace()):
            return i, ch
    return None


def check_user_id(user_id: object, *, what: str = "user_id") -> str:
    """The normalized id, or an :class:`~popi_sdk.errors.InputError` naming ``what`` and the
    rule it breaks. Every entry point that takes a user id calls this first."""
    if not isinstance(user_id, str):
        raise InputError(
            f"{what} must be a string (your app's id for the end user), got {type(user_id).__name__}"
        )
    normalized = unicodedata.normalize("NFC", user_id)
    if not normalized:
        raise InputError(f"{what} is empty: give your app's id for the end user")
    if len(normalized) > MAX_USER_ID:
        raise InputError(
            f"{what} is {len(normalized)} characters long; a user id has at most {MAX_USER_ID}"
            " (use a short stable id, not the user's data)"
        )
    if normalized != normalized.strip():
        raise InputError(
            f"{what} {_shown(normalized)} starts or ends with whitespace; send the id exactly, "
            "without surrounding spaces"
        )
    bad = _bad_character(normalized)
    if bad is not None:
        i, ch = bad
        raise InputError(
            f"{what} {_shown(normalized)} contains {_name(ch)} at position {i}; a user id may not "
            "contain control characters, line breaks, tabs or other invisible characters"
        )
    return normalized


def quote_user_id(user_id: str) -> str:
    """The id as one URL path segment: ``"acme/alice"`` → ``"acme%2Falice"``."""
    return quote(check_user_id(user_id), safe="")


def _shown(user_id: str) -> str:
    """The id for a message: quoted and escaped (never a raw line break), and cut when long."""
    text = user_id if len(user_id) <= 80 else user_id[:80] + "..."
    return ascii(text) if not text.isprintable() else repr(text)


def _name(ch: str) -> str:
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')})"
