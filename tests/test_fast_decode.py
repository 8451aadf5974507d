"""The fast decoder against transformers' generate: same greedy tokens in float32, close scores and
an exact LM-head pick with 4-bit weights; and the thread-count setting."""

from __future__ import annotations

import pytest

from popi_sdk.backends import GenerateOptions
from popi_sdk.errors import InputError, SettingError
from popi_sdk.settings import default_threads, torch_threads

pytest.importorskip("torch")

PROMPTS = [
    "Why is the sky blue?",
    "Write a short review of a budget laptop you used for a year, with one pro and one con.",
]


def _encode(tokenizer, prompts):
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _reference(model, enc, tokens, **kw):
    import torch

    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
            pad_token_id=2, **kw,
        )
    rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        rows.append(row[: row.index(2)] if 2 in row else row)
    return rows


@pytest.fixture(scope="module")
def embedded(smollm2):
    from popi_sdk.backends.fast_decode import FastDecoder

    model = smollm2.model
    return model, smollm2.tokenizer, FastDecoder(model, "float32"), FastDecoder(model, "int4")


def test_fast_float32_gives_transformers_greedy_tokens_with_padding(embedded):
    model, tok, fp32, _ = embedded
    enc = _encode(tok, PROMPTS)  # two lengths: the shorter row is left-padded
    assert not bool(enc["attention_mask"].all())
    want = _reference(model, enc, 16)
    got = fp32.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=16, eos_ids=[2], pad_id=2)
    assert got.tokens == want
    assert got.steps == max(len(r) for r in want) + (0 if all(len(r) == 16 for r in want) else 1)


@pytest.mark.parametrize(
    "settings", [{"repetition_penalty": 1.3}, {"repetition_penalty": 1.05, "no_repeat_ngram_size": 2}]
)
def test_fast_float32_small_model_settings_match_transformers(embedded, settings):
    model, tok, fp32, int4 = embedded
    enc = _encode(tok, PROMPTS)
    want = _reference(model, enc, 16, **settings)
    args = (enc["input_ids"], enc["attention_mask"])
    got = fp32.generate(*args, max_new_tokens=16, eos_ids=[2], pad_id=2, **settings)
    assert got.tokens == want
    plain = fp32.generate(*args, max_new_tokens=16, eos_ids=[2], pad_id=2)
    assert plain.tokens != want  # the settings changed something, so the match above means something
    if "no_repeat_ngram_size" in settings:  # the int4 shortlist honours the ban too
        for row in int4.generate(*args, max_new_tokens=16, eos_ids=[2], pad_id=2, **settings).tokens:
            pairs = list(zip(row, row[1:]))
            assert len(pairs) == len(set(pairs))


