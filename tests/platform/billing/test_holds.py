"""Hold → settle → release: the contract the API calls."""
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from levee.billing import services
from levee.billing.models import Hold, HoldStatus, LedgerEntry, LedgerKind, Price, UsageRecord, Wallet
from levee.billing.services import InsufficientBalance, place_hold, release_hold, settle_hold
from levee.billing.tasks import settle as settle_task
from levee.keys.services import create_api_key
from tests.personas import ada
from tests.platform.billing.conftest import MODEL, fund, make_prices

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hold_path")]


def _hold(user, *, prompt=1000, max_tokens=1000, **kwargs) -> Hold:
    return place_hold(user=user, model=MODEL, prompt_tokens=prompt, max_tokens=max_tokens, request_id="req_test",
                      deadline=timezone.now() + timedelta(minutes=10), **kwargs)


def _usage(hit=200, miss=800, out=500):
    now = timezone.now()
    return {"prompt_cache_hit_tokens": hit, "prompt_cache_miss_tokens": miss, "completion_tokens": out,
            "started_at": now - timedelta(seconds=3), "finished_at": now}


def _signed(hold, usage=None, **changes):
    """The settle task's message for `hold`, signed as an inference worker signs it."""
    from django.conf import settings

    from inference import protocol

    usage = usage or _usage()
    if not hold.job_id:
        Hold.objects.filter(pk=hold.pk).update(job_id="job-" + str(hold.pk)[:8])
        hold.refresh_from_db()
    data = protocol.sign_settlement(settings.LEVEE_WORKER_SECRET, hold_id=str(hold.pk), job_id=hold.job_id,
                                    account=str(hold.wallet.user_id), usage=usage,
                                    started_at=usage["started_at"].isoformat(),
                                    finished_at=usage["finished_at"].isoformat())
    return {**data, **changes}


def _wallet(user) -> Wallet:
    return Wallet.objects.get(user=user)


def test_the_maximum_cost_is_prompt_at_the_miss_price_plus_max_tokens_of_output(prices):
    assert services.estimate_max_cost(MODEL, 1000, 2000) == 1000 * 280 + 2000 * 420


def test_an_unpriced_model_is_refused_before_anything_is_written(prices):
    user = ada()
    fund(user, 10**9)
    with pytest.raises(services.PriceNotFound):
        place_hold(user=user, model="no-such-model", prompt_tokens=1, max_tokens=1, request_id="r",
                   deadline=timezone.now())
    assert not Hold.objects.exists()


@pytest.mark.parametrize("bad", [-1, 10**10, 1.5, "10", True, None])
def test_token_counts_must_be_sane_integers(prices, bad):
    with pytest.raises(ValueError):
        services.estimate_max_cost(MODEL, bad, 1)


def test_a_hold_reserves_the_maximum_and_settle_charges_the_exact_cost_and_releases_the_rest(prices):
    user = ada()
    key, _ = create_api_key(user, name="k")
    fund(user, 10**9)
    hold = _hold(user, api_key=key)
    assert hold.amount_nano == 700_000
    assert _wallet(user).held_nano == 700_000 and _wallet(user).available_nano == 10**9 - 700_000

    usage = settle_hold(hold.pk, **_usage(hit=200, miss=800, out=500))
    expected = 200 * 28 + 800 * 280 + 500 * 420
    assert usage.cost_nano == expected and usage.api_key == key and usage.source == "api"
    assert (usage.price_cache_hit, usage.price_cache_miss, usage.price_output) == (
        prices["input_cache_hit"], prices["input_cache_miss"], prices["output"])
    wallet = _wallet(user)
    assert wallet.held_nano == 0 and wallet.topped_up_nano == 10**9 - expected
    kinds = list(LedgerEntry.objects.filter(hold=hold).order_by("id").values_list("kind", "held_delta", "topped_up_delta"))
    assert kinds == [("hold", 700_000, 0), ("charge", -expected, -expected), ("release", -(700_000 - expected), 0)]
    assert services.reconcile() == []


def test_a_request_that_does_not_fit_gets_insufficient_balance_and_nothing_is_written(prices):
    user = ada()
    fund(user, 699_999)
    with pytest.raises(InsufficientBalance) as caught:
        _hold(user)
    assert caught.value.needed_nano == 700_000 and caught.value.available_nano == 699_999
    assert caught.value.api_error().body["error"]["message"] == "Insufficient Balance"
    assert caught.value.api_error().status_code == 402
    assert not Hold.objects.exists() and _wallet(user).held_nano == 0


