"""``popi serve``'s other APIs through their real clients on loopback: OpenAI's Responses API (the
``openai`` client's ``responses.create``, sync and async, streaming and not) and Anthropic's
Messages API (the ``anthropic`` client's ``messages.create`` and ``messages.stream``), each
personalized exactly as chat completions are, whatever the generator; and where the proxy finds
the user (``X-Popi-User``, ``user``, ``safety_identifier``, ``metadata.user_id``)."""

from __future__ import annotations

import asyncio

import anthropic
import httpx2
import openai
import pytest

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')

from test_serve import (  # noqa: E402,F401  (fixtures)
    HI,
    KEY,
    SUMMARIES,
    ClaudeStub,
    client,
    make_personalizer,
    personal,
    proxy,
    upstream,
)

from popi_sdk.serve import ServeConfig, create_app, parse_generators  # noqa: E402
from popi_sdk.serve.background import running  # noqa: E402

QUESTION = HI[0]["content"]


def echoed(user: str, system: str | None = None) -> str:
    text = personal(SUMMARIES[user]) if system is None else f"{system}\n\n{personal(SUMMARIES[user])}"
    return f"SYSTEM[{text}] MODEL[echo-1] LAST[{QUESTION}]"


def claude(url: str, key: str = "anything") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key=key, max_retries=0)


def well_formed(usage) -> None:
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    if hasattr(usage, "total_tokens"):
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens


# -- Chat Completions: headers and usage, streamed or not, sync and async ---------------------------
def test_chat_completions_report_personalization_and_usage(proxy):
    url = proxy()
    raw = client(url).chat.completions.with_raw_response.create(
        model="stub", user="maya", messages=HI, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-popi-personalized"] == "true"
    chunks = list(raw.parse())
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == echoed("maya")
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 8

    async def main():
        c = openai.AsyncOpenAI(base_url=url, api_key="anything", max_retries=0)
        whole = await c.chat.completions.with_raw_response.create(model="stub", user="maya",
                                                                  messages=HI)
        streamed = await c.chat.completions.with_raw_response.create(
            model="stub", user="maya", messages=HI, stream=True,
            stream_options={"include_usage": True})
        chunks = [ch async for ch in streamed.parse()]
        await c.close()
        return whole, streamed.headers, chunks

    whole, headers, chunks = asyncio.run(main())
    assert whole.headers["x-popi-personalized"] == headers["x-popi-personalized"] == "true"
    usage = whole.parse().usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert chunks[-1].usage.total_tokens == usage.total_tokens


# -- the Responses API ---------------------------------------------------------------------------
def test_responses_text_input_instructions_and_user(proxy, upstream):
    c = client(proxy())
    raw = c.responses.with_raw_response.create(model="stub", input=QUESTION, user="maya",
                                               instructions="Be kind.", max_output_tokens=40)
    assert raw.headers["x-popi-personalized"] == "true"
    answer = raw.parse()
    assert answer.output_text == echoed("maya", "Be kind.")
    assert answer.status == "completed" and answer.object == "response"
    well_formed(answer.usage)
    sent = upstream.requests[-1][0]
    assert sent["max_tokens"] == 40 and sent["user"] == "maya"
    assert sent["messages"][0]["content"] == "Be kind.\n\n" + personal(SUMMARIES["maya"])


def test_responses_message_list_and_safety_identifier(proxy, upstream):
    c = client(proxy())
    answer = c.responses.create(model="stub", safety_identifier="dr_chen", input=[
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "An answer."}]},
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    assert answer.output_text == echoed("dr_chen")
    assert [m["role"] for m in upstream.requests[-1][0]["messages"]] == [
        "system", "user", "assistant", "user"]
    with pytest.raises(openai.BadRequestError) as caught:
        c.responses.create(model="stub", input=QUESTION, tools=[{"type": "web_search"}])
    assert caught.value.body["param"] == "tools" and "'tools' is not supported" in caught.value.message


