"""Randomly initialized Llama checkpoints with a real tokenizer: a tiny one for tests, and
Llama-3.2-1B / 3B shapes for measuring step throughput without downloading weights."""

from __future__ import annotations

import os
from pathlib import Path

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads
    "tiny": (32, 64, 2, 4, 2),
    "llama-3.2-1b": (2048, 8192, 16, 32, 8),
    "llama-3.2-3b": (3072, 8192, 28, 24, 8),
}


def random_llama(
    dest: str | os.PathLike, tokenizer_dir: str | os.PathLike, *, shape: str = "tiny", seed: int = 0
) -> Path:
    """Save a random ``LlamaForCausalLM`` of ``shape`` with the tokenizer of ``tokenizer_dir`` as a
    real checkpoint folder (TRL reloads KL references by path, so a folder is needed)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    hidden, inter, layers, heads, kv = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    dest = Path(dest)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest
