"""Bad input, one parametrized test per class: each case asserts the error type, that the message
names the field, option, setting or file at fault, and that no file or stored row changed.

The classes: rows of a users file, signals given to the SDK, generation and construction options,
command-line paths and options, training config values, environment settings, ``popi launch``
options, and replies from a server that are not what its API defines. Classes that already worked
are here too, so none of them regresses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sqlite3
from pathlib import Path

import httpx2
import pytest
from typer.testing import CliRunner

from popi_sdk import Personalizer, UserSignals
from popi_sdk.backends.anthropic_backend import AnthropicBackend
from popi_sdk.backends.openai_backend import OpenAIBackend
from popi_sdk.cli import app
from popi_sdk.errors import (
    BadResponseError,
    ConfigError,
    DataFileError,
    EmptySummaryError,
    InputError,
    SettingError,
)

PAIR = {"prompt": "Review a lamp.", "chosen": "Short.", "rejected": "A long and winding review."}
GOOD_ROW = {"user_id": "ok", "signals": {"pairs": [PAIR]}}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a digest of its bytes: the test's 'nothing changed'."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def stored_rows(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute("SELECT user_id, text FROM summary_versions ORDER BY user_id, version").fetchall()


class RecordingServer:
    """What an OpenAI-compatible server receives, through the real client's mock transport."""

    def __init__(self, reply=None):
        self.requests: list[dict] = []
        self.reply = reply or (lambda body: _completion("The user prefers short answers."))

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content))
        return self.reply(self.requests[-1])

    def backend(self) -> OpenAIBackend:
        return OpenAIBackend("gpt-4o", api_key="sk-test", max_retries=0,
                             http_client=httpx2.Client(transport=httpx2.MockTransport(self.handler)))


def _completion(text) -> httpx2.Response:
    return httpx2.Response(200, json={
        "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
    })


@pytest.fixture
def seeded(tmp_path):
    """A store holding one summary, a server that answers, and the files' state before the test."""
    server = RecordingServer()
    store = tmp_path / "store" / "summaries.sqlite"
    p = Personalizer(summarizer=server.backend(), generator=server.backend(), store=store)
    p.summarize(UserSignals(user_id="alice", persona="I like short answers."))
    server.requests.clear()
    return p, server, store, snapshot(tmp_path)


# -- 1. rows of a users file ---------------------------------------------------------------------
def _line(**changes) -> str:
    row = json.loads(json.dumps(GOOD_ROW))
    for key, value in changes.items():
        target, *path = key.split("__")
        node = row
        for part in [target, *path][:-1]:
            node = node[part]
        node[[target, *path][-1]] = value
    return json.dumps(row)


ROWS = [
    ("malformed JSON", '{"user_id": "x", "signals": ', "malformed JSON"),
    ("not an object", "[1, 2]", "expected a JSON object"),
    ("missing user_id", json.dumps({"signals": {"pairs": [PAIR]}}), "field user_id: Field required"),
    ("unknown field", _line(colour="red"), "field colour: Extra inputs"),
    ("empty chosen", _line(signals__pairs=[{**PAIR, "chosen": "  "}]), "signals.pairs[0].chosen"),
    ("identical pair", _line(signals__pairs=[{**PAIR, "rejected": "Short."}]), "chosen and rejected are identical"),
    ("no signals", _line(signals={"pairs": []}), "field signals: no signals given"),
    ("trait not a number", _line(signals={"traits": {"warmth": "high"}}), "signals.traits.warmth"),
    ("NaN trait", '{"user_id": "x", "signals": {"traits": {"warmth": NaN}}}', "signals.traits.warmth: Input should be a finite number"),
    ("Infinity trait", '{"user_id": "x", "signals": {"traits": {"warmth": -Infinity}}}', "signals.traits.warmth: Input should be a finite number"),
    ("text too long", _line(signals={"persona": "x" * 32_001}), "signals.persona: Value error, text is 32,001"),
    ("duplicate user id", json.dumps(GOOD_ROW), "user_id 'ok' appears more than once"),
]


@pytest.mark.parametrize(("case", "line", "names"), ROWS, ids=[c for c, _, _ in ROWS])
def test_bad_rows_of_a_users_file(tmp_path, case, line, names):
    users = tmp_path / "users.jsonl"
    users.write_text(json.dumps(GOOD_ROW) + "\n" + line + "\n", encoding="utf-8")
    before = snapshot(tmp_path)
    out, store = tmp_path / "summaries.jsonl", tmp_path / "s.sqlite"
    result = CliRunner().invoke(app, ["summarize", str(users), "--out", str(out), "--store", str(store)])
    assert isinstance(result.exception, DataFileError), result.output
    message = str(result.exception)
    assert f"{users}:2" in message or case == "duplicate user id"
    assert names.replace("Value error, ", "") in message, message
    assert snapshot(tmp_path) == before  # no output, no store, the input untouched


