"""A summarizer is used exactly as it was trained: stage 1 saves its SummarySpec next to the
weights, and Personalizer, `popi eval`, stage 2 and `popi summarize` write summaries with it from
the checkpoint alone."""

from __future__ import annotations

import json

import pytest

from popi_sdk.summary_spec import SPEC_FILE, SummarySpec

# A spec unlike the defaults in every field that shapes a summary written for use. (Sampling, not
# greedy: greedily, the tiny random model repeats a newline, which cleans to no summary at all.)
TRAINED = {"max_words": 17, "max_tokens": 12, "temperature": 1.0, "train_temperature": 0.9}


def test_json_round_trip_and_missing_file(tmp_path):
    spec = SummarySpec(max_words=17, max_tokens=5, prompt_dependent=True, temperature=0.3)
    assert SummarySpec.from_json(spec.to_json()) == spec
    spec.save(tmp_path)
    assert SummarySpec.from_checkpoint(tmp_path) == spec
    empty = tmp_path / "plain-checkpoint"
    empty.mkdir()
    assert SummarySpec.from_checkpoint(empty) == SummarySpec()  # no file: the defaults
    assert SummarySpec.from_checkpoint(empty, default=spec) == spec
    assert SummarySpec.from_checkpoint(None) == SummarySpec()


def test_a_bad_spec_file_names_the_file_and_the_field(tmp_path):
    from popi_sdk.errors import ConfigError

    (tmp_path / SPEC_FILE).write_text(json.dumps({"max_words": 2, "colour": "red"}))
    with pytest.raises(ConfigError) as e:
        SummarySpec.from_checkpoint(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / SPEC_FILE) in msg and "max_words" in msg and "colour" in msg


def test_the_cache_key_follows_every_field_that_shapes_a_summary():
    base = SummarySpec()
    keys = {
        base.cache_key(),
        base.replace(max_words=30).cache_key(),
        base.replace(max_tokens=30).cache_key(),
        base.replace(temperature=0.5).cache_key(),
        base.replace(prompt_dependent=True).cache_key(),
        base.replace(prompt_dependent=True).cache_key(prompt="Why?"),
    }
    assert len(keys) == 6
    # Stage-1 sampling does not change a summary written for use.
    assert base.replace(train_temperature=1.1).cache_key() == base.cache_key()


def test_personalizer_rejects_bad_lengths_at_construction():
    from popi_sdk import Personalizer
    from popi_sdk.errors import InputError

    with pytest.raises(InputError, match=r"summary_tokens must be a whole number from 4 to 4096, got 0"):
        Personalizer(summary_tokens=0)
    with pytest.raises(InputError, match=r"summary_words must be a whole number from 5 to 1000, got -5"):
        Personalizer(summary_words=-5)
    with pytest.raises(InputError, match="must be a SummarySpec"):
        Personalizer(summary={"max_words": 10})


def test_prompt_dependent_summaries_are_asked_and_cached_per_prompt():
    from popi_sdk import Personalizer
    from popi_sdk.backends import Backend
    from popi_sdk.errors import InputError

    class Echo(Backend):
        name = "echo"

        def __init__(self):
            self.asked = []

        def generate(self, messages, options):
            self.asked.append(messages[-1]["content"])
            return "Summary: The user wants it brief. The user wants it brief."

    echo = Echo()
    p = Personalizer(summarizer=echo, store=":memory:", summary=SummarySpec(prompt_dependent=True))
    user = {"user_id": "u", "persona": "I like brevity."}
    with pytest.raises(InputError, match="pass the upcoming prompt"):
        p.summarize(user)
    first = p.summarize(user, prompt="Plan a trip.")
    assert first.text == "The user wants it brief."  # cleaned by the spec
    assert echo.asked[-1].endswith("Upcoming question: Plan a trip.")
    many = p.summarize_many([user, user], prompts=["Plan a trip.", "Cook dinner."], progress=False)
    assert many[0] == first and len(echo.asked) == 2  # the first prompt came from the store
    assert echo.asked[-1].endswith("Upcoming question: Cook dinner.")
    assert many[1].signals_hash != first.signals_hash
    with pytest.raises(InputError, match="one prompt per user"):
        p.summarize_many([user], prompts=["a", "b"])


# -- from a trained checkpoint ---------------------------------------------------------------
@pytest.fixture(scope="module")
def users():
    from popi_sdk.data.synth import synth_users

    return synth_users("review", 4, seed=3, pairs=1, examples=(2, 2))


@pytest.fixture(scope="module")
def trained(tiny_dir, users, tmp_path_factory):
    """RUN/stage1 of a two-step stage 1 trained with a non-default summary spec."""
    pytest.importorskip("trl")
    from popi_sdk.data.jsonl import write_jsonl
    from popi_sdk.train import stage1
    from popi_sdk.train.config import load_config

    root = tmp_path_factory.mktemp("spec-run")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", users)
    cfg = load_config(
        preset="cpu-small",
        overrides={
            "model": str(tiny_dir), "precision": "fp32", "lora.enabled": False, "save_steps": 1,
            "stage1.max_steps": 2, "stage1.batch_size": 2, "stage1.num_generations": 2,
            "stage1.gradient_accumulation_steps": 1,
            "stage1.kl_weight": 0, **{f"summary.{k}": v for k, v in TRAINED.items()},
        },
        data=data, out=root / "run",
    )
    stage1.main(cfg)
    return root, cfg


