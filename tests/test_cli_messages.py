"""What a user reads: the CLI's messages, quiet output, progress, help layout, fail-fast names,
and the example scripts' one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from popi_sdk.cli import app
from popi_sdk.errors import ModelNotFoundError, UnknownBackendError
from popi_sdk.signals import Summary
from popi_sdk.store import SQLiteStore

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _popi(*args, env=None, cwd=None):
    """The real ``popi`` entry point in a fresh process (errors go through main(), as for a user)."""
    code = "import sys; from popi_sdk.cli import main; sys.argv=['popi', *sys.argv[1:]]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def _put(store: Path, user_id: str, n: int) -> None:
    s = SQLiteStore(store)
    for i in range(n):
        s.put(Summary(user_id=user_id, text=f"summary {i}", summarizer="hf", signals_hash=f"h{i}", n_tokens=2))


@pytest.mark.parametrize("n, said", [(1, "1 summary deleted"), (2, "2 summaries deleted"), (0, "0 summaries deleted")])
def test_forget_counts_in_words(tmp_path, n, said):
    store = tmp_path / "s.sqlite"
    _put(store, "maya", n)
    result = runner.invoke(app, ["forget", "maya", "--store", str(store)])
    assert result.exit_code == 0
    assert f"Forgot maya: {said}." in result.stdout


def test_missing_file_hint_only_explains_relative_paths(tmp_path):
    absolute = tmp_path / "nope.jsonl"
    out = _popi("summarize", str(absolute), "--out", str(tmp_path / "o.jsonl"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{absolute}: no such file. Check the path." in out.stderr
    assert "relative to" not in out.stderr

    out = _popi("summarize", "nope.jsonl", "--out", "o.jsonl", cwd=tmp_path)
    assert f"nope.jsonl: no such file. Check the path (it is relative to {tmp_path})." in out.stderr


def test_top_level_help_fits_80_columns_without_broken_lines():
    out = subprocess.run(
        [sys.executable, "-m", "popi_sdk.cli", "--help"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "80", "TERM": "dumb"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.strip() == "Learned LLM personalization for any model." for line in lines)
    start = next(i for i, line in enumerate(lines) if "Commands" in line)
    panel = [line.strip("│ ") for line in lines[start + 1 :] if line.startswith("│")]
    names = {"demo", "summarize", "generate", "forget", "backends", "eval", "serve", "data", "train",
             "launch", "summary"}
    # every line of the commands panel is one whole command: none continues on a second line
    assert {line.split()[0] for line in panel} == names and len(panel) == len(names)
    assert all(len(line) <= 80 for line in lines)


def test_generate_without_a_stored_summary_says_what_to_run(tmp_path):
    store = tmp_path / "s.sqlite"
    out = _popi("generate", "--user", "maya", "--prompt", "hi", "--store", str(store))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "no summary is stored for user 'maya'" in out.stderr
    assert f"popi summarize USERS.jsonl --out summaries.jsonl --store {store}" in out.stderr
    assert "--summary TEXT" in out.stderr
    assert "summarize(signals)" not in out.stderr  # the SDK's wording stays in the SDK


def test_generate_options_that_do_not_combine(tmp_path):
    result = runner.invoke(app, ["generate", "--prompt", "hi", "--summary", "x", "--users", "u.jsonl",
                                 "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 2 and "--summary gives the summary itself" in result.output
    result = runner.invoke(app, ["generate", "--prompt", "hi", "--users", "u.jsonl"])
    assert result.exit_code == 2 and "--users needs --user" in result.output
    # It silently answered with --summary and ignored the user.
    result = runner.invoke(app, ["generate", "--prompt", "hi", "--user", "maya", "--summary", "x",
                                 "--store", str(tmp_path / "s.sqlite")], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "--user maya would be ignored" in result.output


def test_generate_help_shows_the_default_backend():
    result = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    line = next(l for l in result.output.splitlines() if "--backend" in l)
    assert "default hf, the embedded model" in line


def test_summary_score_without_stored_pairs_names_its_data_option(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.put(Summary(user_id="maya", text="Maya is six.", summarizer="user", source="user",
                      signals_hash="", n_tokens=4))
    result = runner.invoke(app, ["summary", "score", "maya", "--store", str(tmp_path / "s.sqlite")],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "--data USERS.jsonl" in result.output and "examples=[...]" not in result.output


@pytest.mark.model
def test_summary_edit_stores_without_loading_the_model(smollm2_dir, tmp_path, monkeypatch):
    """Counting the new summary's tokens needs the tokenizer only (it took 7 s and 427 MB to load
    the model for one sentence)."""
    from popi_sdk import Personalizer
    from popi_sdk import backends

    # An empty backend cache for this test only: the session's loaded model stays cached for
    # the tests after it (they count calls on that object).
    monkeypatch.setattr(backends, "_CACHE", {})
    p = Personalizer(summarizer="hf", store=tmp_path / "s.sqlite")
    text = "Maya is six; use toy analogies."
    edited = p.edit_summary("maya", text)
    assert p.summarizer._model is None  # the weights were never loaded
    assert edited.n_tokens == len(p.summarizer.tokenizer(text, add_special_tokens=False)["input_ids"])
    result = runner.invoke(app, ["summary", "edit", "maya", "--text", "Maya likes trains.",
                                 "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 0 and "Saved version 2" in result.output


def test_unknown_summarizer_fails_when_the_personalizer_is_built():
    from popi_sdk import Personalizer

    with pytest.raises(UnknownBackendError) as e:
        Personalizer(summarizer="gemini:pro", store=":memory:")
    assert "unknown backend 'gemini:pro'" in str(e.value)
    for known in ("hf:<model>", "openai:<model>", "anthropic:<model>"):
        assert known in str(e.value)
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        Personalizer(generator="hf:./no/such/checkpoint", store=":memory:")


def test_unknown_summarizer_on_the_command_line_fails_before_any_work(tmp_path):
    users = tmp_path / "u.jsonl"
    users.write_text('{"user_id": "u1", "signals": {"persona": "I like short answers."}}\n')
    out = _popi("summarize", str(users), "--out", str(tmp_path / "o.jsonl"), "--summarizer", "gemini:pro")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "unknown backend 'gemini:pro'" in out.stderr and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("script, variable", [("personalize_gpt4o", "OPENAI_API_KEY"),
                                              ("personalize_claude", "ANTHROPIC_API_KEY")])
def test_examples_say_which_key_is_missing_in_one_line(tmp_path, script, variable):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{script}.py"), "--store", str(tmp_path / "s.sqlite")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"set the {variable}" in lines[0]


# -- with the bundled model ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.model
def test_first_use_conversion_shows_popis_bar_not_transformers_tqdm(smollm2_dir, tmp_path):
    """Converting the embedded GGUF goes through a bare tqdm in transformers that its own switch
    does not silence; quiet, the user sees popi's per-tensor bar instead."""
    code = ("import sys; from popi_sdk.progress import quiet_libraries; quiet_libraries(); "
            "from popi_sdk.backends.hf import embedded_checkpoint; print(embedded_checkpoint(sys.argv[1]))")
    env = {k: v for k, v in os.environ.items() if k not in ("POPI_HOME", "COLUMNS")}  # 80 columns
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (Path(run.stdout.strip()) / "model.safetensors").exists()
    assert "de-quantizing" not in run.stderr
    assert "Converting the model (once)" in run.stderr
    assert "272/272 tensors" in run.stderr


