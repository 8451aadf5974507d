"""Summed log-probs of responses under chat-templated contexts: the one scoring function that
training rewards and evaluation metrics share.

``log π(y | c)`` is the sum of the model's log-probabilities of the response tokens of ``y`` (its
text and the chat template's end-of-turn token) after the context ``c`` rendered with
``apply_chat_template(c, add_generation_prompt=True)``. The prompt and the response are tokenized
separately and concatenated, so the response tokens are located exactly, whatever the tokenizer
would have merged across the boundary.

Three things make it cheap:

- **Batching** with left padding, so every response ends at the last position and the LM head runs
  only over the last ``max(len(response))`` positions instead of the whole sequence.
- **Shared prefixes**: sequences that start with the same tokens (a user's summary and prompt
  before the chosen and the rejected response, or one summary before several prompts) run the
  common prefix once and reuse its KV cache; the prefixes of several groups (several summaries)
  run as one batch, and all their continuations share batches (:meth:`SequenceScorer.logprobs_forest`).
  What all the groups' prefixes begin with (the system message's words before each summary) runs
  once too, and every prefix continues its cache.
- **A reference cache**: ``log πref(y|x)`` depends only on the prompt and the response, never on
  the summary, so :class:`ReferenceCache` computes it once per example and model.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from popi_sdk.backends.base import Message
from popi_sdk.errors import InputError
from popi_sdk.objective import LossType, popi_reward
from popi_sdk.signals import PreferencePair
from popi_sdk.templates import prompt_only_messages, summary_messages

#: A root prefix shorter than this is not worth its own forward pass.
MIN_ROOT_TOKENS = 8


@dataclass
class _Item:
    """One sequence to score: ``tokens`` follow the shared prefix; the last ``n_response`` of
    them are the response whose log-probs are summed."""

    tokens: list[int]
    n_response: int


@dataclass
class _PrefixCache:
    """The KV cache of a batch of prefixes that ran once, and what continuing them needs:
    ``mask`` is their left-padding mask ``[P, width]``, ``lengths`` their unpadded lengths, and
    ``argument`` the keyword the model's forward takes a cache by (:func:`cache_argument`)."""

    kv: Any
    mask: Any
    lengths: list[int]
    argument: str

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def rows(self, rows: Sequence[int], device: Any) -> Any:
        """A copy of the cache holding ``rows`` (with repeats), for one batch of continuations:
        the forward pass appends to the cache it is given, so the original stays untouched."""
        import torch

        kv = copy.deepcopy(self.kv)
        kv.batch_select_indices(torch.tensor(list(rows), device=device))
        return kv


