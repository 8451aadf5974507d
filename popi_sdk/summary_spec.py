"""How a summary is written, defined once: :class:`SummarySpec`.

The instruction template, the word budget asked for, the token cap, whether the summary is written
for an upcoming prompt, the sampling, and the cleaning of the model's text: training (stage 1's
GRPO prompts and reward, stage 2's summaries), evaluation and the SDK all take them from one spec,
so a summarizer is used exactly as it was trained. Stage 1 saves its spec next to the weights as
``RUN/stage1/popi_summary.json``; :meth:`SummarySpec.from_checkpoint` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from popi_sdk.backends.base import Backend, GenerateOptions, Message
from popi_sdk.errors import ConfigError, InputError, describe_validation_error, range_rule
from popi_sdk.signals import Signals
from popi_sdk.templates import cut_to_last_sentence, render_signals, summary_template

#: The file a stage-1 checkpoint keeps its spec in.
SPEC_FILE = "popi_summary.json"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LABELS = ("Summary:", "summary:", "**Summary:**", "Preference summary:")


class SummarySpec(BaseModel):
    """How a summary is written. Frozen: change a field with ``spec.model_copy(update=...)`` or
    :meth:`replace` (which validates).

    ``temperature`` is for summaries written for use (SDK, evaluation, stage 2); stage 1 samples
    its groups of candidate summaries with ``train_temperature`` / ``train_top_p``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(
        default="app-i", description="Registered summary template (popi_sdk.templates)."
    )
    max_words: int = Field(
        default=60, ge=5, le=1000, description="Length the summarizer is asked for, in words."
    )
    max_tokens: int = Field(
        default=96, ge=4, le=4096, description="Most tokens a summary may have."
    )
    prompt_dependent: bool = Field(
        default=False,
        description="Write each summary for the upcoming prompt too (paper App. B).",
    )
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Sampling of summaries written for use; 0: greedy."
    )
    repetition_penalty: float = Field(
        default=1.0, ge=1.0, le=2.0,
        description="Penalty on tokens already written, for summaries written for use; 1: off.",
    )
    no_repeat_ngram_size: int = Field(
        default=0, ge=0, le=16,
        description="No n-gram of this many tokens written twice, for summaries written for use; 0: off.",
    )
    train_temperature: float = Field(
        default=0.6, gt=0.0, le=2.0, description="Stage-1 sampling temperature of candidates."
    )
    train_top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Stage-1 nucleus sampling mass of candidates."
    )

    @field_validator("template")
    @classmethod
    def _registered(cls, name: str) -> str:
        summary_template(name)  # raises, listing the known templates
        return name

    # -- writing a summary -----------------------------------------------------------------
    def messages(
        self, signals: Signals, prompt: str | None = None, *, current_summary: str | None = None
    ) -> list[Message]:
        """The summarizer's input for ``signals``; ``prompt`` is the upcoming question, required
        exactly when the spec is prompt-dependent; ``current_summary`` adds the user's current
        summary as context, for an incremental refresh."""
        if self.prompt_dependent and prompt is None:
            raise InputError(
                "this summarizer writes prompt-dependent summaries (prompt_dependent: true): "
                "pass the upcoming prompt, e.g. summarize(signals, prompt=...)"
            )
        if not self.prompt_dependent and prompt is not None:
            raise InputError(
                "a prompt was given but this summarizer writes prompt-independent summaries "
                "(prompt_dependent: false): drop the prompt, or use a prompt-dependent spec"
            )
        template = summary_template(self.template)
        user = render_signals(signals)
        if current_summary is not None and current_summary.strip():
            user += "\n\n" + template.current_summary_context.format(summary=current_summary.strip())
        user += "\n\n" + template.instruction.format(max_words=self.max_words)
        if prompt is not None:
            user += "\n\n" + template.prompt_instruction.format(prompt=prompt)
        return [{"role": "system", "content": template.system}, {"role": "user", "content": user}]

    def options(self) -> GenerateOptions:
        """Generation options for summaries written for use."""
        return GenerateOptions(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
        )

    def at_cap(self, n_tokens: int) -> bool:
        """Whether a summary of ``n_tokens`` tokens was (most likely) stopped by ``max_tokens``."""
        return n_tokens >= self.max_tokens - 2

    def clean(self, text: str, *, capped: bool = False) -> str:
        """Strip the boilerplate small models wrap around a summary (quotes, a 'Summary:' label)
        and drop list lines and sentences repeated word for word (small models loop), keeping the
        first one. ``capped`` (the text was stopped by ``max_tokens``, see :meth:`at_cap`) also cuts
        a trailing fragment back to the last complete sentence or list line."""
        text = text.strip()
        for label in _LABELS:
            if text.startswith(label):
                text = text[len(label):].strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1].strip()
        lines, seen_lines = [], set()
        for line in text.splitlines():  # list items loop line by line, without sentence ends
            key = line.strip().lower()
            if key and key in seen_lines:
                continue
            seen_lines.add(key)
            lines.append(line)
        text = "\n".join(lines)
        if capped:
            text = cut_to_last_sentence(text)
        sentences = _SENTENCE_END.split(text)
        seen: set[str] = set()
        kept = []
        for sentence in sentences:
            key = sentence.strip().rstrip(".!?").lower()
            if key not in seen:
                seen.add(key)
                kept.append(sentence)
        return " ".join(kept) if len(kept) < len(sentences) else text

    def cache_key(self, prompt: str | None = None) -> str:
        """Everything that shapes a summary written for use (the template's wording included, so
        an edited template is a different summary), and the prompt of a prompt-dependent one."""
        template = summary_template(self.template)
        wording = "\n".join((template.system, template.instruction, template.prompt_instruction,
                             template.current_summary_context))
        payload: dict[str, Any] = {
            "template": self.template,
            "wording": hashlib.sha256(wording.encode("utf-8")).hexdigest()[:16],
            **self.model_dump(include={"max_words", "max_tokens", "prompt_dependent", "temperature"}),
        }
        # Decoding settings enter the key only when set, so summaries stored before they existed
        # keep their keys.
        if self.repetition_penalty != 1.0 or self.no_repeat_ngram_size:
            payload["repetition_penalty"] = self.repetition_penalty
            payload["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if prompt is not None:
            payload["prompt"] = prompt
        return json.dumps(payload, sort_keys=True, ensure_ascii=False)

    # -- changing, saving, loading ---------------------------------------------------------
    def replace(self, **changes: Any) -> "SummarySpec":
        """A validated copy with ``changes`` (``None`` values are ignored). A bad value is an
        :class:`InputError` naming the field and its valid range."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        for name, value in given.items():
            check_field(name, value)
        return SummarySpec.model_validate({**self.model_dump(), **given})

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "summary spec") -> "SummarySpec":
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            details = "\n  ".join(describe_validation_error(e))
            raise ConfigError(f"{source}: not a valid summary spec:\n  {details}") from None

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/popi_summary.json``."""
        path = Path(folder) / SPEC_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike | None, default: "SummarySpec | None" = None
    ) -> "SummarySpec":
        """The spec saved in checkpoint folder ``path``; ``default`` (else the defaults) for a
        folder without one, a hub id or ``None``."""
        file = Path(path).expanduser() / SPEC_FILE if path is not None else None
        if file is None or not file.is_file():
            return default if default is not None else cls()
        return cls.from_json(file.read_text(encoding="utf-8"), source=str(file))

    @classmethod
    def of_backend(cls, backend: Backend, default: "SummarySpec | None" = None) -> "SummarySpec":
        """The spec ``backend`` was trained with (its checkpoint's file), else ``default``."""
        return cls.from_checkpoint(backend.checkpoint, default)