def test_open_holds_count_against_the_available_balance(prices):
    user = ada()
    fund(user, 1_400_000)
    _hold(user)
    _hold(user)
    with pytest.raises(InsufficientBalance):
        _hold(user)


def test_a_duplicate_settle_returns_the_same_record_and_charges_once(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    first = settle_hold(hold.pk, **_usage())
    second = settle_hold(hold.pk, **_usage(out=999))
    assert first.pk == second.pk and second.completion_tokens == 500
    assert UsageRecord.objects.count() == 1
    assert LedgerEntry.objects.filter(kind=LedgerKind.CHARGE).count() == 1
    assert services.reconcile() == []


def test_a_duplicate_settle_message_charges_once(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    message = _signed(hold)
    assert settle_task.apply(args=[str(hold.pk), message]).successful()
    assert settle_task.apply(args=[str(hold.pk), message]).successful()
    assert UsageRecord.objects.count() == 1
    assert _wallet(user).topped_up_nano == 10**9 - UsageRecord.objects.get().cost_nano


def test_a_settle_message_with_extra_keys_still_charges(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    message = _signed(hold)
    assert settle_task.apply(args=[str(hold.pk), {**message, "prompt_tokens": 1000, "v": 2}]).successful()
    assert UsageRecord.objects.get().hold == hold


def test_a_malformed_settle_message_is_dropped_without_writing(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    for hold_id, message in [(str(hold.pk), {"completion_tokens": 5}),
                             (str(hold.pk), _signed(hold, started_at="yesterday", finished_at="now")),
                             ("not-a-uuid", {}), ("00000000-0000-0000-0000-000000000000", {})]:
        result = settle_task.apply(args=[hold_id, message])
        assert result.successful(), result.traceback  # dropped and logged, not retried forever
    assert not UsageRecord.objects.exists()
    assert Hold.objects.get().status == HoldStatus.OPEN


def test_the_charge_is_capped_at_the_held_amount(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user, prompt=10, max_tokens=10)
    usage = settle_hold(hold.pk, **_usage(hit=0, miss=10, out=10_000))  # a worker overran max_tokens
    assert usage.cost_nano == hold.amount_nano
    assert _wallet(user).held_nano == 0


def test_the_prices_in_force_when_the_hold_was_placed_are_the_ones_charged(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    make_prices(out=4200, at=timezone.now() - timedelta(microseconds=1))  # a dearer list lands mid-request
    usage = settle_hold(hold.pk, **_usage(hit=0, miss=0, out=100))
    assert usage.cost_nano == 100 * 420 and usage.price_output.nano_per_token == 420
    assert Price.objects.filter(model=MODEL, token_class="output").count() == 2


def test_granted_credit_is_spent_before_topped_up(prices):
    user = ada()
    fund(user, 10**9)
    services.grant(user, 100_000, reason="promo", expires_at=timezone.now() + timedelta(days=3))
    services.grant(user, 50_000, reason="sooner", expires_at=timezone.now() + timedelta(days=1))
    hold = _hold(user)
    usage = settle_hold(hold.pk, **_usage(hit=0, miss=0, out=500))  # 210_000 nano
    wallet = _wallet(user)
    assert usage.cost_nano == 210_000
    assert wallet.granted_nano == 0 and wallet.topped_up_nano == 10**9 - 60_000
    charge = LedgerEntry.objects.get(kind=LedgerKind.CHARGE)
    assert (charge.granted_delta, charge.topped_up_delta) == (-150_000, -60_000)
    assert services.reconcile() == []


def test_the_grant_expiring_soonest_is_spent_first(prices):
    user = ada()
    later = services.grant(user, 300_000, reason="later", expires_at=timezone.now() + timedelta(days=9))
    sooner = services.grant(user, 300_000, reason="sooner", expires_at=timezone.now() + timedelta(days=1))
    settle_hold(_hold(user, prompt=0, max_tokens=500).pk, **_usage(hit=0, miss=0, out=500))
    later.refresh_from_db()
    sooner.refresh_from_db()
    assert (sooner.remaining_nano, later.remaining_nano) == (90_000, 300_000)


def test_release_gives_the_whole_hold_back_once(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    assert release_hold(hold.pk, reason="client went away") is True
    assert release_hold(hold.pk, reason="again") is False
    assert _wallet(user).held_nano == 0 and _wallet(user).topped_up_nano == 10**9
    assert release_hold("00000000-0000-0000-0000-000000000000", reason="x") is False
    assert services.reconcile() == []


def test_a_hold_never_settled_is_released_by_the_sweep(prices, settings):
    settings.LEVEE_HOLD_SWEEP_GRACE_SECONDS = 60
    user = ada()
    fund(user, 10**9)
    stale = place_hold(user=user, model=MODEL, prompt_tokens=10, max_tokens=10, request_id="old",
                       deadline=timezone.now() - timedelta(minutes=5))
    fresh = _hold(user)
    just_late = place_hold(user=user, model=MODEL, prompt_tokens=10, max_tokens=10, request_id="grace",
                           deadline=timezone.now() - timedelta(seconds=10))
    from levee.billing.tasks import sweep_holds

    assert sweep_holds.apply().get() == 1
    statuses = dict(Hold.objects.values_list("request_id", "status"))
    assert statuses == {"old": "released", "req_test": "open", "grace": "open"}
    assert _wallet(user).held_nano == fresh.amount_nano + just_late.amount_nano
    assert services.reconcile() == [] and stale.pk


def test_a_settle_arriving_after_the_sweep_still_charges_what_is_available(prices):
    user = ada()
    fund(user, 300_000)
    hold = _hold(user, prompt=0, max_tokens=700)  # 294_000
    release_hold(hold.pk, reason="deadline passed")
    usage = settle_hold(hold.pk, **_usage(hit=0, miss=0, out=100))
    assert usage.cost_nano == 42_000 and _wallet(user).topped_up_nano == 258_000
    assert Hold.objects.get().status == HoldStatus.SETTLED
    assert services.reconcile() == []


def test_free_web_usage_is_recorded_at_zero_cost_and_counted_daily(prices):
    user = ada()
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    for _ in range(2):
        services.record_free_usage(user=user, model=MODEL, request_id="web1", prompt_cache_hit_tokens=0,
                                   prompt_cache_miss_tokens=10, completion_tokens=20, started_at=now, finished_at=now)
    from levee.billing.models import DailyUsage

    day = DailyUsage.objects.get()
    assert (day.source, day.requests, day.completion_tokens, day.cost_nano) == ("web", 2, 40, 0)
    assert not LedgerEntry.objects.exists()


def test_settle_refuses_naive_or_backwards_times(prices):
    user = ada()
    fund(user, 10**9)
    hold = _hold(user)
    now = timezone.now()
    with pytest.raises(ValueError):
        settle_hold(hold.pk, **{**_usage(), "started_at": now.replace(tzinfo=None)})
    with pytest.raises(ValueError):
        settle_hold(hold.pk, **{**_usage(), "started_at": now, "finished_at": now - timedelta(seconds=1)})
    assert not UsageRecord.objects.exists()


def test_the_hot_path_makes_a_fixed_small_number_of_queries(prices, django_assert_max_num_queries):
    user = ada()
    fund(user, 10**9)
    settle_hold(_hold(user).pk, **_usage())  # the day's first request made the wallet and the daily row
    with django_assert_max_num_queries(8):
        hold = _hold(user)
    with django_assert_max_num_queries(11):
        settle_hold(hold.pk, **_usage())
    with django_assert_max_num_queries(2):
        settle_hold(hold.pk, **_usage())  # a duplicate takes no lock


def test_the_beat_schedule_runs_billing_tasks_that_exist_on_the_platform_queue(settings):
    from levee.celery import app

    app.loader.import_default_modules()
    entries = {e["task"]: e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"].startswith("levee.billing.")}
    assert set(entries) == {"levee.billing.sweep_holds", "levee.billing.expire_grants", "levee.billing.alert_digests"}
    for name, entry in entries.items():
        assert name in app.tasks and app.tasks[name].queue == "platform" and entry["options"]["queue"] == "platform"
    assert app.tasks["levee.billing.settle"].queue == "platform"
