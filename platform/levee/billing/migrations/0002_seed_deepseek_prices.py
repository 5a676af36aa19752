"""Seed DeepSeek's published prices for deepseek-chat and deepseek-reasoner (the current list and
the older lists as history) in USD and CNY, plus the off-peak discount of 2025-02-26 → 2025-09-05.

Prices are nano-units per token: $0.28 per million tokens = 280 nano per token. The instants are
when each list took effect; DeepSeek announces in Beijing time, so a list "from 2025-02-09" took
effect at 2025-02-09 00:00 UTC+8 = 2025-02-08 16:00 UTC. Sources: docs/billing.md.
Operators add later lists as new rows (Django admin); rows that were in force are never edited.
"""
from datetime import UTC, datetime, time

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

CHAT, REASONER = "deepseek-chat", "deepseek-reasoner"

# (effective from, model, currency, cache hit, cache miss, output) in nano per token
LISTS = [
    # DeepSeek-V2 (May 2024): no context caching yet, so a "hit" costs what a miss does.
    (datetime(2024, 5, 6, 16, 0, tzinfo=UTC), CHAT, "CNY", 1000, 1000, 2000),
    (datetime(2024, 5, 6, 16, 0, tzinfo=UTC), CHAT, "USD", 140, 140, 280),
    # DeepSeek-V3 / R1 standard prices, after V3's introductory period ended.
    (datetime(2025, 2, 8, 16, 0, tzinfo=UTC), CHAT, "USD", 70, 270, 1100),
    (datetime(2025, 2, 8, 16, 0, tzinfo=UTC), CHAT, "CNY", 500, 2000, 8000),
    (datetime(2025, 2, 8, 16, 0, tzinfo=UTC), REASONER, "USD", 140, 550, 2190),
    (datetime(2025, 2, 8, 16, 0, tzinfo=UTC), REASONER, "CNY", 1000, 4000, 16000),
    # DeepSeek-V3.1: one price for both models, off-peak discount withdrawn.
    (datetime(2025, 9, 5, 16, 0, tzinfo=UTC), CHAT, "USD", 70, 560, 1680),
    (datetime(2025, 9, 5, 16, 0, tzinfo=UTC), REASONER, "USD", 70, 560, 1680),
    (datetime(2025, 9, 5, 16, 0, tzinfo=UTC), CHAT, "CNY", 500, 4000, 12000),
    (datetime(2025, 9, 5, 16, 0, tzinfo=UTC), REASONER, "CNY", 500, 4000, 12000),
    # DeepSeek-V3.2-Exp: the current list.
    (datetime(2025, 9, 29, 0, 0, tzinfo=UTC), CHAT, "USD", 28, 280, 420),
    (datetime(2025, 9, 29, 0, 0, tzinfo=UTC), REASONER, "USD", 28, 280, 420),
    (datetime(2025, 9, 29, 0, 0, tzinfo=UTC), CHAT, "CNY", 200, 2000, 3000),
    (datetime(2025, 9, 29, 0, 0, tzinfo=UTC), REASONER, "CNY", 200, 2000, 3000),
]
CLASSES = ("input_cache_hit", "input_cache_miss", "output")

# Off-peak 16:30–00:30 UTC: deepseek-chat 50% off, deepseek-reasoner 75% off, every token class.
OFF_PEAK = (time(16, 30), time(0, 30), datetime(2025, 2, 26, 16, 30, tzinfo=UTC), datetime(2025, 9, 5, 16, 0, tzinfo=UTC))
OFF_PEAK_PERCENT = {CHAT: 50, REASONER: 75}


def seed(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Price = apps.get_model("billing", "Price")
    DiscountWindow = apps.get_model("billing", "DiscountWindow")
    for effective_from, model, currency, *nanos in LISTS:
        for token_class, nano in zip(CLASSES, nanos, strict=True):
            Price.objects.get_or_create(model=model, token_class=token_class, currency=currency,
                                        effective_from=effective_from,
                                        defaults={"nano_per_token": nano, "note": "DeepSeek published price"})
    start, end, effective_from, effective_until = OFF_PEAK
    for model, percent in OFF_PEAK_PERCENT.items():
        for token_class in CLASSES:
            DiscountWindow.objects.get_or_create(
                model=model, token_class=token_class, start_time=start, end_time=end, effective_from=effective_from,
                defaults={"percent_off": percent, "effective_until": effective_until, "note": "DeepSeek off-peak"})


def unseed(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    apps.get_model("billing", "DiscountWindow").objects.filter(note="DeepSeek off-peak").delete()
    apps.get_model("billing", "Price").objects.filter(note="DeepSeek published price").delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
