"""Races on PostgreSQL: real threads, each with its own connection, all released at once."""
import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, close_old_connections, connection
from django.utils import timezone

from levee.billing import services
from levee.billing.models import Hold, Voucher, VoucherRedemption, Wallet
from tests.personas import ada, make_user
from tests.platform.billing.conftest import MODEL, fund, make_prices

pytestmark = pytest.mark.django_db(transaction=True)


def _race(count: int, work) -> list:
    """Run work(i) in `count` threads that start together; return each outcome (or exception). Each
    thread opens its own connection before the start (waiting while a shared server is at
    max_connections), so the race is between the transactions, not the connects."""
    barrier = threading.Barrier(count)
    outcomes: list = [None] * count

    def run(i):
        try:
            for attempt in range(240):
                try:
                    connection.ensure_connection()
                    break
                except OperationalError:
                    time.sleep(0.25 + attempt * 0.01)
            barrier.wait(timeout=120)
            outcomes[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            outcomes[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    close_old_connections()
    return outcomes


def test_fifty_concurrent_holds_against_a_balance_for_twenty_admit_exactly_twenty(settings, hold_path):
    settings.LEVEE_CURRENCY = "USD"
    make_prices()
    user = ada()
    one = services.estimate_max_cost(MODEL, 1000, 1000)
    fund(user, 20 * one)
    lowest = []
    stop = threading.Event()

    def watch():  # the balance is sampled throughout the race and must never dip below zero
        while not stop.is_set():
            w = Wallet.objects.get(user=user)
            lowest.append(min(w.granted_nano + w.topped_up_nano, w.available_nano))
        connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    outcomes = _race(50, lambda i: services.place_hold(
        user=user, model=MODEL, prompt_tokens=1000, max_tokens=1000, request_id=f"race-{i}",
        deadline=timezone.now() + timedelta(minutes=5)))
    stop.set()
    watcher.join()

    placed = [o for o in outcomes if isinstance(o, Hold)]
    refused = [o for o in outcomes if isinstance(o, services.InsufficientBalance)]
    assert len(placed) == 20 and len(refused) == 30, outcomes
    wallet = Wallet.objects.get(user=user)
    assert wallet.held_nano == 20 * one and wallet.available_nano == 0
    assert lowest and min(lowest) >= 0
    assert services.reconcile() == []

    # Settling them all concurrently, each twice, charges each once.
    usage = {"prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 1000, "completion_tokens": 10,
             "started_at": timezone.now(), "finished_at": timezone.now()}
    _race(40, lambda i: services.settle_hold(placed[i % 20].pk, **usage))
    wallet.refresh_from_db()
    each = 1000 * 280 + 10 * 420
    assert wallet.held_nano == 0 and wallet.topped_up_nano == 20 * one - 20 * each
    assert services.reconcile() == []


def test_twenty_concurrent_redemptions_of_a_single_use_voucher_succeed_once():
    voucher = Voucher.objects.create(code="ONCE-ONLY", amount_nano=5 * 10**9, max_redemptions=1,
                                     expires_at=timezone.now() + timedelta(days=1))
    users = [make_user(f"u{i}@example.com") for i in range(20)]
    outcomes = _race(20, lambda i: services.redeem_voucher(users[i], "once-only"))
    won = [o for o in outcomes if isinstance(o, VoucherRedemption)]
    lost = [o for o in outcomes if isinstance(o, services.BillingRefused)]
    assert len(won) == 1 and len(lost) == 19, outcomes
    assert {e.code for e in lost} == {"voucher_exhausted"}
    voucher.refresh_from_db()
    assert voucher.redeemed_count == 1
    assert sum(w.topped_up_nano for w in Wallet.objects.all()) == 5 * 10**9
    assert services.reconcile() == []


def test_one_account_redeeming_a_multi_use_voucher_concurrently_gets_it_once():
    Voucher.objects.create(code="PROMO", amount_nano=10**9, max_redemptions=100,
                           expires_at=timezone.now() + timedelta(days=1))
    user = ada()
    outcomes = _race(10, lambda i: services.redeem_voucher(user, "PROMO"))
    assert sum(isinstance(o, VoucherRedemption) for o in outcomes) == 1
    assert Wallet.objects.get(user=user).topped_up_nano == 10**9


def test_a_grant_landing_mid_settlement_sends_it_down_the_locked_path(settings, monkeypatch):
    """settle_hold moves a grant-less wallet by compare-and-set at the end; a grant committed by
    another connection in between makes that fail, and the whole settlement is redone under the
    wallet lock, spending the new grant first (grants before topped-up money)."""
    settings.LEVEE_CURRENCY = "USD"
    make_prices()
    user = ada()
    fund(user, 10**9)
    hold = services.place_hold(user=user, model=MODEL, prompt_tokens=1000, max_tokens=1000, request_id="mid",
                               deadline=timezone.now() + timedelta(minutes=5))
    calls = []
    real_add_daily = services._add_daily

    def add_daily_then_grant(usage):
        real_add_daily(usage)
        calls.append(usage)
        if len(calls) == 1:  # another process grants credit while this settlement is under way
            t = threading.Thread(target=lambda: (services.grant(user, 10**8, reason="mid", expires_at=None),
                                                 connection.close()))
            t.start()
            t.join()

    monkeypatch.setattr(services, "_add_daily", add_daily_then_grant)
    usage = services.settle_hold(hold.pk, prompt_cache_hit_tokens=0, prompt_cache_miss_tokens=1000,
                                 completion_tokens=10, started_at=timezone.now(), finished_at=timezone.now())
    assert len(calls) == 2  # the optimistic attempt was rolled back and redone
    wallet = Wallet.objects.get(user=user)
    assert usage.cost_nano == 1000 * 280 + 10 * 420
    assert wallet.granted_nano == 10**8 - usage.cost_nano and wallet.topped_up_nano == 10**9
    assert wallet.held_nano == 0 and services.reconcile() == []
