"""Scoring against a slow one-sequence-at-a-time reference on the bundled model."""

from __future__ import annotations

import math

import pytest

from popi_sdk.errors import InputError
from popi_sdk.objective import popi_reward
from popi_sdk.scoring import ReferenceCache, SequenceScorer, common_prefix_length, summary_rewards
from popi_sdk.signals import PreferencePair
from popi_sdk.templates import prompt_only_messages, summary_messages

pytestmark = pytest.mark.model

PAIRS = [
    PreferencePair(
        prompt="Write a short review of a pizza place.",
        chosen="Great crust, friendly staff, and the basil on top was fresh. I will be back!",
        rejected="The pizza was cold and the waiter ignored us for twenty minutes.",
    ),
    PreferencePair(
        prompt="Review the movie Up.",
        chosen="A warm, funny film.",
        rejected="Up is a long, meandering story that never earns its emotional beats, and I left tired.",
    ),
    PreferencePair(
        prompt="What is rain?",
        chosen="Water falling from clouds.",
        rejected="Rain is liquid water in droplets that condense from atmospheric vapor and fall.",
    ),
]
SUMMARIES = ["The user prefers positive, upbeat reviews.", "The user likes very short answers."]


_SLOW: dict[tuple, float] = {}


def slow_logprob(model, tokenizer, context, response) -> float:
    """Memoized :func:`_slow_logprob` (several tests compare against the same sequences)."""
    key = (tuple((m["role"], m["content"]) for m in context), response)
    if key not in _SLOW:
        _SLOW[key] = _slow_logprob(model, tokenizer, context, response)
    return _SLOW[key]


def _slow_logprob(model, tokenizer, context, response) -> float:
    """The obvious way: template the full conversation, find the response after the prompt's
    tokens, one sequence per forward pass, log-softmax over every position."""
    import torch

    prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*context, {"role": "assistant", "content": response}], tokenize=False
    )
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids
    while tokenizer.decode(f_ids[-1:]).strip() == "":  # the newline after the end-of-turn token
        f_ids = f_ids[:-1]
    with torch.no_grad():
        # float64: a float32 log-softmax over the 49,152-token vocabulary is itself off by up to
        # ~2e-4 per sequence, more than the tolerance the fast path is held to.
        logp = torch.log_softmax(model(torch.tensor([f_ids])).logits[0].double(), dim=-1)
    return sum(float(logp[i - 1, f_ids[i]]) for i in range(len(p_ids), len(f_ids)))


@pytest.fixture(scope="module")
def scorer(smollm2):
    return SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=2)


def _cases():
    """Summary-conditioned and prompt-only contexts of different lengths (so batches pad)."""
    contexts, responses = [], []
    for pair in PAIRS[:2]:
        contexts += [summary_messages(pair.prompt, SUMMARIES[0])] * 2 + [prompt_only_messages(pair.prompt)] * 2
        responses += [pair.chosen, pair.rejected] * 2
    return contexts, responses


def test_batched_logprobs_match_slow_reference(scorer, smollm2):
    contexts, responses = _cases()
    fast = scorer.logprobs(contexts, responses)
    assert fast.dtype.is_floating_point and fast.shape == (len(responses),)
    slow = [slow_logprob(smollm2.model, smollm2.tokenizer, c, y) for c, y in zip(contexts, responses)]
    for got, want in zip(fast.tolist(), slow):
        assert got == pytest.approx(want, abs=1e-4)


def test_shared_and_grouped_prefixes_give_the_same_numbers_with_fewer_tokens(smollm2):
    pair = PAIRS[0]
    context = summary_messages(pair.prompt, SUMMARIES[0])
    flat = SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=4)
    shared = SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=4)
    plain = flat.logprobs([context, context], [pair.chosen, pair.rejected])
    assert shared.logprobs_shared(context, [pair.chosen, pair.rejected]).tolist() == pytest.approx(
        plain.tolist(), abs=1e-4
    )

    contexts = [summary_messages(p.prompt, SUMMARIES[1]) for p in PAIRS[1:]]
    flat.forward_tokens = shared.forward_tokens = 0
    grouped = shared.logprobs_grouped(contexts, [[p.chosen, p.rejected] for p in PAIRS[1:]])
    every = flat.logprobs(
        [c for c in contexts for _ in range(2)], [y for p in PAIRS[1:] for y in (p.chosen, p.rejected)]
    )
    assert [v for g in grouped for v in g.tolist()] == pytest.approx(every.tolist(), abs=1e-4)
    assert shared.forward_tokens < flat.forward_tokens


def test_forest_of_summaries_matches_one_sequence_at_a_time(smollm2):
    # three summaries of different lengths, two per prefix batch: the prefixes pad and chunk
    scorer = SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=2)
    summaries = [SUMMARIES[0], SUMMARIES[1] + " They dislike filler and long introductions.", "Short."]
    groups = [([summary_messages(PAIRS[0].prompt, z)], [[PAIRS[0].chosen, PAIRS[0].rejected]]) for z in summaries]
    forest = scorer.logprobs_forest(groups)
    flat = SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=2)
    for (contexts, responses), got in zip(groups, forest):
        want = flat.logprobs([contexts[0]] * 2, responses[0])
        assert got[0].tolist() == pytest.approx(want.tolist(), abs=1e-4)


