"""Best-of-N warm start for stage 1: rejection-sampling fine-tuning on the GRPO reward.

Before GRPO, sample ``stage1.warm_start_samples`` summaries per training user from the initial
summarizer, score each with the same reward GRPO uses (the frozen generator's −loss on the
user's examples), keep the best one per user, and take one supervised pass on them (cross-entropy
on the summary tokens only). GRPO on a small model and a few dozen steps mostly re-weights what
the model already samples; the warm start moves the whole distribution to the best of what it
samples in one step, so the GRPO steps that follow start from summaries that already help.

With ``stage1.warm_start_extractive``, each preferred response in the user's own signals, quoted
as a summary ("The user prefers answers like this one: ..."), joins the sampled candidates. The
reward still decides: a quote is kept only where it beats every sampled summary of that user.
This is the lever a generator that imitates examples but barely reads descriptions needs (the
embedded 135M one, docs/results.md): the untrained summarizer rarely copies a response even when
told to, so sampling alone almost never proposes the kind of summary that moves this generator.
``RUN/warm_start.jsonl`` says for every user which kind of candidate won.

The pass is a short plain loop on the trainer's model (the LoRA policy, whose adapter is the only
trainable part) with its own optimizer, before ``GRPOTrainer.train`` builds its own: a second
TRL trainer on the same model object would patch its ``forward`` twice.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from popi_sdk.backends.base import Message
from popi_sdk.errors import InputError
from popi_sdk.eval import metrics as M
from popi_sdk.templates import EXEMPLAR_LEAD, SHOW_LEAD, describe_then_show, profile_summary
from popi_sdk.train.sampling import sample_groups

log = logging.getLogger(__name__)

# How an extractive candidate introduces the quoted response: the copy rule's lead
# (benchmarks/headroom.py's "example" row and the eval method ``exemplar`` measure this framing).
QUOTE_LEAD = EXEMPLAR_LEAD


def best_of_n(
    model: Any,
    tokenizer: Any,
    reward: Any,
    rows: Sequence[dict[str, Any]],
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    clean: Any,
    extra: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    keep: int = 1,
) -> list[dict[str, Any]]:
    """For each GRPO row (``prompt`` messages, ``example_key``), the best of ``n`` sampled
    summaries and the row's ``extra`` candidates (by ``example_key``: ``(text, source)``
    pairs), with its reward, its ``source`` ("sampled",
    "extractive", "persona") and the mean reward of the sampled ones; with ``keep`` > 1 the
    best ``keep`` distinct texts of the row, best first."""
    # Each user's prompt prefilled once for its n samples, through the fast decoder (sampling.py).
    sampled = sample_groups(model, tokenizer, [row["prompt"] for row in rows], n=n,
                            max_tokens=max_tokens, clean=clean, temperature=temperature,
                            top_p=top_p, progress="warm start: sampling" if rows and n else None)
    groups: list[list[tuple[str, str]]] = []
    for i, row in enumerate(rows):
        group = [(text, "sampled") for text in sampled[i * n : (i + 1) * n]]
        group += list((extra or {}).get(row["example_key"], ()))
        groups.append(group)
    rewards = _score_groups(reward, rows, groups, progress=bool(rows and n))
    picked, at = [], 0
    for row, group in zip(rows, groups):
        scored = [(r, text, source) for r, (text, source) in zip(rewards[at : at + len(group)], group)]
        at += len(group)
        group_mean = M.mean([r for r, _, s in scored if s == "sampled"])
        best = {}  # text -> (reward, source), best first; ties keep the earlier candidate
        for r, text, source in sorted(scored, key=lambda g: -g[0]):
            best.setdefault(text, (r, source))
        for text, (r, source) in list(best.items())[:keep]:
            picked.append({
                "example_key": row["example_key"], "prompt": row["prompt"], "summary": text,
                "reward": r, "source": source, "group_mean": group_mean,
            })
    return picked


#: Users whose candidates are scored per reward call: the progress bar moves every call, and the
#: shared system-message root still runs once per call (popi_sdk.scoring).
SCORE_USERS_PER_CALL = 16


def _score_groups(reward: Any, rows: Sequence[dict[str, Any]], groups: list[list[tuple[str, str]]],
                  *, progress: bool) -> list[float]:
    """The reward of every candidate of every user, in order, a progress bar over the
    candidates (scoring them is most of the warm start's sampling phase)."""
    from popi_sdk.progress import progress_bar

    out: list[float] = []
    total = sum(len(g) for g in groups)
    with reward.generator_context(), progress_bar("warm start: scoring", total, enabled=progress,
                                                  unit="summaries") as advance:
        for start in range(0, len(groups), SCORE_USERS_PER_CALL):
            chunk = list(zip(rows[start : start + SCORE_USERS_PER_CALL],
                             groups[start : start + SCORE_USERS_PER_CALL]))
            keys = [row["example_key"] for row, group in chunk for _ in group]
            out.extend(reward.score([reward.examples[k] for k in keys],
                                    [text for _, group in chunk for text, _ in group]))
            advance(len(keys))
    return out


def extractive_candidates(signals: Any, spec: Any, tokenizer: Any) -> list[str]:
    """The user's preferred responses, each quoted as a summary within ``spec``'s word budget
    and token cap (so the summarizer can learn to write it): the candidates
    ``stage1.warm_start_extractive`` adds to best-of-N."""
    out = []
    for pair in signals.pairs:
        text = _within_budget(f"{QUOTE_LEAD} {pair.chosen.strip()}", spec, tokenizer)
        if text and text not in out:
            out.append(text)
    return out


def persona_candidates(persona: str, signals: Any, spec: Any, tokenizer: Any,
                       form: str = "about", shown: Sequence[str] = ()) -> list[str]:
    """Descriptions of a *training* user as warm-start candidates (``stage1.warm_start_persona``):
    the data's persona alone, and the persona followed by the user's first preferred response
    (describe, then show), each within ``spec``'s word budget and token cap. ``form``
    (``stage1.warm_start_persona_form``) words the persona as the data does (``about``), as an
    instruction to the writer (``instruction``; a persona in no synthetic wording is kept), or
    offers both. A user without pairs shows each of ``shown`` instead, one candidate per answer
    (``stage1.warm_start_persona_show``: a peer's answer, :func:`peer_answers`, or answers the
    generator wrote, :func:`written_answers`)."""
    from popi_sdk.data.synth import persona_instruction

    about = persona.strip()
    instruction = persona_instruction(about) or about
    descriptions = {"about": [about], "instruction": [instruction], "both": [about, instruction]}[form]
    texts = []
    for description in dict.fromkeys(descriptions):
        texts.append(description)
        if signals is not None and signals.pairs:
            texts.append(profile_summary(description, signals))
        else:
            texts.extend(describe_then_show(description, answer) for answer in shown if answer.strip())
    return [t for t in dict.fromkeys(_within_budget(t, spec, tokenizer) for t in texts) if t]


def peer_answers(users: Mapping[str, Any], seed: int, n: int = 1) -> dict[str, list[str]]:
    """For each *training* user without pairs of their own (by key), ``n`` preferred answers of
    other training users with the same persona (chosen responses of their labeled examples or
    signal pairs, drawn without replacement with ``seed``; fewer where fewer exist). Never the
    user's own examples (the reward scores the candidate on those), and nothing for a persona no
    other user shares."""
    answers: dict[str, list[tuple[str, str]]] = {}
    for u in {id(u): u for u in users.values()}.values():
        if u.persona:
            chosen = [e.chosen for e in u.examples] + [p.chosen for p in u.signals.pairs]
            answers.setdefault(u.persona.strip(), []).extend((u.user_id, c) for c in chosen)
    return _draw_for_users_without_pairs(users, seed, lambda u: [
        c for owner, c in answers.get(u.persona.strip(), []) if owner != u.user_id], n=n)


def peer_prompts(users: Mapping[str, Any], seed: int) -> dict[str, str]:
    """For each *training* user without pairs of their own (by key), the prompt of one labeled
    example of another training user (any persona), drawn with ``seed``: what the generator
    answers for :func:`written_answers`. Never one of the user's own prompts, on which the reward
    scores the candidate."""
    prompts = sorted({(u.user_id, e.prompt) for u in {id(u): u for u in users.values()}.values()
                      for e in u.examples})
    drawn = _draw_for_users_without_pairs(users, seed, lambda u: [
        p for owner, p in prompts if owner != u.user_id and p not in {e.prompt for e in u.examples}])
    return {key: items[0] for key, items in drawn.items()}


def _draw_for_users_without_pairs(users: Mapping[str, Any], seed: int,
                                  pool: Callable[[Any], list[str]], n: int = 1) -> dict[str, list[str]]:
    """Up to ``n`` items of ``pool(user)``, without replacement, per key of a user with a persona
    and no pairs, drawn with ``seed`` in key order (one item is what ``rng.choice`` draws);
    nothing for a user whose pool is empty."""
    rng = random.Random(seed)
    out = {}
    for key in sorted(users):
        u = users[key]
        if u.persona and not u.signals.pairs and (items := pool(u)):
            out[key] = rng.sample(items, min(n, len(items)))
    return out


def written_answers(reward: Any, personas: Mapping[str, str], prompts: Mapping[str, str], *, n: int,
                    max_tokens: int, temperature: float, top_p: float) -> dict[str, list[str]]:
    """``n`` answers the reward's frozen generator writes for each user of ``prompts`` (by key):
    the user's persona, worded as an instruction, as its summary, and the peer prompt as the
    question, sampled at ``temperature``/``top_p``. What a user without pairs shows under
    ``stage1.warm_start_persona_show = "written"``: an answer as the generator itself writes it
    under the persona, which a summarizer of the same family could learn to write. On review
    users the plain model's answers are often not in the persona's style (docs/results.md,
    round 13); a peer's answer is."""
    from popi_sdk.data.synth import persona_instruction
    from popi_sdk.templates import summary_messages

    keys = [k for k in sorted(prompts) if personas.get(k)]
    messages = [summary_messages(prompts[k], persona_instruction(personas[k].strip()) or personas[k].strip())
                for k in keys]
    scorer = reward.scorer
    with reward.generator_context():
        texts = sample_groups(scorer.model, scorer.tokenizer, messages, n=n, max_tokens=max_tokens,
                              clean=str.strip, temperature=temperature, top_p=top_p,
                              progress="warm start: writing answers" if keys else None)
    return {k: texts[i * n : (i + 1) * n] for i, k in enumerate(keys)}


def _within_budget(text: str, spec: Any, tokenizer: Any) -> str:
    words = text.split()[: spec.max_words]
    while words and len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) >= spec.max_tokens:
        words.pop()
    return spec.clean(" ".join(words), capped=True)


