"""Run the paper's evaluation (§5.1) on held-out users: ``popi eval`` calls :func:`evaluate`.

For every method: its log-prob margin on each labeled example against the base model's margin
(reward accuracy), the tokens its conditioning adds (context overhead), and a judge's verdict on
its greedy answer against the base model's answer (win rate). The base model's log-probs are the
reference policy's (:class:`~popi_sdk.scoring.ReferenceCache`: prompt only), computed once and
reused as the Base-Model method's own numbers, so Base-Model is exactly 50% on both metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from popi_sdk.errors import InputError
from popi_sdk.eval import metrics as M
from popi_sdk.eval.judges import Comparison, Judge
from popi_sdk.eval.methods import Method
from popi_sdk.progress import progress_bar
from popi_sdk.signals import UserRow
from popi_sdk.summary_spec import SummarySpec, length_overrides
from popi_sdk.templates import (
    exemplar_summary,
    profile_summary,
    prompt_only_messages,
    render_signals,
)

log = logging.getLogger(__name__)


@dataclass
class GeneratorRun:
    """One generator with its scorer, its prompt-only reference cache and its generations."""

    spec: str
    backend: Any
    scorer: Any
    ref: Any
    margins: dict[tuple, list[float]] = field(default_factory=dict)
    responses: dict[tuple, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, spec: str, *, batch_size: int, bf16: bool) -> "GeneratorRun":
        from popi_sdk.backends import get_backend
        from popi_sdk.scoring import ReferenceCache, SequenceScorer

        backend = get_backend(spec)
        if not backend.supports_logprobs:
            raise InputError(
                f"generator {spec!r} is not a local model: evaluation needs log-probs, so give an "
                "hf:<model> name or a checkpoint folder (API models can still judge, --judge)"
            )
        scorer = SequenceScorer(backend.model, backend.tokenizer, batch_size=batch_size, bf16=bf16)
        return cls(spec, backend, scorer, ReferenceCache(scorer, backend.name))

    @property
    def name(self) -> str:
        return self.backend.name


def _key(method: Method) -> tuple:
    return (method.context, method.summarizer)


class Evaluation:
    """Holds the users, their summaries and the loaded generators for one evaluation."""

    def __init__(
        self,
        users: Sequence[UserRow],
        summaries: dict[str, list[str]],
        judge: Judge,
        *,
        max_new_tokens: int = 48,
        prompts_per_user: int | None = None,
        progress: bool = True,
    ):
        self.users = list(users)
        self.summaries = summaries
        self.judge = judge
        self.max_new_tokens = max_new_tokens
        self.prompts_per_user = prompts_per_user
        self.progress = progress
        self.records: list[dict] = []
        self.seconds: dict[str, float] = {"scoring": 0.0, "generation": 0.0, "judging": 0.0}

    def _summary(self, method: Method, u: int) -> str | None:
        return self.summaries[method.summarizer][u] if method.summarizer else None

    def _judged_pairs(self) -> list[tuple[int, Any]]:
        """(user index, pair) whose prompts get a generated answer and a judgment."""
        out = []
        for u, row in enumerate(self.users):
            pairs = row.examples if self.prompts_per_user is None else row.examples[: self.prompts_per_user]
            out.extend((u, p) for p in pairs)
        return out

    # -- the three measurements ----------------------------------------------------------------
    def margins(self, run: GeneratorRun, method: Method) -> list[float]:
        """Margin on every example of every user, in order (cached per generator and context)."""
        if method.context == "latent":  # a learned vector, not text (popi_sdk.eval.latent)
            return self._timed_latent("scoring", run, lambda: run.margins_for(self.users))
        key = _key(method)
        if key in run.margins:
            return run.margins[key]
        started = time.perf_counter()
        out: list[float] = []
        users = [(u, row) for u, row in enumerate(self.users) if row.examples]
        step = run.scorer.batch_size  # users per call: their prefixes batch together
        with progress_bar(f"Scoring {method.name} on {run.name}", len(users), enabled=self.progress) as advance:
            for start in range(0, len(users), step):
                chunk = users[start : start + step]
                if method.context == "prompt":  # the reference: prompt-only, cached
                    pairs = [p for _, row in chunk for p in row.examples]
                    chosen, rejected = run.ref.pairs(pairs)
                    out.extend(M.margins(chosen.tolist(), rejected.tolist()))
                else:
                    # A context that is the prompt alone (an empty summary, a copy rule with no
                    # preferred answer to copy) is the reference's input: its margin is the
                    # reference's own, not a re-run that differs from it by float rounding in
                    # another batch shape (which would decide ties against the base model).
                    groups: dict[int, tuple[list, list]] = {}
                    prompt_only, is_prompt_only = [], []
                    for u, row in chunk:
                        summary = self._summary(method, u)
                        for p in row.examples:
                            context = method.messages(p.prompt, row.signals, summary)
                            is_prompt_only.append(context == prompt_only_messages(p.prompt))
                            if is_prompt_only[-1]:
                                prompt_only.append(p)
                            else:
                                contexts, responses = groups.setdefault(u, ([], []))
                                contexts.append(context)
                                responses.append([p.chosen, p.rejected])
                    scored: list[float] = []
                    if groups:
                        for per_context in run.scorer.logprobs_forest(list(groups.values())):
                            chosen = [float(g[0]) for g in per_context]
                            scored.extend(M.margins(chosen, [float(g[1]) for g in per_context]))
                    from_ref: list[float] = []
                    if prompt_only:
                        chosen, rejected = run.ref.pairs(prompt_only)
                        from_ref = M.margins(chosen.tolist(), rejected.tolist())
                    ref_it, scored_it = iter(from_ref), iter(scored)
                    out.extend(next(ref_it) if r else next(scored_it) for r in is_prompt_only)
                advance(len(chunk))
        run.margins[key] = out
        self.seconds["scoring"] += time.perf_counter() - started
        return out

    def overheads(self, run: GeneratorRun, method: Method) -> list[int]:
        if method.context == "latent":
            return run.overheads_for(self.users)
        tok = run.backend.tokenizer
        return [
            M.context_overhead(tok, method.messages(p.prompt, row.signals, self._summary(method, u)), p.prompt)
            for u, row in enumerate(self.users)
            for p in row.examples
        ]

    def responses(self, run: GeneratorRun, method: Method) -> list[str]:
        """Greedy answers to the judged prompts (cached per generator and context)."""
        from popi_sdk.backends import GenerateOptions
        from popi_sdk.personalizer import answer_all

        if method.context == "latent":
            return self._timed_latent("generation", run, lambda: run.responses_for(
                self.users, self._judged_pairs(), self.max_new_tokens))
        key = _key(method)
        if key in run.responses:
            return run.responses[key]
        todo = [
            method.messages(p.prompt, self.users[u].signals, self._summary(method, u))
            for u, p in self._judged_pairs()
        ]
        options = GenerateOptions(max_new_tokens=self.max_new_tokens, temperature=0.0)
        started = time.perf_counter()
        out = [""] * len(todo)

        def keep(i: int, text: str) -> None:
            out[i] = text

        with progress_bar(f"Generating {method.name} on {run.name}", len(todo), enabled=self.progress) as advance:
            answer_all(run.backend, todo, options, on_answer=keep, advance=advance,
                       batch_size=run.scorer.batch_size)
        run.responses[key] = out
        self.seconds["generation"] += time.perf_counter() - started
        return out

    def _timed_latent(self, phase: str, run: Any, call: Any) -> Any:
        """``call()``'s time in ``phase``, less the held-out users' fit it may trigger, which is
        its own phase ("fitting users": a backward pass per signal pair per step)."""
        started, fit = time.perf_counter(), run.seconds["inference"]
        out = call()
        fitted = run.seconds["inference"] - fit
        self.seconds["fitting users"] = self.seconds.get("fitting users", 0.0) + fitted
        self.seconds[phase] += time.perf_counter() - started - fitted
        return out

    def _conditioning_text(self, method: Method, u: int) -> str:
        """The text a method adds for user ``u``: what an echo would repeat."""
        if method.context == "raw":
            return render_signals(self.users[u].signals)
        return self._summary(method, u) or ""

    # -- one method ------------------------------------------------------------------------
    def evaluate_method(
        self, method: Method, run: GeneratorRun, baseline: GeneratorRun, *, table: str
    ) -> dict:
        """Metrics of ``method`` generating with ``run``, relative to ``baseline``'s base model."""
        from popi_sdk.eval.methods import METHODS

        base = METHODS["base"]
        method_margins = self.margins(run, method)
        base_margins = self.margins(baseline, base)
        acc = M.accuracy_outcomes(method_margins, base_margins)
        overhead = self.overheads(run, method)
        judged = self._judged_pairs()
        if method.name == "base" and run is baseline:
            wins = [0.5] * len(judged)  # the same answers: a tie by definition, nothing to ask
            answers = baseline_answers = self.responses(baseline, base) if judged else []
        else:
            answers = self.responses(run, method)
            baseline_answers = self.responses(baseline, base)
            started = time.perf_counter()
            wins = self.judge.judge_many(
                [
                    Comparison(self.users[u].persona or "", p.prompt, a, b)
                    for (u, p), a, b in zip(judged, answers, baseline_answers)
                ]
            )
            self.seconds["judging"] += time.perf_counter() - started
        i = 0
        for u, row in enumerate(self.users):
            for p in row.examples:
                self.records.append(
                    {"table": table, "generator": run.name, "method": method.name, "user_id": row.user_id,
                     "kind": "example", "prompt": p.prompt, "margin": method_margins[i],
                     "base_margin": base_margins[i], "correct": acc[i], "overhead": overhead[i]}
                )
                i += 1
        for (u, p), a, b, w in zip(judged, answers, baseline_answers, wins):
            self.records.append(
                {"table": table, "generator": run.name, "method": method.name,
                 "user_id": self.users[u].user_id, "kind": "judged", "prompt": p.prompt,
                 "response": a, "base_response": b, "win": w}
            )
        echoes = [
            M.echoes(self._conditioning_text(method, u), a) for (u, _), a in zip(judged, answers)
        ] if method.context not in ("prompt", "latent") else []
        return {
            "title": method.title,
            "generator": run.name,
            "echo_rate": M.mean([float(e) for e in echoes]),
            "reward_accuracy": M.mean(acc),
            "reward_accuracy_se": M.stderr(acc),
            "context_overhead": M.mean(overhead),
            "win_rate": M.win_rate(wins),
            "win_rate_se": M.stderr(wins),
            "mean_margin": M.mean(method_margins),
            "n_examples": len(acc),
            "n_judged": len(wins),
        }


def check_personas(users: Sequence[UserRow], why: str) -> None:
    """Fail before any model runs when a reference method needs personas the data lacks."""
    missing = [row.user_id for row in users if not row.persona]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(
            f"{why}, but {len(missing)} user(s) have no 'persona' ({shown}). Use data with "
            "ground-truth personas (e.g. `popi data synth`), or leave the method out"
        )
    if len({row.persona for row in users}) < 2:
        raise InputError(
            f"{why}, but every user has the same persona: a control needs at least two personas"
        )


def shuffled_summaries(users: Sequence[UserRow], summaries: Sequence[str], *, seed: int = 0) -> list[str]:
    """Each user's summary replaced by the summary of a user with a *different* persona, drawn
    with ``seed`` (the control of paper-style ablations: a summary of someone else)."""
    import random

    rng = random.Random(seed)
    out = []
    for row in users:
        donors = [i for i, other in enumerate(users) if other.persona != row.persona]
        out.append(summaries[rng.choice(donors)])
    return out


def summarize_users(
    users: Sequence[UserRow],
    summarizer: str,
    store: Any,
    *,
    spec: SummarySpec | None = None,
    progress: bool = True,
    batch_size: int = 8,
) -> tuple[list[str], dict]:
    """Summaries of every user by ``summarizer`` (cached in ``store``) and their length stats,
    written under ``spec`` (default: the one ``summarizer`` was trained with, else the defaults)."""
    from popi_sdk.personalizer import Personalizer

    p = Personalizer(summarizer=summarizer, generator=summarizer, store=store, summary=spec)
    summaries = p.summarize_many(users, batch_size=batch_size, progress=progress)
    tokens = [s.n_tokens for s in summaries]
    return [s.text for s in summaries], {
        "summarizer": p.summarizer.name,
        "mean_tokens": M.mean(tokens),
        "users": len(summaries),
        "spec": p.summary_spec.model_dump(),
    }


