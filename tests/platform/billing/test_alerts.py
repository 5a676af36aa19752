"""Alerts (levee.billing.alerts): low balance and daily spend, once per crossing; the daily digest;
the signed account webhook, delivered by a real Celery worker with back-off retries."""
import hashlib
import hmac
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from celery.contrib.testing.worker import start_worker
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from levee.billing import alerts, services
from levee.billing.models import AlertDelivery, AuditEvent, DeliveryStatus
from tests.personas import ada
from tests.platform.billing.conftest import MODEL, fund

NANO = 10**9


def _spend(user, miss: int, i: int = 0) -> None:
    """A request costing miss × 280 nano (the test model's cache-miss price)."""
    hold = services.place_hold(user=user, model=MODEL, prompt_tokens=miss, max_tokens=0, request_id=f"s{i}",
                               deadline=timezone.now() + timedelta(minutes=5))
    now = timezone.now()
    services.settle_hold(hold.pk, prompt_cache_hit_tokens=0, prompt_cache_miss_tokens=miss, completion_tokens=0,
                         started_at=now, finished_at=now)


def _alert_mails(word: str) -> list:
    return [m for m in mail.outbox if word in m.subject]


@pytest.mark.django_db
def test_the_low_balance_alert_fires_once_per_crossing(prices, django_capture_on_commit_callbacks):
    user = ada()
    alerts.configure(user, low_balance_nano=5 * NANO, daily_spend_nano=None, daily_digest=False, webhook_url="",
                     actor=user, source="test")
    with django_capture_on_commit_callbacks(execute=True):
        fund(user, 6 * NANO)
        _spend(user, 2_000_000, 1)  # 0.56 spent: 5.44 left, above
    assert _alert_mails("below") == []
    with django_capture_on_commit_callbacks(execute=True):
        _spend(user, 2_000_000, 2)  # 4.88 left: crossed
    with django_capture_on_commit_callbacks(execute=True):
        _spend(user, 2_000_000, 3)  # still below: no second mail
    sent = _alert_mails("below")
    assert len(sent) == 1 and sent[0].to == [user.email] and "4.88 USD" in sent[0].body
    with django_capture_on_commit_callbacks(execute=True):
        fund(user, 10 * NANO)  # back above: re-armed
    with django_capture_on_commit_callbacks(execute=True):
        _spend(user, 50_000_000, 4)  # 14.32 - 14.00 = 0.32 left: the second crossing
    assert len(_alert_mails("below")) == 2


@pytest.mark.django_db
def test_the_daily_spend_alert_fires_once_a_day_and_the_digest_once(prices, django_capture_on_commit_callbacks):
    user = ada()
    fund(user, 100 * NANO)
    alerts.configure(user, low_balance_nano=None, daily_spend_nano=NANO, daily_digest=True, webhook_url="",
                     actor=user, source="test")
    with django_capture_on_commit_callbacks(execute=True):
        _spend(user, 3_000_000, 1)  # 0.84
    assert _alert_mails("spent") == []
    with django_capture_on_commit_callbacks(execute=True):
        _spend(user, 1_000_000, 2)  # 1.12 today: crossed
    with django_capture_on_commit_callbacks(execute=True):
        _spend(user, 1_000_000, 3)
    assert len(_alert_mails("spent")) == 1 and "1.120000 USD" in _alert_mails("spent")[0].body

    tomorrow = timezone.now() + timedelta(days=1)
    assert alerts.send_digests(now=tomorrow) == 1
    assert alerts.send_digests(now=tomorrow) == 0  # once a day
    digest = _alert_mails("your usage on")[0]
    assert f"{MODEL}: 3 requests" in digest.body and "Total: 1.400000 USD" in digest.body


