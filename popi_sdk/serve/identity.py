"""Which end user a request is for, whatever API it speaks.

Apps name the user in different fields depending on the client they use: OpenAI's ``user`` (chat
completions, Responses), its replacement ``safety_identifier``, Anthropic's ``metadata.user_id``,
or the ``X-Popi-User`` header for clients that cannot set a body field. The proxy looks in that
order (header first, then ``user``, ``safety_identifier``, ``metadata.user_id``) and takes the one
id they give; two different ids are refused, since answering with either user's summary could be
the wrong one.
"""

from __future__ import annotations

from typing import Any

from popi_sdk.errors import InputError

#: The body fields that may name the user, in the order they are looked at.
BODY_FIELDS = ("user", "safety_identifier", "metadata.user_id")


def _field(body: dict[str, Any], name: str) -> Any:
    if name == "metadata.user_id":
        metadata = body.get("metadata")
        if metadata is None:
            return None
        if not isinstance(metadata, dict):
            raise InputError("'metadata' must be an object of string values")
        return metadata.get("user_id")
    return body.get(name)


def body_user(body: dict[str, Any]) -> str | None:
    """The user id the body names in ``user``, ``safety_identifier`` or ``metadata.user_id``;
    None when none does. Fields that name different users are an :class:`InputError`."""
    found: list[tuple[str, str]] = []
    for name in BODY_FIELDS:
        value = _field(body, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(f"'{name}' must be a string: the id your app uses for the end user")
        if value:  # checked (never trimmed) by the one user-id rule in resolve_user
            found.append((name, value))
    ids = {value for _, value in found}
    if len(ids) > 1:
        named = ", ".join(f"{name}={value!r}" for name, value in found)
        raise InputError(f"the request names different users ({named}): send one id, or the "
                         "same id in each field")
    return found[0][1] if found else None
