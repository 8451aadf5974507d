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
longest summary        ``POPI_MAX_SUMMARY_CHARS``          4,000 characters
largest request body   ``POPI_MAX_BODY_BYTES``             1 MiB (``popi serve``)
API answer timeout     ``POPI_API_TIMEOUT``                600 s per attempt (between chunks
                                                           when streaming)
API connect timeout    ``POPI_API_CONNECT_TIMEOUT``        5 s per attempt
API retries            ``POPI_API_MAX_RETRIES``            2 (3 attempts in all)
local model threads    ``POPI_THREADS``                    ``OMP_NUM_THREADS``, else half
                                                           the cores, at most 4 (1 on 2 cores)
CPU decode weights     ``POPI_WEIGHTS``                    ``auto`` (see ``HFBackend``)
=====================  ==================================  ==============================

A bad value of any of these variables is a :class:`~popi_sdk.errors.SettingError` that names it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from popi_sdk.errors import SettingError

DEFAULT_BACKEND = "hf"
#: The default summarizer: the embedded model with the shipped trained POPI adapter
#: (popi_sdk.backends.adapters); ``hf`` names the untrained one.
DEFAULT_SUMMARIZER = "hf:popi"
DEFAULT_MAX_SIGNAL_CHARS = 32_000
#: A summary is sent with every personalized request: a few sentences, not a document.
DEFAULT_MAX_SUMMARY_CHARS = 4_000
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: A server backend's defaults. Connecting is quick or the server is down: 5 s, so a dead server
#: fails within about 17 s over 3 attempts (:func:`api_connect_bound`). An answer takes as long as
#: the model writes: a non-streamed GPT-4o or Claude answer of a few thousand tokens, or any answer
#: from a busy self-hosted server, runs past a minute, so an attempt may wait 600 s for it (the
#: official clients' default); when streaming, that is the longest wait between two chunks.
DEFAULT_API_TIMEOUT = 600.0
DEFAULT_API_CONNECT_TIMEOUT = 5.0
DEFAULT_API_MAX_RETRIES = 2


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


def _number(raw: str, env_var: str, kind: type, minimum: float, what: str) -> float | int:
    try:
        value = kind(raw)
    except ValueError:
        raise SettingError(f"{env_var}={raw!r} is not {what}; unset it or give {what}") from None
    if not math.isfinite(value) or value < minimum:
        raise SettingError(f"{env_var}={raw!r} must be {what} of at least {minimum:g}; unset it "
                           "to use the default")
    return value


def _whole(explicit: int | None, env_var: str, default: int, unit: str) -> int:
    """A positive whole-number setting: ``explicit``, then ``env_var``, then ``default``."""
    if explicit is not None:
        return int(explicit)
    raw = os.environ.get(env_var)
    if not raw:
        return default
    return int(_number(raw, env_var, int, 1, f"a whole number of {unit}"))


def max_signal_chars() -> int:
    """Longest accepted text in one signal field: ``POPI_MAX_SIGNAL_CHARS``, default 32,000."""
    return _whole(None, "POPI_MAX_SIGNAL_CHARS", DEFAULT_MAX_SIGNAL_CHARS, "characters")


def max_summary_chars(explicit: int | None = None) -> int:
    """Longest summary text a user (or app) may store: argument, ``POPI_MAX_SUMMARY_CHARS``,
    4,000 characters."""
    return _whole(explicit, "POPI_MAX_SUMMARY_CHARS", DEFAULT_MAX_SUMMARY_CHARS, "characters")


