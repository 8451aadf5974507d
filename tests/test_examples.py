"""Every script in examples/ runs: the GPT-4o one as a command against a real OpenAI-compatible
server (``transformers serve``), the Claude one through the real ``anthropic`` client with a mock
transport handed to its ``main(argv, backend=...)``, the existing-OpenAI-app one against a real
``popi serve``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from popi_sdk.backends.anthropic_backend import AnthropicBackend
from popi_sdk.backends.openai_backend import OpenAIBackend
from popi_sdk.store import SQLiteStore
from popi_sdk.templates import GENERATOR_SUMMARY_SYSTEM, SUMMARIZER_SYSTEM

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 14 s idle: the whole example through a real server (CI runs slow tests too)
def test_gpt4o_example_against_a_real_server(openai_server, smollm2_dir, tmp_path):
    store = tmp_path / "summaries.sqlite"
    # The default timeouts, on a machine whose every core is busy with another process: the
    # server's answers take many times longer than on an idle machine and must still arrive.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OPENAI_") and not k.startswith("POPI_API_")}
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(os.cpu_count() or 1)]
    command = [
        sys.executable, str(EXAMPLES / "personalize_gpt4o.py"),
        "--model", str(smollm2_dir), "--base-url", openai_server,
        "--store", str(store), "--max-tokens", "8",
    ]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert done.returncode == 0, done.stderr
    example = load_example("personalize_gpt4o")
    assert f"Summary of maya by openai:{smollm2_dir}:" in done.stdout
    for prompt in example.PROMPTS:
        assert f"> {prompt}\n" in done.stdout
    summary = SQLiteStore(store).latest("maya")
    assert summary is not None and summary.text

    # A second run reads the summary from the store instead of asking the model again.
    backend = OpenAIBackend(str(smollm2_dir), base_url=openai_server, timeout=300, max_retries=0)
    example.main(["--store", str(store), "--max-tokens", "4"], backend=backend)
    assert SQLiteStore(store).latest("maya") == summary


class ClaudeAPI:
    """Answers like the Messages API after checking each request: the summarizer's and the
    generator's instructions arrive in ``system``, the prompt as the only user turn."""

    def __init__(self):
        self.requests: list[dict] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if set(body) != {"model", "system", "messages", "max_tokens"} or len(body["messages"]) != 1:
            return httpx2.Response(400, json={"type": "error", "error": {
                "type": "invalid_request_error", "message": f"unexpected request {body}"}})
        if body["system"] == SUMMARIZER_SYSTEM:
            text = "The user is a young child who likes playful, simple explanations."
        else:
            text = f"A playful answer to: {body['messages'][0]['content']}"
        return httpx2.Response(200, json={
            "id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant",
            "model": body["model"], "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 50, "output_tokens": 12},
        })


def test_claude_example_through_the_real_client(tmp_path, capsys):
    api = ClaudeAPI()
    backend = AnthropicBackend(
        "claude-haiku-4-5", api_key="sk-ant-test", max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(api)),
    )
    example = load_example("personalize_claude")
    argv = ["--store", str(tmp_path / "summaries.sqlite"), "--max-tokens", "64"]
    example.main(argv, backend=backend)
    out = capsys.readouterr().out

    first, *answers = api.requests
    assert first["system"] == SUMMARIZER_SYSTEM and "8 years old" in first["messages"][0]["content"]
    summary = "The user is a young child who likes playful, simple explanations."
    assert f"Summary of maya by anthropic:claude-haiku-4-5: {summary}" in out
    assert [a["messages"] for a in answers] == [[{"role": "user", "content": p}] for p in example.PROMPTS]
    assert all(a["system"] == GENERATOR_SUMMARY_SYSTEM.format(summary=summary) for a in answers)
    assert all(a["max_tokens"] == 64 for a in answers)
    for prompt in example.PROMPTS:
        assert f"> {prompt}\nA playful answer to: {prompt}\n" in out

    example.main(argv, backend=backend)  # the summary now comes from the store
    assert len(api.requests) == 1 + 2 * len(example.PROMPTS)
    assert all(r["system"] != SUMMARIZER_SYSTEM for r in api.requests[1:])


@pytest.mark.parametrize("name", ["personalize_gpt4o", "personalize_claude"])
def test_examples_document_their_options(name):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for option in ("--model", "--base-url", "--summarizer", "--store", "--max-tokens"):
        assert option in done.stdout


def test_existing_openai_app_through_popi_serve(tmp_path, capsys):
    """The unchanged-OpenAI-app example against a real `popi serve` (with a proxy key) in front of
    a loopback stub that echoes its system message."""
    pytest.importorskip("fastapi", reason='popi serve needs its extra: pip install "popi-sdk[serve]"')
    from serve_stub import EchoServer

    from popi_sdk import Personalizer
    from popi_sdk.serve import ServeConfig, create_app, parse_generators
    from popi_sdk.serve.background import running

    key = "example-proxy-key-0123456789"
    stub = EchoServer(models=("gpt-4o-mini",))
    p = Personalizer(store=tmp_path / "summaries.sqlite")
    with running(stub.app) as upstream:
        config = ServeConfig(generators=parse_generators([f"openai:gpt-4o-mini@{upstream}/v1"]),
                             api_keys=[key], max_retries=0)
        with running(create_app(p, config)) as base:
            load_example("existing_openai_app").main([
                "--base-url", f"{base}/v1", "--api-key", key, "--max-tokens", "20",
                "--summary", "Maya is six and loves dinosaurs."])
    out = capsys.readouterr().out
    maya, stranger = out.split("[someone-new]")
    assert "[maya] personalized: true" in maya
    assert GENERATOR_SUMMARY_SYSTEM.format(summary="Maya is six and loves dinosaurs.") in maya
    assert "personalized: false" in stranger and "SYSTEM[-]" in stranger
    assert p.get_summary("maya").source == "user"
    assert [body["max_tokens"] for body, _ in stub.requests] == [20, 20]
