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


# --- signal kinds beyond pairs ---------------------------------------------------------------------

import hashlib  # noqa: E402
import re  # noqa: E402

from popi_sdk.data.synth import MIXED, signal_kinds  # noqa: E402
from popi_sdk.data.synth._signals import _DETAILS  # noqa: E402

# Cue words per pole, written independently of the generators' phrase tables: a signal agrees
# with its persona when every pole it cues is one of the persona's, and it cues at least one.
_REVIEW_CUES = {
    "concise": r"gist|short|shorter|brief|quick|one line|few words|wordy|skim",
    "verbose": r"details?|thorough|everything|full story|longer|expand|last line",
    "positive": r"upbeat|bright side|enthusiastic|cheerful|got right",
    "negative": r"critical|flaws|faults|harsh|harsher|skeptical|complaints|downsides|sugarcoat|rosy",
}
_ROLEPLAY_CUES = {
    "formal": r"polished|professional|professionally|properly",
    "casual": r"friend|laid-back|relaxed|relax|chatty",
    "playful": r"joke|funny|laugh",
    "serious": r"straight|seriously|sober|earnest",
    "detailed": r"thorough|depth|step by step|details",
    "brief": r"short|quick|to the point",
    "encouraging": r"encouragement|cheer|supportive",
    "matter-of-fact": r"pep talk|facts|no-nonsense|plainly|reassurance",
    "list": r"bullet|list|points",
    "prose": r"paragraph|full sentences|letter",
}
# ELIX: who the user says they are (an age, a school year, a job) names exactly one level.
_ELIX_WHO = [
    (r"\b(?:first|second|third) grade\b", "child"), (r"\b(?:fifth|sixth) grade\b|middle school", "preteen"),
    (r"high school", "teenager"), (r"\bcollege\b|\bundergrad\b|\buniversity\b", "young adult"),
    (r"\blab\b|\bphd\b|\bwork as\b|" + "|".join(elix.OCCUPATIONS), "expert"),
]
# ELIX past messages: which way they ask the explanation to move.
_ELIX_MOVE = [(r"babyish|childish|in between", {"teenager"}),
              (r"five|big words?|easier|simpler|easy words|hard to follow", {"child", "preteen"}),
              (r"technical|proper terms|basic|analogies|jargon|dumb", {"young adult", "expert"})]


def _cued(text: str, cues: dict) -> set:
    low = text.lower()
    return {pole for pole, pattern in cues.items() if re.search(rf"\b(?:{pattern})\b", low)}


def _age_level(age: int) -> str:
    return next(level for level, (lo, hi) in elix.AGES.items() if lo <= age <= hi)


def _elix_who(text: str) -> set:
    low = text.lower()
    levels = {level for pattern, level in _ELIX_WHO if re.search(pattern, low)}
    levels |= {_age_level(int(age)) for age in re.findall(r"\bI'm (\d+)\b", text)}
    return levels


def _poles(kind: str, persona: str) -> set:
    attrs = persona_attributes(persona, kind)
    return {v for v in attrs.values() if isinstance(v, str)}


@pytest.fixture(scope="module")
def rich() -> dict:
    every = {"review": "pairs,persona,history,traits", "elix": "pairs,persona,history,traits,demographics",
             "roleplay": "pairs,persona,history,traits"}
    return {kind: synth_users(kind, 60, seed=9, signals=every[kind]) for kind in KINDS}


