"""The synthetic benchmarks: seeded bytes, disjoint users and pairs, pairs that really differ along
the persona's attributes, and the oracle that scores any text against a persona."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from popi_sdk.cli import app
from popi_sdk.data import read_users
from popi_sdk.data.synth import (
    KINDS,
    elix,
    infer_kind,
    persona_attributes,
    persona_score,
    review,
    roleplay,
    split_train_test,
    synth_users,
    write_benchmark,
)
from popi_sdk.data.synth._text import n_words, reading_grade
from popi_sdk.errors import InputError


@pytest.fixture(scope="module")
def users() -> dict:
    return {kind: synth_users(kind, 80, seed=7) for kind in KINDS}


def _all_pairs(rows):
    for row in rows:
        for pair in [*row.signals.pairs, *row.examples]:
            yield row, pair


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes_and_another_seed_differs(tmp_path, kind):
    write_benchmark(kind, tmp_path / "a", 30, seed=3)
    write_benchmark(kind, tmp_path / "b", 30, seed=3)
    write_benchmark(kind, tmp_path / "c", 30, seed=4)
    for name in ("train.jsonl", "test.jsonl", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


def test_same_bytes_across_processes_with_different_hash_seeds(tmp_path):
    import os
    import subprocess
    import sys

    code = "import sys; from popi_sdk.data.synth import write_benchmark; write_benchmark('roleplay', sys.argv[1], 12, 5)"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / hash_seed)], check=True, env=env)
    assert (tmp_path / "1" / "train.jsonl").read_bytes() == (tmp_path / "2" / "train.jsonl").read_bytes()


@pytest.mark.parametrize("kind", KINDS)
def test_user_i_does_not_depend_on_how_many_users_are_generated(kind):
    assert synth_users(kind, 4, seed=1) == synth_users(kind, 9, seed=1)[:4]


@pytest.mark.parametrize("kind", KINDS)
def test_rows_are_canonical_and_examples_are_disjoint_from_signals(users, kind):
    rows = users[kind]
    assert len({r.user_id for r in rows}) == len(rows)
    for row in rows:
        assert row.persona and infer_kind(row.persona) == kind
        # The ground truth is for judges only: nothing of it is in what the summarizer reads.
        assert row.signals.persona is None and not row.signals.traits
        assert len(row.signals.pairs) == (8 if kind == "roleplay" else 4)
        assert 2 <= len(row.examples) <= 4
        signal_prompts = {p.prompt for p in row.signals.pairs}
        example_prompts = {p.prompt for p in row.examples}
        assert not signal_prompts & example_prompts
        assert len(signal_prompts) + len(example_prompts) == len(row.signals.pairs) + len(row.examples)


@pytest.mark.parametrize("kind", KINDS)
def test_the_oracle_prefers_every_chosen_response(users, kind):
    for row, pair in _all_pairs(users[kind]):
        assert persona_score(row.persona, pair.chosen) > persona_score(row.persona, pair.rejected), (
            row.persona, pair.chosen, pair.rejected)


def test_review_pairs_differ_along_the_persona_attributes(users):
    lo_c, hi_c = review.LENGTH_BANDS["concise"]
    lo_v, hi_v = review.LENGTH_BANDS["verbose"]

    def has(text, attr, value):
        if attr == "sentiment":
            s = review.sentiment_score(text)
            return s > 0 if value == "positive" else s < 0
        return lo_c <= n_words(text) <= hi_c if value == "concise" else lo_v <= n_words(text) <= hi_v

    for row, pair in _all_pairs(users["review"]):
        attrs = {k: v for k, v in persona_attributes(row.persona).items() if v}
        assert all(has(pair.chosen, a, v) for a, v in attrs.items()), pair.chosen
        assert not all(has(pair.rejected, a, v) for a, v in attrs.items()), pair.rejected


def test_review_attributes_the_persona_ignores_carry_no_signal():
    rows = [r for r in synth_users("review", 160, seed=2)
            if persona_attributes(r.persona)["length"] is None]
    longer = [n_words(p.chosen) > n_words(p.rejected) for _, p in _all_pairs(rows)]
    shorter = [n_words(p.chosen) < n_words(p.rejected) for _, p in _all_pairs(rows)]
    assert len(longer) > 100
    assert abs(sum(longer) - sum(shorter)) < 0.25 * len(longer)


def test_review_personas_cover_all_eight_levels_and_parse_back():
    personas = {r.persona for r in synth_users("review", 16, seed=0)}
    assert len(personas) == 8
    assert persona_attributes("This user prefers negative and verbose reviews.") == {
        "sentiment": "negative", "length": "verbose"}
    assert persona_attributes("This user prefers concise reviews.", "review") == {
        "sentiment": None, "length": "concise"}


def test_elix_pairs_sit_in_their_levels_reading_grade_bands(users):
    for row, pair in _all_pairs(users["elix"]):
        level = persona_attributes(row.persona)["level"]
        assert elix.grade_gap(level, reading_grade(pair.chosen)) <= elix.BAND
        assert elix.grade_gap(level, reading_grade(pair.rejected)) > elix.BAND


def test_every_elix_topic_reaches_every_level_band():
    import random

    from popi_sdk.data.synth.elix_topics import TOPICS

    rng = random.Random(0)
    for topic in TOPICS:
        for level in elix.LEVELS:
            for _ in range(5):
                text = elix.explain(rng, topic, level)
                assert elix.grade_gap(level, reading_grade(text)) <= elix.BAND, (level, text)
                assert len(text) <= elix.MAX_CHARS


def test_elix_levels_parse_including_fspo_wording():
    assert persona_attributes("The user is a young adult.") == {"level": "young adult", "index": 3}
    assert persona_attributes("The user is preteen.", "elix")["level"] == "preteen"
    assert persona_attributes("The user is a child in elementary school.")["level"] == "child"
    assert {persona_attributes(r.persona)["level"] for r in synth_users("elix", 5)} == set(elix.LEVELS)


def test_roleplay_pairs_differ_along_a_persona_axis(users):
    for row, pair in _all_pairs(users["roleplay"]):
        attrs = persona_attributes(row.persona)
        assert 2 <= len(attrs) <= 3
        fc, fr = roleplay.features(pair.chosen), roleplay.features(pair.rejected)
        sign = {a: 1 if pole == roleplay.AXES[a][0] else -1 for a, pole in attrs.items()}
        assert any(sign[a] * (fc[a] - fr[a]) > 0.3 for a in attrs), (row.persona, pair)
        if attrs.get("length") == "brief":
            assert n_words(pair.chosen) <= roleplay.LENGTH_BANDS["brief"][1]
        if attrs.get("format") == "list":
            assert "\n- " in pair.chosen


def test_every_roleplay_style_can_answer_every_topic():
    import itertools
    import random

    from popi_sdk.data.synth.roleplay_topics import TOPICS

    rng = random.Random(0)
    for poles in itertools.product(*roleplay.AXES.values()):
        style = dict(zip(roleplay.AXES, poles))
        for topic in TOPICS:
            for _ in range(3):
                text = roleplay.respond(rng, rng.sample(topic["tips"], 4), style)
                assert len(text) <= roleplay.MAX_CHARS
                lo, hi = roleplay.LENGTH_BANDS[style["length"]]
                assert lo <= n_words(text) <= hi


def test_roleplay_persona_round_trip():
    for attrs in roleplay.PERSONAS:
        assert persona_attributes(roleplay.persona_text(attrs)) == attrs
    assert len(roleplay.PERSONAS) == 120


@pytest.mark.parametrize("kind", KINDS)
def test_texts_vary_so_no_single_sentence_wins(users, kind):
    chosen = [p.chosen for _, p in _all_pairs(users[kind])]
    counts = Counter(chosen)
    assert len(counts) > 0.9 * len(chosen)
    assert counts.most_common(1)[0][1] <= max(2, 0.02 * len(chosen))
    sentences = Counter(s.strip() for text in chosen for s in text.replace("\n", ". ").split(". ") if s.strip())
    assert sentences.most_common(1)[0][1] < 0.2 * len(chosen)


@pytest.mark.parametrize("kind", KINDS)
def test_responses_stay_short_enough_for_cpu_training(users, kind):
    longest = max(len(t) for _, p in _all_pairs(users[kind]) for t in (p.chosen, p.rejected))
    assert longest <= 240


def test_split_is_disjoint_stratified_and_complete():
    rows = synth_users("review", 40, seed=0)
    train, test = split_train_test(rows, 0.25, seed=0)
    assert len(test) == 10 and len(train) == 30
    assert not {r.user_id for r in train} & {r.user_id for r in test}
    assert {r.user_id for r in train} | {r.user_id for r in test} == {r.user_id for r in rows}
    assert len({r.persona for r in test}) == 8  # every persona is held out
    assert split_train_test(rows, 0.0)[1] == []
    assert len(split_train_test(rows[:2], 0.01)[1]) == 1


def test_oracle_scores_free_text():
    pos, neg = "This user prefers positive reviews.", "This user prefers negative reviews."
    assert persona_score(pos, "I loved it, a wonderful place.") > persona_score(pos, "Terrible and awful.")
    assert persona_score(neg, "The food was not good at all.") > persona_score(neg, "The food was good.")
    concise = "This user prefers concise reviews."
    assert persona_score(concise, "Great.") > persona_score(concise, " ".join(["Great food here."] * 10))
    child, expert = "The user is a child.", "The user is an expert."
    simple = "The sun is hot. It makes us warm!"
    dense = "Thermonuclear fusion in the stellar core liberates electromagnetic radiation isotropically."
    assert persona_score(child, simple) > persona_score(child, dense)
    assert persona_score(expert, dense) > persona_score(expert, simple)
    casual = "The user prefers casual language and a playful tone."
    assert persona_score(casual, "Honestly, you'll love it, haha.") > persona_score(
        casual, "I would recommend that you proceed carefully.")
    attrs = persona_attributes(casual)
    assert persona_score(attrs, "lol", kind="roleplay") == persona_score(casual, "lol")


def test_unknown_personas_and_kinds_are_clear_errors():
    assert infer_kind("Likes hiking and jazz.") is None
    assert infer_kind("The user is a retired professional who loves positive stories.") is None
    assert infer_kind("The user prefers formal language and jokes.") is None
    assert infer_kind("The user is a child in elementary school.") == "elix"
    assert infer_kind("This user prefers negative and concise reviews.") == "review"
    with pytest.raises(InputError, match="oracle judge scores only synthetic personas"):
        persona_attributes("Likes hiking and jazz.")
    with pytest.raises(InputError, match="choose one of review, elix, roleplay"):
        synth_users("poems", 3)
    with pytest.raises(InputError, match="persona_score with parsed attributes needs kind"):
        persona_score({"level": "child"}, "hi")


runner = CliRunner()


def test_cli_synth_writes_train_test_and_meta(tmp_path):
    out = tmp_path / "rv"
    result = runner.invoke(
        app, ["data", "synth", "review", "--users", "20", "--seed", "5", "--out", str(out),
              "--examples", "3", "--test-fraction", "0.25"]
    )
    assert result.exit_code == 0, result.output
    assert "15 train users" in result.output and "5 test users" in result.output
    train, test = read_users(out / "train.jsonl"), read_users(out / "test.jsonl")
    assert len(train) == 15 and len(test) == 5
    assert all(len(r.examples) == 3 for r in train + test)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "review" and meta["seed"] == 5 and meta["pairs_per_user"] == 4


def test_cli_synth_roleplay_pairs_option(tmp_path):
    result = runner.invoke(app, ["data", "synth", "roleplay", "--users", "6", "--pairs", "3",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert all(len(r.signals.pairs) == 3 for r in read_users(tmp_path / "train.jsonl"))


def test_cli_synth_rejects_a_bad_examples_range(tmp_path):
    result = runner.invoke(app, ["data", "synth", "elix", "--examples", "4-2", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert "--examples" in str(result.exception)
