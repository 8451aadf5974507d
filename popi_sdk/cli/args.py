"""Argument checks shared by the command groups."""

from __future__ import annotations

import typer

from popi_sdk.errors import InputError


def user_id(value: str | None) -> str | None:
    """A user-id argument checked and normalized by the one user-id rule
    (:mod:`popi_sdk.user_ids`), so the CLI accepts exactly the ids the SDK and the server do."""
    from popi_sdk.user_ids import check_user_id

    if value is None:
        return None
    try:
        return check_user_id(value, what="the user id")
    except InputError as e:
        raise typer.BadParameter(str(e)) from None