def test_the_default_writes_the_bytes_it_wrote_before_signal_kinds_existed(tmp_path):
    # sha256 prefixes of files written by popi-synth-v1 before --signals existed.
    before = {
        "review": ("7d6a5c3b33bc2c4d", "3b46af33ce2ec890", "5aad3914aa1592dd"),
        "elix": ("7a7206627faa475a", "5105d89284b694f3", "9d76df017f938ff9"),
        "roleplay": ("c1cdec0abe093396", "9f743ec448566f0c", "cf71e4f4e403d0c2"),
    }
    for kind, hashes in before.items():
        for signals in (None, "pairs", ["pairs"]):
            out = tmp_path / f"{kind}-{signals}"
            extra = {} if signals is None else {"signals": signals}
            write_benchmark(kind, out, 12, seed=11, examples=(2, 3), test_fraction=0.25, **extra)
            got = tuple(hashlib.sha256((out / n).read_bytes()).hexdigest()[:16]
                        for n in ("train.jsonl", "test.jsonl", "meta.json"))
            assert got == hashes, (kind, signals)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_present_exactly_when_asked(kind):
    for asked in signal_kinds(kind):
        rows = synth_users(kind, 10, seed=2, signals=asked)
        for row in rows:
            present = {k for k in signal_kinds(kind) if getattr(row.signals, k)}
            assert present == {asked}, (asked, row.signals)
    assert signal_kinds(kind)[:4] == ("pairs", "persona", "history", "traits")
    assert ("demographics" in signal_kinds(kind)) == (kind == "elix")


@pytest.mark.parametrize("kind", KINDS)
def test_asking_for_more_kinds_keeps_pairs_examples_and_other_kinds(kind):
    plain = synth_users(kind, 8, seed=4)
    no_pairs = synth_users(kind, 8, seed=4, signals="persona")
    both = synth_users(kind, 8, seed=4, signals="pairs,persona,history")
    for a, b, c in zip(plain, no_pairs, both):
        assert a.examples == b.examples == c.examples and a.persona == b.persona
        assert b.signals.pairs == [] and b.examples  # without pairs the labeled examples stay
        assert c.signals.pairs == a.signals.pairs and c.signals.persona == b.signals.persona


@pytest.mark.parametrize("kind", KINDS)
def test_self_descriptions_are_the_users_voice_never_the_persona(rich, kind):
    for row in rich[kind]:
        text = row.signals.persona
        assert text and row.persona not in text
        assert not re.search(r"\b(?:the|this) user\b", text, re.I)
        assert not any(phrase in text for phrase in roleplay.PHRASES.values())


def test_review_and_roleplay_signals_cue_only_the_personas_poles(rich):
    for kind, cues in (("review", _REVIEW_CUES), ("roleplay", _ROLEPLAY_CUES)):
        for row in rich[kind]:
            poles = _poles(kind, row.persona)
            texts = [row.signals.persona] + [h.text for h in row.signals.history]
            for text in texts:
                cued = _cued(text, cues)
                assert cued and cued <= poles, (kind, row.persona, text, cued)
            assert 2 <= len(row.signals.history) <= 4


def test_elix_signals_place_the_user_at_their_level(rich):
    for row in rich["elix"]:
        level = persona_attributes(row.persona)["level"]
        assert _elix_who(row.signals.persona) == {level}, (level, row.signals.persona)
        for item in row.signals.history:
            move = next(levels for pattern, levels in _ELIX_MOVE if re.search(pattern, item.text.lower()))
            assert level in move, (level, item.text)
            assert _elix_who(item.text) <= {level}
        age, *rest = row.signals.demographics.split("; ")
        assert _age_level(int(age.removeprefix("Age: "))) == level
        has_job = any(r.startswith("occupation: ") for r in rest)
        if level == "expert":
            assert has_job
        elif level != "young adult":  # young adults may say they are students
            assert not has_job
        centre = min(elix.EXPERTISE, key=lambda lv: abs(elix.EXPERTISE[lv] - row.signals.traits["expertise"]))
        assert centre == level and set(row.signals.traits) == {"expertise"}