# -- 2. signals given to the SDK -------------------------------------------------------------
SIGNALS = [
    ("no user id", {"persona": "hi"}, "user_id"),
    ("empty user id", {"user_id": " ", "persona": "hi"}, "user_id"),
    ("no signals", {"user_id": "bob"}, "no signals given"),
    ("unknown kind", {"user_id": "bob", "likes": ["tea"]}, "likes"),
    ("NaN trait", {"user_id": "bob", "traits": {"warmth": math.nan}}, "traits.warmth"),
    ("infinite trait", {"user_id": "bob", "traits": {"warmth": math.inf}}, "traits.warmth"),
    ("not signals at all", 42, "expected UserSignals"),
]


@pytest.mark.parametrize(("case", "value", "names"), SIGNALS, ids=[c for c, _, _ in SIGNALS])
def test_bad_signals_given_to_the_sdk(seeded, tmp_path, case, value, names):
    p, server, store, before = seeded
    with pytest.raises(InputError, match=names.replace(".", r"\.")):
        p.summarize(value)
    assert server.requests == [] and snapshot(tmp_path) == before
    assert [u for u, _ in stored_rows(store)] == ["alice"]


# -- 3. options of the SDK -------------------------------------------------------------------
OPTIONS = [
    ("max_new_tokens=0", lambda p: p.generate("hi", max_new_tokens=0), "max_new_tokens=0: must be a whole number from 1"),
    ("temperature=-1", lambda p: p.generate("hi", temperature=-1), "temperature=-1: must be a number from 0.0 to 2.0"),
    ("temperature=nan", lambda p: p.generate("hi", temperature=math.nan), "temperature=nan"),
    ("async temperature=5", lambda p: asyncio.run(p.agenerate("hi", temperature=5)), "temperature=5"),
    ("many max_new_tokens=-3", lambda p: p.generate_many(["hi"], max_new_tokens=-3), "max_new_tokens=-3"),
    ("unknown backend keyword", lambda p: p.generate("hi", backend="openai:gpt-4o", api_kye="sk"),
     "no option 'api_kye'; it accepts: api_key, base_url, timeout, max_retries"),
    ("store=5", lambda p: Personalizer(store=5), "store must implement"),
    ("timeout=0", lambda p: OpenAIBackend("m", api_key="k", timeout=0), "timeout must be a positive"),
    ("timeout=inf", lambda p: AnthropicBackend("m", api_key="k", timeout=math.inf), "timeout must be a positive"),
    ("max_retries=-1", lambda p: OpenAIBackend("m", api_key="k", max_retries=-1), "max_retries must be"),
    ("max_concurrency=0", lambda p: p.generate_many(["hi"], max_concurrency=0), "max_concurrency must be at least 1"),
    ("empty prompt", lambda p: p.generate("  "), "prompt must be a non-empty string"),
]


@pytest.mark.parametrize(("case", "call", "names"), OPTIONS, ids=[c for c, _, _ in OPTIONS])
def test_bad_options_of_the_sdk(seeded, tmp_path, case, call, names):
    p, server, store, before = seeded
    with pytest.raises(InputError) as info:
        call(p)
    assert names in str(info.value), str(info.value)
    assert server.requests == [] and snapshot(tmp_path) == before


# -- 4. command-line paths and options ---------------------------------------------------------
def _cli_cases(tmp: Path) -> list[tuple[str, list[str], type, str]]:
    users, folder = tmp / "users.jsonl", tmp / "folder"
    return [
        ("--out is the input", ["summarize", str(users), "--out", str(users)], InputError,
         "is the input file"),
        ("--out is a folder", ["summarize", str(users), "--out", str(folder)], InputError,
         f"--out {folder} is a folder"),
        ("--out under a file", ["summarize", str(users), "--out", str(users / "x.jsonl")],
         InputError, "is a file, not a folder"),
        ("convert --out is the input", ["data", "convert", "fspo", str(users), "--out", str(users)],
         InputError, "is the input file"),
        ("synth --out is a file", ["data", "synth", "review", "--out", str(users)], InputError,
         "is a file; give a folder"),
        ("train show --config folder", ["train", "show", "--config", str(folder)], ConfigError,
         f"--config {folder} is a folder"),
        ("train --out is a file", ["train", "stage1", "--data", str(folder), "--out", str(users)],
         ConfigError, "is a file; the run folder must be a folder"),
        ("missing users file", ["summarize", str(tmp / "nope.jsonl"), "--out", str(tmp / "o.jsonl")],
         InputError, "no such file"),
        ("generate --temperature 5", ["generate", "--prompt", "hi", "--temperature", "5"],
         SystemExit, "--temperature"),
        ("generate --max-new-tokens 0", ["generate", "--prompt", "hi", "--max-new-tokens", "0"],
         SystemExit, "--max-new-tokens"),
    ]


