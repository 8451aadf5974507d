"""Checks every request passes before any route sees it: what a browser page could forge.

- **Host** (keyless servers only): a server without proxy keys trusts whoever can reach it, which
  on loopback means this machine, unless a web page rebinds its own DNS name to 127.0.0.1 (DNS
  rebinding) and calls the server from the browser. Such a request carries the page's name in
  ``Host``, so a keyless server answers only requests addressed to a loopback name
  (``localhost``, ``127.0.0.1``, ``[::1]``, any port), and refuses an ``Origin`` that is not
  loopback either.
- **Size**: a body over ``max_body`` bytes (``--max-body-bytes``, ``POPI_MAX_BODY_BYTES``, 1 MiB)
  is refused with 413 before it is read (its ``Content-Length``) or as soon as it passes the limit
  (a chunked body, through :func:`limit_body`).
- **Content type**: a body must be JSON (``application/json`` or ``…+json``). A browser sends a
  cross-origin ``text/plain`` POST without asking first (a "simple request"); a JSON one needs a
  preflight this server never grants. So refusing any other type closes that door in every mode.

``/health`` is exempt: a probe there reads nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from popi_sdk.errors import PayloadTooLargeError
from popi_sdk.serve.errors import APIErrorBody

_BODY_METHODS = {b"POST", b"PUT", b"PATCH", b"DELETE"}
EXEMPT = ("/health",)


def is_loopback_name(host: str) -> bool:
    """Whether ``host`` (no port, brackets allowed) names this machine's loopback interface."""
    host = host.strip().rstrip(".").lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(value: str) -> str:
    """The name in a ``Host`` header (``name:port``, ``[v6]:port``)."""
    return urlsplit(f"//{value}").hostname or ""


def check_request(scope: dict, *, keyless: bool, max_body: int | None = None) -> APIErrorBody | None:
    """The error to answer instead of routing ``scope``, or ``None`` to let it through."""
    if scope.get("path") in EXEMPT:
        return None
    headers: dict[bytes, list[bytes]] = {}
    for name, value in scope.get("headers") or []:
        headers.setdefault(name.lower(), []).append(value)
    if keyless:
        hosts = headers.get(b"host") or []
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
        if not is_loopback_name(_host_of(host)):
            return APIErrorBody(
                403, "this server has no proxy keys, so it answers only requests addressed to "
                "localhost, 127.0.0.1 or [::1] (the Host header); start it with --api-key to "
                "serve other names", "invalid_request_error", "host_not_allowed")
        for origin in headers.get(b"origin") or []:
            name = urlsplit(origin.decode("latin-1")).hostname or ""
            if not is_loopback_name(name):
                return APIErrorBody(
                    403, "cross-origin requests are refused by a server without proxy keys (the "
                    "Origin header names another site); start it with --api-key to serve "
                    "browsers elsewhere", "invalid_request_error", "origin_not_allowed")
    length = (headers.get(b"content-length") or [b""])[0].strip()
    if max_body is not None and length.isdigit() and int(length) > max_body:
        return APIErrorBody(
            413, f"the request body is {int(length)} bytes; this server reads at most {max_body} "
            "(--max-body-bytes, POPI_MAX_BODY_BYTES)", "invalid_request_error",
            "payload_too_large")
    if scope.get("method", "").encode() in _BODY_METHODS and _has_body(headers):
        media = (headers.get(b"content-type") or [b""])[0].decode("latin-1")
        media = media.split(";", 1)[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/")
                                                and media.endswith("+json")):
            return APIErrorBody(
                415, f"the request body must be JSON: send 'Content-Type: application/json' "
                f"(got {media or 'none'!r})", "invalid_request_error", "unsupported_media_type")
    return None


def _has_body(headers: dict[bytes, list[bytes]]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = (headers.get(b"content-length") or [b"0"])[0]
    return length.strip() not in (b"", b"0")


def limit_body(receive: Callable[[], Awaitable[dict]], max_body: int):
    """``receive`` that raises :class:`~popi_sdk.errors.PayloadTooLargeError` once the body read
    so far passes ``max_body`` bytes (a chunked body has no length to check up front)."""
    seen = 0

    async def limited() -> dict:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_body:
                raise PayloadTooLargeError(
                    f"the request body passed {max_body} bytes, the most this server reads "
                    "(--max-body-bytes, POPI_MAX_BODY_BYTES)")
        return message

    return limited
