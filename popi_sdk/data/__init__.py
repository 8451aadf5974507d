"""Data: the canonical JSON Lines format, loaders for public datasets, synthetic benchmarks."""

from popi_sdk.data.alignx import load_alignx
from popi_sdk.data.fspo import load_fspo
from popi_sdk.data.jsonl import read_jsonl_models, read_users, write_jsonl, write_users
from popi_sdk.data.synth import persona_score, split_train_test, synth_users

__all__ = [
    "load_alignx",
    "load_fspo",
    "persona_score",
    "read_jsonl_models",
    "read_users",
    "split_train_test",
    "synth_users",
    "write_jsonl",
    "write_users",
]
