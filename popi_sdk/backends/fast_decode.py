"""A lean decode loop for Llama-architecture models on CPU (SmolLM2, Llama, and their kin).

``transformers``' ``generate`` spends most of a small model's decode step outside the matrix
products: logits processors and stopping criteria, the cache growing by concatenation, mask and
position bookkeeping, and several dozen small ops per layer. On the embedded SmolLM2-135M that
overhead is larger than the weights' own read time (see ``docs/benchmarks.md``). This module runs
the same model with the weights it already holds, through a forward pass of about fifteen torch ops
per layer: fused q/k/v and gate/up projections, ``torch.nn.functional.rms_norm``, rotary tables
taken once from the model's own rotary module, a key/value cache allocated once per call, and
``scaled_dot_product_attention``.

Weights for the projections (the LM head stays dense):

- ``"float32"``: the model's own weights; greedy tokens match ``generate``'s.
- ``"bfloat16"``: 16-bit copies; the matrix products take bf16 inputs.
- ``"int4"``: 4-bit weights in groups of 32 along the input dimension, each group with its own
  scale and offset, multiplied by torch's packed int4 CPU kernel with bf16 inputs (the scheme of
  ``torchao``'s int4 weight-only quantization). The embedded model was published as a Q4_1 GGUF,
  which is exactly this grid, so for it the 4-bit weights equal the float32 ones bit for bit (the
  :attr:`FastDecoder.weight_error` is 0); what changes is the bf16 rounding of the activations
  entering each product.

Everything else (embeddings, norms, attention, the residual stream) stays float32.

A model with PEFT LoRA layers (a policy being trained) decodes with each layer's weight as its
forward applies it: the base weight plus the active adapters' low-rank deltas, merged into the
decoder's own copy (:func:`effective_weight`), so the model itself is left as it is and a decoder
built after an optimizer step samples from the updated policy.

``generate(..., rows=...)`` runs each distinct prompt once and continues each of ``rows`` (indices
into the prompts) from its prompt's KV cache: a group of samples of one prompt costs one prefill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Weights = Literal["float32", "bfloat16", "int4"]
INT4_GROUP = 32
#: Candidates the 4-bit LM head shortlists for the exact greedy pick.
SHORTLIST = 32


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` cannot use the fast decoder (``None`` when it can)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return f"model type {getattr(cfg, 'model_type', None)!r} (only 'llama' is supported)"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "projection biases"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if str(next(model.parameters()).device) != "cpu":
        return "a model that is not on the CPU"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return "an unexpected module layout"
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):  # a PEFT adapter layer: only plain LoRA on a linear layer
            if not hasattr(getattr(module, "base_layer", None), "weight") or not hasattr(
                    module, "get_delta_weight") or type(module.base_layer).__name__ != "Linear":
                return f"an adapter on {name} that is not LoRA on a linear layer"
            if any(getattr(module, "use_dora", {}).values()) or any(
                    getattr(module, "lora_bias", {}).values()):
                return f"a DoRA or LoRA-bias adapter on {name}"
    return None


def effective_weight(module: Any) -> Any:
    """``module``'s weight as its forward applies it: a PEFT LoRA layer's base weight plus the
    delta (``B @ A * scaling``) of each active adapter, unless merged in already or switched off;
    a plain layer's own weight. Detached: the decoder only reads it."""
    import torch

    base = getattr(module, "base_layer", None)
    if base is None or not hasattr(module, "lora_A"):
        return module.weight.detach()
    weight = base.weight.detach()
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return weight
    with torch.no_grad():
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight


def on_int4_grid(model: Any) -> bool:
    """Whether ``model``'s projection weights lie exactly on the 4-bit grid (groups of 32, a scale
    and an offset each), as the embedded model's do: it was published as Q4_1. Checked on the
    first and last layers. A fine-tuned model with an adapter merged in is off the grid, and
    rounding it to 4 bits would round the fine-tuning away (measured in docs/benchmarks.md)."""
    blocks = model.model.layers
    for block in (blocks[0], blocks[-1]):
        for module in (block.self_attn.q_proj, block.self_attn.o_proj, block.mlp.down_proj):
            weight = module.weight
            if weight.shape[1] % INT4_GROUP or _Int4.grid_error(weight) > 0:
                return False
    return True


def int4_available() -> bool:
    import torch

    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch, "_convert_weight_to_int4pack_for_cpu"
    )


class _Dense:
    def __init__(self, weight: Any, dtype: Any):
        self.weight = weight.detach().to(dtype).contiguous()
        self.dtype = dtype
        self.error = 0.0

    def __call__(self, x: Any, keep: bool = False) -> Any:
        """``x @ weight.T``; the result in float32 unless ``keep`` (then in the weight's dtype,
        for a caller that feeds it on to another product or adds it to the float32 stream)."""
        import torch.nn.functional as F

        y = F.linear(x if x.dtype == self.dtype else x.to(self.dtype), self.weight)
        return y if keep else y.float()


class _Int4:
    """Group-wise asymmetric 4-bit weights: ``w = (q - 8) * scale + zero`` per 32 inputs."""

    def __init__(self, weight: Any, group: int = INT4_GROUP):
        import torch

        w = weight.detach().float()
        n, k = w.shape
        q, scale, low, self.error = self._quantize(w, group)
        self.packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).view(n, k), 1)
        zero = low + 8 * scale
        self.scales = torch.stack([scale.t(), zero.t()], -1).contiguous().to(torch.bfloat16)
        self.group = group

    @staticmethod
    def _quantize(w: Any, group: int) -> tuple[Any, Any, Any, float]:
        """4-bit codes, scales and offsets per group of ``w``, and the largest absolute change."""
        n, k = w.shape
        grouped = w.view(n, k // group, group)
        low, high = grouped.amin(-1), grouped.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = ((grouped - low[..., None]) / scale[..., None]).round().clamp(0, 15)
        error = float(((q * scale[..., None] + low[..., None]).view(n, k) - w).abs().max())
        return q, scale, low, error

    @classmethod
    def grid_error(cls, weight: Any, group: int = INT4_GROUP) -> float:
        """Largest absolute change 4-bit rounding would make to ``weight``."""
        return cls._quantize(weight.detach().float(), group)[3]

    def __call__(self, x: Any, keep: bool = False) -> Any:
        """``x @ w.T`` with bf16 inputs; float32 out unless ``keep`` (bf16 out, as for _Dense)."""
        import torch

        shape = x.shape
        y = torch._weight_int4pack_mm_for_cpu(
            x.reshape(-1, shape[-1]).to(torch.bfloat16), self.packed, self.group, self.scales
        ).reshape(*shape[:-1], -1)
        return y if keep else y.float()


def _linear(weight: Any, weights: Weights) -> Any:
    import torch

    if weights == "int4" and weight.shape[1] % INT4_GROUP == 0:
        return _Int4(weight)
    return _Dense(weight, torch.bfloat16 if weights != "float32" else torch.float32)


@dataclass
class _Layer:
    ln1: Any
    qkv: Any
    o: Any
    ln2: Any
    gate_up: Any
    down: Any
    #: The same four products with bf16 weights for the prompt pass of the 4-bit decoder
    #: (``None``: use the ones above). A prompt of T tokens is T rows per product: compute-bound,
    #: where the CPU's bf16 matrix units are several times faster than the 4-bit kernel (which
    #: wins only when one row per step makes the product a weight read).
    prompt: tuple | None = None


@dataclass
class DecodeResult:
    """New tokens per row (without the end-of-sequence token) and where the time went."""

    tokens: list[list[int]]
    prompt_tokens: int
    first_token_s: float
    total_s: float
    steps: int = 0
    per_row_done: list[int] = field(default_factory=list)
    #: The end-of-sequence token that ended each row (``None``: it reached ``max_new_tokens``).
    stops: list[int | None] = field(default_factory=list)


class FastDecoder:
    """Greedy or sampled decoding of a Llama-architecture ``model`` with its own KV cache."""

    def __init__(self, model: Any, weights: Weights = "float32"):
        import torch

        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the fast decoder does not support {reason}")
        if weights == "int4" and not int4_available():
            raise ValueError("this torch build has no packed int4 CPU kernel")
        cfg = model.config
        self.weights = weights
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.eps = cfg.rms_norm_eps
        self.rotary = model.model.rotary_emb
        self.max_positions = getattr(cfg, "max_position_embeddings", 8192)
        self.embed = model.model.embed_tokens.weight.detach()
        self.final_norm = model.model.norm.weight.detach()
        # The LM head stays float32: its weights have no 4-bit grid to fall on (the embedded
        # model's are 8-bit), and greedy decoding turns on the argmax over its 49k logits. With
        # int4 weights a 4-bit copy of it only shortlists candidates (see _greedy).
        self.lm_weight = effective_weight(model.lm_head).float().contiguous()
        self.lm_head = _Dense(self.lm_weight, torch.float32)
        self.lm_shortlist = _Int4(self.lm_weight) if weights == "int4" else None
        self.layers = []
        for block in model.model.layers:
            att, mlp = block.self_attn, block.mlp
            w = effective_weight
            qkv = torch.cat([w(att.q_proj), w(att.k_proj), w(att.v_proj)])
            gate_up = torch.cat([w(mlp.gate_proj), w(mlp.up_proj)])
            o_weight, down_weight = w(att.o_proj), w(mlp.down_proj)
            prompt = None
            if weights == "int4":
                prompt = tuple(_Dense(w, torch.bfloat16)
                               for w in (qkv, o_weight, gate_up, down_weight))
            self.layers.append(
                _Layer(
                    ln1=block.input_layernorm.weight.detach(),
                    qkv=_linear(qkv, weights),
                    o=_linear(o_weight, weights),
                    ln2=block.post_attention_layernorm.weight.detach(),
                    gate_up=_linear(gate_up, weights),
                    down=_linear(down_weight, weights),
                    prompt=prompt,
                )
            )
        #: Largest absolute change of any projection weight (0 when the weights are exact).
        self.weight_error = max(
            max(layer.qkv.error, layer.o.error, layer.gate_up.error, layer.down.error)
            for layer in self.layers
        )
        self._rope: tuple[Any, Any] | None = None

    def weight_bytes(self) -> int:
        """Bytes of weights one greedy decode step reads (projections and LM head; the shortlist's
        exact rows are negligible)."""
        def size(linear: Any) -> int:
            if isinstance(linear, _Int4):
                return linear.packed.numel() * linear.packed.element_size() + linear.scales.numel() * 2
            return linear.weight.numel() * linear.weight.element_size()

        head = self.lm_shortlist if self.lm_shortlist is not None else self.lm_head
        return size(head) + sum(
            size(layer.qkv) + size(layer.o) + size(layer.gate_up) + size(layer.down)
            for layer in self.layers
        )

    # -- pieces ----------------------------------------------------------------------------
    def _rope_table(self, length: int) -> tuple[Any, Any]:
        """cos/sin for positions ``0..length-1``, from the model's rotary module (so any rope
        variant it implements comes out right); sin has its first half negated, so that rotating
        is a ``roll`` (exact: only signs move)."""
        import torch

        if self._rope is None or self._rope[0].shape[0] < length:
            size = min(max(length, 1024), max(length, self.max_positions))
            pos = torch.arange(size)[None]
            probe = self.embed[:1][None].float()
            cos, sin = self.rotary(probe, pos)
            half = sin.shape[-1] // 2
            sign = torch.cat([-torch.ones(half), torch.ones(sin.shape[-1] - half)])
            self._rope = (cos[0].float(), sin[0].float() * sign)
        return self._rope

    def _forward(self, ids: Any, positions: Any, cache: list, start: int, mask: Any) -> Any:
        """Run ``ids`` [B, T] at cache slots ``start..start+T``; last position's hidden state."""
        import torch
        import torch.nn.functional as F

        b, t = ids.shape
        h_, kv, hd = self.n_heads, self.n_kv, self.head_dim
        cos_t, sin_t = self._rope
        cos = cos_t[positions][:, None]  # [B, 1, T, hd]
        sin = sin_t[positions][:, None]  # with rotate_half's sign folded in (see _rope_table)
        half = hd // 2
        x = F.embedding(ids, self.embed)
        end = start + t
        causal = mask is None and t > 1
        for layer, (kc, vc) in zip(self.layers, cache):
            qkv_p, o_p, gate_up_p, down_p = (
                layer.prompt if t > 1 and layer.prompt is not None
                else (layer.qkv, layer.o, layer.gate_up, layer.down)
            )
            y = F.rms_norm(x, (self.hidden,), layer.ln1, self.eps)
            qkv = qkv_p(y).view(b, t, h_ + 2 * kv, hd).transpose(1, 2)
            qk, v = qkv[:, : h_ + kv], qkv[:, h_ + kv :]
            # rotate_half(qk) * sin == roll(qk, half) * (sin with its first half negated)
            qk = qk * cos + qk.roll(half, -1) * sin
            kc[:, :, start:end] = qk[:, h_:]
            vc[:, :, start:end] = v
            a = F.scaled_dot_product_attention(
                qk[:, :h_], kc[:, :, :end], vc[:, :, :end],
                attn_mask=mask, is_causal=causal, enable_gqa=kv != h_,
            )
            # Reduced-precision products hand bf16 on (gate/up -> silu -> down) and into the
            # float32 residual sum, which promotes: two casts fewer per layer.
            x = x + o_p(a.transpose(1, 2).reshape(b, t, h_ * hd), keep=True)
            y = F.rms_norm(x, (self.hidden,), layer.ln2, self.eps)
            gate, up = gate_up_p(y, keep=True).chunk(2, dim=-1)
            x = x + down_p(F.silu(gate) * up, keep=True)
        return F.rms_norm(x[:, -1], (self.hidden,), self.final_norm, self.eps)

    def logits(self, hidden: Any) -> Any:
        return self.lm_head(hidden)

    def _greedy(self, hidden: Any, seen: Any, penalty: float, banned: Any = None) -> Any:
        """The argmax of the float32 logits, computed for a shortlist only: the
        :data:`SHORTLIST` best tokens by the 4-bit LM head (a quarter of its read time), plus
        every token a repetition penalty lowers (``banned`` tokens are never picked). The 4-bit
        logits are off by far less than the gap between the best token and the shortlist's last,
        so the pick is the float32 one."""
        import torch

        approx = self.lm_shortlist(hidden)
        if banned is not None:
            approx = approx.masked_fill(banned, float("-inf"))
        candidates = approx.topk(SHORTLIST, dim=-1).indices
        if seen is not None:
            candidates = torch.cat([candidates, seen], 1)
        exact = torch.einsum("bd,bkd->bk", hidden, self.lm_weight[candidates])
        if seen is not None:  # every entry of a seen token is lowered, shortlisted ones included
            lowered = torch.ones_like(candidates, dtype=torch.bool)
            lowered[:, :SHORTLIST] = (candidates[:, :SHORTLIST, None] == seen[:, None, :]).any(-1)
            exact = torch.where(lowered, torch.where(exact > 0, exact / penalty, exact * penalty), exact)
        if banned is not None:
            exact = exact.masked_fill(banned.gather(1, candidates), float("-inf"))
        return candidates.gather(1, exact.argmax(-1, keepdim=True)).flatten()

    # -- decoding --------------------------------------------------------------------------
    def generate(
        self,
        input_ids: Any,
        attention_mask: Any,
        *,
        max_new_tokens: int,
        eos_ids: Sequence[int],
        pad_id: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        generator: Any = None,
        on_row_done: Callable[[int], object] | None = None,
        streamer: Any = None,
        rows: Any = None,
    ) -> DecodeResult:
        """Decode up to ``max_new_tokens`` after each left-padded row of ``input_ids``.
        ``streamer`` (one row only) receives the tokens as ``transformers``' ``generate`` hands
        them to a streamer: ``put(prompt ids)``, then ``put`` per new token, then ``end()``.

        ``rows`` (a sequence of indices into ``input_ids``' rows): each prompt is run once, and
        one continuation is decoded per entry of ``rows``, from its prompt's KV cache, each
        sampled on its own (the result has one row per entry). Without it, one per prompt."""
        import torch

        t0 = time.perf_counter()
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.long)
            if streamer is not None and len(rows) != 1:
                raise ValueError("a streamer takes one row at a time")
        b, t = input_ids.shape
        total = t + max_new_tokens
        if total > self.max_positions:
            raise ValueError(
                f"prompt ({t} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"{self.max_positions} positions"
            )
        self._rope_table(total)
        attn = attention_mask.bool()
        padded = not bool(attn.all())
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = [
            (torch.zeros(b, self.n_kv, total, self.head_dim), torch.zeros(b, self.n_kv, total, self.head_dim))
            for _ in self.layers
        ]
        keys = torch.ones(b, total, dtype=torch.bool)
        keys[:, :t] = attn
        mask = None
        if padded:  # causal, padding keys hidden; a pad query sees itself so no row is all -inf
            causal = torch.ones(t, t, dtype=torch.bool).tril()
            mask = (causal & attn[:, None, :]) | torch.eye(t, dtype=torch.bool)
            mask = mask[:, None]
        eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        seen = input_ids.clone() if repetition_penalty != 1.0 else None
        ngrams = _NgramBan(no_repeat_ngram_size, input_ids.tolist()) if no_repeat_ngram_size else None
        if streamer is not None:
            if b != 1:
                raise ValueError("a streamer takes one row at a time")
            streamer.put(input_ids.cpu())
        with torch.inference_mode():
            hidden = self._forward(input_ids, positions, cache, 0, mask)
            if rows is not None:  # the prompts ran once; from here on, one row per continuation
                cache = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]
                hidden, positions, keys = hidden[rows], positions[rows], keys[rows]
                seen = seen[rows] if seen is not None else None
                if ngrams is not None:
                    ngrams = _NgramBan(no_repeat_ngram_size, input_ids[rows].tolist())
                b = len(rows)
            next_pos = positions[:, -1:] + 1
            out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long)
            done = torch.zeros(b, dtype=torch.bool)
            lengths = [max_new_tokens] * b
            stops: list[int | None] = [None] * b
            first = 0.0
            steps = 0
            # The rows still decoded (``hidden``, ``cache``, ``next_pos``, ``keys``, ``seen`` and
            # ``ngrams`` hold these rows only): once a quarter of them have ended, they are dropped,
            # so finished samples stop costing a row of every product and of the LM head.
            live = torch.arange(b)
            for step in range(max_new_tokens):
                banned = ngrams.mask(self.lm_weight.shape[0]) if ngrams is not None else None
                if temperature <= 0 and self.lm_shortlist is not None:
                    picked = self._greedy(hidden, seen, repetition_penalty, banned)
                else:
                    logits = self.logits(hidden)
                    if seen is not None:
                        logits = _penalize(logits, seen, repetition_penalty)
                    if banned is not None:
                        logits = logits.masked_fill(banned, float("-inf"))
                    picked = _pick(logits, temperature, top_p, top_k, generator)
                token = torch.full((b,), pad_id, dtype=torch.long)
                token[live] = picked
                token = torch.where(done, torch.full_like(token, pad_id), token)
                out[:, step] = token
                if streamer is not None:
                    streamer.put(token.clone())
                steps += 1
                if step == 0:
                    first = time.perf_counter() - t0
                ended = torch.isin(token, eos) & ~done
                if bool(ended.any()):
                    for row in ended.nonzero().flatten().tolist():
                        lengths[row] = step
                        stops[row] = int(token[row])
                    done |= ended
                    if on_row_done is not None:
                        on_row_done(int(ended.sum()))
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                token = token[live]
                if seen is not None:
                    seen = torch.cat([seen, token[:, None]], 1)
                if ngrams is not None:
                    ngrams.append(token.tolist())
                finished = done[live]
                if 4 * int(finished.sum()) >= len(live):
                    keep = (~finished).nonzero().flatten()
                    live, token, hidden = live[keep], token[keep], hidden[keep]
                    cache = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in cache]
                    next_pos, keys = next_pos[keep], keys[keep]
                    seen = seen[keep] if seen is not None else None
                    if ngrams is not None:
                        ngrams.select(keep.tolist())
                slot = t + step
                step_mask = keys[:, None, None, : slot + 1] if padded else None
                hidden = self._forward(token[:, None], next_pos, cache, slot, step_mask)
                next_pos = next_pos + 1
        if streamer is not None:
            streamer.end()
        if on_row_done is not None and not bool(done.all()):
            on_row_done(int((~done).sum()))
        tokens = [out[row, : lengths[row]].tolist() for row in range(b)]
        return DecodeResult(
            tokens=tokens,
            prompt_tokens=int(attention_mask.sum()),
            first_token_s=first,
            total_s=time.perf_counter() - t0,
            steps=steps,
            stops=stops,
        )


