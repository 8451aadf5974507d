"""``popi serve`` behind the client libraries apps use besides ``openai`` and ``anthropic``
(test_serve.py and test_serve_apis.py drive those): LiteLLM's SDK and LangChain's ``ChatOpenAI``,
the real packages (the ``clients`` extra pins them) on loopback, each personalized
(``X-Popi-Personalized: true``) with well-formed usage, streaming and not. The ways of naming the
user that docs/serve.md gives for each client are the ones tested here."""

from __future__ import annotations

import asyncio
import os

import pytest

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')
# LiteLLM fetches its model price list from the network at import unless told to use its copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm", reason='pip install -e ".[clients]"')
langchain_openai = pytest.importorskip("langchain_openai", reason='pip install -e ".[clients]"')

from test_serve import HI, SUMMARIES, personal, proxy, upstream  # noqa: E402,F401  (fixtures)

QUESTION = HI[0]["content"]


def personalized_text(text: str, user: str = "maya") -> bool:
    return personal(SUMMARIES[user]) in text


def popi_header(hidden: dict) -> str | None:
    # LiteLLM hands the provider's response headers back prefixed with "llm_provider-".
    return hidden.get("additional_headers", {}).get("llm_provider-x-popi-personalized")


def check_usage(usage) -> None:
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# -- LiteLLM ----------------------------------------------------------------------------------------
def test_litellm_drops_user_unless_asked_and_every_documented_way_works(proxy):
    base = proxy()
    call = {"model": "openai/stub", "api_base": base, "api_key": "unused", "messages": HI}
    dropped = litellm.completion(**call, user="maya")  # LiteLLM keeps `user` for models it knows
    assert popi_header(dropped._hidden_params) == "false"
    for how in ({"user": "maya", "allowed_openai_params": ["user"]},
                {"extra_body": {"user": "maya"}},
                {"extra_headers": {"X-Popi-User": "maya"}}):
        answer = litellm.completion(**call, **how)
        assert popi_header(answer._hidden_params) == "true", how
        assert personalized_text(answer.choices[0].message.content), how
        check_usage(answer.usage)


def test_litellm_streaming_and_async(proxy):
    base = proxy()
    call = {"model": "openai/stub", "api_base": base, "api_key": "unused", "messages": HI,
            "extra_body": {"user": "dr_chen"}}
    chunks = list(litellm.completion(**call, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert personalized_text(text, "dr_chen")
    assert popi_header(chunks[0]._hidden_params) == "true"
    check_usage(chunks[-1].usage)

    async def main():
        whole = await litellm.acompletion(**call)
        stream = await litellm.acompletion(**call, stream=True,
                                           stream_options={"include_usage": True})
        pieces = [ch async for ch in stream]
        return whole, pieces

    whole, pieces = asyncio.run(main())
    assert popi_header(whole._hidden_params) == "true"
    assert personalized_text(whole.choices[0].message.content, "dr_chen")
    check_usage(whole.usage)
    assert personalized_text("".join(p.choices[0].delta.content or "" for p in pieces if p.choices),
                             "dr_chen")
    check_usage(pieces[-1].usage)


def test_litellm_through_the_messages_and_responses_endpoints(proxy):
    """LiteLLM's anthropic/ provider calls popi's /v1/messages and maps `user` to
    metadata.user_id itself; litellm.responses calls /v1/responses with `user` as given."""
    base = proxy()
    answer = litellm.completion(model="anthropic/stub", api_base=base.removesuffix("/v1"),
                                api_key="unused", messages=HI, max_tokens=20, user="maya")
    assert popi_header(answer._hidden_params) == "true"
    assert personalized_text(answer.choices[0].message.content)
    check_usage(answer.usage)
    response = litellm.responses(model="openai/stub", api_base=base, api_key="unused",
                                 input=QUESTION, user="dr_chen")
    assert personalized_text(response.output[0].content[0].text, "dr_chen")
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


# -- LangChain ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", [{"model_kwargs": {"user": "maya"}},
                                 {"default_headers": {"X-Popi-User": "maya"}},
                                 {"extra_body": {"safety_identifier": "maya"}}])
def test_langchain_chat_openai(proxy, how):
    llm = langchain_openai.ChatOpenAI(model="stub", base_url=proxy(), api_key="unused",
                                      max_retries=0, include_response_headers=True,
                                      stream_usage=True, **how)
    message = llm.invoke(QUESTION)
    assert message.response_metadata["headers"]["x-popi-personalized"] == "true"
    assert personalized_text(message.content)
    usage = message.usage_metadata
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    chunks = list(llm.stream(QUESTION))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert personalized_text(total.content)
    assert total.response_metadata["headers"]["x-popi-personalized"] == "true"
    assert total.usage_metadata == usage  # the stream's usage chunk (stream_usage=True)

    async def main():
        return await llm.ainvoke(QUESTION)

    assert personalized_text(asyncio.run(main()).content)


def test_langchain_on_the_responses_api(proxy):
    llm = langchain_openai.ChatOpenAI(model="stub", base_url=proxy(), api_key="unused",
                                      max_retries=0, include_response_headers=True,
                                      use_responses_api=True, model_kwargs={"user": "maya"})
    message = llm.invoke(QUESTION)
    assert message.response_metadata["headers"]["x-popi-personalized"] == "true"
    assert personalized_text(message.text)
    assert message.usage_metadata["input_tokens"] > 0 and message.usage_metadata["output_tokens"] > 0
