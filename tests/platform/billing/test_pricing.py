from datetime import UTC, datetime

import pytest

from levee.billing.models import DiscountWindow, Price
from levee.billing.pricing import price_book, rates_at, seed_published_prices

pytestmark = pytest.mark.django_db


def _cost_per_million(model, at, cls):
    rates = rates_at(model, at)
    counts = {"cache_hit_tokens": 0, "cache_miss_tokens": 0, "completion_tokens": 0, cls: 10**6}
    return rates.cost(**counts)


def test_the_seeded_lists_charge_deepseeks_published_prices_at_their_times(settings):
    seed_published_prices()  # idempotent: the migration already ran unless a transactional test flushed it
    settings.LEVEE_CURRENCY = "USD"
    peak = datetime(2025, 3, 3, 12, tzinfo=UTC)
    off_peak = datetime(2025, 3, 3, 23, tzinfo=UTC)
    assert _cost_per_million("deepseek-chat", peak, "cache_miss_tokens") == 270_000_000
    assert _cost_per_million("deepseek-chat", off_peak, "cache_miss_tokens") == 135_000_000
    assert _cost_per_million("deepseek-chat", off_peak, "completion_tokens") == 550_000_000
    assert _cost_per_million("deepseek-reasoner", peak, "completion_tokens") == 2_190_000_000
    assert _cost_per_million("deepseek-reasoner", off_peak, "cache_hit_tokens") == 35_000_000
    v31 = datetime(2025, 9, 20, 23, tzinfo=UTC)  # off-peak hours, but the discount was withdrawn
    assert _cost_per_million("deepseek-reasoner", v31, "completion_tokens") == 1_680_000_000
    now = datetime(2026, 11, 28, tzinfo=UTC)
    for model in ("deepseek-chat", "deepseek-reasoner"):
        assert [_cost_per_million(model, now, c) for c in ("cache_hit_tokens", "cache_miss_tokens", "completion_tokens")] \
            == [28_000_000, 280_000_000, 420_000_000]
    settings.LEVEE_CURRENCY = "CNY"
    assert _cost_per_million("deepseek-chat", now, "completion_tokens") == 3 * 10**9
    assert _cost_per_million("deepseek-chat", datetime(2024, 6, 1, tzinfo=UTC), "completion_tokens") == 2 * 10**9


def test_the_price_book_shows_current_prices_and_the_next_change(client, settings):
    seed_published_prices()
    settings.LEVEE_CURRENCY = "USD"
    at = datetime(2025, 9, 10, tzinfo=UTC)
    book = price_book(at)
    chat = next(m for m in book["models"] if m["model"] == "deepseek-chat")
    assert chat["prices"]["output"]["per_million_tokens"] == "1.68"
    assert book["next_change"]["at"] == "2025-09-29T00:00:00+00:00"
    assert {p["per_million_tokens"] for p in book["next_change"]["prices"]} == {"0.028", "0.28", "0.42"}
    early = price_book(datetime(2025, 8, 1, tzinfo=UTC))
    assert len(early["discount_windows"]) == 6
    assert len(early["next_change"]["discount_windows_ending"]) == 6


def test_the_pricing_page_and_json_are_public(client, settings):
    seed_published_prices()
    settings.LEVEE_CURRENCY = "USD"
    page = client.get("/pricing")
    assert page.status_code == 200 and b"deepseek-reasoner" in page.content and b"0.42" in page.content
    data = client.get("/api/pricing").json()
    assert data["currency"] == "USD" and {m["model"] for m in data["models"]} >= {"deepseek-chat", "deepseek-reasoner"}
    assert data["next_change"] is None or "at" in data["next_change"]
    assert Price.objects.filter(currency="CNY").exists() and DiscountWindow.objects.count() == 6
