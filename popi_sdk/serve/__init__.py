"""``popi serve``: an OpenAI-compatible HTTP proxy that personalizes every chat completion with the
requesting user's preference summary, so an app adopts POPI by changing its ``base_url``.

Needs the ``serve`` extra (``pip install "popi-sdk[serve]"``: FastAPI on uvicorn, aiohttp).
Nothing heavy is imported until :func:`create_app` or :func:`serve` is called.
"""

from __future__ import annotations

from typing import Any

from popi_sdk.serve.config import GeneratorSpec, ServeConfig, parse_generator, parse_generators

INSTALL = 'pip install "popi-sdk[serve]"'


def _need_web_stack() -> None:
    from popi_sdk.errors import MissingDependencyError

    try:
        import aiohttp  # noqa: F401
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("popi serve's web stack (FastAPI, uvicorn, aiohttp)", INSTALL) from e


def create_app(personalizer: Any, config: ServeConfig, **options: Any) -> Any:
    """The proxy's ASGI app (see :mod:`popi_sdk.serve.app`)."""
    _need_web_stack()
    from popi_sdk.serve.app import create_app as _create

    return _create(personalizer, config, **options)


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info",
          access_log: bool = True) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    _need_web_stack()
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                timeout_keep_alive=30)


__all__ = ["GeneratorSpec", "ServeConfig", "create_app", "parse_generator", "parse_generators",
           "serve"]