def test_forest_runs_the_words_before_every_summary_once(smollm2, monkeypatch):
    import popi_sdk.scoring as scoring

    summaries = [SUMMARIES[0], SUMMARIES[1] + " They dislike filler.", "Short.", SUMMARIES[1]]
    groups = [([summary_messages(p.prompt, z) for p in PAIRS[:2]],
               [[p.chosen, p.rejected] for p in PAIRS[:2]]) for z in summaries]
    rooted = SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=2)
    got = rooted.logprobs_forest(groups)
    monkeypatch.setattr(scoring, "MIN_ROOT_TOKENS", 10**6)  # no root: each prefix runs whole
    whole = SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=2)
    want = whole.logprobs_forest(groups)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert a.tolist() == pytest.approx(b.tolist(), abs=1e-4)
    # the system message's words before the summary (tens of tokens) ran once, not 4 times
    prompts = [whole.encode(whole.prompt_text(ctx)) for contexts, _ in groups for ctx in contexts]
    root = common_prefix_length(prompts)
    assert root >= 8
    assert whole.forward_tokens - rooted.forward_tokens >= 2 * root


def test_response_tokens_are_located_exactly(scorer, smollm2):
    tok = smollm2.tokenizer
    prompt_ids, response_ids = scorer.encode_pair(prompt_only_messages("Hi"), "Hello there!")
    assert tok.decode(response_ids) == "Hello there!" + tok.eos_token
    assert tok.decode(prompt_ids).endswith("<|im_start|>assistant\n")


def test_reference_cache_computes_each_example_once(smollm2):
    scorer = SequenceScorer(smollm2.model, smollm2.tokenizer)
    ref = ReferenceCache(scorer, "smollm2")
    prompts = [p.prompt for p in PAIRS[:2] for _ in range(2)]
    responses = [y for p in PAIRS[:2] for y in (p.chosen, p.rejected)]
    first = ref.get(prompts, responses)
    tokens = scorer.forward_tokens
    again = ref.get(prompts[::-1], responses[::-1])
    assert scorer.forward_tokens == tokens  # nothing recomputed
    assert again.tolist() == first.tolist()[::-1]
    assert (ref.misses, ref.hits, len(ref)) == (4, 4, 4)
    slow = slow_logprob(smollm2.model, smollm2.tokenizer, prompt_only_messages(prompts[0]), responses[0])
    assert float(first[0]) == pytest.approx(slow, abs=1e-4)


# IPO squares Δ, so a 1e-4 agreement of log-probs becomes ~2|Δ - 1/(2β)|·1e-4 in the reward.
@pytest.mark.parametrize("loss_type,tol", [("dpo", 1e-4), ("ipo", 2e-3)])
def test_summary_rewards_match_the_objective_on_slow_log_probs(smollm2, loss_type, tol):
    import torch

    scorer = SequenceScorer(smollm2.model, smollm2.tokenizer, batch_size=3)
    ref = ReferenceCache(scorer, "smollm2")
    examples = [PAIRS[:2], PAIRS[:1]]  # the slow log-probs are memoized across both loss types
    got = summary_rewards(scorer, ref, examples, SUMMARIES[:1] * 2, beta=0.1, loss_type=loss_type)

    def slow(context, y):
        return torch.tensor(slow_logprob(smollm2.model, smollm2.tokenizer, context, y))

    for reward, pairs, summary in zip(got, examples, SUMMARIES[:1] * 2):
        per_example = [
            popi_reward(
                slow(summary_messages(p.prompt, summary), p.chosen),
                slow(summary_messages(p.prompt, summary), p.rejected),
                slow(prompt_only_messages(p.prompt), p.chosen),
                slow(prompt_only_messages(p.prompt), p.rejected),
                beta=0.1,
                loss_type=loss_type,
            )
            for p in pairs
        ]
        assert reward == pytest.approx(float(sum(per_example) / len(per_example)), abs=tol)


def test_prompt_dependent_rewards_use_the_matching_example(smollm2):
    scorer = SequenceScorer(smollm2.model, smollm2.tokenizer)
    ref = ReferenceCache(scorer, "smollm2")
    [only] = summary_rewards(scorer, ref, [PAIRS[:1]], SUMMARIES[:1], beta=0.1)
    [picked] = summary_rewards(
        scorer, ref, [PAIRS[:2]], SUMMARIES[:1], beta=0.1, prompts_for_summary=[PAIRS[0].prompt]
    )
    assert picked == pytest.approx(only, abs=1e-5)
    with pytest.raises(InputError, match="no examples"):
        summary_rewards(scorer, ref, [PAIRS], SUMMARIES[:1], beta=0.1, prompts_for_summary=["?"])


def test_bf16_is_close_to_float32(smollm2):
    contexts, responses = _cases()
    contexts, responses = contexts[:2], responses[:2]
    fp32 = SequenceScorer(smollm2.model, smollm2.tokenizer).logprobs(contexts, responses)
    bf16 = SequenceScorer(smollm2.model, smollm2.tokenizer, bf16=True).logprobs(contexts, responses)
    for a, b in zip(fp32.tolist(), bf16.tolist()):
        assert math.isfinite(b) and abs(a - b) <= 0.05 * abs(a) + 1.0


def test_bad_inputs_say_how_to_fix(scorer):
    with pytest.raises(InputError, match="same length"):
        scorer.logprobs([prompt_only_messages("x")], ["a", "b"])
    with pytest.raises(InputError, match="same length"):
        summary_rewards(scorer, ReferenceCache(scorer, "m"), [PAIRS], [], beta=0.1)
    with pytest.raises(InputError, match="batch_size"):
        SequenceScorer(scorer.model, scorer.tokenizer, batch_size=0)


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5], [6]]) == 0
    assert common_prefix_length([]) == 0
