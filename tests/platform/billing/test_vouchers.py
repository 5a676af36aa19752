import json
from datetime import timedelta

import pytest
from django.utils import timezone

from levee.billing.models import LedgerEntry, Voucher, VoucherRedemption, Wallet
from tests.personas import ada, bob

pytestmark = pytest.mark.django_db


def _voucher(code="WELCOME-2026", **kwargs):
    defaults = {"amount_nano": 5 * 10**9, "expires_at": timezone.now() + timedelta(days=7), "max_redemptions": 10}
    return Voucher.objects.create(code=code, **{**defaults, **kwargs})


def _redeem(client, body):
    return client.post("/api/vouchers/redeem", data=body if isinstance(body, str) else json.dumps(body),
                       content_type="application/json")


def test_an_owner_redeems_a_voucher_into_the_topped_up_balance(client):
    _voucher()
    client.force_login(ada())
    response = _redeem(client, {"code": " welcome-2026 "})
    assert response.status_code == 201
    assert response.json()["amount"] == "5.00"
    assert response.json()["balance"]["topped_up_balance"] == "5.00"
    assert LedgerEntry.objects.get().kind == "voucher"


def test_each_account_redeems_a_voucher_once(client):
    _voucher()
    client.force_login(ada())
    assert _redeem(client, {"code": "WELCOME-2026"}).status_code == 201
    again = _redeem(client, {"code": "WELCOME-2026"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "voucher_already_redeemed"
    assert Wallet.objects.get().topped_up_nano == 5 * 10**9


@pytest.mark.parametrize("body, status, code", [
    ({"code": "NOPE"}, 404, "voucher_not_found"),
    ({"code": "WELCOME 2026; DROP TABLE"}, 404, "voucher_not_found"),
    ({"code": "X" * 10_000}, 404, "voucher_not_found"),
    ({"code": ""}, 400, "missing_parameter"),
    ({"code": 12}, 400, "missing_parameter"),
    ({}, 400, "missing_parameter"),
    ([1, 2], 400, "missing_parameter"),
    ("{not json", 400, "invalid_format"),
])
def test_bad_redemptions_are_clean_4xx_and_write_nothing(client, body, status, code):
    _voucher()
    client.force_login(ada())
    response = _redeem(client, body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert not LedgerEntry.objects.exists() and not VoucherRedemption.objects.exists()


def test_an_expired_or_used_up_voucher_is_refused(client):
    _voucher("OLD", expires_at=timezone.now() - timedelta(seconds=1))
    _voucher("GONE", max_redemptions=1, redeemed_count=1)
    client.force_login(ada())
    assert _redeem(client, {"code": "OLD"}).json()["error"]["code"] == "voucher_expired"
    assert _redeem(client, {"code": "GONE"}).json()["error"]["code"] == "voucher_exhausted"
    assert not LedgerEntry.objects.exists()


def test_an_unverified_account_cannot_redeem(client):
    _voucher()
    client.force_login(bob())
    assert _redeem(client, {"code": "WELCOME-2026"}).status_code == 403


def test_redeeming_needs_a_session_and_its_csrf_token():
    from django.test import Client

    _voucher()
    strict = Client(enforce_csrf_checks=True)
    assert _redeem(strict, {"code": "WELCOME-2026"}).status_code == 401
    strict.force_login(ada())
    assert _redeem(strict, {"code": "WELCOME-2026"}).status_code == 403
    assert not LedgerEntry.objects.exists()