def max_body_bytes(explicit: int | None = None) -> int:
    """Largest request body ``popi serve`` reads: argument (``--max-body-bytes``),
    ``POPI_MAX_BODY_BYTES``, 1 MiB."""
    return _whole(explicit, "POPI_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, "bytes")


def api_timeout(explicit: float | None = None) -> float:
    """Seconds one API request attempt may wait for the answer (when streaming: for each next
    chunk): argument, ``POPI_API_TIMEOUT``, 600."""
    if explicit is not None:
        return float(explicit)
    raw = os.environ.get("POPI_API_TIMEOUT")
    if not raw:
        return DEFAULT_API_TIMEOUT
    return float(_number(raw, "POPI_API_TIMEOUT", float, 0.001, "a number of seconds"))


def api_connect_timeout(explicit: float | None = None) -> float:
    """Seconds one API request attempt may take to connect: argument,
    ``POPI_API_CONNECT_TIMEOUT``, 5."""
    if explicit is not None:
        return float(explicit)
    raw = os.environ.get("POPI_API_CONNECT_TIMEOUT")
    if not raw:
        return DEFAULT_API_CONNECT_TIMEOUT
    return float(_number(raw, "POPI_API_CONNECT_TIMEOUT", float, 0.001, "a number of seconds"))


def api_connect_bound(connect_timeout: float, max_retries: int) -> float:
    """The longest a call to a server that does not accept connections takes before its error is
    raised: every attempt's connect timing out, plus the clients' backoff."""
    return api_total_bound(connect_timeout, max_retries)


def api_max_retries(explicit: int | None = None) -> int:
    """Retries after a failed API attempt: argument, ``POPI_API_MAX_RETRIES``, 2."""
    if explicit is not None:
        return explicit
    raw = os.environ.get("POPI_API_MAX_RETRIES")
    if not raw:
        return DEFAULT_API_MAX_RETRIES
    return int(_number(raw, "POPI_API_MAX_RETRIES", int, 0, "a whole number"))


# The official clients back off min(0.5 * 2**n, 8) s before retry n (less up to 25 % jitter);
# see _calculate_retry_timeout in openai/anthropic _base_client.py.
_FIRST_BACKOFF_S, _MAX_BACKOFF_S = 0.5, 8.0


def api_total_bound(timeout: float, max_retries: int) -> float:
    """The longest a failing API call takes before its error is raised: every attempt timing out,
    plus the clients' backoff between attempts. A ``Retry-After`` wait that a rate-limited server
    asks for (the clients honour up to 120 s) comes on top."""
    backoff = sum(min(_FIRST_BACKOFF_S * 2**n, _MAX_BACKOFF_S) for n in range(max_retries))
    return timeout * (max_retries + 1) + backoff
def default_threads(cores: int | None = None) -> int:
    """Torch threads for a local model when nothing says otherwise: half the cores, at most 4.

    A small model's decode step is a few hundred small matrix products; on a 2-core machine that
    other work shares, a second thread per process oversubscribes the cores (measured in
    ``docs/benchmarks.md``). The cap of four is a judgment, not a measurement: products this small
    gain little from splitting further, and a many-core machine usually runs several processes."""
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
            raise SettingError(
                f"{var}={raw!r} is not a whole number of at least 1: set it to the number of "
                "threads a local model may use, or unset it"
            )
        return value
    return default_threads()


WEIGHTS = ("auto", "int4", "bfloat16", "float32")


def decode_weights(explicit: str | None = None) -> str:
    """The fast CPU decoder's projection weights: argument, ``POPI_WEIGHTS``, then ``"auto"``."""
    from popi_sdk.errors import InputError

    if explicit is not None and explicit != "auto":
        if explicit not in WEIGHTS:
            raise InputError(f"weights must be 'auto', 'int4', 'bfloat16' or 'float32', got {explicit!r}")
        return explicit
    raw = os.environ.get("POPI_WEIGHTS", "").strip()
    if not raw:
        return "auto"
    if raw not in WEIGHTS:
        raise SettingError(
            f"POPI_WEIGHTS={raw!r} is not one of {', '.join(WEIGHTS)}: set it to the CPU decoder's "
            "weights (float32 gives transformers' exact greedy tokens), or unset it"
        )
    return raw
