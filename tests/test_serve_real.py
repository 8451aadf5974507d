"""``popi serve`` in front of real generators: a real ``transformers serve`` on the embedded model
(the session's ``openai_server``), and the embedded model in-process (``--generator hf``). With
greedy decoding the proxy's answer must be the very answer ``Personalizer.generate`` gives for the
same user: the generator saw the same conditioning."""

from __future__ import annotations

import asyncio

import openai
import pytest

pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')

from popi_sdk import Personalizer  # noqa: E402
from popi_sdk.backends.openai_backend import OpenAIBackend  # noqa: E402
from popi_sdk.serve import ServeConfig, create_app, parse_generators  # noqa: E402
from popi_sdk.serve.background import running  # noqa: E402
from popi_sdk.signals import Summary  # noqa: E402

KEY = "proxy-key-0123456789abcdef"
PROMPT = "What is a star?"
MAYA = "Maya is six years old and likes answers that compare things to toys."


def store_with_maya(tmp_path) -> Personalizer:
    p = Personalizer(store=tmp_path / "summaries.sqlite")
    p.store.put(Summary(user_id="maya", text=MAYA, summarizer="test", signals_hash="h", n_tokens=14))
    return p


@pytest.mark.model
def test_openai_client_through_popi_serve_to_transformers_serve(openai_server, smollm2_dir, tmp_path):
    p = store_with_maya(tmp_path)
    model = str(smollm2_dir)
    config = ServeConfig(generators=parse_generators([f"smol=openai:{model}@{openai_server}"]),
                         api_keys=[KEY], max_retries=0, timeout=300)
    with running(create_app(p, config)) as base:
        c = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=300)
        raw = c.chat.completions.with_raw_response.create(
            model="smol", user="maya", max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": PROMPT}])
        answer = raw.parse().choices[0].message.content
        assert raw.headers["x-popi-personalized"] == "true" and answer.strip()

        sdk = p.generate(PROMPT, user_id="maya", max_new_tokens=8, temperature=0.0,
                         backend=OpenAIBackend(model, base_url=openai_server, max_retries=0, timeout=300))
        assert answer.strip() == sdk.text  # the same conditioning reached the same model

        async def streamed() -> str:
            ac = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=300)
            stream = await ac.chat.completions.create(
                model="smol", user="maya", max_tokens=8, temperature=0, stream=True,
                messages=[{"role": "user", "content": PROMPT}])
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            await ac.close()
            return text

        assert asyncio.run(streamed()).strip() == answer.strip()


@pytest.mark.model
def test_the_local_model_as_generator(smollm2, tmp_path):
    p = store_with_maya(tmp_path)
    config = ServeConfig(generators=parse_generators(["hf"]), max_retries=0)
    with running(create_app(p, config)) as base:
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)
        messages = [{"role": "user", "content": PROMPT}]
        answer = c.chat.completions.create(model="hf", user="maya", max_tokens=6, messages=messages)
        assert answer.choices[0].message.content == p.generate(PROMPT, user_id="maya", max_new_tokens=6).text
        assert answer.usage.completion_tokens <= 6
        chunks = list(c.chat.completions.create(model="hf", user="maya", max_tokens=6,
                                                messages=messages, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == answer.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="temperature"):
            c.chat.completions.create(model="hf", messages=messages, temperature=7)


@pytest.mark.model
def test_score_endpoint_with_the_embedded_scorer(smollm2, tmp_path):
    import httpx2

    p = store_with_maya(tmp_path)
    config = ServeConfig(generators=parse_generators(["hf"]), api_keys=[KEY], max_retries=0)
    pairs = [{"prompt": "What is rain?", "chosen": "Water falling like tiny toys!",
              "rejected": "Precipitation is condensed atmospheric water vapour."}]
    with running(create_app(p, config)) as base:
        http = httpx2.Client(base_url=f"{base}/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
        score = http.post("/users/maya/score", json={"examples": pairs})
        assert score.status_code == 200, score.text
        got = score.json()
        assert got["n_examples"] == 1 and 0 <= got["reward_accuracy"] <= 1 and got["scorer"] == smollm2.name
        assert p.score("maya", pairs).reward_accuracy == got["reward_accuracy"]  # the SDK's number
        (version,) = http.get("/users/maya/summaries").json()
        assert version["score"]["reward_accuracy"] == got["reward_accuracy"]
        missing = http.post("/users/maya/score")  # no stored pairs and none given
        assert missing.status_code == 400 and "no labeled pairs stored" in missing.json()["error"]["message"]
