"""Redis unreachable (the shield's client pointed at a closed port): sign-up and login fail closed
with 503; the paid API fails open to a per-process fallback limit and says so in the log; the
free API fails closed; the mode still comes from the database. See docs/adr/0005."""
import logging
import socket

import pytest
from django.urls import reverse

from levee.accounts.models import User
from levee.keys.services import create_api_key
from levee.shield import api as shield
from levee.shield import services, state
from tests.personas import PASSWORD, ada

pytestmark = pytest.mark.django_db


def free_tier(user, api_key):
    return "free_api"


@pytest.fixture
def redis_down(settings):
    with socket.socket() as s:  # a port nobody listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.SHIELD_REDIS_URL = f"redis://127.0.0.1:{port}/0"
    state.forget()


def test_sign_up_fails_closed(client, redis_down):
    page = client.get(reverse("signup"))
    assert page.status_code == 503 and int(page["Retry-After"]) > 0
    posted = client.post(reverse("signup"), {"email": "new@example.com", "password": PASSWORD})
    assert posted.status_code == 503 and b"temporarily unavailable" in posted.content
    assert not User.objects.exists()


def test_login_fails_closed(client, redis_down):
    ada()
    response = client.post(reverse("login"), {"username": "ada@example.com", "password": PASSWORD})
    assert response.status_code == 503 and int(response["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session


def test_the_paid_api_fails_open_to_a_per_process_limit_and_logs_it(client, redis_down, settings, caplog, monkeypatch):
    settings.SHIELD_FALLBACK_REQUESTS_PER_MINUTE = 3
    monkeypatch.setattr("levee.shield.api._last_warning", 0.0)  # the warning is rate-limited to one per 10 s
    _, raw = create_api_key(ada(), name="prod")
    with caplog.at_level(logging.WARNING, logger="levee.shield.api"):
        codes = [client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert any("fails open" in r.getMessage() for r in caplog.records)


def test_the_free_api_fails_closed(client, redis_down, monkeypatch):
    monkeypatch.setattr("levee.shield.api.api_tier", free_tier)
    _, raw = create_api_key(ada(), name="free")
    response = client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_overloaded"


def test_the_job_contract_degrades_without_raising(rf, redis_down):
    key, _ = create_api_key(ada(), name="prod")
    request = rf.post("/v1/chat/completions")
    request.client_ip = "198.51.100.1"
    decision = shield.admit_api_request(request, key, model="deepseek-chat", estimated_tokens=100)
    assert decision.allowed and decision.degraded and decision.lease is None
    shield.settle_tokens(key.id, key.user_id, model="deepseek-chat", estimated=100, actual=50)
    shield.release_lease(decision.lease)
    assert shield.shed("deepseek-chat", "free_chat") is None  # nothing measurable, nothing shed


def test_the_mode_still_comes_from_the_database(redis_down):
    services.set_mode("under_attack", reason="test")
    state.forget()
    assert shield.current_mode() == "under_attack"
