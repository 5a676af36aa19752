import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from levee.keys.models import ApiKey
from levee.keys.services import create_api_key, revoke_api_key
from tests.personas import ada, root

pytestmark = pytest.mark.django_db


def _me(client, token=None, header=None):
    headers = {}
    if header is not None:
        headers["HTTP_AUTHORIZATION"] = header
    elif token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client.get("/v1/me", **headers)


def _assert_deepseek_401(response):
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["message"].startswith("Authentication Fails")
    assert response["x-request-id"]


def test_a_valid_key_authenticates_at_both_base_urls(client):
    _, raw = create_api_key(ada(), name="ci")
    for path in ("/v1/me", "/me"):
        response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert response.status_code == 200
        assert response.json()["email"] == "ada@example.com"
        assert response.json()["key"]["prefix"] == raw[:11]


def test_revoked_expired_unknown_and_malformed_keys_get_401(client):
    user = ada()
    revoked, revoked_raw = create_api_key(user)
    revoke_api_key(revoked, by=user)
    expired, expired_raw = create_api_key(user)
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    _, good = create_api_key(user)
    unknown = good[:-1] + ("A" if good[-1] != "A" else "B")
    for token in (revoked_raw, expired_raw, unknown, "sk-short", "not-a-key", good + "x", "sk-" + "é" * 48):
        _assert_deepseek_401(_me(client, token))
    _assert_deepseek_401(_me(client))
    _assert_deepseek_401(_me(client, header=f"Basic {good}"))


def test_a_disabled_account_key_gets_401(client):
    user = ada()
    _, raw = create_api_key(user)
    user.is_active = False
    user.save()
    _assert_deepseek_401(_me(client, raw))


def test_an_admin_revocation_takes_effect_on_the_next_request(client):
    key, raw = create_api_key(ada())
    assert _me(client, raw).status_code == 200
    admin = root()
    from django.test import Client

    staff = Client()
    staff.force_login(admin)
    response = staff.post(reverse("admin:keys_apikey_changelist"),
                          {"action": "revoke", "_selected_action": [key.pk]})
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None and key.revoked_by == admin
    _assert_deepseek_401(_me(client, raw))


def test_last_used_is_written_at_most_once_per_window(client, django_assert_num_queries):
    key, raw = create_api_key(ada())
    assert _me(client, raw).status_code == 200
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    # The next request inside the window reads nothing (the key is memoized) and writes nothing.
    with django_assert_num_queries(0):
        assert _me(client, raw).status_code == 200
    key.refresh_from_db()
    assert key.last_used_at == first


def test_a_revoked_key_stops_at_once_here_and_within_the_memo_bound_elsewhere(client, settings):
    settings.LEVEE_MEMO_SECONDS = 0.3
    user = ada()
    key, raw = create_api_key(user)
    assert _me(client, raw).status_code == 200
    # Another process revokes it (no signal reaches this one): the memo serves it a moment longer...
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert _me(client, raw).status_code == 200
    time.sleep(0.35)  # ...and not past the bound
    assert _me(client, raw).status_code == 401
    other, other_raw = create_api_key(user, name="second")
    assert _me(client, other_raw).status_code == 200
    revoke_api_key(other, by=None)  # revoked in this process: refused at once
    assert _me(client, other_raw).status_code == 401


def test_admin_can_find_keys_by_prefix(client):
    key, raw = create_api_key(ada(), name="findme")
    staff = root()
    client.force_login(staff)
    response = client.get(reverse("admin:keys_apikey_changelist"), {"q": raw[:11]})
    assert response.status_code == 200 and key.prefix in response.content.decode()
