"""Data: the canonical JSON Lines format, loaders for public datasets, synthetic benchmarks."""

from popi_sdk.data.jsonl import read_jsonl_models, read_users, write_users

__all__ = ["read_jsonl_models", "read_users", "write_users"]