def summary_spec_for(
    summarizer: str | None, *, generator: str | None = None, summary_tokens: int | None = None,
    summary_words: int | None = None,
) -> SummarySpec:
    """The spec every summarizer of an evaluation writes with: the trained ``summarizer``'s saved
    spec (so the base summarizer of Inference-Prompting gets the same instruction and budget, and
    only the weights differ); without a summarizer, the spec of the summaries the trained
    ``generator`` read in training (stage 2 saves it), so Inference-Aligned's summaries are
    written as its generator learned to read them; else the defaults; then the explicit
    overrides."""
    trained = _saved_spec(summarizer)
    read = _saved_spec(generator)
    if trained is not None and read is not None and trained != read:
        differ = [k for k, v in trained.model_dump().items() if getattr(read, k) != v]
        log.warning(
            "%s was trained on summaries written otherwise than %s writes them (%s differ); the "
            "summaries follow %s", generator, summarizer, ", ".join(differ), summarizer,
        )
    base = trained or read or SummarySpec()
    spec = base.replace(**length_overrides(summary_tokens, summary_words))
    if spec.prompt_dependent:
        raise InputError(
            f"{summarizer if trained is not None else generator} holds a prompt-dependent summary "
            "spec (its popi_summary.json has prompt_dependent: true); evaluation scores one "
            "summary per user, so evaluate a model trained with summary.prompt_dependent: false"
        )
    return spec


