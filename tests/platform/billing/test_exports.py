"""CSV exports (levee.billing.exports): per day × model × key, per request, and the ledger; their
totals are the usage API's."""
import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from levee.billing import services
from levee.keys.services import create_api_key
from tests.personas import ada, make_user
from tests.platform.billing.conftest import MODEL, fund, make_prices

pytestmark = pytest.mark.django_db

DAY1, DAY2 = datetime(2026, 11, 20, 10, tzinfo=UTC), datetime(2026, 11, 21, 23, 59, tzinfo=UTC)


def _spend(user, key, model, at, i, miss=1000, out=100):
    hold = services.place_hold(user=user, api_key=key, model=model, prompt_tokens=miss + 7, max_tokens=out,
                               request_id=f"{user.pk}-{i}", deadline=at + timedelta(hours=1))
    return services.settle_hold(hold.pk, prompt_cache_hit_tokens=7, prompt_cache_miss_tokens=miss,
                                completion_tokens=out, started_at=at, finished_at=at + timedelta(seconds=2))


@pytest.fixture
def history(prices):
    make_prices("other-model", hit=10, miss=100, out=300)
    user, other = ada(), make_user("eve@example.com")
    fund(user, 10**9)
    fund(other, 10**9)
    laptop, _ = create_api_key(user, name="laptop")
    ci, _ = create_api_key(user, name="ci")
    n = 0
    for at in (DAY1, DAY2):
        for key, model, times in ((laptop, MODEL, 3), (ci, MODEL, 2), (ci, "other-model", 1)):
            for _ in range(times):
                n += 1
                _spend(user, key, model, at, n, miss=1000 + n, out=50 + n)
    services.record_free_usage(user=user, model=MODEL, request_id="web", prompt_cache_hit_tokens=0,
                               prompt_cache_miss_tokens=40, completion_tokens=60, started_at=DAY2, finished_at=DAY2)
    _spend(other, None, MODEL, DAY1, 999)  # someone else's: in no export of ada's
    return user


def _csv(response) -> list[dict]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


RANGE = {"start": "2026-11-20", "end": "2026-11-21"}


def test_the_daily_csv_has_a_row_per_day_model_and_key_and_totals_equal_the_usage_api(client, history):
    client.force_login(history)
    api = client.get(reverse("api-usage"), RANGE).json()["data"]
    rows = _csv(client.get(reverse("api-usage-export"), {**RANGE, "by": "day"}))
    assert {(r["date"], r["model"], r["key_name"], r["source"]) for r in rows} == {
        (d, m, k, "api") for d in RANGE.values() for m, k in ((MODEL, "laptop"), (MODEL, "ci"), ("other-model", "ci"))
    } | {("2026-11-21", MODEL, "", "web")}
    for name in ("requests", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens", "completion_tokens",
                 "total_tokens", "cost_nano"):
        assert sum(int(r[name]) for r in rows) == sum(row[name] for row in api), name
        for row in api:  # and per day and model
            assert sum(int(r[name]) for r in rows if (r["date"], r["model"]) == (row["date"], row["model"])) == row[name]
    laptop = [r for r in rows if r["key_name"] == "laptop"][0]
    assert laptop["key"].startswith("sk-") and laptop["key"].endswith("…") and laptop["currency"] == "USD"
    assert services.reconcile() == []


def test_the_per_request_csv_streams_every_request_and_is_bounded(client, history, settings):
    client.force_login(history)
    api = client.get(reverse("api-usage"), RANGE).json()["data"]
    rows = _csv(client.get(reverse("api-usage-export"), {**RANGE, "by": "request"}))
    assert len(rows) == sum(row["requests"] for row in api) == 13
    assert sum(int(r["cost_nano"]) for r in rows) == sum(row["cost_nano"] for row in api)
    assert [r["started_at"] for r in rows] == sorted(r["started_at"] for r in rows)
    assert rows[0]["cost"] == services.format_amount(int(rows[0]["cost_nano"]))
    one_day = _csv(client.get(reverse("api-usage-export"), {"start": "2026-11-21", "end": "2026-11-21", "by": "request"}))
    assert len(one_day) == 7 and all(r["started_at"].startswith("2026-11-21") for r in one_day)

    settings.LEVEE_EXPORT_MAX_ROWS = 12
    refused = client.get(reverse("api-usage-export"), {**RANGE, "by": "request"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "export_too_large"
    bad = client.get(reverse("api-usage-export"), {**RANGE, "by": "hour"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "by"
    missing = client.get(reverse("api-usage-export"), {"end": "2026-11-21"}, HTTP_ACCEPT="text/csv")
    assert missing.status_code == 400 and b"start" in missing.content


def test_the_ledger_csv_adds_up_to_the_balance(client, history):
    client.force_login(history)
    today = datetime.now(UTC).date().isoformat()
    rows = _csv(client.get(reverse("api-ledger-export"), {"start": "2026-01-01", "end": today}))
    wallet = services.wallet_for(history)
    assert len(rows) == wallet.entries.count()
    assert sum(int(r["granted_delta_nano"]) + int(r["topped_up_delta_nano"]) for r in rows) == wallet.balance_nano
    assert sum(int(r["held_delta_nano"]) for r in rows) == wallet.held_nano == 0
    assert {r["kind"] for r in rows} == {"topup", "hold", "charge", "release"}
    assert client.get(reverse("api-ledger-export")).status_code == 400


def test_the_usage_page_links_the_exports(client, history):
    client.force_login(history)
    page = client.get(reverse("usage-page")).content.decode()
    assert "/api/usage/export?start=" in page and "by=request" in page and "/api/ledger/export?start=" in page