@pytest.mark.parametrize("index", range(10), ids=[c[0] for c in _cli_cases(Path("t"))])
def test_bad_command_line_paths_and_options(tmp_path, monkeypatch, index):
    (tmp_path / "users.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "train.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    monkeypatch.setenv("POPI_STORE", str(tmp_path / "default.sqlite"))
    case, argv, error, names = _cli_cases(tmp_path)[index]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, argv)
    if error is SystemExit:  # a usage error: typer names the option, exit code 2
        assert result.exit_code == 2 and names in result.output, result.output
    else:
        assert isinstance(result.exception, error), result.output
        assert names in str(result.exception), str(result.exception)
    assert snapshot(tmp_path) == before  # no summaries, no store, no .tmp, the input untouched


# -- 5. training config values -----------------------------------------------------------------
CONFIG = [
    ("beta=-1", {"beta": -1}, "field beta: Input should be greater than 0"),
    ("beta=.inf", {"beta": math.inf}, "field beta: Input should be a finite number"),
    ("epochs=.inf", {"stage1.epochs": math.inf}, "field stage1.epochs: Input should be a finite number"),
    ("learning rate NaN", {"stage2.learning_rate": math.nan}, "field stage2.learning_rate"),
    ("max_steps=0 without a warm start", {"stage1.max_steps": 0}, "stage1.max_steps = 0 trains no GRPO step"),
    ("max_steps=-2", {"stage1.max_steps": -2}, "stage1.max_steps must be a step count"),
    ("stage2 max_steps=0", {"stage2.max_steps": 0}, "stage2.max_steps must be a positive step count"),
    ("misspelled field", {"stage1.lerning_rate": 1e-5}, "did you mean stage1.learning_rate?"),
    ("unknown loss", {"loss_type": "kto"}, "field loss_type"),
]


@pytest.mark.parametrize(("case", "override", "names"), CONFIG, ids=[c for c, _, _ in CONFIG])
def test_bad_training_config_values(tmp_path, case, override, names):
    from popi_sdk.train.config import load_config

    config = tmp_path / "exp.yaml"
    config.write_text("beta: 0.05\n")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(config, overrides=override, out=tmp_path / "run")
    assert names in str(info.value), str(info.value)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


# -- 6. environment settings -----------------------------------------------------------------
SETTINGS = [
    ("POPI_MAX_SIGNAL_CHARS", "0", lambda: UserSignals(user_id="u", persona="hi")),
    ("POPI_MAX_SIGNAL_CHARS", "-5", lambda: UserSignals(user_id="u", persona="hi")),
    ("POPI_MAX_SIGNAL_CHARS", "lots", lambda: UserSignals(user_id="u", persona="hi")),
    ("POPI_API_TIMEOUT", "0", lambda: OpenAIBackend("m", api_key="k")),
    ("POPI_API_TIMEOUT", "nan", lambda: AnthropicBackend("m", api_key="k")),
    ("POPI_API_MAX_RETRIES", "-1", lambda: OpenAIBackend("m", api_key="k")),
    ("POPI_API_MAX_RETRIES", "two", lambda: AnthropicBackend("m", api_key="k")),
]


@pytest.mark.parametrize(("var", "value", "make"), SETTINGS,
                         ids=[f"{v}={x}" for v, x, _ in SETTINGS])
def test_bad_environment_settings_name_the_setting(seeded, tmp_path, monkeypatch, var, value, make):
    p, server, store, before = seeded
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingError) as info:
        make()
    assert str(info.value).startswith(f"{var}={value!r}")
    assert "field" not in str(info.value)  # the setting is at fault, not the user's data
    if var == "POPI_MAX_SIGNAL_CHARS":  # a users file with that setting: the file is not blamed
        users = tmp_path / "users.jsonl"
        users.write_text(json.dumps(GOOD_ROW) + "\n")
        with pytest.raises(SettingError, match=var):
            p.summarize({"user_id": "bob", "persona": "hi"})
        from popi_sdk.data import read_users

        with pytest.raises(SettingError, match=var):
            read_users(users)
        users.unlink()
    assert server.requests == [] and snapshot(tmp_path) == before


