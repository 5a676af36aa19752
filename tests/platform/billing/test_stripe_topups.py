"""Top-ups through Stripe Checkout: the real `stripe` library against the local stand-in of Stripe's
API (tests/stripe_standin.py), webhooks signed by the library's own signing code."""
import json
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from levee.billing import payments, services
from levee.billing.models import (
    AuditEvent,
    LedgerEntry,
    LedgerKind,
    Payment,
    PaymentStatus,
    ProviderEvent,
    TopupSwitchChange,
    Wallet,
)
from tests.personas import ada, bob, root
from tests.platform.billing.conftest import MODEL
from tests.platform.billing.test_concurrency import _race
from tests.stripe_standin import StripeStandin

SECRET_KEY, WEBHOOK_SECRET = "sk_test_levee_standin", "whsec_levee_standin"
NANO = 10**9


@pytest.fixture
def standin(settings):
    server = StripeStandin(api_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET).start()
    settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET = SECRET_KEY, WEBHOOK_SECRET
    settings.STRIPE_API_BASE = server.url
    settings.LEVEE_CURRENCY = "USD"
    settings.LEVEE_TOPUP_AMOUNTS, settings.LEVEE_TOPUP_MIN, settings.LEVEE_TOPUP_MAX = ["5", "20"], "2", "500"
    yield server
    server.stop()


def _webhook(client, standin, event, **sign):
    body, header = standin.signed(event, **sign)
    return client.post(reverse("stripe-webhook"), data=body, content_type="application/json",
                       HTTP_STRIPE_SIGNATURE=header)


def _checkout(client, user, amount="20.00"):
    client.force_login(user)
    response = client.post(reverse("topup-start"), {"amount": amount})
    assert response.status_code == 302, response
    return response


@pytest.mark.django_db
def test_a_top_up_goes_through_checkout_and_is_credited_once(client, standin, django_capture_on_commit_callbacks):
    user = ada()
    response = _checkout(client, user)
    payment = Payment.objects.get(user=user)
    assert response["Location"] == f"{standin.url}/c/pay/{payment.session_id}"
    _, _, params = standin.requests[-1]
    assert params["line_items"][0]["price_data"] == {
        "currency": "usd", "unit_amount": "2000", "product_data": {"name": "Levee balance top-up (20.00 USD)"}}
    assert params["client_reference_id"] == str(payment.id) and params["customer_email"] == user.email
    assert params["success_url"].endswith(f"/usage/topup/{payment.id}?session_id={{CHECKOUT_SESSION_ID}}")
    assert payment.status == PaymentStatus.OPEN and payment.amount_minor == 2000
    assert services.wallet_for(user).topped_up_nano == 0  # nothing before Stripe says it is paid

    event = standin.complete(payment.session_id)
    with django_capture_on_commit_callbacks(execute=True):
        first = _webhook(client, standin, event)
    assert first.status_code == 200 and first.json()["outcome"] == "credited 20.00 USD"
    # Stripe retries the same event; and may also send another event for the same session.
    with django_capture_on_commit_callbacks(execute=True):
        assert _webhook(client, standin, event).json()["outcome"] == "duplicate event"
        again = standin.event("checkout.session.async_payment_succeeded", event["data"]["object"])
        assert _webhook(client, standin, again).json()["outcome"] == "already credited"

    wallet = Wallet.objects.get(user=user)
    assert wallet.topped_up_nano == 20 * NANO
    entries = LedgerEntry.objects.filter(wallet=wallet, kind=LedgerKind.TOPUP)
    assert [(e.topped_up_delta, e.external_id) for e in entries] == [(20 * NANO, f"stripe:{payment.session_id}")]
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.CREDITED and payment.payment_intent.startswith("pi_")
    assert [a.action for a in AuditEvent.objects.order_by("id") if a.action != "credit"] == [
        "checkout_started", "stripe_topup"]  # each write with its audit row
    assert services.reconcile() == []
    # The receipt, once.
    receipts = [m for m in mail.outbox if "receipt" in m.subject]
    assert len(receipts) == 1 and receipts[0].to == [user.email] and "20.00 USD" in receipts[0].body
    # The result page and the ledger on the usage page show it.
    page = client.get(reverse("topup-result", args=[payment.id])).content.decode()
    assert "20.00 USD was added to your balance" in page
    usage = client.get(reverse("usage-page")).content.decode()
    assert "top-up via Stripe" in usage and "20.000000" in usage


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_of_one_payment_credit_it_once(settings, standin):
    user = ada()
    payment = payments.start_checkout(user, 50 * NANO, success_url="http://x/ok", cancel_url="http://x/no")
    event = standin.complete(payment.session_id)
    same = standin.signed(event)
    # 12 copies of the same delivery and 12 other events about the same session, all at once.
    others = [standin.signed(standin.event("checkout.session.completed", event["data"]["object"])) for _ in range(12)]
    outcomes = _race(24, lambda i: payments.handle_webhook(*(same if i < 12 else others[i - 12])))
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert outcomes.count("credited 50.00 USD") == 1, outcomes
    assert Wallet.objects.get(user=user).topped_up_nano == 50 * NANO
    assert LedgerEntry.objects.filter(kind=LedgerKind.TOPUP).count() == 1
    assert ProviderEvent.objects.count() == 13  # each event id once
    assert services.reconcile() == []


