"""Credentials never leave in a message: URLs are shown with their secrets masked.

A base URL may carry credentials (``http://user:PASS@host/v1``, ``...?api-key=SECRET``, a signed
``...?X-Amz-Signature=...``). Every URL popi-sdk shows or logs goes through :func:`redact_url`, and
any free text that may quote one (a server's or a client's error message) through
:func:`redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

MASK = "***"

# Query parameter names that carry a secret: api-key, api_key, access_token, sig, X-Amz-Signature...
_SECRET_NAME = re.compile(
    r"key|token|secret|passw|pwd|auth|sig|credential|session|cookie|bearer", re.IGNORECASE
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """``url`` with any user name and password, and the value of every secret-looking query
    parameter, replaced by ``***``; everything else (scheme, host, port, path) is kept."""
    try:
        parts = urlsplit(str(url))
    except ValueError:  # not parseable as a URL (e.g. a bad IPv6 host): show nothing of it
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(_mask_param(item) for item in parts.query.split("&")) if parts.query else ""
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def _mask_param(item: str) -> str:
    """``api-key=SECRET`` -> ``api-key=***``; other parameters are kept as written."""
    name, eq, _value = item.partition("=")
    if not eq:  # a bare "?sk-..." is a token itself unless it is a short flag ("?debug")
        return MASK if len(item) >= 16 or _SECRET_NAME.search(unquote_plus(item)) else item
    return f"{name}={MASK}" if _SECRET_NAME.search(unquote_plus(name)) else item


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url` (punctuation that ends a
    sentence after a URL stays outside it)."""

    def one(match: re.Match) -> str:
        url = match.group(0)
        core = url.rstrip(".,;:!?)]}")
        return redact_url(core) + url[len(core):]

    return _URL.sub(one, str(text))
