import time
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from inference import protocol
from levee.api.models import LlmModel
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


def _serve(redis_client, *names, at=None):
    """A live worker heartbeat for each model named (as an inference worker's would be)."""
    for name in names:
        redis_client.zadd(protocol.workers_key(name), {f"w-{name}": time.time() if at is None else at})


def test_the_pricing_page_and_json_are_public(client, settings, redis_client):
    seed_published_prices()
    settings.LEVEE_CURRENCY = "USD"
    LlmModel.objects.filter(name="deepseek-reasoner").update(enabled=True)
    _serve(redis_client, "deepseek-chat", "deepseek-reasoner")
    page = client.get("/pricing")
    assert page.status_code == 200 and b"deepseek-reasoner" in page.content and b"0.42" in page.content
    data = client.get("/api/pricing").json()
    assert data["currency"] == "USD" and {m["model"] for m in data["models"]} >= {"deepseek-chat", "deepseek-reasoner"}
    assert data["next_change"] is None or "at" in data["next_change"]
    assert Price.objects.filter(currency="CNY").exists() and DiscountWindow.objects.count() == 6


def test_the_price_lists_show_only_the_enabled_models_a_worker_serves(client, settings, redis_client):
    seed_published_prices()
    settings.LEVEE_CURRENCY = "USD"
    LlmModel.objects.filter(name="deepseek-reasoner").update(enabled=False)
    _serve(redis_client, "deepseek-chat", "deepseek-reasoner")  # a worker for a disabled model: not offered

    def listed():
        pages = {path: client.get(path).content.decode() for path in ("/", "/pricing")}
        book = client.get("/api/pricing").json()
        assert {w["model"] for w in book["discount_windows"]} <= {m["model"] for m in book["models"]}
        if book["next_change"]:
            assert {p["model"] for p in book["next_change"]["prices"]} <= {m["model"] for m in book["models"]}
        names = [m["model"] for m in book["models"]]
        for page in pages.values():
            assert [n for n in ("deepseek-chat", "deepseek-reasoner") if f"<code>{n}</code>" in page] == names
        return names, pages

    assert listed()[0] == ["deepseek-chat"]
    LlmModel.objects.filter(name="deepseek-reasoner").update(enabled=True)
    assert listed()[0] == ["deepseek-chat", "deepseek-reasoner"]
    redis_client.delete(protocol.workers_key("deepseek-chat"))
    _serve(redis_client, "deepseek-chat", at=time.time() - protocol.WORKER_TTL_S - 5)  # its heartbeat lapsed
    assert listed()[0] == ["deepseek-reasoner"]
    redis_client.delete(protocol.workers_key("deepseek-reasoner"))
    names, pages = listed()
    assert names == [] and all("No model is being served right now." in page for page in pages.values())
    assert "目前没有正在提供服务的模型" in client.get(reverse("pricing"), HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content.decode()

