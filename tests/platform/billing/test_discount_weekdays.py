"""Discount windows by day of week: weekday-only peak/off-peak rules (levee.billing.pricing)."""
from datetime import UTC, datetime, time

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from levee.billing.models import DiscountWindow, TokenClass
from levee.billing.pricing import days_label, price_book, rates_at
from tests.platform.billing.conftest import LIST_FROM, MODEL

pytestmark = pytest.mark.django_db


def _window(weekdays: str, start=time(16, 30), end=time(0, 30), percent=50) -> DiscountWindow:
    return DiscountWindow.objects.create(model=MODEL, token_class=TokenClass.OUTPUT, percent_off=percent,
                                         start_time=start, end_time=end, effective_from=LIST_FROM, weekdays=weekdays)


def _off(at: datetime) -> int:
    return rates_at(MODEL, at).output.percent_off


def test_a_weekday_only_window_that_crosses_midnight_belongs_to_the_day_it_starts(prices):
    _window("54321")  # written in any order; stored sorted
    assert DiscountWindow.objects.get(model=MODEL).weekdays == "12345"
    friday = datetime(2026, 11, 27, tzinfo=UTC)  # ISO weekday 5
    assert _off(friday.replace(hour=17)) == 50
    assert _off(datetime(2026, 11, 28, 0, 15, tzinfo=UTC)) == 50  # Saturday 00:15: Friday's window
    assert _off(datetime(2026, 11, 28, 0, 30, tzinfo=UTC)) == 0  # the end is exclusive
    assert _off(datetime(2026, 11, 28, 17, 0, tzinfo=UTC)) == 0  # Saturday evening: no window starts
    assert _off(datetime(2026, 11, 30, 0, 15, tzinfo=UTC)) == 0  # Monday 00:15: Sunday's, which has none
    assert _off(datetime(2026, 11, 30, 16, 29, tzinfo=UTC)) == 0
    assert _off(datetime(2026, 11, 30, 16, 30, tzinfo=UTC)) == 50  # Monday's starts


def test_peak_and_off_peak_rules_by_day_compose_and_the_largest_discount_wins(prices):
    _window("12345", start=time(16, 30), end=time(0, 30), percent=50)  # weekday nights
    _window("67", start=time(0, 0), end=time(23, 59), percent=75)  # weekends, nearly all day
    _window("", start=time(3, 0), end=time(4, 0), percent=10)  # every day
    assert _off(datetime(2026, 11, 28, 0, 15, tzinfo=UTC)) == 75  # Saturday: Friday's 50 and Saturday's 75
    assert _off(datetime(2026, 11, 25, 3, 30, tzinfo=UTC)) == 10  # a Wednesday morning
    assert _off(datetime(2026, 11, 25, 12, 0, tzinfo=UTC)) == 0
    book = price_book(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    mine = [w for w in book["discount_windows"] if w["model"] == MODEL]
    assert sorted(w["days"] for w in mine) == ["Mon–Fri", "Sat–Sun", "every day"]
    assert {tuple(w["weekdays"]) for w in mine} == {(1, 2, 3, 4, 5), (6, 7), (1, 2, 3, 4, 5, 6, 7)}


def test_bad_days_are_refused_by_the_form_and_the_database(prices):
    window = DiscountWindow(model=MODEL, token_class=TokenClass.OUTPUT, percent_off=5, start_time=time(1),
                            end_time=time(2), effective_from=LIST_FROM, weekdays="8")
    with pytest.raises(ValidationError):
        window.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        window.save()
    assert days_label("135") == "Mon, Wed, Fri" and days_label("1234567") == "every day"
