"""A GRPO trainer that runs each user's prompt once per group of sampled summaries.

Stage 1 samples ``G`` summaries of the same prompt (a user's signals, a few hundred tokens) and
each summary is short (tens of tokens). TRL's stock ``GRPOTrainer`` (1.16) treats the ``G`` rows as
unrelated sequences, so per optimizer step it

- prefills the same prompt ``G`` times before sampling,
- runs the full prompt + completion through the policy ``G`` times in the loss forward, with
  gradients, so the backward pass and the activations it keeps are ``G`` times the prompt's, and
- on CPU (no Triton) projects *every* position, prompt included, through the 49,152-token LM head
  in tiles of 4,096 positions × 32,768 vocabulary entries, whose temporaries (each tile and
  several float32 copies of it, forward and backward) are what pushed the cpu-small step past
  13 GB resident.

:class:`PopiGRPOTrainer` overrides two hooks and nothing else:

- ``_generate_single_turn``: the distinct prompts of the batch are prefilled once and the ``G``
  completions of each are sampled from its KV cache, through the fast decoder with the policy's
  current float32 weights (:mod:`popi_sdk.train.sampling`; same temperature, top-k and top-p),
  or, where the fast decoder does not support the model or a generation setting, through
  ``generate`` from the repeated cache;
- ``_get_per_token_logps_and_entropies``: the distinct prompts run once (with gradients when the
  caller needs them), their KV cache is repeated for the rows, and the completions run after it
  through TRL's own fused LM head, which now sees the completion positions only.

RoPE attention depends on relative positions only, so the log-probs equal the stock path's up to
float rounding (``tests/test_train_stage1.py`` checks it on a tiny model). Anything the fast paths
do not cover (vLLM, continuous batching, images, tools, MoE auxiliary losses, several processes,
models whose LM head scales or soft-caps its logits) falls back to the stock method.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

logger = logging.getLogger(__name__)


def popi_grpo_trainer_class() -> type:
    """:class:`trl.GRPOTrainer` with the prompt shared across each group (see the module doc)."""
    import torch
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation

    from popi_sdk.scoring import cache_argument

    class PopiGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that runs each distinct prompt once per batch, in sampling and in the loss."""

        def _sharing_supported(self) -> bool:
            if self.use_vllm or self.use_transformers_continuous_batching or self.tools:
                return False
            if self.accelerator.num_processes != 1 or self._is_vlm:
                return False  # a wrapped (DDP/FSDP/ZeRO) model must see one forward per backward
            config = self.accelerator.unwrap_model(self.model).config.get_text_config()
            scaled = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                      "lm_head_multiplier", "logits_scaling")
            return not any(getattr(config, name, None) is not None for name in scaled)

        # -- batching ----------------------------------------------------------------------
        def _prepare_inputs(self, generation_batch):
            # The stock method shuffles the generated batch before splitting it into
            # gradient-accumulation micro-batches, which scatters each group over all of them
            # (and so runs its prompt in each). When every micro-batch of a generation feeds the
            # same optimizer step, their order cannot change the update: split in order instead,
            # so a micro-batch of G rows is one group, its prompt runs once, and the activations
            # kept for the backward pass are one group's.
            one_update = (self.model.training and self.num_iterations == 1
                          and self.args.steps_per_generation == self.args.gradient_accumulation_steps)
            if not (one_update and self._sharing_supported()):
                return super()._prepare_inputs(generation_batch)
            from trl.trainer.utils import split_tensor_dict

            steps = self.args.steps_per_generation
            if self._step % steps == 0 or self._buffered_inputs is None:
                generated = self._generate_and_score_completions(generation_batch)
                self._buffered_inputs = split_tensor_dict(generated, steps)
            return self._buffered_inputs[self._step % steps]

        # -- sampling ----------------------------------------------------------------------
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):
            distinct = list(dict.fromkeys(tuple(p) for p in prompt_ids))
            plain = images is None and not multimodal_fields and self._sharing_supported()
            if plain and min(len(p) for p in distinct) >= 1:
                fast = self._fast_completions(distinct, prompt_ids)
                if fast is not None:
                    return fast, None
            if not plain or len(distinct) == len(prompt_ids) or min(len(p) for p in distinct) < 2:
                return super()._generate_single_turn(
                    prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
            device = self.accelerator.device
            rows = torch.tensor([distinct.index(tuple(p)) for p in prompt_ids], device=device)
            ids, mask = _left_pad(distinct, self._tokenizer.pad_token_id, device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with (
                unwrap_model_for_generation(
                    self.model_wrapped, self.accelerator,
                    gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                    generation_kwargs=self.generation_kwargs,
                    gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                ) as unwrapped,
                torch.no_grad(),
            ):
                name = cache_argument(unwrapped)
                # Everything but the last prompt token: generate() runs that one itself, and its
                # logits give the first sampled token.
                out = unwrapped(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                position_ids=positions[:, :-1], use_cache=True, logits_to_keep=1)
                cache = getattr(out, name)
                del out
                cache.batch_select_indices(rows)
                generated = unwrapped.generate(
                    input_ids=ids[rows], attention_mask=mask[rows], **{name: cache},
                    generation_config=self.generation_config,
                )
            completion_ids = generated[:, ids.size(1):]
            # As the stock method: everything after the first end-of-sequence token is dropped.
            is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=device))
            ends = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.size(1))
            return [c[: int(e) + 1].tolist() for c, e in zip(completion_ids.cpu(), ends.cpu())], None

        def _fast_completions(self, distinct, prompt_ids):
            """The completions (each with the end-of-sequence token that ended it, as the stock
            method returns them) sampled through the fast decoder, or None where it does not
            apply. The decoder is built from the weights as they are now, so each step samples
            from the policy it updates."""
            from popi_sdk.backends.fast_decode import unsupported_reason
            from popi_sdk.train import sampling

            if getattr(self, "_fast_unsupported", False):
                return None
            config = self.generation_config
            model = self.accelerator.unwrap_model(self.model)
            inner = model.get_base_model() if hasattr(model, "get_base_model") else model
            reason = sampling.unsupported_setting(config) or unsupported_reason(inner)
            if reason is not None:  # neither changes during training: said once, then generate
                self._fast_unsupported = True
                logger.info("sampling with transformers' generate: the fast decoder does not "
                            "support %s", reason)
                return None
            decoder = sampling.policy_decoder(model)
            greedy = not config.do_sample
            return sampling.continue_prompts(
                decoder, [list(p) for p in distinct],
                [distinct.index(tuple(p)) for p in prompt_ids],
                pad_id=self._tokenizer.pad_token_id, eos_ids=list(self.eos_token_ids),
                max_new_tokens=config.max_new_tokens,
                temperature=0.0 if greedy else (config.temperature or 1.0),
                top_p=1.0 if greedy or config.top_p is None else config.top_p,
                top_k=0 if greedy else (config.top_k or 0),
                repetition_penalty=config.repetition_penalty or 1.0,
                no_repeat_ngram_size=config.no_repeat_ngram_size or 0,
                keep_stop=True,
            )

        # -- log-probs ---------------------------------------------------------------------
        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask,
                                               logits_to_keep, batch_size=None,
                                               compute_entropy=False, compute_aux_loss=False,
                                               **multimodal):
            width = input_ids.size(1) - logits_to_keep  # the (left-padded) prompt part
            if (compute_aux_loss or any(v is not None for v in multimodal.values())
                    or width < 2 or not self._sharing_supported()):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                    compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss,
                    **multimodal)
            batch_size = batch_size or input_ids.size(0)
            logps, entropies = [], []
            for start in range(0, input_ids.size(0), batch_size):
                lp, ent = self._shared_prompt_logps(
                    model, input_ids[start:start + batch_size],
                    attention_mask[start:start + batch_size], width)
                logps.append(lp)
                entropies.append(ent)
            return (torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None)

        def _shared_prompt_logps(self, model, input_ids, attention_mask, width):
            """Per-token log-probs and entropies of the completion part (columns ``width:``):
            each distinct prompt runs once, its KV cache serves every row that shares it."""
            # Ids and padding mask together: a row is its prompt only with both equal.
            keys = torch.cat([input_ids[:, :width], attention_mask[:, :width]], dim=1)
            _, rows = torch.unique(keys, dim=0, return_inverse=True)
            # One row standing for each distinct prompt (which of its equal rows does not matter).
            first = torch.empty(int(rows.max()) + 1, dtype=torch.long, device=input_ids.device)
            first.scatter_(0, rows, torch.arange(len(rows), device=input_ids.device))
            prompts, prompt_mask = input_ids[first, :width], attention_mask[first, :width]
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            name = cache_argument(self.accelerator.unwrap_model(model))
            from transformers import DynamicCache

            cache = DynamicCache()
            with self.accelerator.autocast():
                # The prompt minus its last token, once per distinct prompt; the LM head runs on
                # one position only (nothing here is scored).
                model(input_ids=prompts[:, :-1], attention_mask=prompt_mask[:, :-1],
                      position_ids=positions[first, : width - 1], use_cache=True,
                      logits_to_keep=1, **{name: cache})
                cache.batch_select_indices(rows)  # differentiable: gradients sum over the group
                tail = input_ids[:, width - 1:]  # last prompt token + completion
                labels = tail.masked_fill(attention_mask[:, width - 1:] == 0, -100)
                labels[:, 0] = -100  # the prompt token is context, not scored
                with compact_lm_head():
                    out = model(input_ids=tail, attention_mask=attention_mask,
                                position_ids=positions[:, width - 1:], labels=labels,
                                fused_lm_head=True, **{name: cache})
            return out.log_probs, out.entropy

    return PopiGRPOTrainer


@contextlib.contextmanager
def compact_lm_head():
    """While active, TRL's fused LM head projects only the positions that have a label, on every
    device, in vocabulary tiles of 8,192 entries.

    TRL 1.16 (``trl.trainer.utils.add_fused_lm_head``) projects only the labelled positions on
    Triton devices, but every position elsewhere, because on compiled backends a varying number of
    positions recompiles each batch. On CPU nothing is compiled, and projecting every position
    means the whole prompt goes through the 49,152-token head in 4,096 × 32,768 tiles whose float32
    temporaries (forward and backward) dominated the peak memory of both stages. The two module
    globals are read at call time; without them (another TRL), this does nothing."""
    import trl.trainer.utils as utils

    saved = {name: getattr(utils, name) for name in ("_use_triton", "_CHUNKED_LOGPROB_CHUNK_SIZE")
             if hasattr(utils, name)}
    if len(saved) < 2:
        yield
        return
    use_triton = saved["_use_triton"]
    utils._use_triton = lambda device: device.type == "cpu" or use_triton(device)
    utils._CHUNKED_LOGPROB_CHUNK_SIZE = 8192
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(utils, name, value)


def _left_pad(seqs: list[tuple[int, ...]], pad_id: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)