@pytest.mark.django_db
def test_alert_settings_through_the_api_and_the_page_are_audited(client, prices):
    user = ada()
    client.force_login(user)
    put = client.put(reverse("api-alerts"), data=json.dumps({"low_balance": "2.5", "daily_digest": True,
                                                             "webhook_url": "https://hooks.example.com/levee"}),
                     content_type="application/json")
    assert put.status_code == 200, put.content
    body = put.json()
    assert body["low_balance"] == "2.50" and body["daily_spend"] is None and body["webhook_secret"].startswith("whsec_")
    secret = body["webhook_secret"]
    assert client.get(reverse("api-alerts")).json()["webhook_secret"] == secret  # kept unless rotated
    rotated = client.put(reverse("api-alerts"), data=json.dumps({"webhook_url": "https://hooks.example.com/levee",
                                                                 "rotate_secret": True}), content_type="application/json")
    assert rotated.json()["webhook_secret"] != secret and rotated.json()["low_balance"] is None
    bad = client.put(reverse("api-alerts"), data=json.dumps({"low_balance": "-1"}), content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "low_balance"
    bad = client.put(reverse("api-alerts"), data=json.dumps({"webhook_url": "ftp://x"}), content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "webhook_url"
    page = client.post(reverse("alerts-form"), {"low_balance": "3", "daily_spend": "", "webhook_url": ""}, follow=True)
    assert "Alerts saved." in page.content.decode() and 'value="3.00"' in page.content.decode()
    assert AuditEvent.objects.filter(action="alerts").count() == 3


class _Receiver:
    """An account's webhook endpoint: answers 500 to the first `failures` posts, then 200."""

    def __init__(self, failures: int):
        self.failures, self.received, self.times = failures, [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                receiver.times.append(time.monotonic())
                self.send_response(500 if len(receiver.received) <= receiver.failures else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def platform_worker(settings):
    """A real Celery worker (in a thread, on the test Redis broker) consuming a queue of this test."""
    from levee.celery import app

    queue = f"platform.alerts-{uuid.uuid4().hex[:8]}"
    settings.LEVEE_ALERT_QUEUE = queue
    settings.LEVEE_ALERT_WEBHOOK_ALLOW_PRIVATE = True
    app.conf.broker_url = settings.REDIS_URL
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", queues=[queue]):
        yield queue


def _wait(predicate, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.django_db(transaction=True)
def test_the_webhook_is_signed_and_retried_with_backoff_until_delivered(settings, platform_worker):
    from tests.platform.billing.conftest import make_prices

    settings.LEVEE_CURRENCY = "USD"
    make_prices()
    settings.LEVEE_ALERT_WEBHOOK_BACKOFF_SECONDS = 0.4
    receiver = _Receiver(failures=2)
    user = ada()
    row = alerts.configure(user, low_balance_nano=5 * NANO, daily_spend_nano=None, daily_digest=False,
                           webhook_url=receiver.url, actor=user, source="test")
    fund(user, 6 * NANO)
    _spend(user, 4_000_000)  # 1.12 spent: 4.88 left, below 5
    _wait(lambda: AlertDelivery.objects.filter(status=DeliveryStatus.DELIVERED).exists())
    delivery = AlertDelivery.objects.get()
    assert delivery.attempts == 3 and [a["status_code"] for a in delivery.log] == [500, 500, 200]
    assert len(receiver.received) == 3
    for attempt, (headers, body) in enumerate(receiver.received, start=1):
        expected = "sha256=" + hmac.new(row.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["Levee-Signature"] == expected and body == delivery.body.encode()
        assert headers["Levee-Attempt"] == str(attempt)
    event = json.loads(receiver.received[0][1])
    assert event["type"] == "balance.low" and event["data"]["available"] == "4.88"
    # The back-off: each wait at least base × 2^(n−1).
    gaps = [b - a for a, b in zip(receiver.times, receiver.times[1:], strict=False)]
    assert gaps[0] >= 0.4 * 0.9 and gaps[1] >= 0.8 * 0.9, gaps
    assert [alerts.backoff(n) for n in (1, 2, 3)] == [0.4, 0.8, 1.6]
    # A forged body does not verify under the account's secret.
    assert alerts.sign(row.webhook_secret, b'{"type":"balance.low"}') != receiver.received[0][0]["Levee-Signature"]


@pytest.mark.django_db(transaction=True)
def test_a_webhook_that_keeps_failing_is_logged_failed_and_can_be_delivered_again(settings, platform_worker):
    settings.LEVEE_ALERT_WEBHOOK_BACKOFF_SECONDS = 0.1
    settings.LEVEE_ALERT_WEBHOOK_MAX_ATTEMPTS = 3
    receiver = _Receiver(failures=3)
    user = ada()
    row = alerts.configure(user, low_balance_nano=NANO, daily_spend_nano=None, daily_digest=False,
                           webhook_url=receiver.url, actor=user, source="test")
    alerts._fire(row, "balance.low", {"available": "0.00"}, subject="s", text="t")  # noqa: SLF001 - the firing seam
    alerts._enqueue(AlertDelivery.objects.get().pk)  # noqa: SLF001 - outside a transaction nothing waits for commit
    _wait(lambda: AlertDelivery.objects.filter(status=DeliveryStatus.FAILED).exists())
    delivery = AlertDelivery.objects.get()
    assert delivery.attempts == 3 and delivery.last_status_code == 500 and len(receiver.received) == 3
    assert alerts.redeliver(delivery, actor=None)
    _wait(lambda: AlertDelivery.objects.filter(status=DeliveryStatus.DELIVERED).exists())
    assert len(receiver.received) == 4 and AuditEvent.objects.filter(action="alert_redeliver").count() == 1


@pytest.mark.django_db
def test_a_webhook_into_private_networks_is_refused_in_production(settings, prices):
    settings.LEVEE_ALERT_WEBHOOK_ALLOW_PRIVATE = False
    user = ada()
    with pytest.raises(ValueError, match="https"):
        alerts.configure(user, low_balance_nano=NANO, daily_spend_nano=None, daily_digest=False,
                         webhook_url="http://example.com/x", actor=user, source="test")
    row = alerts.configure(user, low_balance_nano=NANO, daily_spend_nano=None, daily_digest=False,
                           webhook_url="https://127.0.0.1:9/x", actor=user, source="test")
    delivery = AlertDelivery.objects.create(user=user, event="balance.low", url=row.webhook_url, body="{}")
    with pytest.raises(alerts.Undeliverable):
        alerts.attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and "non-public" in delivery.last_error
    assert datetime.now(UTC)  # (no network was touched)
