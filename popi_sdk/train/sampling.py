"""Sampling from the policy being trained through the fast decoder, one prefill per prompt.

Both places training samples summaries (the best-of-N warm start, and GRPO's roll-outs in
:class:`~popi_sdk.train.grpo.PopiGRPOTrainer`) sample a *group* of continuations of each prompt: a
user's signals (a few hundred tokens), then a summary of a few dozen. ``transformers``' ``generate``
prefills the prompt once per sample and spends most of a decode step of a small model on CPU
outside the matrix products (docs/benchmarks.md). Here each distinct prompt runs once through
:class:`~popi_sdk.backends.fast_decode.FastDecoder`, and every sample of its group continues from
that prompt's KV cache.

The weights: float32, as the policy holds them, with a LoRA adapter's current low-rank deltas
merged into the decoder's own copy (the model is not touched). A decoder is built per call, from
the weights as they are at that moment, so each GRPO step samples from the policy it updates; the
merge costs a few hundred milliseconds on the embedded model, against tens of seconds of sampling.
4-bit weights, which the SDK uses for the published model at inference, would round a trained
adapter's deltas away; bf16 weights would change the sampled distribution. Float32 keeps it:
greedy tokens equal ``generate``'s (``tests/test_train_sampling.py``), and sampling applies the
same temperature, top-k and top-p as ``generate``'s logits warpers, so only the random stream
differs.

Models the fast decoder does not support (non-Llama architectures, a model on a GPU, DoRA) fall
back to ``generate``, with the same settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from popi_sdk.backends.base import Message

log = logging.getLogger(__name__)

#: Continuations decoded together in the warm start: a decode step costs little more for 32 rows
#: than for 8 (the weights are read once per step), and the KV cache of 32 rows of ~500 tokens is
#: ~0.45 GB on the embedded model.
ROWS_PER_BATCH = 32

# Generation settings the fast decoder does not implement, with the values that mean "off".
_OFF: dict[str, tuple] = {
    "min_p": (None, 0, 0.0), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0, 0.0),
    "eta_cutoff": (None, 0, 0.0), "num_beams": (None, 1), "min_new_tokens": (None, 0),
    "min_length": (None, 0), "suppress_tokens": (None, []), "begin_suppress_tokens": (None, []),
    "bad_words_ids": (None, []), "sequence_bias": (None, {}), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "penalty_alpha": (None,), "top_h": (None,),
    "encoder_repetition_penalty": (None, 1.0), "num_return_sequences": (None, 1),
}


def policy_decoder(model: Any) -> Any:
    """A float32 :class:`~popi_sdk.backends.fast_decode.FastDecoder` of ``model``'s current
    weights (a PEFT model's active LoRA adapter merged into the decoder's copy), or ``None`` when
    the fast decoder does not support the model."""
    from popi_sdk.backends.fast_decode import FastDecoder, unsupported_reason

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    reason = unsupported_reason(inner)
    if reason is not None:
        log.debug("sampling with transformers' generate: the fast decoder does not support %s", reason)
        return None
    return FastDecoder(inner, "float32")


def unsupported_setting(config: Any) -> str | None:
    """The first setting of a ``GenerationConfig`` the fast decoder does not implement, else None."""
    for name, off in _OFF.items():
        value = getattr(config, name, None)
        if value not in off:
            return f"{name}={value!r}"
    return None


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a sample when ``generate`` runs with the model's own generation
    config: its ``eos_token_id``, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def continue_prompts(
    decoder: Any,
    prompts: Sequence[Sequence[int]],
    rows: Sequence[int],
    *,
    pad_id: int,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    keep_stop: bool = False,
) -> list[list[int]]:
    """One continuation of ``prompts[r]`` (token ids) per ``r`` in ``rows``, each prompt prefilled
    once. ``keep_stop`` keeps the end-of-sequence token that ended a row (as TRL's completions
    do); without it a row holds the new tokens only (as a decoded summary)."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    # Float32 even inside a trainer's bf16 autocast: the products must not change what is sampled.
    with torch.autocast("cpu", enabled=False):
        result = decoder.generate(
            ids, mask, rows=list(rows), max_new_tokens=max_new_tokens, eos_ids=eos_ids,
            pad_id=pad_id, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        )
    if not keep_stop:
        return result.tokens
    return [t + [s] if s is not None else t for t, s in zip(result.tokens, result.stops)]


def sample_groups(
    model: Any,
    tokenizer: Any,
    messages: Sequence[list[Message]],
    *,
    n: int,
    max_tokens: int,
    clean: Callable[[str], str],
    temperature: float,
    top_p: float = 1.0,
    rows_per_batch: int = ROWS_PER_BATCH,
    progress: str | None = None,
    fallback: Callable[..., list[str]] | None = None,
) -> list[str]:
    """``n`` cleaned summaries of each of ``messages`` by the policy ``model`` (samples of
    ``messages[i]`` at ``i*n .. i*n+n-1``), sampled as ``generate`` samples them with the
    model's generation config and ``temperature``/``top_p`` (greedy at temperature 0). Through
    the fast decoder with one prefill per prompt; where it does not support the model, through
    ``fallback`` (:func:`popi_sdk.train.validation.write_summaries`) on the repeated messages."""
    from popi_sdk.progress import progress_bar

    if not messages or n <= 0:
        return []
    config = getattr(model, "generation_config", None)
    decoder = policy_decoder(model)
    if decoder is not None and config is not None and unsupported_setting(config):
        log.info("sampling with transformers' generate: the fast decoder does not implement %s",
                 unsupported_setting(config))
        decoder = None
    if decoder is None:
        if fallback is None:
            from popi_sdk.train.validation import write_summaries as fallback
        repeated = [m for m in messages for _ in range(n)]
        return fallback(model, tokenizer, repeated, max_tokens=max_tokens, clean=clean,
                        temperature=temperature, top_p=top_p, progress=progress)
    prompts = [
        tokenizer(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False)["input_ids"]
        for m in messages
    ]
    sampling = {"temperature": temperature, "top_p": top_p if temperature > 0 else 1.0,
                "top_k": (getattr(config, "top_k", None) or 0) if temperature > 0 else 0,
                "repetition_penalty": getattr(config, "repetition_penalty", None) or 1.0,
                "no_repeat_ngram_size": getattr(config, "no_repeat_ngram_size", None) or 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = stop_ids(model, tokenizer)
    # Prompts of similar length together, so a batch pads little.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    per_batch = max(1, rows_per_batch // max(n, 1))
    out: list[str] = [""] * (len(prompts) * n)
    with progress_bar(progress or "", len(out), enabled=progress is not None,
                      unit="summaries") as advance:
        for start in range(0, len(order), per_batch):
            chunk = order[start : start + per_batch]
            tokens = continue_prompts(
                decoder, [prompts[i] for i in chunk], [j for j in range(len(chunk)) for _ in range(n)],
                pad_id=pad, eos_ids=eos, max_new_tokens=max_tokens, **sampling,
            )
            for j, i in enumerate(chunk):
                for k in range(n):
                    text = tokenizer.decode(tokens[j * n + k], skip_special_tokens=True)
                    out[i * n + k] = clean(text)
            advance(len(chunk) * n)
    return out