class Recorder:
    """Records what every local model is asked to write (the real model still answers)."""

    def __init__(self, monkeypatch):
        from popi_sdk.backends.hf import HFBackend

        self.calls: list[tuple[str | None, list, object]] = []
        original = HFBackend.generate_batch
        recorder = self

        def generate_batch(self, batch, options, **hooks):  # hooks: done= (per-row progress), streamer=
            recorder.calls.extend((self.checkpoint, list(m), options) for m in batch)
            return original(self, batch, options, **hooks)

        monkeypatch.setattr(HFBackend, "generate_batch", generate_batch)

    def summarizer_calls(self, checkpoint) -> list[tuple[list, object]]:
        return [(m, o) for c, m, o in self.calls if c == str(checkpoint) and m[0]["role"] == "system"
                and "at most" in m[-1]["content"]]


def _assert_written_with_the_trained_spec(calls, n: int) -> None:
    assert len(calls) == n, calls
    for messages, options in calls:
        assert "at most 17 words" in messages[-1]["content"]
        assert options.max_new_tokens == 12 and options.temperature == 1.0


def test_stage1_saves_its_spec_and_personalizer_reads_it(trained, users, monkeypatch):
    from popi_sdk import Personalizer

    root, cfg = trained
    stage1_dir = root / "run" / "stage1"
    assert SummarySpec.from_checkpoint(stage1_dir) == cfg.summary
    assert cfg.summary != SummarySpec() and cfg.summary.max_words == 17

    recorder = Recorder(monkeypatch)
    p = Personalizer(summarizer=str(stage1_dir), store=":memory:")
    assert p.summary_spec == cfg.summary
    summary = p.summarize(users[0])
    _assert_written_with_the_trained_spec(recorder.summarizer_calls(stage1_dir), 1)
    assert summary.signals_hash == users[0].user_signals().signals_hash(settings=cfg.summary.cache_key())

    # An explicit override wins for that field only, and is part of the cache key.
    longer = Personalizer(summarizer=str(stage1_dir), store=p.store, summary_words=30)
    assert longer.summary_spec == cfg.summary.replace(max_words=30)
    assert longer.cached(users[0]) is None and longer.cache_hash(users[0]) != summary.signals_hash


def test_popi_eval_and_popi_summarize_use_the_trained_spec(trained, users, tiny_dir, monkeypatch):
    from typer.testing import CliRunner

    from popi_sdk.cli import app
    from popi_sdk.data.jsonl import write_jsonl

    root, cfg = trained
    stage1_dir = root / "run" / "stage1"
    data = root / "test.jsonl"
    write_jsonl(data, users[:2])
    recorder = Recorder(monkeypatch)
    out = root / "eval"
    result = CliRunner().invoke(app, [
        "eval", "--data", str(data), "--methods", "base,popi", "--judge", "oracle",
        "--base", str(tiny_dir), "--summarizer", str(stage1_dir), "--out", str(out),
        "--max-new-tokens", "2", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    _assert_written_with_the_trained_spec(recorder.summarizer_calls(stage1_dir), 2)
    results = json.loads((out / "results.json").read_text())
    assert results["summaries"]["trained"]["spec"] == cfg.summary.model_dump()
    assert results["config"]["summary_spec"] == cfg.summary.model_dump()

    recorder.calls.clear()
    summaries = root / "summaries.jsonl"
    result = CliRunner().invoke(app, [
        "summarize", str(data), "--out", str(summaries), "--summarizer", str(stage1_dir),
        "--store", str(root / "cli.sqlite"),
    ])
    assert result.exit_code == 0, result.output
    _assert_written_with_the_trained_spec(recorder.summarizer_calls(stage1_dir), 2)
    expected = cfg.summary.cache_key()
    for line, user in zip(summaries.read_text().splitlines(), users):
        assert json.loads(line)["signals_hash"] == user.user_signals().signals_hash(settings=expected)


def test_stage2_writes_its_summaries_with_the_stage1_spec(trained, users, monkeypatch):
    """Stage 2 run from a config whose summary section is the defaults still summarizes as the
    stage-1 checkpoint was trained."""
    from popi_sdk.store import open_store
    from popi_sdk.train import stage2
    from popi_sdk.train.config import load_config

    root, first = trained
    stage1_dir = root / "run" / "stage1"
    cfg = load_config(overrides={
        "model": first.model, "precision": "fp32", "lora.enabled": False, "save_steps": 1,
        "stage2.max_steps": 1, "stage2.batch_size": 2, "stage2.warmup_steps": 0,
    }, data=first.data, out=first.out)
    assert cfg.summary == SummarySpec() != first.summary
    recorder = Recorder(monkeypatch)
    stage2.main(cfg)
    _assert_written_with_the_trained_spec(recorder.summarizer_calls(stage1_dir), len(users))
    store = open_store(str(root / "run" / "summaries.sqlite"))
    for user in users:
        key = user.user_signals().signals_hash(settings=first.summary.cache_key())
        assert store.get(user.user_id, f"hf:{stage1_dir}", key) is not None
