"""Shared fixtures. Nothing here downloads: the hub is forced offline, and the embedded model is
converted once per test session into a temporary POPI_HOME (set POPI_TEST_HOME to reuse one)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_HOME = os.environ.get("POPI_TEST_HOME") or tempfile.mkdtemp(prefix="popi-test-home-")
os.environ["POPI_HOME"] = _HOME
os.environ.pop("POPI_STORE", None)
os.environ.pop("POPI_SUMMARIZER", None)
os.environ.pop("POPI_GENERATOR", None)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted embedded model folder (converted on first use in this session)."""
    from popi_sdk.backends.hf import embedded_checkpoint

    return embedded_checkpoint()


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """The embedded model as a backend, loaded once for the whole session."""
    from popi_sdk.backends import get_backend

    backend = get_backend("hf")
    backend.model  # load now so test timings are honest
    return backend


@pytest.fixture
def store_path(tmp_path) -> Path:
    return tmp_path / "summaries.sqlite"


@pytest.fixture
def demo_users_file() -> Path:
    return REPO / "examples" / "demo_users.jsonl"
