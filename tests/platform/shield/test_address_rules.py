"""Deny and allow rules from admin apply before anything else, expire, and reach every process."""
from datetime import timedelta

import pytest
from django.utils import timezone

from levee.keys.services import create_api_key
from levee.shield import state
from levee.shield.models import AddressRule
from tests.personas import ada, root

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_refresh(settings):
    settings.SHIELD_STATE_CACHE_SECONDS = 0


def add_rule(capture, **fields):
    with capture(execute=True):
        return AddressRule.objects.create(reason="test", **fields)


def test_a_denied_network_gets_403_everywhere(client, django_capture_on_commit_callbacks):
    add_rule(django_capture_on_commit_callbacks, network="203.0.113.0/24", action="deny")
    page = client.get("/", REMOTE_ADDR="203.0.113.9")
    assert page.status_code == 403
    api = client.get("/v1/me", REMOTE_ADDR="203.0.113.9")
    assert api.status_code == 403 and api.json()["error"]["code"] == "address_denied"
    assert client.get("/", REMOTE_ADDR="203.0.114.9").status_code == 200


def test_a_rule_on_an_ipv4_network_catches_its_ipv4_mapped_form(client, django_capture_on_commit_callbacks):
    add_rule(django_capture_on_commit_callbacks, network="203.0.113.0/24", action="deny")
    assert client.get("/", REMOTE_ADDR="::ffff:203.0.113.9").status_code == 403
    api = client.get("/v1/me", REMOTE_ADDR="::ffff:203.0.113.9")
    assert api.status_code == 403 and api.json()["error"]["code"] == "address_denied"


def test_an_expired_rule_no_longer_applies(client, django_capture_on_commit_callbacks):
    add_rule(django_capture_on_commit_callbacks, network="2001:db8::/32", action="deny",
             expires_at=timezone.now() + timedelta(seconds=1.5))  # room for a slow first request
    assert client.get("/", REMOTE_ADDR="2001:db8::5").status_code == 403
    import time

    time.sleep(1.6)
    assert client.get("/", REMOTE_ADDR="2001:db8::5").status_code == 200


def test_an_allowed_network_skips_address_limits_but_not_the_keys_own(client, settings, django_capture_on_commit_callbacks):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "api.address": {"requests": (1, 60)}}
    _, raw = create_api_key(ada(), name="office")
    add_rule(django_capture_on_commit_callbacks, network="192.0.2.0/24", action="allow")
    codes = [client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}", REMOTE_ADDR="192.0.2.5").status_code
             for _ in range(3)]
    assert codes == [200, 200, 200]
    assert client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}", REMOTE_ADDR="198.51.100.1").status_code == 200
    assert client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}", REMOTE_ADDR="198.51.100.1").status_code == 429


def test_deleting_a_rule_in_admin_lifts_it(client, django_capture_on_commit_callbacks):
    rule = add_rule(django_capture_on_commit_callbacks, network="203.0.113.7", action="deny")
    assert client.get("/", REMOTE_ADDR="203.0.113.7").status_code == 403
    admin = client
    admin.force_login(root())
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(f"/admin/shield/addressrule/{rule.pk}/delete/", {"post": "yes"}, REMOTE_ADDR="127.0.0.1")
    assert client.get("/", REMOTE_ADDR="203.0.113.7").status_code == 200


def test_a_process_that_finds_no_mirror_reads_the_rules_from_the_database(redis_client):
    AddressRule.objects.create(network="10.9.0.0/16", action="deny", reason="test")
    redis_client.delete(state.RULES_KEY)
    state.forget()
    assert state.address_verdict("10.9.8.7") == "deny"
    assert redis_client.get(state.RULES_KEY)


def test_probes_are_exempt_even_from_a_deny_rule(client, settings, django_capture_on_commit_callbacks):
    settings.LEVEE_UNLIMITED_PATHS = ["/healthz"]
    add_rule(django_capture_on_commit_callbacks, network="127.0.0.0/8", action="deny")
    assert client.get("/", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/healthz", REMOTE_ADDR="127.0.0.1").status_code == 200