def test_traits_sit_near_the_personas_poles_and_unrated_axes_near_the_middle(rich):
    for kind in ("review", "roleplay"):
        gen = review if kind == "review" else roleplay
        for row in rich[kind]:
            attrs, traits = persona_attributes(row.persona), row.signals.traits
            names = {axis: (spec[0] if kind == "review" else spec) for axis, spec in gen.TRAITS.items()}
            high = {axis: (spec[1] if kind == "review" else roleplay.AXES[axis][0])
                    for axis, spec in gen.TRAITS.items()}
            assert set(traits) <= set(names.values())
            for axis, name in names.items():
                if attrs.get(axis):
                    assert (traits[name] > 0.6) == (attrs[axis] == high[axis]), (row.persona, traits)
                    assert traits[name] > 0.6 or traits[name] < 0.4
                else:
                    assert name not in traits or 0.4 <= traits[name] <= 0.6
            assert all(0 <= v <= 1 for v in traits.values())


def test_self_descriptions_are_partial_and_noisy(rich):
    two = [r for r in rich["review"] if len(_poles("review", r.persona)) == 2]
    covered = Counter(len(_cued(r.signals.persona, _REVIEW_CUES)) for r in two)
    assert covered[1] and covered[2]  # some name only one of their two attributes
    for kind in KINDS:
        noisy = sum(any(d in r.signals.persona for d in _DETAILS) for r in rich[kind])
        assert 0.2 * len(rich[kind]) < noisy < 0.8 * len(rich[kind])
    for detail in _DETAILS:  # an irrelevant detail cues no pole and no level
        assert not _cued(detail, _REVIEW_CUES) and not _cued(detail, _ROLEPLAY_CUES)
        assert not _elix_who(detail)
        assert review.sentiment_score(detail) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_draws_varied_non_empty_subsets(kind):
    rows = synth_users(kind, 80, seed=5, signals=MIXED)
    subsets = Counter(tuple(k for k in signal_kinds(kind) if getattr(r.signals, k)) for r in rows)
    assert all(subsets) and len(subsets) >= 8
    for k in signal_kinds(kind):
        assert 0.25 * len(rows) < sum(k in s for s in subsets.elements()) < 0.75 * len(rows)
    assert all(r.examples for r in rows)
    assert rows == synth_users(kind, 80, seed=5, signals=MIXED)


def test_mixed_and_chosen_kinds_are_seeded_and_recorded_in_meta(tmp_path):
    for signals in (MIXED, "traits,persona"):
        write_benchmark("elix", tmp_path / "a", 20, seed=3, signals=signals)
        write_benchmark("elix", tmp_path / "b", 20, seed=3, signals=signals)
        for name in ("train.jsonl", "test.jsonl", "meta.json"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        meta = json.loads((tmp_path / "a" / "meta.json").read_text())
        assert meta["signals"] == (MIXED if signals == MIXED else ["persona", "traits"])
        for d in ("a", "b"):
            for f in (tmp_path / d).iterdir():
                f.unlink()


def test_bad_signal_kinds_are_clear_errors():
    with pytest.raises(InputError, match="review benchmark has no demographics signal"):
        synth_users("review", 2, signals="pairs,demographics")
    with pytest.raises(InputError, match="unknown signal kind.*'votes'.*choose from"):
        synth_users("elix", 2, signals="pairs,votes")
    with pytest.raises(InputError, match="unknown signal kind"):
        synth_users("elix", 2, signals="")


def test_cli_synth_signals_option(tmp_path):
    result = runner.invoke(app, ["data", "synth", "elix", "--users", "10", "--seed", "2",
                                 "--signals", "persona,demographics", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "signals persona,demographics" in result.output
    rows = read_users(tmp_path / "e" / "train.jsonl") + read_users(tmp_path / "e" / "test.jsonl")
    assert all(r.signals.persona and r.signals.demographics and not r.signals.pairs for r in rows)
    bad = runner.invoke(app, ["data", "synth", "roleplay", "--signals", "demographics",
                              "--out", str(tmp_path / "r")])
    assert bad.exit_code != 0 and "no demographics signal" in str(bad.exception)
    assert not (tmp_path / "r" / "train.jsonl").exists()
