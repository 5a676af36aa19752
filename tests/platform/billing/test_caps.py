"""Per-key spend caps (levee.billing.caps): counted at hold time, exact under concurrency, shown
in GET /api/keys and on the keys page, refused with a body that names the cap."""
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from levee.billing import caps, services
from levee.billing.models import AuditEvent, Hold, KeySpend
from levee.keys.services import create_api_key
from tests.personas import ada
from tests.platform.billing.conftest import MODEL, fund, make_prices
from tests.platform.billing.test_concurrency import _race

USAGE = {"prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 1000, "completion_tokens": 10}
EACH = 1000 * 280 + 10 * 420  # what USAGE costs at the test prices


def _hold(user, key, i=0, **kw):
    return services.place_hold(user=user, api_key=key, model=MODEL, prompt_tokens=1000, max_tokens=1000,
                               request_id=f"r-{i}", deadline=timezone.now() + timedelta(minutes=5), **kw)


def _settle(hold):
    now = timezone.now()
    return services.settle_hold(hold.pk, **USAGE, started_at=now, finished_at=now)


@pytest.mark.django_db(transaction=True)
def test_sixty_four_parallel_requests_against_a_daily_cap_admit_exactly_what_fits(settings, hold_path):
    settings.LEVEE_CURRENCY = "USD"
    make_prices()
    user = ada()
    one = services.estimate_max_cost(MODEL, 1000, 1000)
    fund(user, 100 * one)  # the wallet covers all 64: only the cap can stop them
    key, _ = create_api_key(user, name="capped")
    caps.set_caps(key, daily=20 * one + one // 2, monthly=None, lifetime=None, actor=user, source="test")

    outcomes = _race(64, lambda i: _hold(user, key, i))
    placed = [o for o in outcomes if isinstance(o, Hold)]
    refused = [o for o in outcomes if isinstance(o, services.SpendCapReached)]
    assert len(placed) == 20 and len(refused) == 44, outcomes
    assert all(r.period == "day" for r in refused)
    row = KeySpend.objects.get(api_key=key, period="day")
    assert row.spent_nano == 20 * one
    assert services.reconcile() == []

    # Settling charges less than was held: the counter follows the charges, and room opens again.
    _race(20, lambda i: _settle(placed[i]))
    row.refresh_from_db()
    assert row.spent_nano == 20 * EACH
    assert isinstance(_hold(user, key, 99), Hold)
    assert services.reconcile() == []


@pytest.mark.django_db
def test_each_period_is_enforced_and_the_refusal_names_the_cap(prices):
    user = ada()
    one = services.estimate_max_cost(MODEL, 1000, 1000)
    fund(user, 100 * one)
    key, _ = create_api_key(user)
    caps.set_caps(key, daily=None, monthly=3 * one, lifetime=None, actor=user, source="test")
    for i in range(3):
        _hold(user, key, i)
    with pytest.raises(services.SpendCapReached) as refused:
        _hold(user, key, 3)
    body = refused.value.api_error().body["error"]
    assert body["code"] == "monthly_spend_cap_reached" and body["param"] == "monthly_cap"
    assert "monthly spend cap of" in body["message"] and "USD" in body["message"]
    assert refused.value.status == 402
    # Nothing of the refused request was written.
    assert Hold.objects.filter(api_key=key).count() == 3
    assert services.wallet_for(user).held_nano == 3 * one

    # A lifetime cap below what is already reserved refuses at once; releasing makes room.
    caps.set_caps(key, daily=None, monthly=None, lifetime=2 * one, actor=user, source="test")
    assert KeySpend.objects.get(api_key=key, period="lifetime").spent_nano == 3 * one  # seeded from the holds
    assert not KeySpend.objects.filter(api_key=key, period="month").exists()
    with pytest.raises(services.SpendCapReached) as refused:
        _hold(user, key, 4)
    assert refused.value.code == "lifetime_spend_cap_reached"
    for hold in Hold.objects.filter(api_key=key):
        services.release_hold(hold.pk, reason="test")
    assert KeySpend.objects.get(api_key=key, period="lifetime").spent_nano == 0
    _hold(user, key, 5)
    # Another key of the same account is not capped.
    other, _ = create_api_key(user)
    for i in range(3):
        _hold(user, other, 10 + i)
    assert services.reconcile() == []


@pytest.mark.django_db
def test_a_day_counter_starts_afresh_each_utc_day_and_late_settles_count(prices):
    user = ada()
    one = services.estimate_max_cost(MODEL, 1000, 1000)
    fund(user, 100 * one)
    key, _ = create_api_key(user)
    caps.set_caps(key, daily=one, monthly=None, lifetime=None, actor=user, source="test")
    hold = _hold(user, key)
    with pytest.raises(services.SpendCapReached):
        _hold(user, key, 1)
    # The sweep releases it, then a late settle still charges: the counter counts the charge.
    services.release_hold(hold.pk, reason="deadline passed")
    _settle(hold)
    assert KeySpend.objects.get(api_key=key, period="day").spent_nano == EACH
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    caps.reserve(key, one, tomorrow)  # a new day's row, from zero
    assert KeySpend.objects.get(api_key=key, period="day", starts=tomorrow.date()).spent_nano == one
    assert services.reconcile() == []


@pytest.mark.django_db
def test_caps_are_set_and_shown_through_the_keys_api_with_an_audit_row(client, prices):
    user = ada()
    client.force_login(user)
    created = client.post(reverse("api-keys"), data=json.dumps({"name": "ci", "daily_cap": "5"}),
                          content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["spend_caps"]["daily_cap"] == {"limit": "5.00", "limit_nano": 5 * 10**9,
                                                         "spent": "0.000000", "spent_nano": 0}
    key_id = created.json()["id"]
    patched = client.patch(reverse("api-key-detail", args=[key_id]),
                           data=json.dumps({"monthly_cap": "50.5", "daily_cap": None}), content_type="application/json")
    assert patched.status_code == 200
    listed = client.get(reverse("api-keys")).json()["data"][0]["spend_caps"]
    assert listed["daily_cap"] is None and listed["monthly_cap"]["limit"] == "50.50" and listed["lifetime_cap"] is None
    bad = client.patch(reverse("api-key-detail", args=[key_id]), data=json.dumps({"lifetime_cap": "-1"}),
                       content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lifetime_cap"
    bad = client.patch(reverse("api-key-detail", args=[key_id]), data=json.dumps({"lifetime_cap": "0"}),
                       content_type="application/json")
    assert bad.status_code == 400
    assert [e.reason for e in AuditEvent.objects.filter(action="key_caps").order_by("id")] == [
        f"key {created.json()['prefix']}: daily 5.00, monthly none, lifetime none",
        f"key {created.json()['prefix']}: daily none, monthly 50.50, lifetime none"]


@pytest.mark.django_db
def test_the_keys_page_shows_and_sets_caps(client, prices):
    user = ada()
    key, _ = create_api_key(user, name="laptop")
    client.force_login(user)
    response = client.post(reverse("keys-page"), {"key_id": key.pk, "daily_cap": "2.50", "monthly_cap": "",
                                                  "lifetime_cap": ""}, follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Daily: 0.000000 of 2.50 USD" in page and "Spend caps of laptop saved" in page
    key.refresh_from_db()
    assert key.daily_cap_nano == 2_500_000_000
    response = client.post(reverse("keys-page"), {"key_id": key.pk, "daily_cap": "lots"}, follow=True)
    assert "Daily: enter a positive amount like 5.00" in response.content.decode()
    key.refresh_from_db()
    assert key.daily_cap_nano == 2_500_000_000
