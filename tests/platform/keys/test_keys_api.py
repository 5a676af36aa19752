import json
from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from levee.keys.models import ApiKey
from levee.keys.services import create_api_key
from tests.personas import ada, bob, make_user

pytestmark = pytest.mark.django_db


def _create(client, **body):
    return client.post(reverse("api-keys"), data=json.dumps(body), content_type="application/json")


def test_an_unverified_user_cannot_create_a_key(client):
    client.force_login(bob())
    response = _create(client, name="mine")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "email_not_verified"
    assert ApiKey.objects.count() == 0


def test_the_key_is_shown_once_and_never_stored_in_plaintext(client):
    client.force_login(ada())
    response = _create(client, name="laptop")
    assert response.status_code == 201
    raw = response.json()["key"]
    assert raw.startswith("sk-") and len(raw) >= 35
    # Listing never shows it again.
    listing = client.get(reverse("api-keys"))
    assert raw not in listing.content.decode() and "key" not in listing.json()["data"][0]
    assert listing.json()["data"][0]["prefix"] == raw[:11]
    # No column of any row holds the secret (or its body).
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM keys_apikey")
        rows = cursor.fetchall()
    flat = " ".join(str(value) for row in rows for value in row)
    assert raw not in flat and raw[3:] not in flat and raw[11:] not in flat


def test_the_active_key_cap_is_enforced(client, settings):
    settings.LEVEE_MAX_ACTIVE_KEYS = 2
    client.force_login(ada())
    assert _create(client).status_code == 201
    assert _create(client).status_code == 201
    refused = _create(client)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "too_many_keys"
    assert ApiKey.objects.count() == 2


def test_an_owner_revokes_only_their_own_keys(client):
    owner, other = ada(), make_user("mallory@example.com")
    theirs, _ = create_api_key(other, name="x")
    client.force_login(owner)
    assert client.post(reverse("api-key-revoke", args=[theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    mine = _create(client).json()
    revoked = client.post(reverse("api-key-revoke", args=[mine["id"]]))
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True


def test_the_owner_api_needs_a_session_and_csrf(client):
    assert client.get(reverse("api-keys")).status_code in (401, 403)
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(ada())
    response = strict.post(reverse("api-keys"), data="{}", content_type="application/json")
    assert response.status_code == 403
    assert ApiKey.objects.count() == 0


@pytest.mark.parametrize("body,param", [
    ({"name": "n" * 65}, "name"),
    ({"name": "a\r\nb"}, "name"),
    ({"expires_at": "not a date"}, "expires_at"),
    ({"name": ["list"]}, "name"),
])
def test_bad_fields_get_a_clean_error_naming_the_parameter(client, body, param):
    client.force_login(ada())
    response = _create(client, **body)
    assert response.status_code in (400, 422)
    assert response.json()["error"]["param"] == param
    assert ApiKey.objects.count() == 0


def test_invalid_json_gets_invalid_format(client):
    client.force_login(ada())
    response = client.post(reverse("api-keys"), data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_format"
    assert ApiKey.objects.count() == 0


def test_an_expiry_in_the_past_is_refused(client):
    client.force_login(ada())
    response = _create(client, expires_at=(timezone.now() - timedelta(hours=1)).isoformat())
    assert response.status_code == 422
    assert ApiKey.objects.count() == 0
