"""The limiter itself: GCRA by cost, all-or-nothing over several subjects, leases that lapse."""
import secrets
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from levee.shield import limiter
from levee.shield.limiter import CONCURRENT, FixedSubject, Rule
from ops.bench.harness import concurrent_admissions


def subject(name, *rules):
    return FixedSubject(name, list(rules))


def test_it_admits_exactly_the_limit_then_refuses_with_a_retry_after(redis_client):
    s = subject("t:a", Rule("requests", 5, 60))
    decisions = [limiter.check([s], {"requests": 1}) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.headers["x-ratelimit-remaining-requests"] for d in decisions[:5]] == ["4", "3", "2", "1", "0"]
    refused = decisions[5]
    assert 1 <= refused.retry_after <= 12 and refused.headers["Retry-After"] == str(refused.retry_after)
    assert refused.headers["x-ratelimit-limit-requests"] == "5"


def test_a_refusal_charges_no_subject(redis_client):
    roomy = subject("t:roomy", Rule("requests", 100, 60))
    tight = subject("t:tight", Rule("requests", 1, 60))
    assert limiter.check([roomy, tight], {"requests": 1}).allowed
    for _ in range(10):
        assert not limiter.check([roomy, tight], {"requests": 1}).allowed
    # roomy was charged once, by the one admitted request: 99 left after this one.
    after = limiter.check([roomy], {"requests": 1})
    assert after.headers["x-ratelimit-remaining-requests"] == "98"


def test_tokens_are_weighted_by_cost_and_settled_later(redis_client):
    s = subject("t:tok", Rule("tokens", 1000, 60))
    assert limiter.check([s], {"tokens": 800}).allowed
    assert not limiter.check([s], {"tokens": 300}).allowed  # 800 + 300 > 1000
    limiter.adjust([s], "tokens", estimated=800, actual=100)  # the job used far less: refund 700
    decision = limiter.check([s], {"tokens": 300})
    assert decision.allowed and int(decision.headers["x-ratelimit-remaining-tokens"]) >= 590
    limiter.adjust([s], "tokens", estimated=300, actual=900)  # and an under-estimate is charged
    assert not limiter.check([s], {"tokens": 100}).allowed


def test_concurrency_leases_are_taken_released_and_lapse(redis_client):
    s = subject("t:jobs", Rule("jobs", 2, kind=CONCURRENT))
    first = limiter.check([s], {}, lease_ttl=60)
    second = limiter.check([s], {}, lease_ttl=60)
    assert first.lease and second.lease and not limiter.check([s], {}, lease_ttl=60).allowed
    limiter.release(first.lease)
    assert limiter.check([s], {}, lease_ttl=60).allowed
    # A dead process never releases: its lease lapses by its expiry score.
    short = subject("t:short", Rule("jobs", 1, kind=CONCURRENT))
    assert limiter.check([short], {}, lease_ttl=0.2).allowed
    assert not limiter.check([short], {}, lease_ttl=0.2).allowed
    time.sleep(0.3)
    assert limiter.check([short], {}, lease_ttl=0.2).allowed


def test_keys_of_one_subject_share_a_hash_tag(redis_client):
    s = subject("api.key:7", Rule("requests", 5, 60), Rule("tokens", 50, 60), Rule("jobs", 1, kind=CONCURRENT))
    limiter.check([s], {"requests": 1, "tokens": 5}, lease_ttl=10)
    keys = sorted(k.decode() for k in redis_client.keys("levee:rl:*"))
    assert keys == ["levee:rl:{api.key:7}:jobs", "levee:rl:{api.key:7}:requests", "levee:rl:{api.key:7}:tokens"]


def test_a_peek_charges_nothing(redis_client):
    s = subject("t:peek", Rule("requests", 1, 60))
    assert limiter.check([s], {"requests": 1}, peek=True).allowed
    assert limiter.check([s], {"requests": 1}).allowed
    assert not limiter.check([s], {"requests": 1}, peek=True).allowed


@pytest.mark.parametrize("seconds, text", [(0.12, "120ms"), (1, "1s"), (59.2, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")])
def test_reset_durations_read_like_openais(seconds, text):
    assert limiter.duration(seconds) == text




def test_64_threads_against_a_limit_of_100_admit_exactly_100(redis_client):
    # An hour-long period: refill during the run (~36 s per request) cannot blur the count.
    s = subject("t:exact", Rule("requests", 100, 3600))
    assert concurrent_admissions(lambda: limiter.check([s], {"requests": 1}).allowed) == 100


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 500), costs=st.lists(st.integers(0, 600), min_size=1, max_size=25))
def test_admitted_cost_never_exceeds_the_limit_and_refusals_are_exactly_the_overflows(redis_client, limit, costs):
    s = subject(f"t:prop:{secrets.token_hex(4)}", Rule("tokens", limit, 3600))  # an hour: no refill
    spent = 0
    for cost in costs:
        charged = min(cost, limit)  # an estimate above the limit is charged as the whole limit
        allowed = limiter.check([s], {"tokens": cost}).allowed
        assert allowed == (spent + charged <= limit)
        spent += charged if allowed else 0
    assert spent <= limit


@pytest.fixture(params=[False, True], ids=["one-script", "per-slot"])
def cluster_mode(request, settings):
    settings.SHIELD_REDIS_CLUSTER = request.param
    return request.param


def test_per_slot_decisions_are_all_or_nothing_too(redis_client, cluster_mode):
    roomy = subject("t:roomy2", Rule("requests", 100, 60), Rule("jobs", 5, kind=CONCURRENT))
    tight = subject("t:tight2", Rule("requests", 1, 60))
    assert limiter.check([roomy, tight], {"requests": 1}, lease_ttl=60).allowed
    for _ in range(5):
        assert not limiter.check([roomy, tight], {"requests": 1}, lease_ttl=60).allowed
    after = limiter.check([roomy], {"requests": 1}, lease_ttl=60)
    assert after.headers["x-ratelimit-remaining-requests"] == "98"  # given back every time
    assert redis_client.zcard(roomy.redis_key(Rule("jobs", 5, kind=CONCURRENT))) == 2


def test_per_slot_decisions_are_exact_under_64_threads(redis_client, cluster_mode):
    a = subject("t:exact-a", Rule("requests", 100, 3600))
    b = subject("t:exact-b", Rule("requests", 1000, 3600))
    assert concurrent_admissions(lambda: limiter.check([b, a], {"requests": 1}).allowed) == 100
