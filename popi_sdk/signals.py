"""Pydantic data models: a user's raw signals, preference pairs, summaries and dataset rows.

Every model forbids unknown fields, so a typo in a field name is an error, not silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from popi_sdk.errors import InputError
from popi_sdk.settings import max_signal_chars

#: Bumped whenever the hashed form of the signals changes. (The summarizer's wording and budget
#: are in :meth:`popi_sdk.summary_spec.SummarySpec.cache_key`, folded in as ``settings``.)
SIGNALS_HASH_VERSION = "popi-signals-v1"

def _bounded(text: str) -> str:
    limit = max_signal_chars()  # a bad POPI_MAX_SIGNAL_CHARS is a SettingError naming it
    if len(text) > limit:
        raise InputError(
            f"text is {len(text):,} characters; the limit is {limit:,}. Shorten it (signals are "
            "summarized, so a few representative examples work best) or raise POPI_MAX_SIGNAL_CHARS"
        )
    return text


def _non_empty(text: str) -> str:
    if not text.strip():
        raise InputError("must not be empty or only whitespace")
    return text


Text = Annotated[str, AfterValidator(_bounded)]
NonEmptyText = Annotated[str, AfterValidator(_non_empty), AfterValidator(_bounded)]


class _Model(BaseModel):
    # NaN and infinities are refused: JSON has no way to write them back (they would become null),
    # and a summarizer shown "nan" learns nothing about the user.
    model_config = ConfigDict(
        extra="forbid", frozen=False, str_strip_whitespace=False, allow_inf_nan=False
    )


class PreferencePair(_Model):
    """One labeled comparison: for ``prompt`` the user preferred ``chosen`` over ``rejected``."""

    prompt: Text = Field(description="The prompt both responses answer (may be empty).")
    chosen: NonEmptyText = Field(description="The response the user preferred.")
    rejected: NonEmptyText = Field(description="The response the user liked less.")

    @model_validator(mode="after")
    def _differ(self) -> "PreferencePair":
        if self.chosen == self.rejected:
            raise InputError("chosen and rejected are identical; a pair must show a preference")
        return self


class HistoryItem(_Model):
    """Something the user wrote earlier (a comment, a message), optionally with what it answered."""

    prompt: Text = ""
    text: NonEmptyText

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value


class Signals(_Model):
    """What the summarizer may read about a user. At least one kind of signal must be present."""

    pairs: list[PreferencePair] = Field(default_factory=list, description="Preferred/rejected pairs.")
    persona: Text | None = Field(default=None, description="A self-description of the user.")
    history: list[HistoryItem] = Field(default_factory=list, description="Past user-written text.")
    demographics: Text | None = Field(default=None, description="Demographic information as text.")
    traits: dict[str, float] = Field(default_factory=dict, description="Named trait scores.")

    @model_validator(mode="after")
    def _not_empty(self) -> "Signals":
        if not (self.pairs or self.persona or self.history or self.demographics or self.traits):
            raise InputError(
                "no signals given: provide at least one of pairs, persona, history, demographics "
                "or traits (an empty 'pairs' list alone says nothing about the user)"
            )
        return self

    def signals_hash(self, *, settings: str = "") -> str:
        """A stable hash of the signal content (not the user id), used as the cache key.
        ``settings`` folds in whatever else shapes the summary (the summary spec's cache key), so
        a summary written under other settings is not reused."""
        payload = self.model_dump(mode="json", include=set(Signals.model_fields))
        blob = json.dumps([SIGNALS_HASH_VERSION, payload, settings], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


class UserSignals(Signals):
    """A user's signals together with the id they are cached under."""

    user_id: NonEmptyText = Field(description="Your id for the user; summaries are cached under it.")

    def signals(self) -> Signals:
        return Signals(**self.model_dump(exclude={"user_id"}))


class SummaryScore(_Model):
    """How useful a summary is on a user's labeled pairs (see ``Personalizer.score``).

    ``reward_accuracy`` is the share of pairs on which the summary-conditioned scoring model's
    margin ``log π(chosen) − log π(rejected)`` beats its margin without a summary (ties count
    half, so 0.5 means "no better than no summary"); ``margin_gain`` is the mean of the
    difference between the two margins, in nats."""

    reward_accuracy: float = Field(ge=0.0, le=1.0)
    margin_gain: float
    n_examples: int = Field(ge=1)
    scorer: str = Field(default="", description="The scoring model, e.g. 'hf'.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class Summary(_Model):
    """A preference summary: short text written by the summarizer (or by the user), reusable with
    any generator. Every summary a store keeps is one numbered version of the user's summary."""

    user_id: str
    text: str
    summarizer: str = Field(description="Name of the backend that wrote it, e.g. 'hf:smollm2'; "
                            "'user' for a summary the user wrote.")
    signals_hash: str = Field(description="The cache key: the signals and settings it was written from.")
    n_tokens: int = Field(ge=0, description="Length of ``text`` in the summarizer's tokenizer.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    version: int = Field(default=0, ge=0, description="1, 2, ... per user once stored; 0 before.")
    source: Literal["model", "user"] = Field(default="model", description="Who wrote the text.")
    score: SummaryScore | None = Field(default=None, description="Its usefulness score, if measured.")

    def __str__(self) -> str:
        return self.text


class UserRow(_Model):
    """One line of the canonical JSON Lines data format (see docs/data.md)."""

    user_id: NonEmptyText
    signals: Signals
    examples: list[PreferencePair] = Field(
        default_factory=list, description="Labeled data D_i, disjoint from the signal pairs."
    )
    persona: Text | None = Field(
        default=None, description="Ground-truth persona, read only by judges, never by models."
    )

    def user_signals(self) -> UserSignals:
        return UserSignals(user_id=self.user_id, **self.signals.model_dump())
