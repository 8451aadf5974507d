import json

import pytest

from popi_sdk.data import read_users, write_users
from popi_sdk.errors import DataFileError, InputError

GOOD = {
    "user_id": "u1",
    "signals": {"pairs": [{"prompt": "p", "chosen": "short", "rejected": "long and winding"}]},
    "examples": [],
    "persona": "The user prefers concise answers.",
}


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_bad_row_is_reported_with_file_line_and_field(tmp_path):
    bad_field = dict(GOOD, user_id="u2", signals={"pairs": [{"prompt": "p", "chosen": "x"}]})
    empty = dict(GOOD, user_id="u3", signals={"pairs": []})
    path = _write(
        tmp_path / "users.jsonl",
        [
            json.dumps(GOOD).encode(),
            b'{"user_id": "u4", "signals": ',  # malformed JSON
            json.dumps(bad_field).encode(),
            "caf\u00e9".encode("latin-1"),  # invalid UTF-8
            json.dumps(empty).encode(),
        ],
    )
    with pytest.raises(DataFileError) as info:
        read_users(path)
    msg = str(info.value)
    assert f"{path}:2: malformed JSON" in msg
    assert f"{path}:3: field signals.pairs[0].rejected: Field required. Fix: add the field" in msg
    assert f"{path}:4: invalid UTF-8 at byte 3" in msg
    assert f"{path}:5: field signals: no signals given" in msg
    assert len(info.value.problems) == 4
    assert "nothing was processed" in msg


def test_duplicate_user_ids_are_rejected(tmp_path):
    path = _write(tmp_path / "u.jsonl", [json.dumps(GOOD).encode()] * 2)
    with pytest.raises(DataFileError, match="appears more than once"):
        read_users(path)


def test_missing_file_and_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_users(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a folder"):
        read_users(tmp_path)


def test_round_trip(tmp_path, demo_users_file):
    rows = read_users(demo_users_file)
    out = tmp_path / "copy.jsonl"
    assert write_users(out, rows) == len(rows)
    assert read_users(out) == rows