def _saved_spec(name: str | None) -> SummarySpec | None:
    """The ``popi_summary.json`` of model ``name``'s checkpoint folder, if it has one."""
    from popi_sdk.backends import get_backend
    from popi_sdk.summary_spec import SPEC_FILE

    if not name:
        return None
    checkpoint = get_backend(name).checkpoint
    if not checkpoint or not (Path(checkpoint).expanduser() / SPEC_FILE).is_file():
        return None
    return SummarySpec.from_checkpoint(checkpoint)


def evaluate(
    users: Sequence[UserRow],
    methods: Sequence[Method],
    judge: Judge,
    *,
    base: str = "hf",
    summarizer: str | None = None,
    generator: str | None = None,
    generators: Sequence[str] = (),
    store: Any = ":memory:",
    max_new_tokens: int = 48,
    prompts_per_user: int | None = None,
    batch_size: int = 8,
    bf16: bool = False,
    progress: bool = True,
    summary_tokens: int | None = None,
    summary_words: int | None = None,
    shuffle_seed: int = 0,
    latent: str | None = None,
) -> tuple[dict, list[dict]]:
    """Evaluate ``methods`` on ``users``; returns ``(results, per-example records)``.

    ``base`` is the base model (the Base-Model method, the default summarizer of
    Inference-Prompting, and the generator of the unaligned methods); ``summarizer`` and
    ``generator`` are trained checkpoints; ``generators`` adds a transfer table: the same
    summaries conditioning each of those generators, scored against that generator's own base.
    Every summary is written under :func:`summary_spec_for` (the trained summarizer's saved spec;
    ``summary_tokens`` / ``summary_words`` override it). ``latent`` is the run folder of
    ``popi train latent`` that the methods lore, pal-a and pal-b read.
    """
    started = time.perf_counter()
    users = list(users)
    if not any(row.examples for row in users):
        raise InputError(
            "no user has labeled 'examples': evaluation scores each user's examples (the held-out "
            "preference pairs); give a test file such as DIR/test.jsonl from `popi data synth`"
        )
    sources = {m.summarizer for m in methods if m.summarizer}
    if "oracle" in sources:
        check_personas(users, "methods 'oracle' and 'user-edit' put each user's ground-truth persona in the summary")
    if "profile" in sources:
        check_personas(users, "methods 'profile' and 'profile-aligned' put each user's ground-truth persona in the summary")
    if "shuffled" in sources:
        check_personas(users, "method 'shuffled' gives each user a summary of a user with another persona")
        sources.add("trained" if summarizer else "base")
    from popi_sdk.eval.latent import OVERHEAD_MARK, check_latent, load_latent_runs

    latent_folders = check_latent(methods, latent, generators)
    judge.check({row.user_id: row.persona for row in users})
    summaries: dict[str, list[str]] = {}
    summary_stats: dict[str, dict] = {}
    runs_for = [(s, name) for s, name in (("base", base), ("trained", summarizer)) if s in sources]
    if runs_for:
        spec = summary_spec_for(summarizer, generator=generator, summary_tokens=summary_tokens,
                                summary_words=summary_words)
    for source, name in runs_for:
        t0 = time.perf_counter()
        summaries[source], summary_stats[source] = summarize_users(
            users, name, store, spec=spec, progress=progress, batch_size=batch_size,
        )
        summary_stats[source]["seconds"] = round(time.perf_counter() - t0, 1)
    if "oracle" in sources:
        summaries["oracle"] = [row.persona or "" for row in users]
    if "exemplar" in sources:
        summaries["exemplar"] = [exemplar_summary(row.signals) for row in users]
    if "profile" in sources:
        summaries["profile"] = [profile_summary(row.persona or "", row.signals) for row in users]
    if "shuffled" in sources:
        donor = "trained" if summarizer else "base"
        summaries["shuffled"] = shuffled_summaries(users, summaries[donor], seed=shuffle_seed)
        summary_stats["shuffled"] = {**summary_stats[donor], "shuffled_from": donor}
    ev = Evaluation(
        users, summaries, judge, max_new_tokens=max_new_tokens, prompts_per_user=prompts_per_user,
        progress=progress,
    )
    runs: dict[str, GeneratorRun] = {}

    def load(spec: str) -> GeneratorRun:  # one run per model: its caches serve every table
        if spec not in runs:
            runs[spec] = GeneratorRun.load(spec, batch_size=batch_size, bf16=bf16)
        return runs[spec]

    base_run = load(base)
    trained_run = load(generator) if generator and any(m.generator == "trained" for m in methods) else None
    latent_runs = load_latent_runs(latent_folders, base_run, batch_size=batch_size, progress=progress)
    results: dict[str, Any] = {"methods": {}, "transfer": {}, "summaries": summary_stats}
    for m in methods:
        run = latent_runs.get(m.name) or (trained_run if m.generator == "trained" else base_run)
        results["methods"][m.name] = ev.evaluate_method(m, run, base_run, table="main")
        if m.name in latent_runs:
            results["methods"][m.name]["overhead_mark"] = OVERHEAD_MARK
            results["methods"][m.name]["user_fit_seconds"] = round(latent_runs[m.name].seconds["inference"], 1)
    for spec in generators:
        run = load(spec)
        results["transfer"][run.name] = {
            m.name: ev.evaluate_method(m, run, run, table=f"transfer:{run.name}")
            for m in methods
            if m.transferable
        }
    results["stats"] = {
        "users": len(users),
        "examples": sum(len(r.examples) for r in users),
        "judged_per_method": len(ev._judged_pairs()),
        "reference_cache": {"entries": len(base_run.ref), "hits": base_run.ref.hits, "misses": base_run.ref.misses},
        "forward_tokens": base_run.scorer.forward_tokens,
        "seconds": round(time.perf_counter() - started, 1),
        "phase_seconds": {k: round(v, 1) for k, v in ev.seconds.items()},
    }
    if judge.unparsed is not None:
        results["stats"]["judge_unparsed"] = judge.unparsed
    return results, ev.records
