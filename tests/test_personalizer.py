import pytest

from popi_sdk import Personalizer, UserSignals
from popi_sdk.data import read_users
from popi_sdk.errors import InputError, NotFoundError

pytestmark = pytest.mark.model

KID = UserSignals(
    user_id="kid",
    pairs=[{"prompt": "Why is the sky blue?", "chosen": "Blue light bounces around the most!",
            "rejected": "Rayleigh scattering scales with the inverse fourth power of wavelength."}],
    persona="I am 8 years old.",
)


class CallCounter:
    """Counts calls of the real torch model's ``generate`` (the model still runs)."""

    def __init__(self, method):
        self.calls = 0
        self.original = method

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


@pytest.fixture
def personalizer(smollm2, store_path, monkeypatch):
    # The untrained embedded model as summarizer too: one backend, so one counter sees every call.
    p = Personalizer(summarizer="hf", store=store_path, summary_tokens=24)
    counter = CallCounter(smollm2.generate_batch)  # every local model call goes through it
    monkeypatch.setattr(smollm2, "generate_batch", counter)
    p.counter = counter
    return p


def test_summarize_writes_a_real_summary_then_hits_the_cache(personalizer):
    summary = personalizer.summarize(KID)
    assert summary.text and summary.n_tokens > 0 and summary.summarizer == "hf"
    assert personalizer.counter.calls == 1
    again = personalizer.summarize(KID)
    assert again == summary and personalizer.counter.calls == 1  # cache hit: no model call
    changed = KID.model_copy(update={"persona": "I am 9 years old."})
    personalizer.summarize(changed)
    assert personalizer.counter.calls == 2  # changed signals recompute
    assert personalizer.get_summary("kid").signals_hash == personalizer.cache_hash(changed)
    longer = Personalizer(store=personalizer.store, summary_tokens=32)
    assert longer.cached(changed) is None  # other length settings: not the same summary


def test_the_store_survives_a_new_personalizer(personalizer, store_path):
    summary = personalizer.summarize(KID)
    fresh = Personalizer(summarizer="hf", store=store_path, summary_tokens=24)  # same settings as the fixture
    assert fresh.cached(KID) == summary


def test_generate_with_stored_summary_and_forget(personalizer):
    personalizer.summarize(KID)
    answer = personalizer.generate("What is rain?", user_id="kid", max_new_tokens=12)
    assert answer.text and answer.summary.user_id == "kid" and str(answer) == answer.text
    plain = personalizer.generate("What is rain?", max_new_tokens=12)
    assert plain.summary is None
    assert personalizer.forget("kid") == 1
    with pytest.raises(NotFoundError, match="call summarize"):
        personalizer.generate("What is rain?", user_id="kid")


def test_summarize_many_batches_and_keeps_order(personalizer, demo_users_file):
    rows = read_users(demo_users_file)
    personalizer.summarize(rows[1])
    calls = personalizer.counter.calls
    summaries = personalizer.summarize_many(rows, progress=False)
    assert [s.user_id for s in summaries] == [r.user_id for r in rows]
    assert personalizer.counter.calls == calls + 1  # two uncached users, one batched call


def test_bad_inputs(personalizer):
    with pytest.raises(InputError, match="prompt must be a non-empty string"):
        personalizer.generate("   ")
    with pytest.raises(InputError, match="field pairs"):
        personalizer.summarize({"user_id": "x", "pairs": "not a list"})
