"""Training samples through the fast decoder: a LoRA policy's current weights, one prefill per
prompt, greedy tokens equal to transformers' generate in float32, and generate's sampling
settings (temperature, top-k, top-p) with the same support and frequencies."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")

MESSAGES = [
    [{"role": "user", "content": "Summarize the user: likes short, blunt answers."}],
    [{"role": "user", "content": "Summarize the user."}],
    [{"role": "user", "content": "Summarize the user: asks about hiking boots and rain gear, "
                                 "prefers lists."}],
]


@pytest.fixture
def policy(tiny_dir):
    """A tiny random Llama with a LoRA adapter on every linear layer whose B matrices are not
    zero (a fresh adapter is the identity, which would hide a decoder that ignores it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))
    _perturb(model, seed=1)
    return model.eval(), tok


def _perturb(model, seed: int, scale: float = 0.5) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _prompts(tok):
    return [tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for m in MESSAGES]


def _generate_greedy(model, tok, prompt, tokens):
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tok.pad_token_id)
    return out[0, len(prompt):].tolist()


def _continue(decoder, tok, prompts, rows, **kw):
    from popi_sdk.train.sampling import continue_prompts

    kw = {"temperature": 0.0, "max_new_tokens": 12, **kw}
    return continue_prompts(decoder, prompts, rows, pad_id=tok.pad_token_id,
                            eos_ids=[tok.eos_token_id], keep_stop=True, **kw)


def test_greedy_lora_samples_equal_generate_with_one_prefill_per_prompt(policy):
    """Float32 with the adapter merged into the decoder's copy: each row's greedy tokens are
    generate's on the PEFT model (ragged, left-padded prompts, rows out of order); each prompt
    is prefilled once, not once per row; the model's own weights are left as they were."""
    import torch

    from popi_sdk.backends.fast_decode import FastDecoder
    from popi_sdk.train.sampling import policy_decoder

    model, tok = policy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = _prompts(tok)
    decoder = policy_decoder(model)
    prefills = []
    forward = decoder._forward
    decoder._forward = lambda ids, *a: prefills.append(tuple(ids.shape)) or forward(ids, *a)
    rows = [2, 0, 1, 2, 0]
    got = _continue(decoder, tok, prompts, rows)
    assert prefills[0] == (3, max(map(len, prompts)))  # three prompts, once each
    assert all(shape == (5, 1) for shape in prefills[1:])  # then one row per continuation
    expected = {i: _generate_greedy(model, tok, prompts[i], 12) for i in set(rows)}
    for row, tokens in zip(rows, got):
        assert tokens == expected[row][: len(tokens)] and tokens
        # generate pads after the end token; the sample keeps the end token, as TRL's do
        assert len(tokens) == 12 or tokens[-1] == tok.eos_token_id
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(decoder, FastDecoder) and decoder.weights == "float32"

    # Rows that end early leave the batch; the others go on with their own cache rows.
    stop = expected[0][0]
    from popi_sdk.train.sampling import continue_prompts

    prefills.clear()
    ended = continue_prompts(decoder, prompts, rows, pad_id=tok.pad_token_id, eos_ids=[stop],
                             max_new_tokens=12, temperature=0.0, keep_stop=True)
    for row, tokens in zip(rows, ended):
        want = expected[row]
        want = want[: want.index(stop) + 1] if stop in want else want
        assert tokens == want[: len(tokens)] and (len(tokens) == 12 or tokens[-1] == stop)
    assert ended[1] == [stop] and any(len(t) > 1 for t in ended)
    assert min(shape[0] for shape in prefills[1:]) < 5  # the ended rows were dropped


def test_a_decoder_built_after_an_update_samples_the_updated_policy(policy):
    """The decoder copies the weights as they are when it is built: one built after the adapter
    changed follows the change; one built before does not. With the adapter switched off it is
    the base model's."""
    from popi_sdk.train.sampling import policy_decoder

    model, tok = policy
    prompts = _prompts(tok)[:1]
    stale = policy_decoder(model)
    _perturb(model, seed=7, scale=2.0)
    fresh = policy_decoder(model)
    updated = _generate_greedy(model, tok, prompts[0], 12)
    assert _continue(fresh, tok, prompts, [0])[0] == updated[: len(_continue(fresh, tok, prompts, [0])[0])]
    assert _continue(stale, tok, prompts, [0])[0] != _continue(fresh, tok, prompts, [0])[0]
    with model.disable_adapter():
        base = _generate_greedy(model, tok, prompts[0], 12)
        off = _continue(policy_decoder(model), tok, prompts, [0])[0]
    assert off == base[: len(off)] and off != _continue(fresh, tok, prompts, [0])[0]


