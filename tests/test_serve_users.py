"""The summary lifecycle over HTTP (``/v1/users/{id}/...``) and its effect on chat completions,
over a SQLite and a real PostgreSQL store. The summarizer is a real HTTP one: the ``openai``
backend against the loopback echo stub (``serve_stub.py``), so a re-summarized text is known."""

from __future__ import annotations

import httpx2
import openai
import pytest

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')

from serve_stub import EchoServer  # noqa: E402

from popi_sdk import Personalizer  # noqa: E402
from popi_sdk.backends.openai_backend import OpenAIBackend  # noqa: E402
from popi_sdk.serve import ServeConfig, create_app, parse_generators  # noqa: E402
from popi_sdk.serve.background import running  # noqa: E402
from popi_sdk.templates import GENERATOR_SUMMARY_SYSTEM, SUMMARIZER_SYSTEM  # noqa: E402

KEY = "proxy-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "Why is the sky blue?"}]
SIGNALS = {"signals": {"persona": "I am six.", "pairs": [
    {"prompt": "What is rain?", "chosen": "Water falling like tiny toys!", "rejected": "Precipitation."}]},
    "examples": [{"prompt": "What is snow?", "chosen": "Frozen fluffy water!", "rejected": "Ice crystals."}]}


@pytest.fixture(scope="module")
def upstream():
    stub = EchoServer(models=("echo-1", "summarizer"))
    with running(stub.app) as url:
        stub.url = f"{url}/v1"
        yield stub


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path, upstream):
    store = (str(tmp_path / "summaries.sqlite") if request.param == "sqlite"
             else request.getfixturevalue("postgres_url"))
    summarizer = OpenAIBackend("summarizer", base_url=upstream.url, max_retries=0)
    p = Personalizer(summarizer=summarizer, store=store)
    config = ServeConfig(generators=parse_generators([f"stub=openai:echo-1@{upstream.url}"]),
                         api_keys=[KEY], max_retries=0)
    with running(create_app(p, config)) as base:
        yield base + "/v1", p


def test_edit_refresh_history_forget_and_what_chat_sees(server, upstream):
    url, p = server
    http = httpx2.Client(base_url=url, headers=AUTH)
    chat = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0).chat.completions

    r = http.get("/users/maya/summary")
    assert r.status_code == 404 and "no summary stored for user 'maya'" in r.json()["error"]["message"]

    edited = http.put("/users/maya/summary", json={"text": "Maya is six; use toy analogies."}).json()
    assert (edited["version"], edited["source"], edited["text"]) == (1, "user", "Maya is six; use toy analogies.")
    assert http.get("/users/maya/summary").json() == edited
    raw = chat.with_raw_response.create(model="stub", user="maya", messages=HI)
    assert raw.headers["x-popi-summary-version"] == "1"
    assert GENERATOR_SUMMARY_SYSTEM.format(summary=edited["text"]) in raw.parse().choices[0].message.content

    kept = http.post("/users/maya/signals", json=SIGNALS).json()
    assert kept == edited  # a user's edit is not overwritten unless asked
    more = {"signals": {"pairs": [{"prompt": "What is wind?", "chosen": "Air running around!",
                                   "rejected": "Moving air masses."}]}, "replace_user_edit": True}
    fresh = http.post("/users/maya/signals", json=more).json()
    assert (fresh["version"], fresh["source"]) == (2, "model")
    read = upstream.requests[-1][0]["messages"][-1]["content"]  # the merged signals
    assert SUMMARIZER_SYSTEM in fresh["text"] and "I am six." in read and "Air running around!" in read
    raw = chat.with_raw_response.create(model="stub", user="maya", messages=HI)
    assert raw.headers["x-popi-summary-version"] == "2"
    assert [v["version"] for v in http.get("/users/maya/summaries").json()] == [1, 2]
    assert p.stored_signals("maya").persona == "I am six."

    gone = http.delete("/users/maya").json()
    assert gone == {"user_id": "maya", "deleted": 2}
    assert http.get("/users/maya/summary").status_code == 404
    assert http.get("/users/maya/summaries").json() == []
    raw = chat.with_raw_response.create(model="stub", user="maya", messages=HI)
    assert raw.headers["x-popi-personalized"] == "false"
    assert "Maya" not in raw.parse().choices[0].message.content


def test_lifecycle_bodies_are_checked(server):
    url, _ = server
    http = httpx2.Client(base_url=url, headers=AUTH)
    r = http.put("/users/maya/summary", json={})
    assert r.status_code == 400 and "text: Field required" in r.json()["error"]["message"]
    r = http.post("/users/maya/signals", json={"signals": {"pairs": [{"prompt": "x", "chosen": "a"}]}})
    assert r.status_code == 400 and "signals.pairs.0.rejected" in r.json()["error"]["message"]
    r = http.post("/users/maya/score", json={"version": 0})
    assert r.status_code == 400 and "version" in r.json()["error"]["message"]
    r = http.post("/users/nobody/score")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx2.delete(f"{url}/users/maya").status_code == 401  # no key
