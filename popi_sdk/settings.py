"""Settings resolve in one order everywhere: explicit argument, then environment variable, then
default.

=====================  ==================================  ==============================
setting                environment variable                default
=====================  ==================================  ==============================
data folder            ``POPI_HOME``                       ``~/.cache/popi``
summary store          ``POPI_STORE`` (path or URL)        ``$POPI_HOME/summaries.sqlite``
summarizer backend     ``POPI_SUMMARIZER``                 ``hf`` (embedded SmolLM2-135M)
generator backend      ``POPI_GENERATOR``                  ``hf`` (embedded SmolLM2-135M)
longest signal text    ``POPI_MAX_SIGNAL_CHARS``           32,000 characters
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
    """The folder for caches and converted models: argument, ``POPI_HOME``, ``~/.cache/popi``.

    Created readable by its owner only (mode 0700) when it does not exist; an existing folder
    keeps the mode it has."""
    raw = explicit if explicit is not None else os.environ.get("POPI_HOME")
    path = Path(raw).expanduser() if raw else Path.home() / ".cache" / "popi"
    path.mkdir(parents=True, mode=0o700, exist_ok=True)
    return path


def store_path(explicit: str | os.PathLike | None = None) -> Path:
    """The SQLite summary store: argument, ``POPI_STORE``, ``$POPI_HOME/summaries.sqlite``."""
    raw = explicit if explicit is not None else os.environ.get("POPI_STORE")
    return Path(raw).expanduser() if raw else popi_home() / "summaries.sqlite"