def test_int4_weights_are_exact_for_the_embedded_model_and_scores_close(embedded):
    """The embedded model was published as Q4_1, so its 4-bit weights are exact; only the bf16
    inputs to the products differ. Next-token log-probs stay within 0.15 nats of float32 on the
    tokens that matter (float32's top 20), and the shortlist pick equals float32's argmax."""
    import torch

    from popi_sdk.backends.fast_decode import _penalize

    _, tok, fp32, int4 = embedded
    assert int4.weight_error == 0.0
    assert int4.weight_bytes() < fp32.weight_bytes() / 5
    enc = _encode(tok, PROMPTS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    t = ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    attn = ((causal & mask.bool()[:, None, :]) | torch.eye(t, dtype=torch.bool))[:, None]
    hidden = {}
    for name, dec in (("fp32", fp32), ("int4", int4)):
        dec._rope_table(t)
        cache = [(torch.zeros(2, dec.n_kv, t, dec.head_dim), torch.zeros(2, dec.n_kv, t, dec.head_dim))
                 for _ in dec.layers]
        with torch.inference_mode():
            hidden[name] = dec._forward(ids, positions, cache, 0, attn)
    with torch.inference_mode():
        want = torch.log_softmax(fp32.logits(hidden["fp32"]), -1)
        got = torch.log_softmax(int4.logits(hidden["int4"]), -1)
        top = want.topk(20, dim=-1).indices
        assert float((want.gather(1, top) - got.gather(1, top)).abs().max()) < 0.15
        # the 4-bit shortlist never changes the float32 LM head's pick for the same hidden state
        exact = int4.logits(hidden["int4"]).argmax(-1)
        assert torch.equal(int4._greedy(hidden["int4"], None, 1.0), exact)
        # a repetition penalty lowers a seen token that is also on the shortlist: with the best
        # token seen, the pick moves to the next one, as over the full penalized logits
        seen = torch.stack([exact, exact], 1)
        want = _penalize(int4.logits(hidden["int4"]), seen, 100.0).argmax(-1)
        assert not torch.equal(want, exact)
        assert torch.equal(int4._greedy(hidden["int4"], seen, 100.0), want)


def test_backend_decoders_agree_and_options_are_checked(smollm2_dir):
    from popi_sdk.backends.hf import HFBackend

    conv = [{"role": "user", "content": PROMPTS[0]}]
    options = GenerateOptions(max_new_tokens=8)
    old = HFBackend(decoder="transformers")
    assert old.fast_decoder() is None
    new = HFBackend(weights="float32")
    assert new.fast_decoder() is not None
    assert new.generate(conv, options) == old.generate(conv, options)
    sampled = GenerateOptions(max_new_tokens=8, temperature=0.8, seed=3)
    assert new.generate(conv, sampled) == new.generate(conv, sampled)  # seeded: reproducible
    with pytest.raises(InputError, match="decoder must be"):
        HFBackend(decoder="vllm")
    with pytest.raises(InputError, match="weights must be"):
        HFBackend(weights="int3")


def test_thread_count_resolution(monkeypatch):
    monkeypatch.delenv("POPI_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(1) == 1 and default_threads(2) == 1
    assert default_threads(8) == 4 and default_threads(64) == 4
    assert torch_threads() == default_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_threads() == 3
    monkeypatch.setenv("POPI_THREADS", "2")
    assert torch_threads() == 2
    assert torch_threads(5) == 5
    monkeypatch.setenv("POPI_THREADS", "many")
    with pytest.raises(SettingError, match="POPI_THREADS='many'"):
        torch_threads()
    with pytest.raises(InputError, match="threads must be"):
        torch_threads(0)


def test_decode_weights_resolution(monkeypatch):
    from popi_sdk.settings import decode_weights

    monkeypatch.delenv("POPI_WEIGHTS", raising=False)
    assert decode_weights() == "auto" and decode_weights("auto") == "auto"
    monkeypatch.setenv("POPI_WEIGHTS", "float32")
    assert decode_weights() == "float32"
    assert decode_weights("int4") == "int4"  # the argument wins over the variable
    monkeypatch.setenv("POPI_WEIGHTS", "int8")
    with pytest.raises(SettingError, match="POPI_WEIGHTS='int8'"):
        decode_weights()
    with pytest.raises(InputError, match="weights must be"):
        decode_weights("fp8")


def test_auto_weights_are_int4_only_where_4_bit_rounding_changes_no_weight(smollm2, monkeypatch):
    """The embedded model lies on the 4-bit grid (published as Q4_1); the trained summarizer,
    an adapter merged into it, does not, and 4-bit rounding would round its training away."""
    import torch

    from popi_sdk.backends.fast_decode import on_int4_grid
    from popi_sdk.backends.hf import HFBackend

    monkeypatch.delenv("POPI_WEIGHTS", raising=False)
    model = smollm2.model
    assert on_int4_grid(model)
    weight = model.model.layers[-1].mlp.down_proj.weight
    kept = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] += 1e-4  # a fine-tuning step's worth: off the grid
    try:
        assert not on_int4_grid(model)
    finally:
        with torch.no_grad():
            weight.copy_(kept)
    assert HFBackend().fast_decoder().weights == "int4"
    assert HFBackend("popi").fast_decoder().weights == "float32"
    monkeypatch.setenv("POPI_WEIGHTS", "float32")
    assert HFBackend().fast_decoder().weights == "float32"
