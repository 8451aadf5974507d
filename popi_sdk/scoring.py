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
  common prefix once and reuse its KV cache.
- **A reference cache**: ``log πref(y|x)`` depends only on the prompt and the response, never on
  the summary, so :class:`ReferenceCache` computes it once per example and model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from popi_sdk.errors import InputError
from popi_sdk.objective import LossType, popi_reward
from popi_sdk.signals import PreferencePair
from popi_sdk.templates import Message, prompt_only_messages, summary_messages


@dataclass
class _Item:
    """One sequence to score: ``tokens`` follow the shared prefix; the last ``n_response`` of
    them are the response whose log-probs are summed."""

    tokens: list[int]
    n_response: int


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
        bf16: run the forward passes under bfloat16 autocast (faster on recent CPUs and GPUs;
            log-probs then differ from float32 by roughly 1e-2 per token).

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

    @classmethod
    def from_backend(cls, backend: Any, **kwargs: Any) -> "SequenceScorer":
        """A scorer over a loaded :class:`~popi_sdk.backends.hf.HFBackend`'s model."""
        return cls(backend.model, backend.tokenizer, **kwargs)

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

    def _prefix_cache(self, prefix: list[int]) -> Any:
        """Run ``prefix`` once (batch of one) and return its KV cache."""
        import torch

        ids = torch.tensor([prefix], device=self.model.device)
        with self._autocast():
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self.forward_tokens += len(prefix)
        self.forward_calls += 1
        return out.past_key_values

    def _score_items(self, prefix: list[int], items: Sequence[_Item]) -> list[float]:
        """Sum the response log-probs of each item, every item following ``prefix``.

        The prefix runs once; items are batched with left padding between the prefix and the item
        (masked, with explicit position ids), so every response ends at the last position."""
        import torch

        for item in items:
            if item.n_response < 1 or len(item.tokens) <= item.n_response:
                raise InputError("each scored sequence needs a non-empty response after a context")
        cache = self._prefix_cache(prefix) if prefix else None
        p = len(prefix)
        device = self.model.device
        out = [0.0] * len(items)
        # Similar lengths together, so batches pad little.
        order = sorted(range(len(items)), key=lambda i: len(items[i].tokens))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [items[i] for i in idx]
            width = max(len(it.tokens) for it in batch)
            keep = max(it.n_response for it in batch) + 1  # logits before each response token
            keep = min(keep, width)
            ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), p + width), dtype=torch.long)
            pos = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), keep - 1), -1, dtype=torch.long)
            for row, it in enumerate(batch):
                n = len(it.tokens)
                ids[row, width - n :] = torch.tensor(it.tokens)
                mask[row, :p] = 1
                mask[row, p + width - n :] = 1
                pos[row, width - n :] = torch.arange(p, p + n)
                targets[row, keep - 1 - it.n_response :] = torch.tensor(it.tokens[n - it.n_response :])
            kwargs: dict[str, Any] = {}
            if cache is not None:
                kwargs["past_key_values"] = copy.deepcopy(cache)
                kwargs["past_key_values"].batch_repeat_interleave(len(batch))
            with torch.inference_mode(), self._autocast():
                logits = self.model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=pos.to(device),
                    use_cache=cache is not None,
                    logits_to_keep=keep,
                    **kwargs,
                ).logits
            self.forward_tokens += len(batch) * width
            self.forward_calls += 1
            # logits[:, j] predicts the token at position width - keep + j + 1
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = targets.to(device)
            picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            # where(), not a product: logits at padded positions may be NaN (fully masked rows)
            sums = torch.where(targets >= 0, picked, torch.zeros_like(picked)).sum(-1)
            for row, i in enumerate(idx):
                out[i] = float(sums[row])
        return out

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
        import torch

        if len(contexts) != len(responses):
            raise InputError("contexts and responses must have the same length")
        prompts = [self.encode(self.prompt_text(c)) for c in contexts]
        # Keep at least the last prompt token out of the prefix: its logit predicts the response.
        shared = max(0, min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1))
        prefix = prompts[0][:shared]
        items, owners = [], []
        for g, (context, prompt, group) in enumerate(zip(contexts, prompts, responses)):
            text = self.prompt_text(context)
            for response in group:
                resp = self.encode(self.completion_text(context, text, response))
                items.append(_Item(prompt[shared:] + resp, len(resp)))
                owners.append(g)
        with torch.inference_mode():
            scores = self._score_items(prefix, items) if items else []
        out: list[list[float]] = [[] for _ in contexts]
        for g, s in zip(owners, scores):
            out[g].append(s)
        return [torch.tensor(s, dtype=torch.float32) for s in out]


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


def policy_pairs(
    scorer: SequenceScorer, pairs: Sequence[PreferencePair], summary: str
) -> tuple[Any, Any]:
    """(chosen, rejected) policy log-prob tensors of ``pairs`` under one summary: the summary's
    system prefix runs once, every example's chosen and rejected reuse it."""
    import torch

    if not pairs:
        empty = torch.zeros(0)
        return empty, empty
    groups = scorer.logprobs_grouped(
        [summary_messages(pair.prompt, summary) for pair in pairs],
        [[pair.chosen, pair.rejected] for pair in pairs],
    )
    stacked = torch.stack(groups)
    return stacked[:, 0], stacked[:, 1]


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
    rewards = []
    for i, (pairs, summary) in enumerate(zip(examples, summaries)):
        pairs = list(pairs)
        if prompts_for_summary is not None and prompts_for_summary[i] is not None:
            pairs = [p for p in pairs if p.prompt == prompts_for_summary[i]]
        if not pairs:
            raise InputError(
                f"summary {i} has no examples to score it on: give each summary at least one "
                "preference pair (with prompts_for_summary, one whose prompt matches)"
            )
        ref_c, ref_r = ref.pairs(pairs)
        pol_c, pol_r = policy_pairs(scorer, pairs, summary)
        r = popi_reward(pol_c, pol_r, ref_c, ref_r, beta=beta, loss_type=loss_type)
        rewards.append(float(r.mean()))
    return rewards
