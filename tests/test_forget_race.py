"""``forget`` wins over writes in flight: an ``add_signals``, ``summarize`` or ``edit_summary``
that began before a user was forgotten stores nothing afterwards, in every store.

The summarizer is a registered backend (the same route as a plugin) that holds every call at a
gate until the test has forgotten the users, so each write is in flight, between taking its lease
and storing its result, when ``forget`` runs."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from popi_sdk import Personalizer, UserSignals
from popi_sdk.backends import Backend, register_backend
from popi_sdk.errors import UserForgottenError

_TAG = re.compile(r"\[(u\d+)\]")


class GatedSummarizer(Backend):
    """Writes a summary quoting the user's tag; while ``armed``, every call (``generate`` and
    ``count_tokens``) waits at the gate until ``release`` is set."""

    name = "gated"

    def __init__(self) -> None:
        self.armed = False
        self.release = threading.Event()
        self.entered = 0
        self._cond = threading.Condition()

    def _wait(self) -> None:
        with self._cond:
            if not self.armed:
                return
            self.entered += 1
            self._cond.notify_all()
        assert self.release.wait(30), "the test never released the gate"

    def wait_entered(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.entered >= n, 30), (
                f"only {self.entered} of {n} writes reached the summarizer"
            )

    def arm(self) -> None:
        with self._cond:
            self.armed, self.entered = True, 0
            self.release.clear()

    def disarm(self) -> None:
        with self._cond:
            self.armed = False
        self.release.set()

    def generate(self, messages, options) -> str:
        self._wait()
        tags = _TAG.findall(" ".join(m["content"] for m in messages))
        return f"The user {tags[0] if tags else '?'} likes short answers."

    def count_tokens(self, text: str) -> int:
        self._wait()
        return len(text.split())


GATE = GatedSummarizer()
register_backend("gated", lambda model, **kw: GATE, help="test summarizer held at a gate")


def _signals(user: str, i: int) -> dict:
    return {"pairs": [{"prompt": f"[{user}] question {i}", "chosen": f"[{user}] short {i}",
                       "rejected": f"[{user}] a long answer {i}"}]}


def race(p: Personalizer, users: list[str], rounds: int, pool: ThreadPoolExecutor) -> int:
    """Each round: seed the users, start three writes per user that stop at the gate, forget
    every user, open the gate; every write must fail and leave nothing. Returns forget calls."""
    forgets = 0
    for r in range(rounds):
        for u in users:
            p.edit_summary(u, f"[{u}] seeded in round {r}.")
        GATE.arm()
        writes = []
        for u in users:
            writes.append(pool.submit(p.add_signals, u, _signals(u, r), replace_user_edit=True))
            writes.append(pool.submit(
                p.summarize, UserSignals(user_id=u, **_signals(u, r + 1000)), refresh=True,
                replace_user_edit=True))
            writes.append(pool.submit(p.edit_summary, u, f"[{u}] edited in round {r}."))
        try:
            GATE.wait_entered(len(writes))
            for u in users:
                assert p.forget(u) >= 1
                forgets += 1
        finally:
            GATE.disarm()
        for w in writes:
            with pytest.raises(UserForgottenError):
                w.result(timeout=60)
        for u in users:
            assert p.history(u) == [] and p.store.signals(u) is None, (
                f"round {r}: a write in flight came back after forget({u!r})"
            )
    assert p.store.user_ids() == []
    return forgets


@pytest.fixture
def personalizer(store_spec):
    p = Personalizer(summarizer="gated", generator="gated", store=store_spec)
    yield p
    close = getattr(p.store, "close", None)
    if close is not None:
        close()


def test_forget_wins_over_writes_in_flight(personalizer):
    users = ["u1", "u2"]
    with ThreadPoolExecutor(max_workers=3 * len(users)) as pool:
        assert race(personalizer, users, rounds=3, pool=pool) == 6


def test_a_write_after_forget_starts_afresh(personalizer):
    p = personalizer
    p.add_signals("u1", _signals("u1", 1))
    assert p.forget("u1") == 1
    assert p.add_signals("u1", _signals("u1", 2)).version == 1  # the user may come back


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_thousand_forgets_racing_writes_leave_nothing(kind, tmp_path, request):
    spec = str(tmp_path / "s.sqlite") if kind == "sqlite" else request.getfixturevalue("postgres_url")
    p = Personalizer(summarizer="gated", generator="gated", store=spec)
    users = [f"u{i}" for i in range(10)]
    with ThreadPoolExecutor(max_workers=3 * len(users)) as pool:
        assert race(p, users, rounds=100, pool=pool) == 1000


def test_over_http_a_write_in_flight_when_forgotten_is_a_409(tmp_path):
    """``POST /signals`` held at the summarizer while ``DELETE`` runs: the client gets 409
    ``user_forgotten``, and the next chat is not personalized with the forgotten signals."""
    pytest.importorskip("fastapi")
    import httpx2

    from popi_sdk.serve import ServeConfig, create_app, parse_generators
    from popi_sdk.serve.background import running

    p = Personalizer(summarizer="gated", generator="gated", store=str(tmp_path / "s.sqlite"))
    config = ServeConfig(generators=parse_generators(["gated"]), max_retries=0)
    with running(create_app(p, config)) as base, ThreadPoolExecutor(1) as pool:
        http = httpx2.Client(base_url=base + "/v1", timeout=60)
        GATE.arm()
        try:
            posted = pool.submit(http.post, "/users/u1/signals", json={"signals": _signals("u1", 1)})
            GATE.wait_entered(1)
            assert http.delete("/users/u1").json() == {"user_id": "u1", "deleted": 0}
        finally:
            GATE.disarm()
        answer = posted.result(timeout=60)
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "user_forgotten"
        chat = http.post("/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                    "user": "u1"})
        assert chat.headers["x-popi-personalized"] == "false"
    assert p.history("u1") == [] and p.store.signals("u1") is None
