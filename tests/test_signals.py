import pytest
from pydantic import ValidationError

from popi_sdk import PreferencePair, UserSignals
from popi_sdk.errors import InputError
from popi_sdk.personalizer import as_user_signals
from popi_sdk.signals import UserRow

PAIR = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Greetings, esteemed interlocutor."}


def test_empty_signals_are_rejected_with_a_fix():
    with pytest.raises(ValidationError, match="no signals given: provide at least one of pairs"):
        UserSignals(user_id="u", pairs=[])


def test_a_one_megabyte_signal_is_rejected_naming_the_limit():
    huge = "x" * (1 << 20)
    with pytest.raises(InputError) as info:
        as_user_signals({"user_id": "u", "pairs": [{**PAIR, "chosen": huge}]})
    msg = str(info.value)
    assert "pairs[0].chosen" in msg and "1,048,576 characters" in msg and "POPI_MAX_SIGNAL_CHARS" in msg


def test_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("POPI_MAX_SIGNAL_CHARS", "10")
    with pytest.raises(ValidationError, match="limit is 10"):
        PreferencePair(prompt="", chosen="a" * 11, rejected="b")


def test_unknown_field_is_an_error():
    with pytest.raises(InputError, match="field pairs\\[0\\].choosen: Extra inputs are not permitted"):
        as_user_signals({"user_id": "u", "pairs": [{**PAIR, "choosen": "typo"}]})


def test_identical_chosen_and_rejected_is_an_error():
    with pytest.raises(ValidationError, match="identical"):
        PreferencePair(prompt="p", chosen="same", rejected="same")


def test_history_accepts_plain_strings():
    u = UserSignals(user_id="u", history=["Shorter please."])
    assert u.history[0].text == "Shorter please."


def test_signals_hash_ignores_user_id_and_tracks_content():
    a = UserSignals(user_id="a", pairs=[PAIR])
    b = UserSignals(user_id="b", pairs=[PAIR])
    c = UserSignals(user_id="a", pairs=[PAIR], persona="I like brevity.")
    assert a.signals_hash() == b.signals_hash() != c.signals_hash()


def test_user_row_converts_to_signals():
    row = UserRow(user_id="u", signals={"pairs": [PAIR]}, examples=[PAIR], persona="truth")
    assert row.user_signals().pairs[0].chosen == "Hello!"