# -- 7. popi launch options ------------------------------------------------------------------
LAUNCH = [
    (["--preset", "nope"], "unknown preset 'nope'; known presets"),
    (["--beta", "-1"], "field beta: Input should be greater than 0"),
    (["--beta", "inf"], "field beta: Input should be a finite number"),
    (["--set", "stage1.epochs=.inf"], "field stage1.epochs"),
    (["--set", "stage2.lerning_rate=1e-6"], "did you mean stage2.learning_rate?"),
    (["--env", "TRAIN_ARGS=--resume"], "TRAIN_ARGS: '--resume' is not an option"),
    (["--env", "MAX_STEPS=many"], "MAX_STEPS (--max-steps): expected a whole number"),
    (["--env", "NOPE=1"], "--env NOPE: the train task has no such variable"),
    (["--gpus", "H100:eight"], "--gpus 'H100:eight'"),
]


@pytest.mark.parametrize(("argv", "names"), LAUNCH, ids=[" ".join(a) for a, _ in LAUNCH])
def test_bad_launch_options_fail_before_anything_is_rented(tmp_path, monkeypatch, argv, names):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["launch", "train", *argv, "--bucket", "b", "--dry-run"])
    assert isinstance(result.exception, ConfigError), result.output
    assert names in str(result.exception), str(result.exception)
    assert result.stdout == "" and snapshot(tmp_path) == {}  # no task printed, nothing written


# -- 8. server replies that are not what the API defines -----------------------------------------
def _raw(body: bytes, kind: str = "application/json"):
    return lambda request: httpx2.Response(200, content=body, headers={"content-type": kind})


REPLIES = [
    ("not JSON", _raw(b'{"choices": [{"message": '), "not JSON"),
    ("an HTML page", _raw(b"<html><body>Sign in to the proxy</body></html>", "text/html"),
     "Sign in to the proxy"),
    ("a JSON list", _raw(b"[]"), "[]"),
    ("an empty body", _raw(b"", "text/plain"), "(an empty body)"),
    ("no choices / no content", _raw(b'{"id": "x", "choices": []}'), "no"),
    ("content is not text", _raw(b'{"choices": [{"message": {"content": 5}}],'
                                 b' "content": [{"type": "text", "text": 5}]}'), "not"),
]
API = {
    "openai": (OpenAIBackend, "chat completion"),
    "anthropic": (AnthropicBackend, "Messages API reply"),
}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("api", list(API))
@pytest.mark.parametrize(("case", "handler", "names"), REPLIES, ids=[c for c, _, _ in REPLIES])
def test_bad_server_replies_become_a_named_backend_error(tmp_path, case, handler, names, api, mode):
    cls, kind = API[api]
    transport = {"http_client": httpx2.Client(transport=httpx2.MockTransport(handler))}
    if mode == "async":
        async def ahandler(request):
            return handler(request)

        transport = {"async_http_client": httpx2.AsyncClient(transport=httpx2.MockTransport(ahandler))}
    backend = cls("m", api_key="k", max_retries=0, **transport)
    store = tmp_path / "s.sqlite"
    p = Personalizer(summarizer=backend, store=store)
    user = UserSignals(user_id="bob", persona="I like tea.")
    with pytest.raises(BadResponseError) as info:
        asyncio.run(p.asummarize(user)) if mode == "async" else p.summarize(user)
    message = str(info.value)
    assert message.startswith(f"[{api}:m] ") and f"not a {kind}" in message
    assert names in message, message
    assert stored_rows(store) == []


EMPTY = [
    ("openai, empty content", "openai", lambda r: _completion("")),
    ("openai, only whitespace", "openai", lambda r: _completion("  \n ")),
    ("anthropic, no text blocks", "anthropic", lambda r: httpx2.Response(200, json={
        "id": "m1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": "max_tokens"})),
]


@pytest.mark.parametrize("mode", ["sync", "async", "many"])
@pytest.mark.parametrize(("case", "api", "handler"), EMPTY, ids=[c for c, _, _ in EMPTY])
def test_an_empty_summary_is_never_stored(tmp_path, case, api, handler, mode):
    cls, _ = API[api]

    async def ahandler(request):
        return handler(request)

    backend = cls("m", api_key="k", max_retries=0,
                  http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
                  async_http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(ahandler)))
    store = tmp_path / "s.sqlite"
    p = Personalizer(summarizer=backend, store=store)
    user = UserSignals(user_id="bob", persona="I like tea.")
    run = {"sync": lambda: p.summarize(user), "async": lambda: asyncio.run(p.asummarize(user)),
           "many": lambda: p.summarize_many([user], progress=False)}[mode]
    with pytest.raises(EmptySummaryError, match=rf"^\[{api}:m\] the summarizer wrote no summary "
                                                 r"for user 'bob' \(it returned '"):
        run()
    assert stored_rows(store) == [] and p.cached(user) is None
    with pytest.raises(EmptySummaryError):  # asked again, not served from a cache
        run()
    # Training takes whatever the model wrote: returned, still never stored.
    kept = p.summarize_many([user], progress=False, keep_empty=True)
    assert [s.text for s in kept] == [""] and stored_rows(store) == []
