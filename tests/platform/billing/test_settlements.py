"""Settlements: a worker cannot lie beyond its hold (clamp, signature), usage is durable (the web
settles, the task retries until the database answers, the sweep settles from the job's stream), and
a job that delivered nothing is never charged."""
import asyncio
import logging
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from inference import protocol
from levee.billing import services, tasks
from levee.billing.models import Hold, HoldStatus, LedgerEntry, UsageRecord, Wallet
from tests.personas import ada, make_user
from tests.platform.billing.conftest import MODEL, fund

pytestmark = pytest.mark.django_db


def _hold(user, *, prompt=100, max_tokens=50, job_id="job-1", deadline=None):
    return services.place_hold(user=user, model=MODEL, prompt_tokens=prompt, max_tokens=max_tokens, request_id="r",
                               deadline=deadline or timezone.now() + timedelta(minutes=5), job_id=job_id)


def _signed(hold, *, hit=0, miss=100, out=10, secret=None, job_id=None, account=None):
    now = timezone.now()
    return protocol.sign_settlement(secret or settings.LEVEE_WORKER_SECRET, hold_id=str(hold.pk),
                                    job_id=job_id or hold.job_id, account=account or str(hold.wallet.user_id),
                                    usage=protocol.usage_dict(hit, miss, out),
                                    started_at=(now - timedelta(seconds=2)).isoformat(), finished_at=now.isoformat())


def test_reported_usage_is_clamped_to_the_hold_and_the_record_stores_the_clamped_numbers(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user, prompt=100, max_tokens=50)
    usage = services.settle_hold(hold.pk, prompt_cache_hit_tokens=80, prompt_cache_miss_tokens=500,
                                 completion_tokens=10_000, started_at=timezone.now(), finished_at=timezone.now())
    usage.refresh_from_db()
    assert (usage.prompt_cache_hit_tokens, usage.prompt_cache_miss_tokens, usage.completion_tokens) == (80, 20, 50)
    assert usage.cost_nano == 80 * 28 + 20 * 280 + 50 * 420
    assert services.reconcile() == []


def test_the_clamp_of_the_protocol_holds_a_report_to_the_jobs_bounds():
    assert protocol.clamp_usage(protocol.usage_dict(7, 9, 99), prompt_tokens=10, max_tokens=20) == \
        protocol.usage_dict(7, 3, 20)
    assert protocol.clamp_usage({"prompt_cache_hit_tokens": -5, "completion_tokens": "9"}, prompt_tokens=10,
                                max_tokens=20) == protocol.usage_dict(0, 0, 0)


def test_a_settlement_must_be_signed_and_name_its_own_hold_job_and_account(prices):
    user, other = ada(), make_user("eve@example.com")
    fund(user, 10**9)
    hold = _hold(user)
    good = _signed(hold)
    refused = [
        {k: v for k, v in good.items() if k != "signature"},                 # unsigned
        {**good, "completion_tokens": 5},                                    # changed after signing
        _signed(hold, secret="not the worker secret"),                       # another key
        _signed(hold, job_id="job-2"),                                       # another job's signature
        _signed(hold, account=str(other.pk)),                                # another account
    ]
    for data in refused:
        with pytest.raises(services.SettlementRefused):
            services.settle_signed(data)
    assert not UsageRecord.objects.exists() and Hold.objects.get().status == HoldStatus.OPEN
    record = services.settle_signed(good)
    assert record.completion_tokens == 10 and services.settle_signed(good).pk == record.pk  # once
    assert LedgerEntry.objects.filter(kind="charge").count() == 1