@pytest.mark.model
def test_quiet_by_default_and_library_logs_with_verbose(smollm2_dir, tmp_path):
    store = str(tmp_path / "s.sqlite")
    args = ["generate", "--summary", "The user likes short answers.", "--prompt", "Hi",
            "--max-new-tokens", "2", "--store", store]
    quiet_vars = ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS")
    env = {k: v for k, v in os.environ.items() if k not in quiet_vars}
    quiet = _popi(*args, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip()
    assert quiet.stderr == ""  # no "Loading weights" bar, no library warning

    loud = _popi("--verbose", *args, env=env)
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr
    assert loud.stdout == quiet.stdout


@pytest.mark.model
def test_generate_streams_the_same_answer_and_takes_a_summary(smollm2, tmp_path):
    args = ["generate", "--summary", "The user is a five-year-old child; use very simple words.",
            "--prompt", "What is a star?",
            "--max-new-tokens", "12", "--store", str(tmp_path / "s.sqlite")]
    streamed = runner.invoke(app, args)
    whole = runner.invoke(app, [*args, "--no-stream"])
    assert streamed.exit_code == 0 and whole.exit_code == 0, (streamed.output, whole.output)
    assert streamed.stdout.strip() and streamed.stdout.strip() == whole.stdout.strip()
    plain = runner.invoke(app, ["generate", "--prompt", "What is a star?", "--max-new-tokens", "12",
                                "--no-stream", "--store", str(tmp_path / "s.sqlite")])
    assert plain.stdout.strip() != whole.stdout.strip()  # the summary changed the answer


@pytest.mark.model
def test_summarize_length_options_and_generate_from_a_users_file(smollm2, smollm2_dir, tmp_path,
                                                                  demo_users_file):
    store = tmp_path / "s.sqlite"
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["summarize", str(demo_users_file), "--out", str(out), "--store", str(store),
                                 "--summary-tokens", "10", "--summary-words", "8"])
    assert result.exit_code == 0, result.output
    assert "Wrote 2 summaries" in result.stdout
    kept = SQLiteStore(store).latest("maya")
    assert 0 < kept.n_tokens <= 10

    # --users summarizes the user with the default settings, through the store (stocked here so
    # the test does not spend a minute on a 96-token summary); --summarizer must match
    from popi_sdk import Personalizer
    from popi_sdk.data import read_users

    maya = read_users(demo_users_file)[0]
    SQLiteStore(store).put(Summary(user_id="maya", text="The user is a child.", summarizer="hf",
                                   signals_hash=Personalizer(store=":memory:").cache_hash(maya), n_tokens=5))
    result = runner.invoke(app, ["generate", "--user", "maya", "--users", str(demo_users_file),
                                 "--summarizer", "hf", "--prompt", "Hi", "--max-new-tokens", "2",
                                 "--store", str(store), "--no-stream"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["generate", "--user", "nobody", "--users", str(demo_users_file),
                                 "--prompt", "Hi", "--store", str(store)])
    assert result.exit_code != 0 and "no user 'nobody' in this file" in str(result.exception)
    result = runner.invoke(app, ["generate", "--user", "maya", "--summarizer", f"hf:{smollm2_dir}",
                                 "--prompt", "Hi", "--store", str(store)])
    assert result.exit_code != 0
    assert f"was written by hf, not hf:{smollm2_dir}" in str(result.exception)
