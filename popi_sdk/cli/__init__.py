"""The ``popi`` command. One module per command group; heavy imports happen inside commands,
so ``popi --help`` stays fast and never imports torch."""

from __future__ import annotations

import importlib
import sys

import typer

from popi_sdk.errors import PopiError

# Help texts are kept short enough for an 80-column terminal: rich re-wraps anything longer
# mid-sentence.
app = typer.Typer(
    name="popi",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules that add top-level commands to ``app`` (each defines ``register(app)``).
_COMMAND_MODULES = ["popi_sdk.cli.sdk", "popi_sdk.cli.eval", "popi_sdk.cli.serve"]
# Sub-command groups: ``popi <name> ...`` -> (module exposing a ``typer.Typer`` named ``app``,
# the one line shown for it in ``popi --help``; the group's own help stays on ``popi NAME --help``).
_GROUPS: dict[str, tuple[str, str]] = {
    "data": ("popi_sdk.cli.data", "Synthetic benchmark users; FSPO / AlignX conversion."),
    "train": ("popi_sdk.cli.train", "Train the summarizer (GRPO) and the generator (DPO)."),
    "launch": ("popi_sdk.cli.launch", "Train, evaluate or serve on cloud GPUs (SkyPilot)."),
    "summary": ("popi_sdk.cli.summary", "Show, edit, score or trace a user's stored summary."),
}


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show library logs and warnings."
    ),
) -> None:
    """Learned LLM personalization for any model.

    Summarize each user's preferences once; any generator answers with it."""
    from popi_sdk.progress import quiet_libraries

    quiet_libraries(verbose)


for _module in _COMMAND_MODULES:
    importlib.import_module(_module).register(app)
for _name, (_module, _short) in _GROUPS.items():
    _sub = importlib.import_module(_module)
    app.add_typer(_sub.app, name=_name, help=(_sub.app.info.help or None), short_help=_short)


def main() -> None:
    """Entry point: our own errors print as one clear message and exit 1, no traceback."""
    try:
        app()
    except PopiError as e:
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(1)