class _NgramBan:
    """transformers' ``no_repeat_ngram_size``: a token that would complete an n-gram already in
    the row (prompt, padding and answer so far) is banned."""

    def __init__(self, n: int, rows: list[list[int]]):
        self.n = n
        self.rows = [list(r) for r in rows]
        self.seen: list[dict[tuple, set]] = [{} for _ in rows]
        for row, table in zip(self.rows, self.seen):
            for j in range(len(row) - n + 1):
                table.setdefault(tuple(row[j : j + n - 1]), set()).add(row[j + n - 1])

    def append(self, tokens: list[int]) -> None:
        for row, table, token in zip(self.rows, self.seen, tokens):
            row.append(token)
            if len(row) >= self.n:
                table.setdefault(tuple(row[len(row) - self.n : -1]), set()).add(token)

    def select(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order)."""
        self.rows = [self.rows[i] for i in rows]
        self.seen = [self.seen[i] for i in rows]

    def mask(self, vocab: int) -> Any:
        import torch

        mask = torch.zeros(len(self.rows), vocab, dtype=torch.bool)
        for i, (row, table) in enumerate(zip(self.rows, self.seen)):
            if len(row) + 1 >= self.n:
                banned = table.get(tuple(row[len(row) - self.n + 1 :]))
                if banned:
                    mask[i, list(banned)] = True
        return mask


def _penalize(logits: Any, seen: Any, penalty: float) -> Any:
    """transformers' repetition penalty: seen tokens' logits divided (positive) or multiplied
    (negative) by ``penalty``."""
    import torch

    picked = logits.gather(1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def _pick(logits: Any, temperature: float, top_p: float, top_k: int, generator: Any) -> Any:
    """Greedy at temperature 0; else sampling as transformers does it: temperature, then the
    ``top_k`` most likely tokens (0: all), then the smallest set holding ``top_p`` of the mass."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).flatten()
