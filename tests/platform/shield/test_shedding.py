"""Load shedding by priority from queue depth and wait, with hysteresis and a gradual restore."""
import pytest

from levee.shield import shedding
from levee.shield.api import shed

MODEL = "deepseek-chat"


@pytest.fixture
def queue(redis_client, settings, monkeypatch):
    settings.SHIELD_SHED_DEPTH = {"anon_page": 10, "free_chat": 10, "free_api": 20, "paid_api": 40}
    settings.SHIELD_SHED_WAIT_MS = {"anon_page": 5_000, "free_chat": 5_000, "free_api": 10_000, "paid_api": 20_000}
    settings.SHIELD_SHED_HOLD, settings.SHIELD_SHED_RAMP = 10, 30
    clock = {"now": 1000.0}
    monkeypatch.setattr(shedding.time, "monotonic", lambda: clock["now"])

    class Queue:
        def set(self, depth=0, wait_ms=0, advance=1.0):
            redis_client.delete(shedding.queue_name(MODEL))
            if depth:
                redis_client.rpush(shedding.queue_name(MODEL), *[b"job"] * depth)
            redis_client.set(shedding.wait_key(MODEL), wait_ms)
            clock["now"] += advance  # also past the metric cache

        def tick(self, seconds):
            clock["now"] += seconds

        def shed_set(self):
            return {p for p in ["anon_page", "free_chat", "free_api", "paid_api"] if shed(MODEL, p)}

    return Queue()


def test_it_sheds_the_lowest_priorities_first_and_paid_api_last(queue):
    queue.set(depth=5)
    assert queue.shed_set() == set()
    queue.set(depth=12)
    assert queue.shed_set() == {"anon_page", "free_chat"}
    queue.set(depth=25)
    assert queue.shed_set() == {"anon_page", "free_chat", "free_api"}
    queue.set(depth=0, wait_ms=25_000)  # wait alone is enough
    assert queue.shed_set() == {"anon_page", "free_chat", "free_api", "paid_api"}
    assert shed(MODEL, "paid_api") == 15  # Retry-After seconds


def test_it_does_not_flap_at_the_threshold_and_restores_gradually(queue, monkeypatch):
    queue.set(depth=12)
    assert shed(MODEL, "free_chat")
    queue.set(depth=9)  # below the threshold but above 70% of it: still shedding
    assert shed(MODEL, "free_chat")
    queue.set(depth=3)  # calm, but not yet for HOLD seconds
    assert shed(MODEL, "free_chat")
    queue.tick(9)
    queue.set(depth=3, advance=0.6)
    assert shed(MODEL, "free_chat")  # 9.6 s of calm
    queue.set(depth=3, advance=0.6)  # 10.2 s: restored, and the ramp begins
    monkeypatch.setattr(shedding.random, "random", lambda: 0.5)
    assert shed(MODEL, "free_chat")  # ~0% of the ramp: most requests still turned away
    queue.tick(16)
    assert shed(MODEL, "free_chat") is None  # past half the ramp, this request (0.5) is admitted
    queue.tick(20)
    monkeypatch.setattr(shedding.random, "random", lambda: 0.999)
    assert shed(MODEL, "free_chat") is None  # ramp over: everyone


def test_a_spike_during_the_calm_period_resets_it(queue):
    queue.set(depth=12)
    queue.set(depth=3)
    shed(MODEL, "free_chat")
    queue.tick(8)
    queue.set(depth=11)
    assert shed(MODEL, "free_chat")
    queue.tick(8)
    queue.set(depth=3)
    assert shed(MODEL, "free_chat")  # the calm clock started again


@pytest.mark.django_db
def test_anonymous_pages_are_shed_with_503_and_retry_after_but_login_is_not(queue, client, settings):
    settings.SHIELD_MODELS = [MODEL]
    queue.set(depth=12)
    home = client.get("/")
    assert home.status_code == 503 and int(home["Retry-After"]) > 0
    assert client.get("/accounts/login/").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_an_unknown_priority_is_a_programming_error():
    with pytest.raises(ValueError):
        shed(MODEL, "vip")
