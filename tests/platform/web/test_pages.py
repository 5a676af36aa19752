"""The server-rendered pages: home with prices, usage and billing, our own auth and error pages."""
import time
from datetime import timedelta

import pytest
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from levee.billing import services as billing
from levee.billing.models import Voucher
from levee.billing.services import record_free_usage
from tests.personas import ada

pytestmark = pytest.mark.django_db
DOLLAR = 10**9


def test_home_lists_the_prices_in_force(client, redis_client):
    from inference import protocol

    redis_client.zadd(protocol.workers_key("deepseek-chat"), {"w1": time.time()})  # served now
    page = client.get(reverse("home")).content.decode()
    assert 'id="price-list"' in page and "deepseek-chat" in page and "0.42" in page


def test_usage_page_shows_balance_chart_and_table(client):
    user = ada()
    client.force_login(user)
    billing.topup(billing.wallet_for(user), 5 * DOLLAR, source="test", external_id="t1")
    now = timezone.now()
    record_free_usage(user=user, model="<b>evil-model</b>", request_id="r", prompt_cache_hit_tokens=0,
                      prompt_cache_miss_tokens=10, completion_tokens=5, started_at=now, finished_at=now)
    page = client.get(reverse("usage-page")).content.decode()
    assert 'id="balance-topped-up">5.00 USD' in page and 'id="balance-total">5.00 USD' in page
    assert '<svg class="chart" id="tokens-chart"' in page and "15 tokens" in page
    assert "<b>evil-model</b>" not in page and "&lt;b&gt;evil-model&lt;/b&gt;" in page
    assert "web chat (free)" in page


def test_the_ledger_is_paginated(client):
    user = ada()
    client.force_login(user)
    wallet = billing.wallet_for(user)
    for i in range(25):
        billing.topup(wallet, DOLLAR, source="test", external_id=f"p{i}")
    first = client.get(reverse("usage-page")).content.decode()
    assert "Page 1 of 2" in first and first.count("<td>top-up</td>") == 20
    second = client.get(reverse("usage-page") + "?page=2").content.decode()
    assert second.count("<td>top-up</td>") == 5


def test_a_voucher_is_redeemed_from_the_form(client):
    user = ada()
    client.force_login(user)
    Voucher.objects.create(code="WELCOME-5", amount_nano=5 * DOLLAR, expires_at=timezone.now() + timedelta(days=1))
    response = client.post(reverse("usage-page"), {"code": "welcome-5"}, follow=True)
    page = response.content.decode()
    assert "Voucher redeemed: 5.00 USD" in page and 'id="balance-topped-up">5.00 USD' in page
    again = client.post(reverse("usage-page"), {"code": "WELCOME-5"}, follow=True).content.decode()
    assert "already redeemed" in again
    unknown = client.post(reverse("usage-page"), {"code": "<script>"}, follow=True).content.decode()
    assert "No such voucher code." in unknown


def test_usage_needs_a_login(client):
    assert client.get(reverse("usage-page"))["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", ["password_reset", "password_reset_done", "password_reset_complete"])
def test_password_reset_pages_are_ours_not_the_admins(client, name):
    page = client.get(reverse(name)).content.decode()
    assert "Django administration" not in page and 'class="brand"' in page


def test_a_missing_page_is_friendly_and_api_paths_get_json(client):
    page = client.get("/no/such/page")
    assert page.status_code == 404 and "There is no page at this address" in page.content.decode()
    assert client.get("/chat/api/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/chat/9999999/").status_code == 302  # the chat itself asks for a login first


@pytest.mark.parametrize("status,text", [(429, "Slow down a little"), (503, "We are busy")])
def test_friendly_429_and_503_pages_keep_retry_after(status, text):
    from django.contrib.auth.models import AnonymousUser

    from levee.core.views import friendly_error

    request = RequestFactory().get("/accounts/signup/")
    request.user = AnonymousUser()
    response = friendly_error(request, status, "Registration is busy.", retry_after=30)
    assert response.status_code == status and response["Retry-After"] == "30"
    body = response.content.decode()
    assert text in body and "Registration is busy." in body and "about 30 seconds" in body
    api = friendly_error(RequestFactory().get("/v1/models"), status, "busy", retry_after=5)
    assert api["Content-Type"] == "application/json" and b"\"busy\"" in api.content


def test_pages_have_a_skip_link_and_labelled_navigation(client):
    client.force_login(ada())
    for name in ("home", "chat", "keys-page", "usage-page"):
        page = client.get(reverse(name)).content.decode()
        assert 'href="#main"' in page and 'aria-label="Main"' in page and '<html lang="en">' in page