@pytest.mark.parametrize("settings", [
    {"temperature": 1.0, "top_k": 3},
    {"temperature": 0.7, "top_k": 5, "top_p": 0.6},
    {"temperature": 0.05, "top_p": 0.9},
])
def test_sampled_first_tokens_follow_generates_warpers(policy, settings):
    """Many rows continuing one prompt sample their first token from the distribution
    transformers' warpers give (temperature, then top-k, then top-p): the same support and
    frequencies within sampling error."""
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from popi_sdk.train.sampling import policy_decoder

    model, tok = policy
    prompt = _prompts(tok)[0]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1].float()
    logits = TemperatureLogitsWarper(settings["temperature"])(ids, logits)
    if "top_k" in settings:
        logits = TopKLogitsWarper(settings["top_k"])(ids, logits)
    if "top_p" in settings:
        logits = TopPLogitsWarper(settings["top_p"])(ids, logits)
    expected = torch.softmax(logits, -1)[0]
    support = set(expected.nonzero().flatten().tolist())
    torch.manual_seed(0)
    n = 400
    first = [t[0] for t in _continue(policy_decoder(model), tok, [prompt], [0] * n,
                                     max_new_tokens=1, **settings)]
    assert set(first) <= support
    for token in support:
        p = float(expected[token])
        freq = first.count(token) / n
        # five standard errors, plus two draws of slack for the rare tokens of a wide support
        assert abs(freq - p) < 5 * (p * (1 - p) / n) ** 0.5 + 2 / n, (token, freq, p)


def test_warm_start_groups_equal_generate_greedy_and_fall_back_where_unsupported(policy, monkeypatch):
    """sample_groups returns n summaries per prompt in order, greedy ones equal to
    write_summaries' (generate); a setting the fast decoder lacks sends it to generate."""
    from popi_sdk.train import sampling
    from popi_sdk.train.validation import write_summaries

    model, tok = policy
    clean = lambda s: s.strip()  # noqa: E731
    fast = sampling.sample_groups(model, tok, MESSAGES, n=2, max_tokens=10, clean=clean,
                                  temperature=0.0, rows_per_batch=4)
    slow = write_summaries(model, tok, [m for m in MESSAGES for _ in range(2)], max_tokens=10,
                           clean=clean)
    assert fast == slow and len(fast) == 6

    calls = []
    model.generation_config.min_p = 0.1  # not implemented by the fast decoder
    monkeypatch.setattr(sampling, "policy_decoder", lambda m: calls.append(m) or object())
    fell_back = sampling.sample_groups(model, tok, MESSAGES, n=2, max_tokens=10, clean=clean,
                                       temperature=0.0,
                                       fallback=lambda m, t, msgs, **kw: ["x"] * len(msgs))
    assert fell_back == ["x"] * 6 and calls
    assert sampling.sample_groups(model, tok, [], n=2, max_tokens=10, clean=clean,
                                  temperature=0.8) == []


def test_unsupported_adapters_are_named(tiny_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from popi_sdk.backends.fast_decode import unsupported_reason

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    dora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    assert "DoRA" in unsupported_reason(dora.get_base_model())


def test_grpo_samples_through_the_fast_decoder_with_the_current_adapter(tiny_dir, tmp_path):
    """PopiGRPOTrainer's roll-outs go through the fast decoder built from the adapter as it is at
    that step: greedy completions (end token kept) equal the stock trainer's generate, and the
    prompts are prefilled once, not once per sample."""
    import json

    from trl import GRPOTrainer

    from popi_sdk.backends.fast_decode import FastDecoder
    from popi_sdk.train.config import load_config
    from popi_sdk.train.stage1 import build_trainer

    data = tmp_path / "data"
    data.mkdir()
    user = lambda i: {"user_id": f"u{i}", "signals": {"pairs": [  # noqa: E731
        {"prompt": f"Review lamp number {i}.", "chosen": "Lovely.", "rejected": "Awful."}]},
        "examples": [{"prompt": "Review a mug.", "chosen": "Lovely.", "rejected": "Awful."}]}
    (data / "train.jsonl").write_text("".join(json.dumps(user(i)) + "\n" for i in range(4)))
    cfg = load_config(preset="cpu-small", data=data, out=tmp_path / "run", overrides={
        "model": str(tiny_dir), "precision": "fp32", "lora.enabled": True, "lora.r": 4,
        "stage1.kl_weight": 0, "stage1.batch_size": 2, "stage1.num_generations": 3,
        "stage1.gradient_accumulation_steps": 1, "summary.max_tokens": 8})
    trainer = build_trainer(cfg).trainer
    _perturb(trainer.model, seed=3)
    trainer.generation_config.do_sample = False
    prompts = [trainer.train_dataset[i]["prompt"] for i in (0, 1) for _ in range(3)]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    calls = []
    inner = FastDecoder.generate
    FastDecoder.generate = lambda self, ids, *a, **kw: calls.append(ids.shape[0]) or inner(self, ids, *a, **kw)
    try:
        fast, _ = trainer._generate_single_turn(prompt_ids, None, {}, 3)
    finally:
        FastDecoder.generate = inner
    stock, _ = GRPOTrainer._generate_single_turn(trainer, prompt_ids, None, {}, 3)
    assert calls == [2]  # one call, two distinct prompts
    assert fast == stock and all(fast)
