"""What a new user sees the first time: the SDK in an app writes nothing to stderr while it
converts, merges and loads models (the CLI shows popi's own bars; an app asks for the libraries'
with ``quiet_libraries(verbose=True)``), and ``popi demo`` says what it is doing before the
one-time conversion starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_USE = """
from popi_sdk import Personalizer
p = Personalizer(summarizer={summarizer!r}, store=":memory:")
print(repr(p.generate("Hi", summary="The user likes tea.", max_new_tokens=2).text))
"""


def run_first_use(home: str, summarizer: str, verbose: bool = False) -> subprocess.CompletedProcess:
    code = FIRST_USE.format(summarizer=summarizer)
    if verbose:
        code = "from popi_sdk.progress import quiet_libraries; quiet_libraries(verbose=True)\n" + code
    env = {**os.environ, "POPI_HOME": home, "PYTHONPATH": REPO}
    for var in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.model
def test_loading_the_embedded_model_prints_nothing(smollm2_dir):
    done = run_first_use(os.environ["POPI_HOME"], "hf")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # was "Loading weights: 100%|...| 272/272"
    asked = run_first_use(os.environ["POPI_HOME"], "hf", verbose=True)
    assert "Loading weights" in asked.stderr  # an app that asks sees the libraries' bars


@pytest.mark.slow
def test_first_use_in_a_fresh_home_converts_merges_and_loads_silently(tmp_path):
    """The default summarizer in an empty POPI_HOME: the GGUF conversion, the adapter merge and
    the loads all happen here, and none of them writes to stderr."""
    done = run_first_use(str(tmp_path / "home"), "hf:popi")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # was "Converting and de-quantizing GGUF tensors..." and more
    assert (tmp_path / "home" / "models").is_dir()


def test_the_demo_speaks_before_the_first_run_converts_the_model(tmp_path):
    """The first line comes before any model work: when it arrives, the fresh POPI_HOME holds no
    converted model yet (the first run was silent for 18.6 s before)."""
    import time

    home = tmp_path / "home"
    env = {**os.environ, "POPI_HOME": str(home), "PYTHONPATH": REPO}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "popi_sdk.cli", "demo", "--store",
                             str(tmp_path / "s.sqlite")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline()
        elapsed = time.perf_counter() - started
        converted = list(home.glob("models/*/model.safetensors"))
    finally:
        proc.kill()
        proc.wait()
    assert first.startswith("popi demo: 2 users ask"), first
    assert converted == [], f"the first line came after the conversion ({elapsed:.1f} s)"