def cache_argument(model: Any) -> str:
    """The keyword ``model``'s forward takes its KV cache by, and the attribute its output returns
    it in: ``cache`` from the transformers release that renamed it (``past_key_values`` is
    deprecated there and goes in 5.40), ``past_key_values`` before. Read from the signature of the
    model class's ``forward`` (a PEFT wrapper's base model), so both ends of ``transformers>=5.0``
    work without a version table."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_argument_of(type(base))


@functools.lru_cache(maxsize=None)
def _cache_argument_of(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _summed_logprobs(logits: Any, targets: Any) -> Any:
    """``sum_j log softmax(logits[b, j])[targets[b, j]]`` over the positions whose target is not
    -1. The log-normalizer is computed one row at a time, so the only vocabulary-wide tensor is
    ``logits`` itself (a full float32 ``log_softmax`` of a score batch doubled the reward's peak
    memory)."""
    import torch

    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1).float()
    log_z = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    # where(), not a product: logits at padded positions may be NaN (fully masked rows)
    return torch.where(targets >= 0, picked - log_z, torch.zeros_like(picked)).sum(-1)


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every sequence shares."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


class SequenceScorer:
    """Summed log-probs of responses under a chat-templated context, batched.

    Args:
        model: a causal LM (``transformers`` ``AutoModelForCausalLM``), any device.
        tokenizer: its tokenizer, with a chat template.
        batch_size: sequences per forward pass.
        bf16: run the forward passes under bfloat16 autocast (faster on GPUs and on CPUs with
            bf16 support; summed log-probs then differ from float32 slightly, see
            docs/benchmarks.md).

    ``forward_tokens`` counts every position fed through the model (padding included), so
    benchmarks can compare the work two scoring strategies do.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, bf16: bool = False):
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.bf16 = bf16
        self.forward_tokens = 0
        self.forward_calls = 0
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- tokenization ----------------------------------------------------------------------
    def prompt_text(self, context: Sequence[Message]) -> str:
        return self.tokenizer.apply_chat_template(
            list(context), tokenize=False, add_generation_prompt=True
        )

    def completion_text(self, context: Sequence[Message], prompt_text: str, response: str) -> str:
        """The response as the chat template writes it after the prompt, end-of-turn included."""
        full = self.tokenizer.apply_chat_template(
            [*context, {"role": "assistant", "content": response}], tokenize=False
        )
        if full.startswith(prompt_text):
            completion = full[len(prompt_text) :].rstrip()
        else:  # templates that rewrite earlier turns once an answer exists
            completion = response + (self.tokenizer.eos_token or "")
        if not completion:
            raise InputError("a response to score is empty; give a non-empty response")
        return completion

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_pair(self, context: Sequence[Message], response: str) -> tuple[list[int], list[int]]:
        """(prompt token ids, response token ids) for one context and response."""
        prompt = self.prompt_text(context)
        return self.encode(prompt), self.encode(self.completion_text(context, prompt, response))

    # -- the engine ------------------------------------------------------------------------
    def _autocast(self):
        import contextlib

        import torch

        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16)

    def _prefix_cache(
        self, prefixes: Sequence[list[int]], parent: _PrefixCache | None = None
    ) -> _PrefixCache:
        """Run non-empty ``prefixes`` once, as one left-padded batch; with ``parent`` (the cache
        of one shared root prefix), each continues it, the padding between root and prefix."""
        import torch

        width = max(len(p) for p in prefixes)
        root = parent.width if parent is not None else 0
        start = parent.lengths[0] if parent is not None else 0
        ids = torch.full((len(prefixes), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefixes), root + width), dtype=torch.long)
        pos = torch.zeros((len(prefixes), width), dtype=torch.long)
        for row, prefix in enumerate(prefixes):
            n = len(prefix)
            ids[row, width - n :] = torch.tensor(prefix)
            if parent is not None:
                mask[row, :root] = parent.mask[0]
            mask[row, root + width - n :] = 1
            pos[row, width - n :] = torch.arange(start, start + n)
        device = self.model.device
        name = cache_argument(self.model)
        kwargs: dict[str, Any] = {}
        if parent is not None:
            kwargs[name] = parent.rows([0] * len(prefixes), device)
        with self._autocast():
            out = self.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        self.forward_tokens += ids.numel()
        self.forward_calls += 1
        return _PrefixCache(getattr(out, name), mask, [start + len(p) for p in prefixes], name)

    def _score_items(
        self,
        prefixes: Sequence[list[int]],
        items: Sequence[_Item],
        owners: Sequence[int] | None = None,
    ) -> list[float]:
        """Sum the response log-probs of each item; item ``i`` follows ``prefixes[owners[i]]``
        (all items follow ``prefixes[0]`` when ``owners`` is None; no prefix when ``prefixes``
        is empty or its only prefix is empty).

        Prefixes run once, ``batch_size`` of them per forward pass; each item batch reuses their
        KV cache. Items are left-padded (the padding sits between prefix and item, masked, with
        explicit position ids), so every response ends at the last position and the LM head runs
        over the response positions only."""
        for item in items:
            if item.n_response < 1 or len(item.tokens) <= item.n_response:
                raise InputError("each scored sequence needs a non-empty response after a context")
        owners = list(owners) if owners is not None else [0] * len(items)
        if not prefixes or not any(prefixes):
            scores = self._score_batches(None, items, {i: 0 for i in range(len(items))})
            return [scores[i] for i in range(len(items))]
        if not all(prefixes):
            raise InputError("either every prefix or none may be empty")
        scores: dict[int, float] = {}
        # What every prefix begins with (e.g. the system message's words before each summary)
        # runs once, and each chunk of prefixes continues its cache.
        root = None
        if len(prefixes) > 1:
            shared = min(common_prefix_length(prefixes), min(len(p) for p in prefixes) - 1)
            if shared >= MIN_ROOT_TOKENS:
                root = self._prefix_cache([list(prefixes[0][:shared])])
                prefixes = [list(p[shared:]) for p in prefixes]
        # Prefixes in chunks, so the cache held at once stays bounded.
        for start in range(0, len(prefixes), self.batch_size):
            stop = min(start + self.batch_size, len(prefixes))
            members = {i: owners[i] - start for i in range(len(items)) if start <= owners[i] < stop}
            if not members:
                continue
            cache = self._prefix_cache(prefixes[start:stop], root)
            scores.update(self._score_batches(cache, items, members))
            del cache  # the next chunk's cache replaces it, not joins it
        return [scores[i] for i in range(len(items))]

    def _score_batches(
        self, cache: _PrefixCache | None, items: Sequence[_Item], members: dict[int, int]
    ) -> dict[int, float]:
        """Summed response log-probs of ``items[i]`` for each ``i`` in ``members``, which maps it
        to the row of ``cache`` (its prefix) it follows (ignored without a cache)."""
        import torch

        p = cache.width if cache is not None else 0
        device = self.model.device
        scores: dict[int, float] = {}
        # Similar lengths together, so batches pad little.
        order = sorted(members, key=lambda i: len(items[i].tokens))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [items[i] for i in idx]
            width = max(len(it.tokens) for it in batch)
            keep = min(max(it.n_response for it in batch) + 1, width)  # logits before each response token
            ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), p + width), dtype=torch.long)
            pos = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), keep - 1), -1, dtype=torch.long)
            for row, (i, it) in enumerate(zip(idx, batch)):
                n = len(it.tokens)
                start_pos = cache.lengths[members[i]] if cache is not None else 0
                ids[row, width - n :] = torch.tensor(it.tokens)
                if cache is not None:
                    mask[row, :p] = cache.mask[members[i]]
                mask[row, p + width - n :] = 1
                pos[row, width - n :] = torch.arange(start_pos, start_pos + n)
                targets[row, keep - 1 - it.n_response :] = torch.tensor(it.tokens[n - it.n_response :])
            kwargs: dict[str, Any] = {}
            if cache is not None:
                kwargs[cache.argument] = cache.rows([members[i] for i in idx], device)
            with torch.inference_mode(), self._autocast():
                logits = self.model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=pos.to(device),
                    use_cache=cache is not None,
                    logits_to_keep=keep,
                    **kwargs,
                ).logits
            del kwargs  # this batch's copy of the cache
            self.forward_tokens += len(batch) * width
            self.forward_calls += 1
            # logits[:, j] predicts the token at position width - keep + j + 1
            sums = _summed_logprobs(logits[:, :-1], targets.to(device))
            del logits
            scores.update(zip(idx, sums.tolist()))
        return scores

    # -- the API ---------------------------------------------------------------------------
    def logprobs(self, contexts: Sequence[list[Message]], responses: Sequence[str]) -> Any:
        """float32 tensor ``[n]``: summed log-probs of ``responses[i]`` after ``contexts[i]``."""
        import torch

        if len(contexts) != len(responses):
            raise InputError(
                f"contexts and responses must have the same length ({len(contexts)} != {len(responses)})"
            )
        items = []
        for context, response in zip(contexts, responses):
            prompt, resp = self.encode_pair(context, response)
            items.append(_Item(prompt + resp, len(resp)))
        with torch.inference_mode():
            return torch.tensor(self._score_items([], items), dtype=torch.float32)

    def logprobs_shared(self, context: list[Message], responses: Sequence[str]) -> Any:
        """Same as :meth:`logprobs` for several responses after one context, which runs once."""
        return self.logprobs_grouped([context], [list(responses)])[0]

    def logprobs_grouped(
        self, contexts: Sequence[list[Message]], responses: Sequence[Sequence[str]]
    ) -> list[Any]:
        """``responses[i]`` scored after ``contexts[i]``; the token prefix *all* contexts share
        (e.g. one summary's system message before several prompts) runs once, and each response
        batch reuses its KV cache. Returns one float32 tensor per context."""
        return self.logprobs_forest([(contexts, responses)])[0]

    def logprobs_forest(
        self, groups: Sequence[tuple[Sequence[list[Message]], Sequence[Sequence[str]]]]
    ) -> list[list[Any]]:
        """Several :meth:`logprobs_grouped` calls in one: each group's shared prefix (e.g. one
        summary each) runs once, the prefixes of several groups batch together, and the
        responses of all groups share batches. Returns, per group, one tensor per context."""
        import torch

        prefixes, items, where = [], [], []
        for g, (contexts, responses) in enumerate(groups):
            if len(contexts) != len(responses):
                raise InputError("contexts and responses must have the same length")
            texts = [self.prompt_text(c) for c in contexts]
            prompts = [self.encode(t) for t in texts]
            # Keep at least the last prompt token out of the prefix: its logit predicts the response.
            shared = (
                max(0, min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1))
                if prompts
                else 0
            )
            prefixes.append(prompts[0][:shared] if prompts else [])
            for c, (context, text, prompt, group) in enumerate(zip(contexts, texts, prompts, responses)):
                for response in group:
                    resp = self.encode(self.completion_text(context, text, response))
                    items.append(_Item(prompt[shared:] + resp, len(resp)))
                    where.append((g, c))
        owners = [g for g, _ in where]
        if any(prefixes) and not all(prefixes):  # mixed: run the short ones without a prefix
            for i, (g, _) in enumerate(where):
                items[i] = _Item(prefixes[g] + items[i].tokens, items[i].n_response)
            prefixes = []
        with torch.inference_mode():
            scores = self._score_items(prefixes, items, owners) if items else []
        out: list[list[list[float]]] = [[[] for _ in contexts] for contexts, _ in groups]
        for (g, c), value in zip(where, scores):
            out[g][c].append(value)
        return [[torch.tensor(v, dtype=torch.float32) for v in per_context] for per_context in out]


