"""Who may call ``popi serve``, and for which users.

A proxy key is a secret a client sends as ``Authorization: Bearer KEY`` (the OpenAI client's
``api_key``). A plain key (``--api-key``) may act for every user. A *scoped* key (``--key
NAME:SECRET:PREFIX`` or a line of ``--keys-file``) may act only for user ids that start with
``PREFIX``: one tenant per key. With no key configured (loopback only), every request may act for
every user.

:func:`authorize_user` is the one check, and every endpoint that names a user calls it with the
resolved, normalized user id (chat completions, every ``/v1/users/{id}`` endpoint, and any new
endpoint: resolve the user however the API carries it, then call
``authorize_user(key, user_id)`` with the key :meth:`KeyRing.authenticate` returned). Nothing here
imports the web stack.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from popi_sdk.errors import ConfigError, InputError, PopiError
from popi_sdk.user_ids import check_user_id

KEYS_FILE_ENV = "POPI_SERVE_KEYS_FILE"
MIN_SECRET = 16
_MAKE_ONE = "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`"


class ProxyAuthError(PopiError):
    """A request without a valid proxy key (HTTP 401)."""

    def __init__(self, message: str, code: str):
        self.code = code
        super().__init__(message)


class ProxyForbiddenError(PopiError):
    """A valid key used for a user outside its prefix (HTTP 403)."""


@dataclass(frozen=True)
class ProxyKey:
    """One proxy key. ``prefix`` is the user-id prefix it may act for; ``None``: every user."""

    name: str
    secret: str
    prefix: str | None = None

    def may_act_for(self, user_id: str) -> bool:
        return self.prefix is None or user_id.startswith(self.prefix)


def check_secret(secret: str, where: str) -> None:
    if len(secret) < MIN_SECRET:
        raise ConfigError(f"{where}: a proxy API key must be at least {MIN_SECRET} characters "
                          f"(make one with {_MAKE_ONE})")


def parse_scoped_key(text: str, where: str = "--key") -> ProxyKey:
    """``NAME:SECRET:PREFIX``: the key ``SECRET``, called ``NAME`` in logs, may act for user ids
    starting with ``PREFIX`` (``*``: every user). The secret may not contain ``:``; the prefix
    may. The prefix must end with a separator (``/``, ``:``, ``-``, ...) so that ``acme/`` never
    also covers ``acmecorp/``."""
    name, sep1, rest = text.partition(":")
    secret, sep2, prefix = rest.partition(":")
    if not (sep1 and sep2) or not name or not secret or not prefix:
        raise ConfigError(f"{where} {name or '?'}:...: write NAME:SECRET:PREFIX, e.g. "
                          "acme:SECRET:acme/ (PREFIX * for every user)")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"{where}: the key name {name!r} may hold only letters, digits, '-', "
                          "'_' and '.'")
    check_secret(secret, f"{where} {name}")
    if prefix == "*":
        return ProxyKey(name, secret, None)
    try:
        prefix = check_user_id(prefix, what=f"the prefix of key {name!r}")
    except InputError as e:
        raise ConfigError(f"{where}: {e}") from None
    if prefix[-1].isalnum():
        raise ConfigError(f"{where} {name}: the prefix {prefix!r} must end with a separator such as "
                          f"'/' or ':' ({prefix}/), or it would also cover ids like {prefix + 'x'!r}")
    return ProxyKey(name, secret, prefix)


def read_keys_file(path: str | os.PathLike) -> list[ProxyKey]:
    """One ``NAME:SECRET:PREFIX`` per line; blank lines and lines starting with ``#`` are
    skipped. Keep the file readable by the server's user only."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the keys file {p}: {e.strerror or e}") from None
    keys = []
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(parse_scoped_key(line, where=f"{p}, line {n}"))
    if not keys:
        raise ConfigError(f"the keys file {p} holds no key: write one NAME:SECRET:PREFIX a line")
    return keys


def resolve_scoped_keys(keys: list[str] | None, keys_file: str | None,
                        environ: dict[str, str] | None = None) -> list[ProxyKey]:
    """Scoped keys: every ``--key``, then those of ``--keys-file`` (else ``POPI_SERVE_KEYS_FILE``)."""
    env = os.environ if environ is None else environ
    found = [parse_scoped_key(k) for k in keys or []]
    path = keys_file or env.get(KEYS_FILE_ENV)
    if path:
        found.extend(read_keys_file(path))
    return found


class KeyRing:
    """The keys a server accepts. Empty: keyless (loopback only), every request is let in."""

    def __init__(self, keys: list[ProxyKey]):
        secrets = [k.secret for k in keys]
        if len(set(secrets)) != len(secrets):
            raise ConfigError("two proxy keys have the same secret: give each key its own")
        self.keys = list(keys)
        self._encoded = [(k.secret.encode(), k) for k in keys]

    @classmethod
    def of(cls, api_keys: list[str], scoped: list[ProxyKey] = ()) -> KeyRing:
        plain = [ProxyKey(f"key{i + 1}", k) for i, k in enumerate(api_keys)]
        return cls([*plain, *scoped])

    def __bool__(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: str | None) -> ProxyKey | None:
        """The key an ``Authorization`` header carries; ``None`` when the server has no keys.
        Raises :class:`ProxyAuthError` for a missing or unknown key. Every configured key is
        compared (in constant time), so the time taken says nothing about which one matched."""
        if not self.keys:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ProxyAuthError("no proxy API key: send 'Authorization: Bearer KEY' (the OpenAI "
                                 "client's api_key) with a key this server was started with",
                                 "missing_api_key")
        token = given.strip().encode()
        found = None
        for secret, key in self._encoded:
            if hmac.compare_digest(token, secret):
                found = key
        if found is None:
            raise ProxyAuthError("incorrect proxy API key: use one of the keys this server was "
                                 "started with (--api-key, --key, --keys-file or "
                                 "POPI_SERVE_API_KEYS)", "invalid_api_key")
        return found


def authorize_user(key: ProxyKey | None, user_id: str) -> str:
    """The normalized ``user_id`` if ``key`` may act for it; else :class:`ProxyForbiddenError`
    (a bad id is an :class:`~popi_sdk.errors.InputError`). ``key`` is what
    :meth:`KeyRing.authenticate` returned (``None`` on a keyless server: every user). Call it in
    every endpoint that reads, writes or answers for a user, before touching the store."""
    user_id = check_user_id(user_id, what="the user id")
    if key is not None and not key.may_act_for(user_id):
        raise ProxyForbiddenError(
            f"the proxy key {key.name!r} may act only for user ids starting with {key.prefix!r}; "
            "use that tenant's ids, or the key of the tenant this user belongs to"
        )
    return user_id
