"""Loaders for the FSPO and AlignX schemas, on small hand-written fixture files."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from popi_sdk.cli import app
from popi_sdk.data import read_users
from popi_sdk.data.alignx import describe_direction, load_alignx
from popi_sdk.data.alignx_dimensions import DIMENSIONS
from popi_sdk.data.fspo import default_persona, load_fspo
from popi_sdk.data.records import read_records
from popi_sdk.errors import DataFileError, InputError

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- FSPO ------------------------------------------------------------------------------------------


def test_fspo_elix_groups_rows_by_scorer_level_into_windows():
    conv = load_fspo(FIXTURES / "fspo_elix.jsonl")
    by_id = {r.user_id: r for r in conv.rows}
    assert sorted(by_id) == ["a-child-in-elementary-school-0000", "an-expert-in-the-field-0000"]
    child = by_id["a-child-in-elementary-school-0000"]
    assert child.persona == "The user is a child in elementary school."
    assert len(child.signals.pairs) == 4 and len(child.examples) == 1
    raw = [r for r in _jsonl(FIXTURES / "fspo_elix.jsonl") if r["scorer_level"].startswith("a child")]
    # label 0 -> response_x preferred; the child always preferred the child-level answer
    for pair, record in zip([*child.signals.pairs, *child.examples], raw):
        assert pair.prompt == record["prompt"]
        assert pair.chosen == (record["response_x"] if record["label"] == 0 else record["response_y"])
        assert pair.chosen == (record["response_x"] if record["level_x"] == "child" else record["response_y"])
    # the child's sixth pair does not fill a second window of 4 + 1
    assert any("1 pair(s)" in note for note in conv.notes)


def test_fspo_review_json_array_and_persona():
    (row,) = load_fspo(FIXTURES / "fspo_review.json").rows
    assert row.persona == "This user prefers positive and concise reviews."
    for pair in [*row.signals.pairs, *row.examples]:
        assert len(pair.chosen) < len(pair.rejected)  # concise side preferred, whatever its slot


def test_fspo_roleplay_variant_uses_score_persona_and_windows_of_eight():
    (row,) = load_fspo(FIXTURES / "fspo_roleplay.jsonl").rows
    raw = _jsonl(FIXTURES / "fspo_roleplay.jsonl")
    assert row.user_id == "17-0000"
    assert row.persona == raw[0]["score_persona"]
    assert len(row.signals.pairs) == 8 and row.examples[0].chosen == raw[8]["yw"]
    assert row.signals.pairs[0].prompt == raw[0]["x"] and row.signals.pairs[0].rejected == raw[0]["yl"]


def test_fspo_window_and_examples_options():
    rows = load_fspo(FIXTURES / "fspo_roleplay.jsonl", window=2, examples=1).rows
    assert len(rows) == 3 and all(len(r.signals.pairs) == 2 for r in rows)
    all_prompts = [p.prompt for r in rows for p in [*r.signals.pairs, *r.examples]]
    assert len(all_prompts) == len(set(all_prompts)) == 9  # windows never share a pair
    rows = load_fspo(FIXTURES / "fspo_elix.jsonl", persona_template="Level: {level}").rows
    assert rows[0].persona.startswith("Level: ")


def test_fspo_reports_every_bad_row_by_file_row_and_field():
    with pytest.raises(DataFileError) as info:
        load_fspo(FIXTURES / "fspo_bad.jsonl")
    msg = str(info.value)
    name = str(FIXTURES / "fspo_bad.jsonl")
    assert f"{name}: row 1: field 'label' is missing" in msg
    assert f"{name}: row 2: field 'label' must be 0" in msg and "got 2" in msg
    assert f"{name}: row 3: field 'response_x' is empty" in msg
    assert f"{name}: row 4: fields 'response_x' and 'response_y' are identical" in msg
    assert f"{name}: row 5: field 'scorer_level' is missing" in msg
    assert len(info.value.problems) == 5


def test_fspo_skip_bad_keeps_the_good_rows(tmp_path):
    good = _jsonl(FIXTURES / "fspo_elix.jsonl")
    bad = _jsonl(FIXTURES / "fspo_bad.jsonl")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    conv = load_fspo(mixed, skip_bad=True)
    assert len(conv.rows) == 2 and len(conv.skipped) == 5
    assert conv.skipped[0].startswith(f"{mixed}: row 12:")


def test_fspo_schema_errors_are_clear(tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(InputError, match="expected the FSPO Review/ELIX schema"):
        load_fspo(other)
    with pytest.raises(DataFileError, match="no user has 9 valid pairs"):
        load_fspo(FIXTURES / "fspo_elix.jsonl", window=8)


def test_default_persona_follows_fspo_wording():
    assert default_persona("teenager") == "The user is teenager."
    assert default_persona("negative and verbose") == "This user prefers negative and verbose reviews."
    assert default_persona("group 7") == "The user belongs to the preference group 'group 7'."
    # other spellings of the same levels become the wording the oracle recognizes
    from popi_sdk.data.synth import infer_kind, persona_attributes

    assert default_persona("concise_positive") == "This user prefers positive and concise reviews."
    assert default_persona("young_adult") == "The user is young adult."
    assert persona_attributes(default_persona("verbose")) == {"sentiment": None, "length": "verbose"}
    assert infer_kind(default_persona("young_adult")) == "elix"


# --- file formats ----------------------------------------------------------------------------------


def test_records_read_jsonl_json_and_parquet_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [r for _, r in read_records(FIXTURES / "fspo_elix.jsonl")]
    as_json = tmp_path / "elix.json"
    as_json.write_text(json.dumps({"data": records}))
    as_parquet = tmp_path / "elix.parquet"
    pq.write_table(pa.Table.from_pylist(records), as_parquet)
    expected = load_fspo(FIXTURES / "fspo_elix.jsonl").rows
    assert load_fspo(as_json).rows == expected
    assert load_fspo(as_parquet).rows == expected


def test_records_report_malformed_json_lines(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": \n\n{"also": broken}\n')
    with pytest.raises(DataFileError) as info:
        read_records(broken)
    assert [p.split(": malformed")[0] for p in info.value.problems] == [
        f"{broken}: line 2", f"{broken}: line 4"]
    with pytest.raises(InputError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")


# --- AlignX ----------------------------------------------------------------------------------------


def test_alignx_maps_every_signal_kind():
    rows = load_alignx(FIXTURES / "alignx.jsonl").rows
    first, demo_only, pairs_only = rows
    raw = _jsonl(FIXTURES / "alignx.jsonl")
    assert first.user_id == "alignx-000001" and pairs_only.user_id == "reddit-user-42"
    assert first.signals.demographics == raw[0]["Demographic Information"]
    assert [h.text for h in first.signals.history] == [u["comment"] for u in raw[0]["User-Generated Content"]]
    assert first.signals.history[0].prompt == "What is the best cat toy?"
    assert [p.chosen for p in first.signals.pairs] == [p["chosen"] for p in raw[0]["Pair-wise Comparative Feedback"]]
    assert first.examples[0].chosen == raw[0]["chosen"] and first.examples[0].rejected == raw[0]["rejected"]
    # traits come from the feedback pairs (dims 16 and 59 agree in both), not from the target
    assert first.signals.traits == {"Concise communication style": 1.0, "Likes pets": 1.0}
    # the target direction (dims 0, 16, 39, 59) is the ground-truth persona, for judges only
    assert first.persona == ("The user's preferences: Young; Concise communication style; "
                             "Strong need for Play (enjoying fun, relaxation, and laughter); Likes pets.")
    assert demo_only.signals.pairs == [] and demo_only.signals.traits == {}
    assert demo_only.persona == "The user's preferences: Conservative investment; Good at saving."
    assert pairs_only.signals.demographics is None  # empty text is no signal
    assert pairs_only.signals.traits == {"Likes cinema": 1.0, "Likes humor": 1.0}


def test_alignx_signal_selection_traits_source_and_neutral_dimensions():
    demo = load_alignx(FIXTURES / "alignx.jsonl", include=["demographics"])
    assert len(demo.rows) == 2  # the third record has no demographics
    assert any("1 record(s)" in note for note in demo.notes)
    assert all(not r.signals.pairs and not r.signals.history for r in demo.rows)
    target = load_alignx(FIXTURES / "alignx.jsonl", include=["traits"], traits_from="target").rows
    assert target[1].signals.traits == {"Aggressive investment": 0.0, "Good at saving": 1.0}
    neutral = load_alignx(FIXTURES / "alignx.jsonl", include=["traits"], keep_neutral=True).rows
    assert len(neutral[0].signals.traits) == 90
    assert neutral[0].signals.traits["Young"] == 0.5
    with pytest.raises(InputError, match="unknown signal kind"):
        load_alignx(FIXTURES / "alignx.jsonl", include=["posts"])


def test_alignx_custom_dimension_names():
    names = [f"dim_{i}" for i in range(90)]
    rows = load_alignx(FIXTURES / "alignx.jsonl", include=["traits"], dimension_names=names).rows
    assert rows[0].signals.traits == {"dim_16": 1.0, "dim_59": 1.0}
    with pytest.raises(DataFileError, match="must be a list of 3 values"):
        load_alignx(FIXTURES / "alignx.jsonl", dimension_names=["a", "b", "c"])


def test_alignx_reports_every_bad_row_by_file_row_and_field():
    with pytest.raises(DataFileError) as info:
        load_alignx(FIXTURES / "alignx_bad.jsonl")
    name = str(FIXTURES / "alignx_bad.jsonl")
    problems = info.value.problems
    assert problems[0].startswith(f"{name}: row 1: field 'Preference Direction': must be a list of 90")
    assert f"{name}: row 2: field 'chosen' is missing" in problems[1]
    assert any("row 2: field 'Pair-wise Comparative Feedback' must be a list" in p for p in problems)
    assert any("row 2: field 'User-Generated Content'[0]: field 'comment' is missing" in p for p in problems)
    assert any(p.startswith(f"{name}: row 3: 'chosen' and 'rejected' are identical") for p in problems)


def test_alignx_benchmark_rows_keep_ground_truth_persona_and_profile():
    # psoups.json: invented text in the schema of AlignX's benchmark/P-Soups files (a JSON list).
    raw = json.loads((FIXTURES / "psoups.json").read_text())
    conversion = load_alignx(FIXTURES / "psoups.json")
    rows = conversion.rows
    assert len(rows) == len(raw) == 8
    for row, record in zip(rows, raw):
        assert row.persona == record["ground_truth_persona"]  # for judges and the oracle method
        assert row.signals.persona == record["profile"]  # the profile is a signal, kept verbatim
        assert [p.model_dump() for p in row.signals.pairs] == record["Pair-wise Comparative Feedback"]
        assert [e.model_dump() for e in row.examples] == [
            {k: record[k] for k in ("prompt", "chosen", "rejected")}]
        assert not row.signals.traits and not row.signals.history and row.signals.demographics is None
    assert "users with each signal kind: pairs 8, profile 8" in conversion.notes[0]
    assert "8 users with a ground-truth persona (8 from 'ground_truth_persona')" in conversion.notes

    no_profile = load_alignx(FIXTURES / "psoups.json", include=["pairs"]).rows
    assert all(r.signals.persona is None and r.persona for r in no_profile)
    profile_only = load_alignx(FIXTURES / "psoups.json", include=["profile"]).rows
    assert all(r.signals.pairs == [] and r.signals.persona for r in profile_only)


def test_alignx_ground_truth_persona_wins_over_the_direction_and_bad_types_are_named(tmp_path):
    record = _jsonl(FIXTURES / "alignx.jsonl")[0]
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps({**record, "ground_truth_persona": "Answer like a pirate."}) + "\n")
    assert load_alignx(both).rows[0].persona == "Answer like a pirate."
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**record, "ground_truth_persona": ["a"], "profile": 3}]))
    with pytest.raises(DataFileError) as info:
        load_alignx(bad)
    assert f"{bad}: row 1: field 'profile' must be text, got int" in info.value.problems
    assert f"{bad}: row 1: field 'ground_truth_persona' must be text, got list" in info.value.problems


def test_describe_direction_uses_alignx_thresholds():
    direction = [0.5] * 90
    direction[0], direction[1], direction[2] = 0.7, 0.3, 0.55
    assert describe_direction(direction) == "Young; Male"
    assert len(DIMENSIONS) == 90


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_convert_fspo_and_alignx(tmp_path):
    out = tmp_path / "elix.jsonl"
    result = runner.invoke(app, ["data", "convert", "fspo", str(FIXTURES / "fspo_elix.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Wrote 2 rows" in result.output
    assert len(read_users(out)) == 2

    out = tmp_path / "alignx.jsonl"
    result = runner.invoke(app, ["data", "convert", "alignx", str(FIXTURES / "alignx.jsonl"), "--out", str(out),
                                 "--signals", "pairs,traits"])
    assert result.exit_code == 0, result.output
    rows = read_users(out)
    assert [r.user_id for r in rows] == ["alignx-000001", "reddit-user-42"]
    assert all(not r.signals.history and r.signals.demographics is None for r in rows)


def test_cli_convert_skip_bad_lists_problems(tmp_path):
    out = tmp_path / "x.jsonl"
    result = runner.invoke(app, ["data", "convert", "fspo", str(FIXTURES / "fspo_bad.jsonl"), "--out", str(out)])
    assert result.exit_code != 0 and isinstance(result.exception, DataFileError)
    assert not out.exists()

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text((FIXTURES / "fspo_elix.jsonl").read_text() + (FIXTURES / "fspo_bad.jsonl").read_text())
    result = runner.invoke(app, ["data", "convert", "fspo", str(mixed), "--out", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "Skipped 5 problem(s)" in result.output and "row 12" in result.output
    assert len(read_users(out)) == 2


def test_cli_split_writes_a_seeded_stratified_development_and_report_half(tmp_path):
    converted = tmp_path / "psoups.jsonl"
    result = runner.invoke(app, ["data", "convert", "alignx", str(FIXTURES / "psoups.json"), "--out", str(converted)])
    assert result.exit_code == 0, result.output
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = runner.invoke(app, ["data", "split", str(converted), "--test-fraction", "0.5",
                                     "--seed", str(seed), "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    assert "Wrote 4 users to" in result.output and "test:    2" in result.output
    train, test = read_users(tmp_path / "a" / "train.jsonl"), read_users(tmp_path / "a" / "test.jsonl")
    assert not {r.user_id for r in train} & {r.user_id for r in test}
    assert sorted(r.user_id for r in train + test) == sorted(r.user_id for r in read_users(converted))
    for side in (train, test):  # both personas on both sides, 2 users each
        assert sorted(Counter(r.persona for r in side).values()) == [2, 2]
    for name in ("train.jsonl", "test.jsonl", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert {r.user_id for r in read_users(tmp_path / "c" / "test.jsonl")} != {r.user_id for r in test}
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["source"] == "psoups.jsonl" and meta["seed"] == 3 and meta["test_fraction"] == 0.5
    assert meta["source_sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert (meta["train_users"], meta["test_users"]) == (4, 4) and len(meta["test_personas"]) == 2


def test_cli_split_refuses_to_overwrite_its_input_and_bad_fractions(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    source = folder / "train.jsonl"
    runner.invoke(app, ["data", "convert", "alignx", str(FIXTURES / "psoups.json"), "--out", str(source)])
    before = source.read_bytes()
    result = runner.invoke(app, ["data", "split", str(source), "--out", str(folder)])
    assert result.exit_code != 0 and "would overwrite the input" in str(result.exception)
    assert source.read_bytes() == before and not (folder / "test.jsonl").exists()
    for fraction in ("0", "1", "1.5"):
        result = runner.invoke(app, ["data", "split", str(source), "--test-fraction", fraction,
                                     "--out", str(tmp_path / "x")])
        assert result.exit_code != 0 and "between 0 and 1" in str(result.exception)
    result = runner.invoke(app, ["data", "split", str(FIXTURES / "alignx_bad.jsonl"), "--out", str(tmp_path / "y")])
    assert result.exit_code != 0 and not (tmp_path / "y").exists()
