"""What ``popi serve`` serves: its generators (the request's ``model`` picks one), its proxy keys,
and the address it binds. Nothing here imports the web stack, so the CLI checks its options fast.

A generator is ``[ALIAS=]TARGET``:

- ``openai:MODEL``: OpenAI (key ``OPENAI_API_KEY``), or the server in ``OPENAI_BASE_URL``;
- ``openai:MODEL@URL``: any OpenAI-compatible server at ``URL`` (``vllm serve``,
  ``transformers serve``), e.g. ``openai:popi-generator@http://127.0.0.1:8000/v1``;
- ``anthropic:MODEL`` or ``anthropic:MODEL@URL``: Claude through the Messages API;
- ``URL`` alone: an OpenAI-compatible server whose models are served as they are (the request's
  ``model`` is forwarded, ``GET /v1/models`` lists the server's own);
- any other backend name (``hf``, ``hf:FOLDER``, a trained checkpoint folder, a plugin's name):
  answered in this process through the backend.

The request's ``model`` matches a generator's alias, or its model name, or its full target.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from popi_sdk.errors import ConfigError

_ALIAS = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)$")
_URL = re.compile(r"^https?://", re.IGNORECASE)
# MODEL@URL splits at the first "@" that starts a URL: a model name never holds "@http", while a
# URL may hold "@" in its userinfo (which is then refused, below).
_MODEL_AT_URL = re.compile(r"^(.*?)@(https?://.*)$", re.IGNORECASE | re.DOTALL)


def _no_credentials(url: str) -> str:
    """``url`` when it carries no ``user:password@``; else a :class:`ConfigError` that never
    repeats the password. Credentials in a URL end up in the process list, in logs and in the
    model names a server reports, so the upstream's key goes in its environment variable."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    raise ConfigError(
        f"--generator: the URL {parts.scheme}://***@{host}{parts.path} holds credentials; remove "
        "them and give the upstream's key in OPENAI_API_KEY (or VLLM_API_KEY, ANTHROPIC_API_KEY), "
        "which popi serve keeps out of every message, log and model name"
    )

#: Kinds of upstream: forwarded as OpenAI JSON, translated to Anthropic, or answered in-process.
OPENAI, ANTHROPIC, BACKEND = "openai", "anthropic", "backend"


@dataclass(frozen=True)
class GeneratorSpec:
    """One configured generator. ``model`` is what the upstream is asked for (``None``: whatever
    the request names); ``ids`` are the names a request's ``model`` may use for it."""

    target: str
    kind: str
    model: str | None
    base_url: str | None = None
    alias: str | None = None

    @property
    def id(self) -> str:
        """The name ``GET /v1/models`` lists it under."""
        return self.alias or self.model or self.target

    @property
    def ids(self) -> tuple[str, ...]:
        named = f"{self.kind}:{self.model}" if self.kind != BACKEND and self.model else None
        names = [self.alias, self.model, named, self.target]
        return tuple(dict.fromkeys(n for n in names if n))

    @property
    def passthrough(self) -> bool:
        """A bare URL: the request's model goes to the server unchanged."""
        return self.kind == OPENAI and self.model is None


def parse_generator(text: str) -> GeneratorSpec:
    """Parse one ``--generator`` value (see the module docstring); raises :class:`ConfigError`."""
    raw = text.strip()
    if not raw:
        raise ConfigError("--generator must not be empty: give a backend name such as "
                          "openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, hf, or a server URL")
    alias = None
    if (m := _ALIAS.match(raw)) and not _URL.match(raw):
        alias, raw = m.group(1), m.group(2).strip()
    if _URL.match(raw):
        _no_credentials(raw)
        return GeneratorSpec(target=raw, kind=OPENAI, model=None, base_url=raw.rstrip("/"),
                             alias=alias)
    prefix, sep, rest = raw.partition(":")
    if sep and prefix in (OPENAI, ANTHROPIC):
        model, url = rest, None
        if m := _MODEL_AT_URL.match(rest):
            model, url = m.group(1), _no_credentials(m.group(2)).rstrip("/")
        if not model:
            raise ConfigError(
                f"--generator {text!r} names no model: write {prefix}:MODEL (or {prefix}:MODEL@URL)"
            )
        return GeneratorSpec(target=raw, kind=prefix, model=model, base_url=url, alias=alias)
    if raw in (OPENAI, ANTHROPIC):
        raise ConfigError(
            f"--generator {text!r} names no model: write {raw}:MODEL (or {raw}:MODEL@URL)"
        )
    # Any other registered backend (or a checkpoint folder), answered in-process. The name is
    # checked against the registry when the server starts, where its error lists the known ones.
    model = rest if sep and rest else None
    return GeneratorSpec(target=raw, kind=BACKEND, model=model, alias=alias)


def parse_generators(values: list[str]) -> list[GeneratorSpec]:
    """Parse every ``--generator``; two that answer to the same name are an error."""
    if not values:
        raise ConfigError(
            "give at least one --generator (or set POPI_GENERATOR), e.g. --generator "
            "openai:gpt-4o-mini, --generator http://127.0.0.1:8000/v1 or --generator hf"
        )
    specs = [parse_generator(v) for v in values]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.alias and spec.alias in seen:
            raise ConfigError(f"two generators are named {spec.alias!r}: give each its own ALIAS=")
        for name in spec.ids:
            seen.setdefault(name, spec.target)
    if sum(s.passthrough for s in specs) > 1:
        raise ConfigError(
            "at most one bare URL generator (it takes every model no other generator names); "
            "name the others openai:MODEL@URL"
        )
    return specs


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


KEYS_ENV = "POPI_SERVE_API_KEYS"


def resolve_keys(explicit: list[str] | None, environ: dict[str, str] | None = None) -> list[str]:
    """Proxy keys: ``--api-key`` values, then ``POPI_SERVE_API_KEYS`` (comma-separated)."""
    env = os.environ if environ is None else environ
    raw = list(explicit or []) or (env.get(KEYS_ENV) or "").split(",")
    keys = [k.strip() for k in raw if k.strip()]
    for k in keys:
        if len(k) < 16:
            raise ConfigError(
                "a proxy API key must be at least 16 characters (make one with "
                "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`)"
            )
    return keys


@dataclass
class ServeConfig:
    """Everything :func:`popi_sdk.serve.create_app` needs besides the personalizer."""

    generators: list[GeneratorSpec]
    api_keys: list[str] = field(default_factory=list)
    #: Keys scoped to a user-id prefix (:class:`popi_sdk.serve.auth.ProxyKey`), one tenant each.
    scoped_keys: list = field(default_factory=list)
    host: str = "127.0.0.1"
    timeout: float = 600.0
    max_retries: int = 2
    #: Largest request body read (``None``: ``POPI_MAX_BODY_BYTES``, else 1 MiB).
    max_body_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.api_keys and not self.scoped_keys and not is_loopback(self.host):
            raise ConfigError(
                f"--host {self.host} is reachable from other machines, so popi serve needs proxy "
                f"API keys: pass --api-key KEY or set {KEYS_ENV}=KEY1,KEY2 (clients send it as "
                "their OpenAI api_key), or scoped keys (--key NAME:KEY:PREFIX, --keys-file), or "
                "bind --host 127.0.0.1"
            )
        if self.timeout <= 0:
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout}")
