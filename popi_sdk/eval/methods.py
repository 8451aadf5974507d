"""The methods evaluation compares (paper §5.1): what each one puts in the generator's context and
which generator reads it.

============================  =================  =====================  ===================
method                        context            summaries from         generator
============================  =================  =====================  ===================
``base`` (Base-Model)         the prompt alone   -                      base
``raw`` (Raw-Prompting)       every raw signal   -                      base
``inference``                 a summary          base summarizer        base
``popi`` (Inference-Only)     a summary          ``--summarizer``       base
``popi-full``                 a summary          ``--summarizer``       ``--generator``
``raw-aligned``               every raw signal   -                      ``--generator``
``inference-aligned``         a summary          base summarizer        ``--generator``
``oracle`` (reference)        a summary          the true persona       base
``user-edit`` (reference)     a summary          the true persona       ``--generator``
``exemplar`` (reference)      a summary          the copy rule          base
``exemplar-aligned``          a summary          the copy rule          ``--generator``
``profile`` (reference)       a summary          persona + exemplar     base
``profile-aligned``           a summary          persona + exemplar     ``--generator``
``shuffled`` (control)        a summary          another user's         base
LoRe, PAL-A, PAL-B            one user token     - (a learned vector)   ``--latent RUN``
============================  =================  =====================  ===================

``oracle`` and ``shuffled`` are references for data with ground-truth personas: ``oracle`` puts
the persona itself in the summary's place (how far a perfect description moves this generator),
``shuffled`` gives each user the summary of a user with a different persona, from the trained
summarizer when one is given, else the base one (what a summary is worth when it describes
someone else). ``user-edit`` is the persona read by the trained generator: what a user's own
edit of their summary gives (``edit_summary``), so it says whether the trained generator follows a
description in the user's words. ``exemplar`` is a fixed rule, no model: "The user prefers answers
like this one: " + the first signal pair's preferred response
(:func:`popi_sdk.templates.exemplar_summary`); ``exemplar-aligned`` is the same text read by the
trained generator. ``profile`` / ``profile-aligned`` put the persona and then the copy rule's
response in the summary's place (:func:`popi_sdk.templates.profile_summary`): the describe-then-show
form of the ``describe`` template written from the ground truth, so they bound what such a
summary can give this generator. A trained summarizer has learned something beyond copying only where ``popi``
beats ``exemplar`` (and ``popi-full`` beats ``exemplar-aligned``). Together with ``inference`` and ``popi`` they say whether the generator reads
summaries at all and how much of the way a summarizer has come.

``lore``, ``pal-a`` and ``pal-b`` are the latent-embedding baselines (:mod:`popi_sdk.eval.latent`):
a learned per-user vector in one input slot of a generator trained with it.

The contexts come only from :mod:`popi_sdk.templates`, the same functions training uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from popi_sdk.backends.base import Message
from popi_sdk.errors import InputError
from popi_sdk.signals import Signals
from popi_sdk.templates import prompt_only_messages, raw_signals_messages, summary_messages

Context = Literal["prompt", "raw", "summary", "latent"]
Source = Literal["base", "trained", "oracle", "shuffled", "exemplar", "profile", "latent"]


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    context: Context
    summarizer: Source | None  # whose summaries (``context == "summary"`` only)
    generator: Source

    def messages(self, prompt: str, signals: Signals, summary: str | None) -> list[Message]:
        """The generator's messages for one prompt of one user."""
        if self.context in ("prompt", "latent"):  # latent: the text around the user's slot
            return prompt_only_messages(prompt)
        if self.context == "raw":
            return raw_signals_messages(prompt, signals)
        if summary is None:
            raise InputError(f"method {self.name!r} needs a summary for every user")
        return summary_messages(prompt, summary)

    @property
    def transferable(self) -> bool:
        """Whether the method's conditioning can be handed to another generator (Tables 2-4):
        the aligned methods are tied to the generator they trained."""
        return self.generator == "base"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("base", "Base-Model", "prompt", None, "base"),
        Method("raw", "Raw-Prompting", "raw", None, "base"),
        Method("inference", "Inference-Prompting", "summary", "base", "base"),
        Method("popi", "POPI-Inference-Only", "summary", "trained", "base"),
        Method("popi-full", "POPI-Full", "summary", "trained", "trained"),
        Method("raw-aligned", "Raw-Aligned", "raw", None, "trained"),
        Method("inference-aligned", "Inference-Aligned", "summary", "base", "trained"),
        Method("oracle", "Oracle persona", "summary", "oracle", "base"),
        Method("user-edit", "User edit (persona, trained generator)", "summary", "oracle", "trained"),
        Method("exemplar", "Copy rule (exemplar)", "summary", "exemplar", "base"),
        Method("exemplar-aligned", "Copy rule, trained generator", "summary", "exemplar", "trained"),
        Method("profile", "Persona, then one preferred answer", "summary", "profile", "base"),
        Method("profile-aligned", "Persona, then one preferred answer, trained generator", "summary",
               "profile", "trained"),
        Method("shuffled", "Shuffled summaries", "summary", "shuffled", "base"),
        Method("lore", "LoRe", "latent", None, "latent"),
        Method("pal-a", "PAL-A", "latent", None, "latent"),
        Method("pal-b", "PAL-B", "latent", None, "latent"),
    )
}


def parse_methods(
    spec: str | Sequence[str], *, summarizer: str | None = None, generator: str | None = None
) -> list[Method]:
    """``"base,raw,inference"`` -> methods, checking that each one's checkpoints were given.
    ``base`` is always evaluated (every metric is relative to it) and comes first."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}"
        )
    methods = [METHODS["base"]] + [METHODS[n] for n in dict.fromkeys(names) if n != "base"]
    for m in methods:
        if m.summarizer == "trained" and not summarizer:
            raise InputError(
                f"method {m.name!r} uses a trained summarizer: pass --summarizer RUN/stage1 "
                "(a checkpoint folder or backend name)"
            )
        if m.generator == "trained" and not generator:
            raise InputError(
                f"method {m.name!r} uses a trained generator: pass --generator RUN/stage2 "
                "(a checkpoint folder or hf:<model>)"
            )
    return methods
