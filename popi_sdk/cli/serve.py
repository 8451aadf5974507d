"""``popi serve``: the OpenAI-compatible personalization proxy (``popi_sdk.serve``)."""

from __future__ import annotations

import os
from typing import Optional

import typer


def serve(
    generator: Optional[list[str]] = typer.Option(
        None, "--generator", "-g",
        help="[ALIAS=]TARGET a request's model may pick; repeat for several. TARGET: openai:MODEL, "
             "openai:MODEL@URL (vLLM, transformers serve), anthropic:MODEL, a bare server URL "
             "(models forwarded as requested), hf, or a checkpoint folder. Env POPI_GENERATOR."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --api-key."),
    port: int = typer.Option(8080, min=1, max=65535, help="Port to listen on."),
    store: Optional[str] = typer.Option(None, help="Summary store: SQLite path or postgresql:// URL (env POPI_STORE)."),
    summarizer: Optional[str] = typer.Option(None, help="Summarizer for POST /v1/users/ID/signals (env POPI_SUMMARIZER; default hf:popi, the trained embedded summarizer)."),
    api_key: Optional[list[str]] = typer.Option(
        None, "--api-key",
        help="A proxy key clients must send as Bearer (repeatable). Env POPI_SERVE_API_KEYS=K1,K2 "
             "keeps keys out of the process list."),
    key: Optional[list[str]] = typer.Option(
        None, "--key",
        help="A key scoped to one tenant, NAME:TOKEN:PREFIX (TOKEN is the secret clients send): "
             "it may act only for user ids starting with PREFIX (* for all). Repeatable; see "
             "--keys-file."),
    keys_file: Optional[str] = typer.Option(
        None, "--keys-file",
        help="File of scoped keys, one NAME:TOKEN:PREFIX a line (env POPI_SERVE_KEYS_FILE)."),
    timeout: float = typer.Option(600.0, help="Seconds per upstream attempt."),
    max_retries: int = typer.Option(2, min=0, help="Upstream retries on connection errors, 429 and 5xx."),
    max_body_bytes: Optional[int] = typer.Option(
        None, "--max-body-bytes", min=1,
        help="Largest request body read, in bytes (env POPI_MAX_BODY_BYTES; default 1 MiB)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    access_log: bool = typer.Option(True, help="Log one line per request (method, path, status)."),
    workers: int = typer.Option(1, min=1, envvar="POPI_SERVE_WORKERS",
                                help="Server processes sharing the port and the store, one core each (env POPI_SERVE_WORKERS)."),
) -> None:
    """Serve OpenAI's chat completions API, personalized with each user's summary.

    Point an OpenAI client's base_url at http://HOST:PORT/v1 and send user="ID" (or the
    X-Popi-User header): the user's current summary becomes the system message. The summary
    lifecycle lives under /v1/users/ID (docs at /docs).
    """
    from popi_sdk.serve import create_app, parse_generators
    from popi_sdk.serve import serve as run
    from popi_sdk.serve.auth import resolve_scoped_keys
    from popi_sdk.serve.config import ServeConfig, resolve_keys

    values = list(generator or []) or ([os.environ["POPI_GENERATOR"]]
                                       if os.environ.get("POPI_GENERATOR") else [])
    config = ServeConfig(generators=parse_generators(values), api_keys=resolve_keys(api_key),
                         scoped_keys=resolve_scoped_keys(key, keys_file), host=host, timeout=timeout, max_retries=max_retries,
                         max_body_bytes=max_body_bytes)
    from popi_sdk import Personalizer

    if workers > 1:  # each worker builds its own app after the fork (popi_sdk.serve.workers)
        from popi_sdk.serve.workers import serve_workers

        raise typer.Exit(serve_workers(
            lambda: create_app(Personalizer(summarizer=summarizer, store=store), config),
            workers=workers, host=host, port=port, log_level=log_level, access_log=access_log))
    personalizer = Personalizer(summarizer=summarizer, store=store)
    app = create_app(personalizer, config)
    names = ", ".join(u.spec.id for u in app.state.upstreams)
    n_keys = len(config.api_keys) + len(config.scoped_keys)
    auth = f"{n_keys} proxy key(s)" if n_keys else "no key (loopback only)"
    typer.echo(f"popi serve: http://{host}:{port}/v1 ({names}; {auth}; store {type(personalizer.store).__name__})",
               err=True)
    run(app, host=host, port=port, log_level=log_level, access_log=access_log)


def register(app: typer.Typer) -> None:
    app.command("serve", short_help="Serve an OpenAI-compatible API, personalized per user.")(serve)