def check_field(name: str, value: Any, *, option: str | None = None) -> None:
    """Raise an :class:`InputError` naming ``option`` (default: the field) and the valid range
    when ``value`` is not valid for field ``name``."""
    option = option or name
    if name not in SummarySpec.model_fields:
        known = ", ".join(SummarySpec.model_fields)
        raise InputError(f"unknown summary option {option!r}; known: {known}")
    try:
        SummarySpec.model_validate({name: value})
    except ValidationError as e:
        field = SummarySpec.model_fields[name]
        rule = range_rule(field) or e.errors()[0]["msg"].removeprefix("Value error, ").lower()
        what = field.description[:1].lower() + field.description[1:].rstrip(".")
        raise InputError(f"{option} {rule}, got {value!r} ({what})") from None


def length_overrides(summary_tokens: int | None, summary_words: int | None) -> dict[str, int]:
    """The spec fields that the ``summary_tokens`` / ``summary_words`` options (of the SDK, the
    CLI and evaluation) override, checked now, so a bad value is reported under its option name."""
    out: dict[str, int] = {}
    for option, name, value in (
        ("summary_tokens", "max_tokens", summary_tokens),
        ("summary_words", "max_words", summary_words),
    ):
        if value is not None:
            check_field(name, value, option=option)
            out[name] = value
    return out