class ReferenceCache:
    """``log πref(y|x)`` keyed by ``(model id, prompt, response)``: the reference policy reads the
    prompt only (no summary), so each example's two reference terms are computed once per model and
    reused by every summary, every reward call and the evaluation's base-model margin."""

    def __init__(self, scorer: SequenceScorer, model_id: str):
        self.scorer = scorer
        self.model_id = model_id
        self._values: dict[tuple[str, str, str], float] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._values)

    def get(self, prompts: Sequence[str], responses: Sequence[str]) -> Any:
        """float32 tensor ``[n]`` of ``log πref(responses[i] | prompts[i])``."""
        import torch

        if len(prompts) != len(responses):
            raise InputError("prompts and responses must have the same length")
        keys = [(self.model_id, x, y) for x, y in zip(prompts, responses)]
        todo: dict[str, list[str]] = {}
        for _, x, y in keys:
            if (self.model_id, x, y) in self._values or y in todo.get(x, []):
                continue
            todo.setdefault(x, []).append(y)
        n_new = sum(len(v) for v in todo.values())
        self.misses += n_new
        self.hits += len(keys) - n_new
        if todo:
            # One grouped call for every missing example: the chat template's opening (a default
            # system prompt, for some models) runs once, and all responses batch together.
            groups = self.scorer.logprobs_grouped(
                [prompt_only_messages(x) for x in todo], list(todo.values())
            )
            for (x, ys), values in zip(todo.items(), groups):
                for y, v in zip(ys, values.tolist()):
                    self._values[(self.model_id, x, y)] = v
        return torch.tensor([self._values[k] for k in keys], dtype=torch.float32)

    def pairs(self, pairs: Sequence[PreferencePair]) -> tuple[Any, Any]:
        """(chosen, rejected) reference log-prob tensors for preference pairs."""
        values = self.get(
            [p.prompt for pair in pairs for p in (pair, pair)],
            [y for pair in pairs for y in (pair.chosen, pair.rejected)],
        )
        return values[0::2], values[1::2]


