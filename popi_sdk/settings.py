"""Settings resolve in one order everywhere: explicit argument, then environment variable, then
default.

=====================  ==================================  ==============================
setting                environment variable                default
=====================  ==================================  ==============================
data folder            ``POPI_HOME``                       ``~/.cache/popi``
summary store          ``POPI_STORE``                      ``$POPI_HOME/summaries.sqlite``
summarizer backend     ``POPI_SUMMARIZER``                 ``hf`` (embedded SmolLM2-135M)
generator backend      ``POPI_GENERATOR``                  ``hf`` (embedded SmolLM2-135M)
longest signal text    ``POPI_MAX_SIGNAL_CHARS``           32,000 characters
local model threads    ``POPI_THREADS``                    ``OMP_NUM_THREADS``, else half
                                                           the cores, at most 4 (1 on 2 cores)
=====================  ==================================  ==============================
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BACKEND = "hf"


def resolve(explicit: str | None, env_var: str, default: str) -> str:
    """Explicit argument, then ``env_var``, then ``default``."""
    if explicit is not None:
        return explicit
    return os.environ.get(env_var) or default


def popi_home(explicit: str | os.PathLike | None = None) -> Path:
    """The folder for caches and converted models: argument, ``POPI_HOME``, ``~/.cache/popi``."""
    raw = explicit if explicit is not None else os.environ.get("POPI_HOME")
    path = Path(raw).expanduser() if raw else Path.home() / ".cache" / "popi"
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_path(explicit: str | os.PathLike | None = None) -> Path:
    """The SQLite summary store: argument, ``POPI_STORE``, ``$POPI_HOME/summaries.sqlite``."""
    raw = explicit if explicit is not None else os.environ.get("POPI_STORE")
    return Path(raw).expanduser() if raw else popi_home() / "summaries.sqlite"


def default_threads(cores: int | None = None) -> int:
    """Torch threads for a local model when nothing says otherwise: half the cores, at most 4.

    A small model's decode step is a few hundred small matrix products; on a 2-core machine that
    other work shares, a second thread per process oversubscribes the cores (measured in
    ``docs/benchmarks.md``), and past four threads the products are too small to split well."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(4, cores // 2))


def torch_threads(explicit: int | None = None) -> int:
    """Threads for local models: argument, ``POPI_THREADS``, ``OMP_NUM_THREADS``, then
    :func:`default_threads`."""
    from popi_sdk.errors import InputError

    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
            raise InputError(f"threads must be a whole number of at least 1, got {explicit!r}")
        return explicit
    for var in ("POPI_THREADS", "OMP_NUM_THREADS"):
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise InputError(
                f"{var}={raw!r} is not a whole number of at least 1: set it to the number of "
                "threads a local model may use, or unset it"
            )
        return value
    return default_threads()
