"""The async twins decide on the event loop (redis.asyncio) exactly as the sync functions do."""
import asyncio
import socket

import pytest
from asgiref.sync import async_to_sync

from levee.keys.services import create_api_key
from levee.shield import api as shield
from levee.shield import limiter, state
from levee.shield.limiter import FixedSubject, Rule
from levee.shield.models import LimitOverride
from tests.personas import ada

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS,
                              "api.key": {"requests": (100, 60), "tokens": (1000, 60), "jobs": 2}}
    return create_api_key(ada(), name="async")[0]


def request_from(rf, ip="198.51.100.20"):
    request = rf.post("/v1/chat/completions")
    request.client_ip = ip
    return request


def test_300_concurrent_async_decisions_against_a_limit_of_100_admit_exactly_100(redis_client):
    subject = FixedSubject("t:async-exact", [Rule("requests", 100, 3600)])

    async def flood():
        decisions = await asyncio.gather(*(limiter.acheck([subject], {"requests": 1}) for _ in range(300)))
        return sum(d.allowed for d in decisions)

    assert async_to_sync(flood)() == 100


def test_async_admission_reserves_tokens_and_takes_and_gives_back_leases(rf, key):
    async def view():
        first = await shield.aadmit_api_request(request_from(rf), key, model="deepseek-chat", estimated_tokens=600)
        second = await shield.aadmit_api_request(request_from(rf), key, model="deepseek-chat", estimated_tokens=600)
        await shield.arelease_lease(first.lease)
        third = await shield.aadmit_api_request(request_from(rf), key, model="deepseek-chat", estimated_tokens=300)
        return first, second, third

    first, second, third = async_to_sync(view)()
    assert first.allowed and first.lease and first.headers["x-ratelimit-remaining-tokens"] == "400"
    assert not second.allowed and second.status == 429 and "tokens per minute" in second.message
    assert third.allowed


def test_async_admission_reads_an_override_from_the_database_once(rf, key, django_assert_num_queries):
    LimitOverride.objects.create(api_key=key, requests_per_minute=1)
    state.forget()

    async def two():
        a = await shield.aadmit_api_request(request_from(rf), key, model="m", estimated_tokens=1)
        await shield.arelease_lease(a.lease)
        b = await shield.aadmit_api_request(request_from(rf), key, model="m", estimated_tokens=1)
        return a.allowed, b.allowed

    with django_assert_num_queries(2):  # the key's and the account's override, then cached
        assert async_to_sync(two)() == (True, False)


def test_async_admission_fails_open_for_paid_keys_without_redis(rf, key, settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.SHIELD_REDIS_URL = f"redis://127.0.0.1:{port}/0"
    state.forget()

    async def view():
        decision = await shield.aadmit_api_request(request_from(rf), key, model="m", estimated_tokens=1)
        await shield.arelease_lease(decision.lease)
        return decision

    decision = async_to_sync(view)()
    assert decision.allowed and decision.degraded
