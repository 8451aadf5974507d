import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from popi_sdk.cli import app

runner = CliRunner()


def _popi(*args, env=None):
    """Run the real `popi` entry point (errors go through main(), as for a user)."""
    code = "import sys; from popi_sdk.cli import main; sys.argv=['popi', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


def test_bad_file_is_one_clear_error_without_traceback(tmp_path):
    bad = tmp_path / "users.jsonl"
    bad.write_text('{"user_id": "u1", "signals": {"pairs": []}}\nnot json\n')
    out = _popi("summarize", str(bad), "--out", str(tmp_path / "o.jsonl"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"{bad}:1: field signals: no signals given" in out.stderr
    assert f"{bad}:2: malformed JSON" in out.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_backend_is_one_clear_error(tmp_path):
    out = _popi("generate", "--prompt", "hi", "--backend", "nope:x", "--store", str(tmp_path / "s.sqlite"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "unknown backend 'nope:x'" in out.stderr and "hf:<model>" in out.stderr


def test_backends_lists_hf():
    result = runner.invoke(app, ["backends"])
    assert result.exit_code == 0 and "hf:<model>" in result.stdout


@pytest.mark.model
def test_summarize_generate_forget_round_trip(tmp_path, smollm2, demo_users_file):
    store = str(tmp_path / "s.sqlite")
    out = tmp_path / "summaries.jsonl"
    result = runner.invoke(app, ["summarize", str(demo_users_file), "--out", str(out), "--store", store,
                                 "--summary-tokens", "16", "--summary-words", "12"])
    assert result.exit_code == 0, result.output
    summaries = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["user_id"] for s in summaries] == ["maya", "dr_chen"]
    assert all(s["text"] and s["n_tokens"] > 0 for s in summaries)

    result = runner.invoke(
        app, ["generate", "--user", "maya", "--prompt", "What is a star?", "--max-new-tokens", "8", "--store", store]
    )
    assert result.exit_code == 0 and result.stdout.strip()

    result = runner.invoke(app, ["forget", "maya", "--store", store])
    assert result.exit_code == 0 and "1 summary deleted" in result.stdout
    result = runner.invoke(app, ["generate", "--user", "maya", "--prompt", "x", "--store", store])
    assert result.exit_code != 0 and "no summary is stored for user 'maya'" in str(result.exception)


def test_demo_answers_with_the_trained_generator_only_beside_its_summarizer():
    from popi_sdk.cli.sdk import demo_generator

    assert demo_generator("hf:popi") == demo_generator("HF:smollm2-popi") == "hf:popi-generator"
    for other in ("hf", "hf:popi-generator", "openai:popi", "runs/x/stage1", "hf:runs/x/stage1"):
        assert demo_generator(other) == "hf"


@pytest.mark.model
def test_demo_prints_summaries_token_counts_and_answers(tmp_path, smollm2):
    store = tmp_path / "s.sqlite"
    result = runner.invoke(
        app, ["demo", "--store", str(store), "--max-new-tokens", "12", "--summary-tokens", "24"]
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Preference summaries" in out and "raw signals" in out and "summary" in out
    # The trained summarizer (the default) beside the untrained one.
    assert "untrained" in out and "hf:popi" in out
    # The shipped generator, trained on the shipped summarizer's summaries (POPI-Full).
    assert "Personalized: hf:popi-generator" in out and "Plain: hf," in out
    for user in ("maya", "dr_chen"):
        assert f"personalized for {user}" in out
    assert out.count("plain (no summary)") == 2  # beside each user's personalized answer
    assert "Stored 2 summaries" in out and store.exists()
    assert "Time: loading" in out and "summarizing" in out and "answering" in out and "total" in out