def test_responses_stream_events_sync_and_async(proxy):
    url = proxy()
    events = list(client(url).responses.create(model="stub", input=QUESTION, user="maya",
                                               stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == echoed("maya") == events[-1].response.output_text
    well_formed(events[-1].response.usage)

    async def main():
        c = openai.AsyncOpenAI(base_url=url, api_key="anything", max_retries=0)
        whole = await c.responses.create(model="stub", input=QUESTION, user="dr_chen")
        async with c.responses.stream(model="stub", input=QUESTION, user="dr_chen") as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
        await c.close()
        return whole, final

    whole, final = asyncio.run(main())
    assert whole.output_text == final.output_text == echoed("dr_chen")
    well_formed(whole.usage)
    well_formed(final.usage)


def test_responses_with_an_anthropic_generator(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key-123")
    stub = ClaudeStub()
    config = ServeConfig(generators=parse_generators(["claude=anthropic:claude-haiku-4-5"]),
                         max_retries=0)
    app = create_app(make_personalizer(tmp_path), config, clients={
        "async_http_client": httpx2.AsyncClient(transport=httpx2.MockTransport(stub))})
    with running(app) as base:
        c = client(base + "/v1")
        answer = c.responses.create(model="claude", input=QUESTION, user="maya")
        assert answer.output_text == f"CLAUDE SYSTEM[{personal(SUMMARIES['maya'])}]"
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (9, 4)
        events = list(c.responses.create(model="claude", input=QUESTION, user="maya", stream=True))
        assert events[-1].type == "response.incomplete"  # the stub stops at max_tokens
        assert events[-1].response.incomplete_details.reason == "max_output_tokens"
        assert (events[-1].response.usage.input_tokens, events[-1].response.usage.output_tokens) == (9, 4)


# -- the Messages API ----------------------------------------------------------------------------
def test_messages_through_the_anthropic_client(proxy, upstream):
    url = proxy(api_keys=[KEY])
    c = claude(url, KEY)  # the key travels as x-api-key
    raw = c.messages.with_raw_response.create(
        model="stub", max_tokens=30, system="Be kind.", metadata={"user_id": "maya"},
        messages=[{"role": "user", "content": QUESTION}])
    assert raw.headers["x-popi-personalized"] == "true"
    message = raw.parse()
    assert message.content[0].text == echoed("maya", "Be kind.")
    assert message.stop_reason == "end_turn" and message.role == "assistant"
    well_formed(message.usage)
    sent = upstream.requests[-1][0]
    assert sent["max_tokens"] == 30 and sent["user"] == "maya"

    with c.messages.stream(model="stub", max_tokens=30, metadata={"user_id": "dr_chen"},
                           messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == echoed("dr_chen")
    well_formed(final.usage)
    events = list(c.messages.create(model="stub", max_tokens=30, stream=True,
                                    messages=[{"role": "user", "content": QUESTION}]))
    assert [e.type for e in events][0] == "message_start" and events[-1].type == "message_stop"

    bearer = anthropic.Anthropic(base_url=url.removesuffix("/v1"), auth_token=KEY, max_retries=0)
    assert bearer.messages.create(model="stub", max_tokens=5, messages=HI).content


def test_messages_errors_are_anthropic_shaped(proxy):
    url = proxy(api_keys=[KEY])
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude(url, "wrong").messages.create(model="stub", max_tokens=5, messages=HI)
    assert caught.value.body["error"]["type"] == "authentication_error"
    r = httpx2.post(url + "/messages", json={"model": "stub", "max_tokens": 5, "messages": HI})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert "send one as x-api-key" in r.json()["error"]["message"]
    c = claude(url, KEY)
    with pytest.raises(anthropic.BadRequestError) as caught:
        c.messages.create(model="stub", max_tokens=-5, messages=HI)
    assert caught.value.body == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "'max_tokens' must be a positive integer, got -5"}}
    with pytest.raises(anthropic.BadRequestError, match="of type 'image' is not supported"):
        c.messages.create(model="stub", max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://x.invalid/a.png"}}]}])
    with pytest.raises(anthropic.NotFoundError, match="'gpt-9' is not served here"):
        c.messages.create(model="gpt-9", max_tokens=5, messages=HI)


def test_messages_stream_that_breaks_off_raises_in_the_client(proxy, upstream):
    c = claude(proxy(generators=[f"m=openai:fail-midstream@{upstream.url}"]))
    with pytest.raises(anthropic.APIStatusError, match="broke off before its end"):
        with c.messages.stream(model="m", max_tokens=5, messages=HI) as stream:
            list(stream.text_stream)


def test_messages_with_an_anthropic_generator(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key-123")
    stub = ClaudeStub()
    config = ServeConfig(generators=parse_generators(["claude=anthropic:claude-haiku-4-5"]),
                         max_retries=0)
    app = create_app(make_personalizer(tmp_path), config, clients={
        "async_http_client": httpx2.AsyncClient(transport=httpx2.MockTransport(stub))})
    with running(app) as base:
        c = claude(base + "/v1")
        message = c.messages.create(model="claude", max_tokens=20, system="Be kind.",
                                    metadata={"user_id": "maya"}, messages=HI)
        assert message.content[0].text == f"CLAUDE SYSTEM[Be kind.\n\n{personal(SUMMARIES['maya'])}]"
        assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 4)
        assert stub.requests[-1]["max_tokens"] == 20
        with c.messages.stream(model="claude", max_tokens=20, metadata={"user_id": "maya"},
                               messages=HI) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "max_tokens"
        assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)


# -- where the user is found -----------------------------------------------------------------------
@pytest.mark.parametrize("fields, headers", [
    ({"user": "maya"}, {}),
    ({"safety_identifier": "maya"}, {}),
    ({"metadata": {"user_id": "maya"}}, {}),
    ({}, {"X-Popi-User": "maya"}),
    ({"user": "maya", "safety_identifier": "maya", "metadata": {"user_id": "maya"}},
     {"X-Popi-User": "maya"}),
])
def test_every_user_field_personalizes_chat(proxy, fields, headers):
    c = client(proxy())
    raw = c.chat.completions.with_raw_response.create(model="stub", messages=HI,
                                                      extra_body=fields, extra_headers=headers)
    assert raw.headers["x-popi-personalized"] == "true"
    assert raw.parse().choices[0].message.content == echoed("maya")


def test_fields_naming_different_users_are_refused(proxy):
    c = client(proxy())
    with pytest.raises(openai.BadRequestError, match=r"different users \(user='maya', safety_identifier='dr_chen'\)"):
        c.chat.completions.create(model="stub", messages=HI, user="maya",
                                  safety_identifier="dr_chen")
    with pytest.raises(openai.BadRequestError, match="X-Popi-User header 'dr_chen' differ"):
        c.responses.create(model="stub", input=QUESTION, safety_identifier="maya",
                           extra_headers={"X-Popi-User": "dr_chen"})
    with pytest.raises(openai.BadRequestError, match="'metadata.user_id' must be a string"):
        c.chat.completions.create(model="stub", messages=HI, metadata={"user_id": 5})


# -- usage from a local generator -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory, smollm2_dir):
    """A tiny random checkpoint with the embedded model's tokenizer and chat template, loaded as
    the proxy's in-process generator."""
    from popi_sdk.train.random_model import random_llama

    return random_llama(tmp_path_factory.mktemp("tiny") / "tiny", smollm2_dir)


def test_a_local_generator_counts_the_chat_template_and_streams_usage(tmp_path, tiny_generator):
    from transformers import AutoTokenizer

    from popi_sdk.templates import personalize_messages

    config = ServeConfig(generators=parse_generators([f"tiny=hf:{tiny_generator}"]), max_retries=0)
    with running(create_app(make_personalizer(tmp_path), config)) as base:
        c = client(base + "/v1", timeout=120)
        hi = [{"role": "user", "content": "Hi"}]
        answer = c.chat.completions.create(model="tiny", user="maya", messages=hi, max_tokens=3)
        chunks = list(c.chat.completions.create(model="tiny", user="maya", messages=hi, max_tokens=3,
                                                stream=True, stream_options={"include_usage": True}))
        plain = list(c.chat.completions.create(model="tiny", messages=hi, max_tokens=3, stream=True))
        responses = c.responses.create(model="tiny", input="Hi", user="maya", max_output_tokens=3,
                                       stream=True)
        final = [e for e in responses if e.type.startswith("response.") and hasattr(e, "response")][-1]
        with pytest.raises(openai.BadRequestError) as caught:
            c.chat.completions.create(model="tiny", messages=hi, max_tokens=-5)
    # Named as the request names it (it said max_new_tokens=-5, param null).
    assert caught.value.body["param"] == "max_tokens" and "max_tokens=-5" in caught.value.message
    assert "max_new_tokens" not in caught.value.message
    tok = AutoTokenizer.from_pretrained(tiny_generator)
    read = tok.apply_chat_template(personalize_messages(hi, SUMMARIES["maya"]), tokenize=True,
                                   add_generation_prompt=True, return_dict=True)["input_ids"]
    assert answer.usage.prompt_tokens == len(read) > 20  # the template and the summary count
    assert 0 <= answer.usage.completion_tokens <= 3  # a random model may end at once
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens)
    assert all(ch.usage is None for ch in plain)  # usage only when asked for, as OpenAI does
    assert final.response.usage.input_tokens == len(read)
