"""popi-sdk: learned LLM personalization (POPI, arXiv 2510.17881).

A summarizer writes a short preference summary from a user's raw signals; any generator answers
with that summary in context. ``import popi_sdk`` stays light: torch and the API clients load only
when a backend that needs them is used.
"""

from popi_sdk.errors import PopiError
from popi_sdk.personalizer import Generation, Personalizer
from popi_sdk.signals import PreferencePair, Signals, Summary, SummaryScore, UserRow, UserSignals

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "Personalizer",
    "PopiError",
    "PreferencePair",
    "Signals",
    "Summary",
    "SummaryScore",
    "UserRow",
    "UserSignals",
    "__version__",
]