@pytest.mark.django_db
def test_forged_stale_or_missing_signatures_are_refused(client, standin):
    user = ada()
    payment = payments.start_checkout(user, 5 * NANO, success_url="http://x/ok", cancel_url="http://x/no")
    event = standin.complete(payment.session_id)
    forged = _webhook(client, standin, event, secret="whsec_someone_else")
    stale = _webhook(client, standin, event, timestamp=int(time.time()) - 301)
    body, header = standin.signed(event)
    tampered = json.loads(body)
    tampered["data"]["object"]["amount_total"] = 500000
    altered = client.post(reverse("stripe-webhook"), data=json.dumps(tampered), content_type="application/json",
                          HTTP_STRIPE_SIGNATURE=header)
    unsigned = client.post(reverse("stripe-webhook"), data=body, content_type="application/json")
    for response in (forged, stale, altered, unsigned):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
    assert "tolerance" in stale.json()["error"]["message"]
    assert ProviderEvent.objects.count() == 0 and services.wallet_for(user).topped_up_nano == 0
    # Inside the window it is accepted (a replay later is a duplicate: the event id is recorded).
    assert _webhook(client, standin, event, timestamp=int(time.time()) - 200).status_code == 200
    assert _webhook(client, standin, event).json()["outcome"] == "duplicate event"
    assert Wallet.objects.get(user=user).topped_up_nano == 5 * NANO


@pytest.mark.django_db
def test_the_pause_switch_refuses_new_payments_while_balances_keep_working(client, standin, prices):
    user = ada()
    earlier = payments.start_checkout(user, 20 * NANO, success_url="http://x/ok", cancel_url="http://x/no")
    admin = root()
    client.force_login(admin)
    response = client.post(reverse("admin:billing_topupswitch_change", args=[1]),
                           {"paused": "on", "message": "Top-ups are paused while we add capacity.",
                            "change_reason": "demand spike"})
    assert response.status_code == 302
    change = TopupSwitchChange.objects.get()
    assert change.paused and change.by == admin and change.reason == "demand spike"

    client.force_login(user)
    page = client.get(reverse("usage-page")).content.decode()
    assert "Top-ups are paused while we add capacity." in page and 'id="topup-form"' not in page
    made = len(standin.requests)
    refused = client.post(reverse("topup-start"), {"amount": "20"}, follow=True)
    assert "Top-ups are paused while we add capacity." in refused.content.decode()
    api = client.post(reverse("api-topups"), data={"amount": "20"}, content_type="application/json")
    assert api.status_code == 503 and api.json()["error"]["code"] == "topups_paused"
    assert len(standin.requests) == made and Payment.objects.count() == 1  # Stripe was not asked

    # A payment made before the pause is still credited, and the balance is spent as usual.
    assert _webhook(client, standin, standin.complete(earlier.session_id)).json()["outcome"].startswith("credited")
    hold = services.place_hold(user=user, model=MODEL, prompt_tokens=10, max_tokens=10, request_id="r",
                               deadline=timezone.now() + timedelta(minutes=1))
    assert hold.amount_nano > 0

    assert payments.set_topups_paused(False, reason="capacity added", by=admin)
    assert not payments.set_topups_paused(False, reason="again", by=admin)  # no change, no audit row
    assert TopupSwitchChange.objects.count() == 2
    assert client.post(reverse("topup-start"), {"amount": "20"})["Location"].startswith(standin.url)