def summary_rewards(
    scorer: SequenceScorer,
    ref: ReferenceCache,
    examples: Sequence[Sequence[PreferencePair]],
    summaries: Sequence[str],
    *,
    beta: float,
    loss_type: LossType = "dpo",
    prompts_for_summary: Sequence[str | None] | None = None,
) -> list[float]:
    """Reward of ``summaries[i]``: the mean over ``examples[i]`` of
    :func:`popi_sdk.objective.popi_reward` with policy log-probs under
    ``summary_messages(pair.prompt, summary)`` and reference log-probs under
    ``prompt_only_messages(pair.prompt)`` (from ``ref``, computed once per example).

    ``prompts_for_summary[i]``, when given and not None, is the prompt summary ``i`` was written
    for (the prompt-dependent variant, paper App. B): only the examples with that prompt count.
    """
    if len(examples) != len(summaries):
        raise InputError(
            f"examples and summaries must have the same length ({len(examples)} != {len(summaries)})"
        )
    if prompts_for_summary is not None and len(prompts_for_summary) != len(summaries):
        raise InputError("prompts_for_summary must give one prompt (or None) per summary")
    chosen_sets = []
    for i, pairs in enumerate(examples):
        pairs = list(pairs)
        if prompts_for_summary is not None and prompts_for_summary[i] is not None:
            pairs = [p for p in pairs if p.prompt == prompts_for_summary[i]]
        if not pairs:
            raise InputError(
                f"summary {i} has no examples to score it on: give each summary at least one "
                "preference pair (with prompts_for_summary, one whose prompt matches)"
            )
        chosen_sets.append(pairs)
    ref.pairs([p for pairs in chosen_sets for p in pairs])  # every missing reference, one call
    rewards = []
    for pairs, (chosen, rejected) in zip(chosen_sets, summary_logprobs(scorer, chosen_sets, summaries)):
        ref_c, ref_r = ref.pairs(pairs)
        r = popi_reward(chosen, rejected, ref_c, ref_r, beta=beta, loss_type=loss_type)
        rewards.append(float(r.mean()))
    return rewards


def summary_logprobs(
    scorer: SequenceScorer, examples: Sequence[Sequence[PreferencePair]], summaries: Sequence[str]
) -> list[tuple[Any, Any]]:
    """Per summary ``i``, the (chosen, rejected) log-prob tensors of ``examples[i]`` under
    ``summary_messages(pair.prompt, summaries[i])``: the context the reward, validation, the
    usefulness score and evaluation all score. One forest: each summary's prefix runs once, and
    the prefixes and continuations of several summaries share batches."""
    import torch

    policy = scorer.logprobs_forest(
        [
            ([summary_messages(p.prompt, summary) for p in pairs], [[p.chosen, p.rejected] for p in pairs])
            for pairs, summary in zip(examples, summaries)
        ]
    )
    out = []
    for per_context in policy:
        stacked = torch.stack(per_context)
        out.append((stacked[:, 0], stacked[:, 1]))
    return out
