"""Progress display for long work, timing of a command's phases, and library noise control.

Every long phase counts the items a user cares about (users summarized, answers written,
training steps) with an ETA, on stderr, so stdout stays the command's result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

#: Libraries whose loggers, progress bars and warnings the CLI hides unless ``--verbose``.
LIBRARIES = ("transformers", "trl", "accelerate", "peft", "datasets", "torch", "huggingface_hub",
             "httpx", "httpx2", "urllib3", "filelock")


#: Who reports on a model being loaded or converted: ``None`` (the SDK in an app: nothing is
#: written to stderr), ``"popi"`` (the CLI: popi's own bars in place of the libraries') or
#: ``"libraries"`` (``--verbose``: the libraries' own bars and logs). :func:`quiet_libraries`
#: sets it.
_REPORTING: str | None = None


def reporting() -> str | None:
    """Who reports on model loading: None (nobody), ``"popi"`` or ``"libraries"``."""
    return _REPORTING


@contextlib.contextmanager
def loading_quietly() -> Iterator[None]:
    """Around the SDK's own model loads and conversions: transformers' progress bars
    (``Loading weights``, ``Writing model shards``) and its info logs are off for the duration,
    then restored, so an app that uses the SDK sees nothing on stderr on first use. An app that
    wants them calls ``quiet_libraries(verbose=True)`` (what ``popi --verbose`` does)."""
    if _REPORTING == "libraries":
        yield
        return
    from transformers.utils import logging as tf_logging  # only around loads, which need it
    bars, level = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(level)
        if bars:
            tf_logging.enable_progress_bar()


def quiet_libraries(verbose: bool = False) -> None:
    """Hide the libraries' progress bars (``Loading weights: 100%|...``), logs and warnings;
    ``verbose`` shows their logs at INFO instead. The CLI calls it first thing; an app may call
    it too (``verbose=True`` to see the libraries' bars while the SDK loads a model).

    Works before the libraries are imported (through the variables they read at import time) and
    after (through their own switches), so it never imports one itself."""
    global _REPORTING
    _REPORTING = "libraries" if verbose else "popi"
    if verbose:  # asked for on the command line: wins over the quiet variables
        for name in LIBRARIES:
            logging.getLogger(name).setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS",
                    "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
            os.environ.pop(var, None)
        os.environ["TRANSFORMERS_VERBOSITY"] = "info"
        if "transformers" in sys.modules:
            tf_logging = sys.modules["transformers"].utils.logging
            tf_logging.set_verbosity_info()
            tf_logging.enable_progress_bar()
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    # The libraries warn about their own internals (gradient checkpointing with caching, pinned
    # memory without a GPU, renamed arguments); none of it is something a user can act on.
    warnings.simplefilter("ignore")
    if "transformers" in sys.modules:
        tf_logging = sys.modules["transformers"].utils.logging
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _console() -> Any:
    from rich.console import Console

    return Console(file=sys.stderr)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True, unit: str = ""
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, note=None)``: ``n`` more items are done; ``note`` replaces the text
    shown after the count (e.g. ``"reward -0.41"``). Draws a rich bar with the item count,
    elapsed time and ETA on stderr when enabled."""
    if not enabled:
        yield lambda n=1, note=None: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit) if unit else None,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    ]
    with Progress(*[c for c in columns if c is not None], console=_console(), transient=False) as bar:
        task = bar.add_task(description, total=total, note="")

        def advance(n: int = 1, note: str | None = None) -> None:
            if note is not None:
                bar.update(task, note=note)
            bar.advance(task, n)

        yield advance


class PhaseTimer:
    """Wall-clock seconds of a command's named phases, for the summary line at its end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return time.perf_counter() - self._started

    def report(self) -> str:
        """``"Time: loading 3.1 s, summarizing 20.4 s, answering 15.0 s, other 0.4 s; total
        38.9 s"``: the named phases and what fell between them, so the parts add up to the
        total (to rounding)."""
        total = self.total
        seconds = dict(self.seconds)
        other = total - sum(seconds.values())
        if other >= 0.05:
            seconds["other"] = other
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())
        return f"Time: {parts}; total {total:.1f} s"


def training_progress(total_steps: int, stage: str) -> Any:
    """A transformers ``TrainerCallback`` showing one bar per training stage: steps done of
    ``total_steps`` with an ETA, and the last logged reward (stage 1) or loss (stage 2)."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        def __init__(self) -> None:
            self._cm: Any = None
            self._advance: Callable[..., None] | None = None
            self._note = ""

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            total = state.max_steps or total_steps
            self._cm = progress_bar(f"Training {stage}", total, unit="steps")
            self._advance = self._cm.__enter__()
            self._advance(state.global_step)  # a resumed run starts part-way

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self._advance is None or not logs:
                return
            shown = [f"{key} {logs[key]:.3g}" for key in ("reward", "loss") if key in logs]
            if shown:
                self._note = ", ".join(shown)
                self._advance(0, note=self._note)

        def on_step_end(self, args, state, control, **kwargs):
            if self._advance is not None:
                self._advance(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self._cm is not None:
                self._cm.__exit__(None, None, None)
                self._cm = self._advance = None

    return StepProgress()
