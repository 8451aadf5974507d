"""Credentials never leave in a message: URLs are shown with their secrets masked.

A base URL may carry credentials (``http://user:PASS@host/v1``, ``...?api-key=SECRET``, a signed
``...?X-Amz-Signature=...``). Every URL popi-sdk shows or logs goes through :func:`redact_url`, and
any free text that may quote one (a server's or a client's error message) through
:func:`redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit, urlunsplit

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
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if pairs:
            query = "&".join(
                f"{quote(name, safe='')}={MASK if _SECRET_NAME.search(name) else quote(value, safe='')}"
                for name, value in pairs
            )
        elif _SECRET_NAME.search(query):  # a bare token, "?SECRET", is masked whole
            query = MASK
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    return _URL.sub(lambda m: redact_url(m.group(0)), str(text))
