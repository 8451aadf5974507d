"""A training process SIGKILLed while it writes a checkpoint resumes from the newest complete one.

The child process trains stage 1 of a tiny random Llama; a hook in it holds the save of
checkpoint-2 after the weights and optimizer are on disk and before ``trainer_state.json`` is
(the moment a spot preemption or an OOM kill most often lands), and this test kills it there with
a real ``SIGKILL``: no Python cleanup, no ``finally``, exactly what a preempted node does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("trl")

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    from transformers import Trainer

    marker = Path(sys.argv[2])
    real = Trainer._save_rng_state

    def held(self, output_dir):
        real(self, output_dir)
        if Path(output_dir).name == "checkpoint-2":
            marker.write_text(output_dir)
            time.sleep(600)  # the parent SIGKILLs this process here, mid-checkpoint

    Trainer._save_rng_state = held

    from popi_sdk.train import common, stage1
    from popi_sdk.train.config import load_config

    stage1.main(load_config(**json.loads(sys.argv[1])))
    """
)


def _user(i: int) -> dict:
    good, bad = ("Lovely, five stars.", "Awful, one star.")
    if i % 2:
        good, bad = bad, good
    pair = {"prompt": "Review a lamp.", "chosen": good, "rejected": bad}
    return {"user_id": f"u{i}", "signals": {"pairs": [pair]}, "examples": [pair]}


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_resumes_from_the_newest_complete_one(
    tiny_dir, tmp_path, caplog
):
    from popi_sdk.train import common, stage1
    from popi_sdk.train.config import load_config

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(_user(i)) + "\n" for i in range(2)))
    run = tmp_path / "run"
    spec = {
        "preset": "cpu-small",
        "data": str(data),
        "out": str(run),
        "overrides": {
            "model": str(tiny_dir), "precision": "fp32", "save_steps": 1, "save_total_limit": 3,
            "lora.enabled": False, "stage1.max_steps": 3, "stage1.batch_size": 2,
            "stage1.num_generations": 2, "summary.max_tokens": 4,
            "stage1.gradient_accumulation_steps": 1, "stage1.warmup_steps": 0, "stage1.lr_scheduler": "constant",
        },
    }
    script, marker, log = tmp_path / "child.py", tmp_path / "saving", tmp_path / "child.log"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, str(script), json.dumps(spec), str(marker)],
                                 stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 240
        while not marker.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                pytest.fail(f"the child never reached checkpoint-2:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL

    checkpoints = run / "checkpoints" / "stage1"
    half = checkpoints / "checkpoint-2"
    assert (half / "model.safetensors").exists() and not (half / "trainer_state.json").exists()
    assert (checkpoints / "checkpoint-1" / "trainer_state.json").exists()

    cfg = load_config(**spec)
    with caplog.at_level(logging.WARNING, logger="popi_sdk.train.common"):
        assert common.last_checkpoint(cfg, "stage1") == str(checkpoints / "checkpoint-1")
        stage1.main(cfg)
    skipped = [r.getMessage() for r in caplog.records if "not resuming from" in r.getMessage()]
    assert skipped and all(str(half) in m and "trainer_state.json" in m for m in skipped), caplog.text
    state = json.loads((checkpoints / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "reward" in r] == [1, 2, 3]
    assert json.loads((run / "stage1" / "popi_stage.json").read_text())["steps"] == 3
