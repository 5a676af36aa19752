from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from levee.billing import services
from tests.personas import ada, make_user
from tests.platform.billing.conftest import MODEL, fund

pytestmark = pytest.mark.django_db


def _settle(user, started_at, out=1000):
    hold = services.place_hold(user=user, model=MODEL, prompt_tokens=100, max_tokens=out, request_id="r",
                               deadline=datetime.now(UTC) + timedelta(minutes=5))
    return services.settle_hold(hold.pk, prompt_cache_hit_tokens=64, prompt_cache_miss_tokens=36,
                                completion_tokens=out, started_at=started_at, finished_at=started_at)


def test_an_owner_sees_daily_tokens_and_cost_per_model(client, prices):
    user = ada()
    fund(user, 10**10)
    day1, day2 = datetime(2026, 5, 1, 23, 59, tzinfo=UTC), datetime(2026, 5, 2, 0, 1, tzinfo=UTC)
    _settle(user, day1)
    _settle(user, day1)
    _settle(user, day2, out=10)
    services.record_free_usage(user=user, model=MODEL, request_id="w", prompt_cache_hit_tokens=0,
                               prompt_cache_miss_tokens=5, completion_tokens=5, started_at=day2, finished_at=day2)
    other = make_user("eve@example.com")
    fund(other, 10**10)
    _settle(other, day1)
    client.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/usage?start=2026-05-01&end=2026-05-03")
    assert response.status_code == 200
    assert len(queries) <= 4  # session, user, one aggregate (whatever the range)
    body = response.json()
    assert body["currency"] == "USD" and [row["date"] for row in body["data"]] == ["2026-05-01", "2026-05-02"]
    first, second = body["data"]
    each = 64 * 28 + 36 * 280 + 1000 * 420
    assert first == {"date": "2026-05-01", "model": MODEL, "requests": 2, "prompt_cache_hit_tokens": 128,
                     "prompt_cache_miss_tokens": 72, "completion_tokens": 2000, "total_tokens": 2200,
                     "cost": "0.000" + str(2 * each).rjust(6, "0"), "cost_nano": 2 * each}
    assert second["requests"] == 2 and second["cost_nano"] == 64 * 28 + 36 * 280 + 10 * 420


@pytest.mark.parametrize("query, param", [
    ("", "start"), ("start=2026-05-01", "end"), ("start=yesterday&end=2026-05-01", "start"),
    ("start=2026-13-01&end=2026-12-01", "start"), ("start=2026-05-01&end=2026-5-2", "end"),
    ("start=2026-05-02&end=2026-05-01", "end"), ("start=2020-01-01&end=2026-01-01", "end"),
    ("start=2026-05-01%00&end=2026-05-02", "start"), ("start=" + "9" * 5000 + "&end=2026-05-02", "start"),
])
def test_bad_dates_are_a_400_naming_the_parameter(client, query, param):
    client.force_login(ada())
    response = client.get(f"/api/usage?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_usage_needs_a_session(client):
    response = client.get("/api/usage?start=2026-05-01&end=2026-05-02")
    assert response.status_code == 401