def _encode(tokenizer: Any, messages: list[Message], summary: str) -> tuple[list[int], list[int], int]:
    """Prompt ids, summary ids (with the chat template's end-of-turn), tokenized apart so the
    boundary is exact, and how many summary ids describe the user: those before ``SHOW_LEAD``
    (all of them when the summary shows no answer)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": summary}], tokenize=False
    )
    completion = full[len(prompt):] if full.startswith(prompt) else summary + (tokenizer.eos_token or "")
    completion = completion.rstrip("\n")
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    summary_ids = ids(completion)
    shown = completion.find(SHOW_LEAD)
    described = len(summary_ids) if shown < 0 else len(ids(completion[:shown].rstrip()))
    return ids(prompt), summary_ids, min(described, len(summary_ids))


def weighted_token_loss(logits: Any, labels: Any, weights: Any) -> Any:
    """Cross-entropy of next-token predictions, each label weighted (labels of -100 ignored),
    normalized by the weights' sum: with every weight 1 it is the mean token loss."""
    import torch

    logits = logits[:, :-1].float()
    labels, weights = labels[:, 1:], weights[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(weights)
    weights = weights * (labels != -100)
    return (nll * weights).sum() / weights.sum().clamp(min=1e-8)


def supervised_pass(
    model: Any,
    tokenizer: Any,
    examples: Sequence[tuple[list[Message], str]],
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    seed: int,
    description_weight: float = 1.0,
    progress: bool = False,
) -> list[float]:
    """Cross-entropy on the summary tokens of ``(messages, summary)`` pairs, the tokens that
    describe the user weighted ``description_weight`` against the answer a summary shows;
    returns the loss of each optimizer step (a progress bar over the steps with ``progress``)."""
    import torch

    from popi_sdk.progress import progress_bar

    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    encoded = [_encode(tokenizer, m, s) for m, s in examples]
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    losses: list[float] = []
    was_training = model.training
    model.train()
    steps = epochs * -(-len(encoded) // batch_size)
    try:
        with progress_bar("warm start: supervised pass", steps, enabled=progress,
                          unit="steps") as advance:
            for _ in range(epochs):
                order = torch.randperm(len(encoded)).tolist()
                for start in range(0, len(order), batch_size):
                    batch = [encoded[i] for i in order[start : start + batch_size]]
                    width = max(len(p) + len(c) for p, c, _ in batch)
                    ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    labels = torch.full((len(batch), width), -100, dtype=torch.long)
                    mask = torch.zeros((len(batch), width), dtype=torch.long)
                    weights = torch.ones((len(batch), width))
                    for row, (p, c, described) in enumerate(batch):
                        seq = p + c
                        ids[row, : len(seq)] = torch.tensor(seq)
                        labels[row, len(p) : len(seq)] = torch.tensor(c)
                        mask[row, : len(seq)] = 1
                        if described < len(c):  # a summary that shows an answer after describing
                            weights[row, len(p) : len(p) + described] = description_weight
                    if description_weight == 1.0:
                        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     labels=labels.to(device)).loss
                    else:
                        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                        loss = weighted_token_loss(logits, labels.to(device), weights.to(device))
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(float(loss.detach()))
                    advance(1, f"loss {losses[-1]:.3f}")
    finally:
        model.train(was_training)
    return losses


def warm_start(
    model: Any,
    tokenizer: Any,
    reward: Any,
    rows: Sequence[dict[str, Any]],
    opts: Any,
    *,
    spec: Any,
    run: Path,
    seed: int,
    signals: Mapping[str, Any] | None = None,
    personas: Mapping[str, str] | None = None,
    peers: Mapping[str, Sequence[str]] | None = None,
    prompts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Best-of-N sampling (with ``spec``'s training sampling, token cap and cleaning, as GRPO
    samples), or an earlier run's picks (``opts.warm_start_from``), then one supervised pass;
    writes ``RUN/warm_start.jsonl`` (the picked summaries, before the pass) and returns a record for
    ``RUN/metrics.jsonl``."""
    started = time.perf_counter()
    if opts.warm_start_from:
        log.info("warm start: the picks of %s for %d training users (nothing sampled)",
                 opts.warm_start_from, len(rows))
        picked = load_picks(Path(opts.warm_start_from), rows)
    else:
        shown: Mapping[str, Sequence[str]] = peers or {}
        if prompts and personas:
            shown = written_answers(reward, personas, prompts, n=opts.warm_start_written_answers,
                                    max_tokens=spec.max_tokens, temperature=spec.train_temperature,
                                    top_p=spec.train_top_p)
            log.info("warm start: the generator wrote %d answers for each of %d training users "
                     "without pairs", opts.warm_start_written_answers, len(shown))
        picked = _sample_picks(model, tokenizer, reward, rows, opts, spec=spec, signals=signals,
                               personas=personas, shown=shown)
    sampled_at = time.perf_counter()
    won = Counter(p["source"] for p in picked)
    log.info("warm start: %s in %.0f s; picks: %d sampled, %d extractive, %d persona",
             "read" if opts.warm_start_from else "sampled and scored", sampled_at - started,
             won["sampled"], won["extractive"], won["persona"])
    # The picks are written before the pass: the sampling is the slow part, and a pass that is
    # stopped or fails leaves them for stage1.warm_start_from.
    with (run / "warm_start.jsonl").open("w", encoding="utf-8") as fh:
        for p in picked:
            fh.write(json.dumps({k: p[k] for k in PICK_FIELDS}) + "\n")
    losses = supervised_pass(
        model, tokenizer, [(p["prompt"], p["summary"]) for p in picked],
        learning_rate=opts.warm_start_learning_rate or opts.learning_rate,
        batch_size=opts.warm_start_batch_size, epochs=opts.warm_start_epochs, seed=seed,
        description_weight=opts.warm_start_description_weight, progress=True,
    )
    record = {
        "stage": "stage1", "kind": "warm_start", "step": 0,
        "warm_start_best_reward": M.mean([p["reward"] for p in picked]),
        "warm_start_mean_reward": M.mean([p["group_mean"] for p in picked]),
        "warm_start_losses": losses,
        "warm_start_users": len({p["example_key"] for p in picked}),
        "warm_start_picks": len(picked),
        "warm_start_extractive_won": sum(p["source"] == "extractive" for p in picked),
        "warm_start_persona_won": sum(p["source"] == "persona" for p in picked),
        "warm_start_samples": opts.warm_start_samples,
        "warm_start_from": opts.warm_start_from,
        "warm_start_sampling_seconds": round(sampled_at - started, 1),
        "warm_start_seconds": round(time.perf_counter() - started, 1),
    }
    log.info("warm start: %s reward %.3f (group mean %.3f); SFT loss %.3f -> %.3f in %.0f s",
             "the picks'" if opts.warm_start_from else f"best-of-{opts.warm_start_samples}",
             record["warm_start_best_reward"],
             record["warm_start_mean_reward"], losses[0], losses[-1], record["warm_start_seconds"])
    return record


def _sample_picks(model: Any, tokenizer: Any, reward: Any, rows: Sequence[dict[str, Any]],
                  opts: Any, *, spec: Any, signals: Mapping[str, Any] | None,
                  personas: Mapping[str, str] | None,
                  shown: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Best-of-N over sampled summaries and the extractive and persona candidates ``opts``
    turns on: the best ``opts.warm_start_keep`` per row."""
    log.info("warm start: sampling %d summaries for each of %d training users",
             opts.warm_start_samples, len(rows))
    extra: dict[str, list[tuple[str, str]]] = {}
    if opts.warm_start_extractive:
        for key, s in (signals or {}).items():
            extra.setdefault(key, []).extend(
                (text, "extractive") for text in extractive_candidates(s, spec, tokenizer))
    shown = shown or {}
    for key, persona in (personas or {}).items():
        extra.setdefault(key, []).extend(
            (text, "persona") for text in persona_candidates(
                persona, (signals or {}).get(key), spec, tokenizer, opts.warm_start_persona_form,
                shown=shown.get(key, ())))
    return best_of_n(
        model, tokenizer, reward, rows, n=opts.warm_start_samples, max_tokens=spec.max_tokens,
        temperature=spec.train_temperature, top_p=spec.train_top_p, clean=spec.clean, extra=extra,
        keep=opts.warm_start_keep,
    )


#: What each line of RUN/warm_start.jsonl holds (the fields ``stage1.warm_start_from`` reads).
PICK_FIELDS = ("example_key", "summary", "source", "reward", "group_mean")


def load_picks(path: Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """An earlier run's ``RUN/warm_start.jsonl`` as this run's picks, in the order of ``rows``
    (``stage1.warm_start_from``; a user's several kept picks, ``stage1.warm_start_keep``, in the
    file's order). Every training user needs a pick and every pick a training user: picks from
    other data are refused, naming users that differ."""
    if not path.is_file():
        raise InputError(f"stage1.warm_start_from: {path} is not a file; give an earlier run's "
                         "RUN/warm_start.jsonl")
    by_key: dict[str, list[dict[str, Any]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            pick = json.loads(line)
            ok = (isinstance(pick, dict) and all(f in pick for f in PICK_FIELDS)
                  and isinstance(pick["example_key"], str) and isinstance(pick["summary"], str)
                  and all(isinstance(pick[f], (int, float)) for f in ("reward", "group_mean")))
        except ValueError:
            ok = False
        if not ok:
            raise InputError(f"{path}, line {n}: not a warm-start pick (a JSON object with "
                             f"{', '.join(PICK_FIELDS)}, as a run's RUN/warm_start.jsonl holds)")
        if any(p["summary"] == pick["summary"] for p in by_key.get(pick["example_key"], ())):
            raise InputError(f"{path}, line {n}: the same pick again for {pick['example_key']}; a "
                             "run writes each kept summary of a training user once (picks files "
                             "joined twice?)")
        by_key.setdefault(pick["example_key"], []).append(pick)
    keys = [row["example_key"] for row in rows]
    missing = [k for k in keys if k not in by_key]
    foreign = sorted(set(by_key) - set(keys))
    if missing or foreign:
        raise InputError(
            f"{path} holds the picks of other training users: {len(missing)} of this run's "
            f"{len(keys)} have none (e.g. {', '.join(missing[:3]) or '-'}) and {len(foreign)} "
            f"picks name no training user of this run (e.g. {', '.join(foreign[:3]) or '-'}); "
            "use the data, seed and stage1.validation_users of the run that wrote it")
    return [{**{f: pick[f] for f in PICK_FIELDS}, "prompt": row["prompt"]}
            for row in rows for pick in by_key[row["example_key"]]]
