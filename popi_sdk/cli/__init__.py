"""The ``popi`` command. One module per command group; heavy imports happen inside commands,
so ``popi --help`` stays fast and never imports torch."""

from __future__ import annotations

import importlib
import sys

import typer

from popi_sdk.errors import PopiError

app = typer.Typer(
    name="popi",
    help="Learned LLM personalization: summarize each user's preferences once, personalize any model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules that add top-level commands to ``app`` (each defines ``register(app)``).
_COMMAND_MODULES = ["popi_sdk.cli.sdk", "popi_sdk.cli.eval"]
# Sub-command groups: ``popi <name> ...`` -> module exposing a ``typer.Typer`` named ``app``.
_GROUPS: dict[str, str] = {
    "data": "popi_sdk.cli.data",
    "train": "popi_sdk.cli.train",
    "launch": "popi_sdk.cli.launch",
    "summary": "popi_sdk.cli.summary",
}

for _module in _COMMAND_MODULES:
    importlib.import_module(_module).register(app)
for _name, _module in _GROUPS.items():
    _sub = importlib.import_module(_module)
    app.add_typer(_sub.app, name=_name, help=(_sub.app.info.help or None))


def main() -> None:
    """Entry point: our own errors print as one clear message and exit 1, no traceback."""
    try:
        app()
    except PopiError as e:
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(1)