@pytest.mark.django_db
def test_amounts_are_bounded_and_currency_follows_the_deployment(client, standin, settings):
    user = ada()
    client.force_login(user)
    page = client.get(reverse("usage-page")).content.decode()
    assert 'value="5.00"' in page and 'value="20.00"' in page and "2.00 to 500.00" in page
    for amount, words in (("1.99", "between 2.00 and 500.00 USD"), ("500.01", "between 2.00 and 500.00 USD"),
                          ("3.001", "at most two decimal places"), ("lots", "like 20 or 12.50")):
        response = client.post(reverse("topup-start"), {"custom_amount": amount}, follow=True)
        assert words in response.content.decode(), amount
    assert Payment.objects.count() == 0 and standin.requests == []
    api = client.post(reverse("api-topups"), data={"amount": "1"}, content_type="application/json")
    assert api.status_code == 422 and api.json()["error"]["param"] == "amount"
    client.force_login(bob())  # unverified
    assert client.post(reverse("api-topups"), data={"amount": "5"}, content_type="application/json").status_code == 403

    settings.LEVEE_CURRENCY = "CNY"
    client.force_login(user)
    created = client.post(reverse("api-topups"), data={"amount": "88.80"}, content_type="application/json")
    assert created.status_code == 201 and created.json()["currency"] == "CNY"
    assert standin.requests[-1][2]["line_items"][0]["price_data"]["currency"] == "cny"
    assert standin.requests[-1][2]["line_items"][0]["price_data"]["unit_amount"] == "8880"
    settings.LEVEE_CURRENCY = "EUR"
    assert client.post(reverse("api-topups"), data={"amount": "5"},
                       content_type="application/json").json()["error"]["code"] == "topups_unavailable"


@pytest.mark.django_db
def test_refunds_count_once_in_any_order_and_one_before_the_payment_waits_for_it(client, standin):
    user = ada()
    payment = payments.start_checkout(user, 20 * NANO, success_url="http://x/ok", cancel_url="http://x/no")
    completed = standin.complete(payment.session_id)
    # Two partial refunds (5.00, then 12.00 in all); the second's event arrives first, before the payment.
    second, first = standin.refund_event(payment.session_id, 1200), standin.refund_event(payment.session_id, 500)
    assert _webhook(client, standin, second).json()["outcome"] == "waiting for its payment"
    assert _webhook(client, standin, completed).json()["outcome"] == "credited 20.00 USD"
    assert Wallet.objects.get(user=user).topped_up_nano == 8 * NANO  # 20 in, 12 back
    assert _webhook(client, standin, first).json()["outcome"] == "refund already counted"
    assert _webhook(client, standin, second).json()["outcome"] == "duplicate event"
    assert Wallet.objects.get(user=user).topped_up_nano == 8 * NANO
    kinds = list(LedgerEntry.objects.filter(wallet__user=user).order_by("id").values_list("kind", "topped_up_delta"))
    assert kinds == [("topup", 20 * NANO), ("payback", -12 * NANO)]
    payment.refresh_from_db()
    assert payment.refunded_minor == 1200 and payment.unrecovered_nano == 0
    assert services.reconcile() == []


@pytest.mark.django_db
def test_money_taken_back_after_it_was_spent_disables_the_account(client, standin, prices):
    """The rule: take what is free now, record the rest as unrecovered, disable the account."""
    user = ada()
    payment = payments.start_checkout(user, 10 * NANO, success_url="http://x/ok", cancel_url="http://x/no")
    _webhook(client, standin, standin.complete(payment.session_id))
    wallet = Wallet.objects.get(user=user)
    hold = services.place_hold(user=user, model=MODEL, prompt_tokens=1_000_000, max_tokens=10_000_000,
                               request_id="big", deadline=timezone.now() + timedelta(minutes=1))
    now = timezone.now()
    services.settle_hold(hold.pk, prompt_cache_hit_tokens=0, prompt_cache_miss_tokens=1_000_000,
                         completion_tokens=10_000_000, started_at=now, finished_at=now)  # 0.28 + 4.20 spent
    wallet.refresh_from_db()
    left = wallet.topped_up_nano
    assert left == 10 * NANO - 280_000_000 - 4_200_000_000

    dispute = standin.dispute_event(payment.session_id, "charge.dispute.created", 1000, dispute_id="dp_test_1")
    outcome = _webhook(client, standin, dispute).json()["outcome"]
    assert "already spent: account disabled" in outcome
    wallet.refresh_from_db()
    user.refresh_from_db()
    assert wallet.topped_up_nano == 0 and not user.is_active
    payment.refresh_from_db()
    assert payment.unrecovered_nano == 10 * NANO - left and payment.disputed_minor == 1000
    blocked = AuditEvent.objects.get(action="account_blocked")
    assert blocked.amount_nano == -(10 * NANO - left) and blocked.wallet == wallet
    assert services.reconcile() == []

    # Won: what was taken comes back and nothing stays owed.
    won = standin.dispute_event(payment.session_id, "charge.dispute.closed", 1000, dispute_id="dp_test_1",
                                status="won")
    assert _webhook(client, standin, won).json()["outcome"] == f"dispute won, {left // 10**7 / 100:.2f} given back"
    wallet.refresh_from_db()
    payment.refresh_from_db()
    assert wallet.topped_up_nano == left and payment.unrecovered_nano == 0 and payment.disputed_minor == 0
    assert services.reconcile() == []
