"""Keys scoped to a user-id prefix: two tenants on one ``popi serve``, each with its own key,
cannot read, edit, refresh, score, forget or chat as each other's users. Over HTTP with the real
``openai`` client, over a SQLite and a real PostgreSQL store."""

from __future__ import annotations

import openai
import pytest

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')

from serve_stub import EchoServer  # noqa: E402

from popi_sdk import Personalizer  # noqa: E402
from popi_sdk.backends.openai_backend import OpenAIBackend  # noqa: E402
from popi_sdk.errors import ConfigError  # noqa: E402
from popi_sdk.serve import ServeConfig, create_app, parse_generators  # noqa: E402
from popi_sdk.serve.auth import parse_scoped_key, read_keys_file, resolve_scoped_keys  # noqa: E402
from popi_sdk.serve.background import running  # noqa: E402

ACME = "acme-secret-0123456789abcdef"
GLOBEX = "globex-secret-0123456789abcd"
ADMIN = "admin-secret-0123456789abcde"
HI = [{"role": "user", "content": "Hello"}]
SIGNALS = {"signals": {"persona": "I like puns."}}


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
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# tenants\nglobex:{GLOBEX}:globex/\n\n")
    config = ServeConfig(
        generators=parse_generators([f"stub=openai:echo-1@{upstream.url}"]),
        api_keys=[ADMIN],
        scoped_keys=resolve_scoped_keys([f"acme:{ACME}:acme/"], str(keys_file)),
        max_retries=0,
    )
    with running(create_app(p, config)) as base:
        yield base + "/v1", p


def _client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0)


def _actions(client: openai.OpenAI, user: str):
    """Every endpoint that names a user, as (name, call)."""
    from urllib.parse import quote

    path = f"/users/{quote(user, safe='')}"
    return [
        ("read", lambda: client.get(f"{path}/summary", cast_to=object)),
        ("history", lambda: client.get(f"{path}/summaries", cast_to=object)),
        ("edit", lambda: client.put(f"{path}/summary", body={"text": "Owned."}, cast_to=object)),
        ("signals", lambda: client.post(f"{path}/signals", body=SIGNALS, cast_to=object)),
        ("score", lambda: client.post(f"{path}/score", body={}, cast_to=object)),
        ("forget", lambda: client.delete(path, cast_to=object)),
        ("chat", lambda: client.chat.completions.create(model="stub", messages=HI, user=user)),
        ("chat-header", lambda: client.chat.completions.create(
            model="stub", messages=HI, extra_headers={"X-Popi-User": user})),
        ("chat-safety-identifier", lambda: client.chat.completions.create(
            model="stub", messages=HI, extra_body={"safety_identifier": user})),
        ("responses", lambda: client.responses.create(model="stub", input="Hello", user=user)),
        ("responses-safety-identifier", lambda: client.responses.create(
            model="stub", input="Hello", extra_body={"safety_identifier": user})),
    ]


def test_messages_api_keys_are_scoped_too(server):
    """The Anthropic Messages endpoint checks ``x-api-key`` scopes like every other endpoint."""
    import anthropic

    base, p = server
    _client(base, GLOBEX).put("/users/globex%2Fbob/summary", body={"text": "Bob likes long answers."},
                              cast_to=object)
    acme = anthropic.Anthropic(base_url=base.removesuffix("/v1"), api_key=ACME, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        acme.messages.create(model="stub", max_tokens=8, messages=HI,
                             metadata={"user_id": "globex/bob"})
    assert [s.text for s in p.history("globex/bob")] == ["Bob likes long answers."]


def test_two_tenants_cannot_touch_each_others_users(server):
    base, p = server
    acme, globex = _client(base, ACME), _client(base, GLOBEX)
    acme.put("/users/acme%2Falice/summary", body={"text": "Alice likes short answers."},
             cast_to=object)
    globex.put("/users/globex%2Fbob/summary", body={"text": "Bob likes long answers."},
               cast_to=object)
    for client, other in ((acme, "globex/bob"), (globex, "acme/alice")):
        for name, call in _actions(client, other):
            with pytest.raises(openai.PermissionDeniedError) as e:
                call()
            assert "may act only for user ids starting with" in e.value.message, name
    # Nothing of either user changed, and the personalized chat still reads their own summary.
    assert [s.text for s in p.history("acme/alice")] == ["Alice likes short answers."]
    assert [s.text for s in p.history("globex/bob")] == ["Bob likes long answers."]
    answer = acme.chat.completions.create(model="stub", messages=HI, user="acme/alice")
    assert "Alice likes short answers." in answer.choices[0].message.content
    # A plain key acts for every user; a scoped key may chat without a user (unpersonalized).
    admin = _client(base, ADMIN)
    assert admin.get("/users/globex%2Fbob/summary", cast_to=object)["text"] == "Bob likes long answers."
    reply = globex.chat.completions.with_raw_response.create(model="stub", messages=HI)
    assert reply.headers["x-popi-personalized"] == "false"
    assert acme.delete("/users/acme%2Falice", cast_to=object)["deleted"] == 1


def test_a_prefix_is_a_prefix_of_ids_not_of_names(server):
    base, _ = server
    acme = _client(base, ACME)
    with pytest.raises(openai.PermissionDeniedError):  # "acme/" does not cover "acmecorp/x"
        acme.put("/users/acmecorp%2Fx/summary", body={"text": "x"}, cast_to=object)
    with pytest.raises(openai.AuthenticationError):
        _client(base, "not-a-key-0123456789abc").get("/users/acme%2Fa/summary", cast_to=object)


def test_scoped_key_parsing(tmp_path):
    key = parse_scoped_key(f"acme:{ACME}:acme:")
    assert (key.name, key.secret, key.prefix) == ("acme", ACME, "acme:")
    assert parse_scoped_key(f"ops:{ACME}:*").prefix is None
    for bad, says in [
        (f"acme:{ACME}", "NAME:SECRET:PREFIX"),
        ("acme:short:acme/", "at least 16"),
        (f"acme:{ACME}:acme", "must end with a separator"),
        (f"a b:{ACME}:acme/", "key name"),
        (f"acme:{ACME}: acme/", "whitespace"),
    ]:
        with pytest.raises(ConfigError, match=says):
            parse_scoped_key(bad)
    empty = tmp_path / "keys"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        read_keys_file(empty)
    bad = tmp_path / "bad"
    bad.write_text(f"ok:{ACME}:ok/\nbroken\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_keys_file(bad)
