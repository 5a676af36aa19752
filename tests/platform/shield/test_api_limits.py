"""Key-authenticated API responses carry x-ratelimit-* headers; over the limit they get a 429 in
the API's error format; per-account and per-key overrides from admin replace the defaults."""
import json

import pytest
from asgiref.sync import async_to_sync

from levee.keys.services import create_api_key
from levee.shield import api as shield
from levee.shield.models import LimitOverride
from tests.personas import ada

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_and_secret():
    return create_api_key(ada(), name="test")


def me(client, raw, **extra):
    return client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}", **extra)


def test_every_key_authenticated_response_carries_rate_limit_headers(client, key_and_secret, settings):
    _, raw = key_and_secret
    response = me(client, raw)
    assert response.status_code == 200
    assert response["x-ratelimit-limit-requests"] == str(settings.SHIELD_LIMITS["api.key"]["requests"][0])
    assert response["x-ratelimit-remaining-requests"] == str(settings.SHIELD_LIMITS["api.key"]["requests"][0] - 1)
    assert response["x-ratelimit-reset-requests"].endswith("s")
    assert response["x-request-id"]


def test_over_the_limit_it_answers_429_in_the_api_error_format(client, key_and_secret, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "api.key": {**settings.SHIELD_LIMITS["api.key"], "requests": (2, 60)}}
    _, raw = key_and_secret
    assert [me(client, raw).status_code for _ in range(3)] == [200, 200, 429]
    refused = me(client, raw)
    body = refused.json()["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == "rate_limit_exceeded"
    assert "requests per minute" in body["message"]
    assert int(refused["Retry-After"]) >= 1
    assert refused["x-ratelimit-remaining-requests"] == "0" and refused["x-ratelimit-limit-requests"] == "2"


def test_a_key_override_replaces_the_default_limit(client, key_and_secret, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "api.key": {**settings.SHIELD_LIMITS["api.key"], "requests": (2, 60)}}
    key, raw = key_and_secret
    LimitOverride.objects.create(api_key=key, requests_per_minute=5, note="partner pilot")
    assert [me(client, raw).status_code for _ in range(6)] == [200] * 5 + [429]


def test_an_account_override_edited_in_admin_reaches_running_processes(
        client, key_and_secret, settings, django_capture_on_commit_callbacks):
    settings.SHIELD_STATE_CACHE_SECONDS = 0
    key, raw = key_and_secret
    assert me(client, raw)["x-ratelimit-limit-requests"] == str(settings.SHIELD_LIMITS["api.key"]["requests"][0])
    with django_capture_on_commit_callbacks(execute=True):
        LimitOverride.objects.create(user=key.user, requests_per_minute=1, note="abuse report 123")
    assert me(client, raw).status_code == 429  # the account's 1/min was already spent


def test_an_unauthenticated_or_session_request_is_not_counted(client, redis_client):
    assert client.get("/v1/me").status_code == 401
    assert not redis_client.keys("levee:rl:*")


def test_admit_reserves_tokens_takes_a_lease_and_settles(rf, key_and_secret, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS,
                              "api.key": {"requests": (100, 60), "tokens": (10_000, 60), "jobs": 1}}
    key, _ = key_and_secret
    request = rf.post("/v1/chat/completions")
    request.client_ip = "198.51.100.7"
    decision = shield.admit_api_request(request, key, model="deepseek-chat", estimated_tokens=8000)
    assert decision.allowed and decision.lease
    assert decision.headers["x-ratelimit-remaining-tokens"] == "2000"
    assert request.shield_decision is decision

    second = rf.post("/v1/chat/completions")
    second.client_ip = "198.51.100.7"
    refused = shield.admit_api_request(second, key, model="deepseek-chat", estimated_tokens=10)
    assert not refused.allowed and refused.lease is None  # one job at a time for this key
    response = refused.response()
    assert response.status_code == 429 and "concurrent" in json.loads(response.content)["error"]["message"]

    shield.settle_tokens(key.id, key.user_id, model="deepseek-chat", estimated=8000, actual=500)
    shield.release_lease(decision.lease)
    third = rf.post("/v1/chat/completions")
    third.client_ip = "198.51.100.7"
    again = shield.admit_api_request(third, key, model="deepseek-chat", estimated_tokens=9000)
    assert again.allowed  # 500 used + 9000 reserved fits in 10 000 once the estimate is corrected


def test_the_async_twins_work_from_an_async_view(rf, key_and_secret):
    key, _ = key_and_secret
    request = rf.post("/v1/chat/completions")
    request.client_ip = "198.51.100.8"

    async def view():
        decision = await shield.aadmit_api_request(request, key, model="deepseek-chat", estimated_tokens=10)
        await shield.arelease_lease(decision.lease)
        return decision.allowed, await shield.acurrent_mode(), await shield.ashed("deepseek-chat", "paid_api")

    assert async_to_sync(view)() == (True, "normal", None)


def test_a_request_the_drf_throttle_already_counted_is_not_counted_again_at_admission(rf, key_and_secret, settings):
    from levee.shield.api import admit_plain_request

    key, _ = key_and_secret
    limit = settings.SHIELD_LIMITS["api.key"]["requests"][0]
    request = rf.post("/v1/chat/completions")
    request.client_ip = "198.51.100.9"
    admit_plain_request(request, key)
    decision = shield.admit_api_request(request, key, model="deepseek-chat", estimated_tokens=10)
    assert decision.allowed and decision.headers["x-ratelimit-remaining-requests"] == str(limit - 1)
    assert "x-ratelimit-remaining-tokens" in decision.headers
    later = rf.get("/v1/me")
    later.client_ip = "198.51.100.9"
    assert admit_plain_request(later, key).headers["x-ratelimit-remaining-requests"] == str(limit - 2)
