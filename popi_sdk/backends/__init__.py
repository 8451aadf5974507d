"""Backend registry: ``get_backend("openai:gpt-4o-mini")``.

A name is ``PREFIX:MODEL``. A bare prefix (``"hf"``) uses that backend's default model, and a bare
path to an existing folder means ``hf:<folder>`` (a trained checkpoint, for instance). Third-party
backends register with :func:`register_backend` or through the ``popi_sdk.backends`` entry-point
group; the built-ins below use the very same call.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from popi_sdk.backends.base import Backend, GenerateOptions
from popi_sdk.errors import InputError, UnknownBackendError

Factory = Callable[..., Backend]


@dataclass(frozen=True)
class _Registered:
    factory: Factory
    help: str
    check: Callable[[str | None], None] | None = None


_REGISTRY: dict[str, _Registered] = {}
_CACHE: dict[tuple, Backend] = {}
_LOCK = threading.Lock()
_PLUGINS_LOADED = False


def register_backend(
    prefix: str,
    factory: Factory,
    *,
    help: str = "",
    check: Callable[[str | None], None] | None = None,
) -> None:
    """Register ``factory(model: str | None, **options) -> Backend`` under ``prefix``.

    ``check(model)``, if given, raises a :class:`~popi_sdk.errors.PopiError` for a model name
    the factory would refuse, without loading anything (see :func:`check_backend_name`)."""
    if ":" in prefix or not prefix:
        raise ValueError(f"backend prefix must be a non-empty name without ':', got {prefix!r}")
    _REGISTRY[prefix] = _Registered(factory, help, check)


def known_backends() -> dict[str, str]:
    """Registered prefixes and their one-line help."""
    _load_plugins()
    return {prefix: reg.help for prefix, reg in sorted(_REGISTRY.items())}


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in entry_points(group="popi_sdk.backends"):
        ep.load()()  # the plugin's hook calls register_backend itself


def parse_backend_name(name: str) -> tuple[str, str | None]:
    """Split ``"prefix:model"``; a bare existing folder becomes ``("hf", folder)``."""
    _load_plugins()
    name = name.strip()
    if not name:
        raise UnknownBackendError(_unknown_message(name))
    prefix, sep, model = name.partition(":")
    if sep and prefix in _REGISTRY:
        return prefix, (model or None)
    if not sep and name in _REGISTRY:
        return name, None
    if os.path.isdir(os.path.expanduser(name)):
        return "hf", name
    raise UnknownBackendError(_unknown_message(name))


def _unknown_message(name: str) -> str:
    known = "\n".join(f"  {p}:<model>  {h}" for p, h in known_backends().items())
    return (
        f"unknown backend {name!r}. Known backends:\n{known}\n"
        "A bare path to an existing model folder also works (it means hf:<folder>)."
    )


def check_backend_name(name: str) -> None:
    """Fail now, with the known names, for a backend name that :func:`get_backend` would refuse
    (an unknown prefix, a model folder that does not exist). Loads no model and opens no
    connection, so a service can check its configuration at start-up."""
    prefix, model = parse_backend_name(name)
    check = _REGISTRY[prefix].check
    if check is not None:
        check(model)


def get_backend(name: str | Backend, **options: Any) -> Backend:
    """Return the backend for ``name``, reusing one instance per (name, options) in this process,
    so the same local model is loaded once even when it serves as summarizer and generator."""
    if isinstance(name, Backend):
        return name
    prefix, model = parse_backend_name(name)
    try:
        key = (prefix, model, tuple(sorted(options.items())))
        hash(key)
    except TypeError:  # unhashable options (e.g. an http client): no reuse
        return _REGISTRY[prefix].factory(model, **options)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _REGISTRY[prefix].factory(model, **options)
        return _CACHE[key]


def construct(cls: type[Backend], prefix: str, model: str | None, options: dict[str, Any]) -> Backend:
    """``cls(model, **options)``, with an unknown option reported as an :class:`InputError` that
    lists the keywords ``cls`` accepts (rather than a ``TypeError`` from deep in the call).
    Factories of third-party backends may use it too."""
    accepted = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"the {prefix} backend has no option {', '.join(map(repr, unknown))}; it accepts: "
            f"{', '.join(accepted)}"
        )
    return cls(model, **options)


def clear_backend_cache() -> None:
    """Drop every cached backend instance (frees local models)."""
    with _LOCK:
        _CACHE.clear()


def _hf_factory(model: str | None, **options: Any) -> Backend:
    from popi_sdk.backends.hf import HFBackend

    return construct(HFBackend, "hf", model, options)


def _hf_check(model: str | None) -> None:
    # torch is not required here: a torch-free app may name hf and only read cached summaries.
    from popi_sdk.backends.adapters import require_shipped_adapter, shipped_adapter
    from popi_sdk.backends.hf import EMBEDDED_ALIASES, resolve_model

    if (adapter := shipped_adapter(model)) is not None:
        require_shipped_adapter(adapter)
    elif model is not None and model.lower() not in EMBEDDED_ALIASES:
        resolve_model(model)  # a missing or incomplete folder; hub ids pass


register_backend(
    "hf",
    _hf_factory,
    check=_hf_check,
    help="local Hugging Face model: a hub id or folder; bare 'hf' is the embedded SmolLM2-135M, "
    "'hf:popi' the same with the shipped trained summarizer adapter, 'hf:popi-generator' with "
    "the shipped trained generator adapter",
)


def _openai_factory(model: str | None, **options: Any) -> Backend:
    from popi_sdk.backends.openai_backend import OpenAIBackend

    return construct(OpenAIBackend, "openai", model, options)


register_backend(
    "openai",
    _openai_factory,
    help="OpenAI or any OpenAI-compatible server (vLLM, transformers serve): base_url=... "
    "or OPENAI_BASE_URL; key OPENAI_API_KEY",
)


def _anthropic_factory(model: str | None, **options: Any) -> Backend:
    from popi_sdk.backends.anthropic_backend import AnthropicBackend

    return construct(AnthropicBackend, "anthropic", model, options)


register_backend(
    "anthropic",
    _anthropic_factory,
    help="Anthropic's Claude models (Messages API); key ANTHROPIC_API_KEY",
)

__all__ = [
    "Backend",
    "GenerateOptions",
    "check_backend_name",
    "clear_backend_cache",
    "construct",
    "get_backend",
    "known_backends",
    "parse_backend_name",
    "register_backend",
]