def test_the_settle_task_refuses_an_unsigned_message_and_counts_it(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    before = tasks.SETTLEMENTS_REFUSED.labels("task")._value.get()
    unsigned = {k: v for k, v in _signed(hold).items() if k != "signature"}
    assert tasks.settle.apply(args=[str(hold.pk), unsigned]).successful()
    assert tasks.settle.apply(args=[str(hold.pk), _signed(_hold(user, job_id="job-9"))]).successful()  # not its hold
    assert tasks.SETTLEMENTS_REFUSED.labels("task")._value.get() == before + 2
    assert not UsageRecord.objects.exists()


def test_the_settle_task_retries_until_the_database_answers_and_alerts_past_the_threshold(
        prices, monkeypatch, caplog):
    settings_alert = settings.LEVEE_SETTLE_ALERT_RETRIES
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    real = services.settle_signed
    calls = []

    def database_away_for_a_while(data):
        calls.append(1)
        if len(calls) <= settings_alert + 2:
            raise OperationalError("connection refused")
        return real(data)

    monkeypatch.setattr(services, "settle_signed", database_away_for_a_while)
    monkeypatch.setattr(tasks.settle, "retry", _eager_retry(tasks.settle))
    alerts = tasks.SETTLE_RETRY_ALERTS._value.get()
    with caplog.at_level(logging.ERROR, logger="levee.billing.tasks"):
        tasks.settle.apply(args=[str(hold.pk), _signed(hold)])
    assert len(calls) == settings_alert + 3  # never gave up
    assert UsageRecord.objects.get().hold_id == hold.pk
    assert tasks.SETTLE_RETRY_ALERTS._value.get() - alerts == 3  # tries number threshold, +1, +2
    assert sum("has failed" in r.getMessage() for r in caplog.records) == 3


def _eager_retry(task):
    """Celery's retry, minus the countdown's sleep: run the task again at once, one try later."""
    def retry(exc=None, countdown=None, **_):
        assert countdown <= 60  # the back-off is bounded
        request = task.request
        return task.apply(args=request.args, kwargs=request.kwargs, retries=request.retries + 1)
    return retry


def test_the_sweep_settles_a_finished_job_from_its_stream_and_releases_one_that_never_ended(prices, redis_client):
    user = ada()
    fund(user, 10**9)
    past = timezone.now() - timedelta(hours=1)
    finished, lost = _hold(user, job_id="job-done", deadline=past), _hold(user, job_id="job-lost", deadline=past)
    redis_client.xadd(protocol.stream_key("job-done"), protocol.encode_event(
        protocol.DONE, finish_reason="stop", usage=protocol.usage_dict(0, 100, 10), settlement=_signed(finished)))
    redis_client.xadd(protocol.stream_key("job-lost"), protocol.encode_event(protocol.STARTED))
    assert tasks.sweep_holds.apply().get() == 2
    finished.refresh_from_db()
    lost.refresh_from_db()
    assert finished.status == HoldStatus.SETTLED and finished.usage.completion_tokens == 10
    assert lost.status == HoldStatus.RELEASED and not UsageRecord.objects.filter(hold=lost).exists()
    assert Wallet.objects.get(user=user).held_nano == 0 and services.reconcile() == []


def test_the_sweep_charges_a_job_whose_web_process_died_no_more_than_its_client_was_sent(prices, redis_client):
    """The web writes what it has passed on to the client (protocol.sent_key) as it reads; the job
    ran on (it ended before its reader's lease lapsed, or was cancelled when it did) and signed all
    it made. The sweep charges the prompt and the completion tokens sent; none sent: released;
    unknown (the key is gone): the signed settlement stands."""
    user = ada()
    fund(user, 10**9)
    past = timezone.now() - timedelta(hours=1)
    holds = {name: _hold(user, job_id=f"job-{name}", deadline=past) for name in ("part", "none", "unknown")}
    for hold in holds.values():
        redis_client.xadd(protocol.stream_key(hold.job_id), protocol.encode_event(
            protocol.DONE, finish_reason="stop", usage=protocol.usage_dict(0, 100, 40),
            settlement=_signed(hold, out=40)))
    redis_client.set(protocol.sent_key("job-part"), 7)
    redis_client.set(protocol.sent_key("job-none"), 0)
    assert tasks.sweep_holds.apply().get() == 3
    for hold in holds.values():
        hold.refresh_from_db()
    assert holds["part"].status == HoldStatus.SETTLED and holds["part"].usage.completion_tokens == 7
    assert holds["part"].usage.prompt_cache_miss_tokens == 100
    assert holds["none"].status == HoldStatus.RELEASED and not UsageRecord.objects.filter(hold=holds["none"]).exists()
    assert holds["unknown"].status == HoldStatus.SETTLED and holds["unknown"].usage.completion_tokens == 40
    assert Wallet.objects.get(user=user).held_nano == 0 and services.reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_the_web_releases_a_job_that_delivered_nothing_and_charges_one_what_it_delivered(settings):
    """levee.api.settling.close_hold, the web side: a job that never started (or sent nothing) is
    never charged; a job the client got part of is charged that part, the prompt with it."""
    from levee.api.settling import close_hold
    from tests.platform.billing.conftest import make_prices

    settings.LEVEE_CURRENCY = "USD"
    make_prices()
    user = ada()
    fund(user, 10**9)
    never, partly = _hold(user, job_id="never"), _hold(user, job_id="partly")
    now = timezone.now()

    async def main():
        a = await close_hold(hold_id=str(never.pk), job_id="never", account=str(user.pk), final=None,
                             delivered=protocol.usage_dict(0, 0, 0), started_at=now)
        b = await close_hold(hold_id=str(partly.pk), job_id="partly", account=str(user.pk), final=None,
                             delivered=protocol.usage_dict(0, 100, 7), started_at=now)
        return a, b

    assert asyncio.run(main()) == ("released", "settled")
    never.refresh_from_db()
    partly.refresh_from_db()
    assert never.status == HoldStatus.RELEASED and not UsageRecord.objects.filter(hold=never).exists()
    assert partly.usage.completion_tokens == 7 and partly.usage.cost_nano == 100 * 280 + 7 * 420
    assert services.reconcile() == []
