"""Properties of the cost arithmetic (docs/billing.md, "Rounding")."""
from datetime import UTC, datetime, time, timedelta
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from levee.billing.models import DiscountWindow, Price, TokenClass
from levee.billing.pricing import Rate, Rates, in_window, rates_at
from tests.platform.billing.conftest import MODEL, make_prices

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
tokens = st.integers(min_value=0, max_value=2_000_000)
nanos = st.integers(min_value=0, max_value=100_000)
percents = st.integers(min_value=0, max_value=100)


def _rates(hit, miss, out, p_hit=0, p_miss=0, p_out=0) -> Rates:
    def rate(nano, pct):
        return Rate(Price(nano_per_token=nano), pct)
    return Rates(rate(hit, p_hit), rate(miss, p_miss), rate(out, p_out))


@FAST
@given(hit=nanos, miss=nanos, out=nanos, p=st.tuples(percents, percents, percents), t=st.tuples(tokens, tokens, tokens))
def test_the_cost_is_the_exact_sum_rounded_down_once(hit, miss, out, p, t):
    cost = _rates(hit, miss, out, *p).cost(cache_hit_tokens=t[0], cache_miss_tokens=t[1], completion_tokens=t[2])
    exact = (t[0] * hit * Fraction(100 - p[0], 100) + t[1] * miss * Fraction(100 - p[1], 100)
             + t[2] * out * Fraction(100 - p[2], 100))
    assert isinstance(cost, int)
    assert cost <= exact < cost + 1


@FAST
@given(hit=nanos, miss=nanos, out=nanos, p=st.tuples(percents, percents, percents), t=st.tuples(tokens, tokens, tokens),
       extra=st.tuples(tokens, tokens, tokens))
def test_the_cost_never_falls_when_tokens_grow(hit, miss, out, p, t, extra):
    rates = _rates(hit, miss, out, *p)
    base = rates.cost(cache_hit_tokens=t[0], cache_miss_tokens=t[1], completion_tokens=t[2])
    more = rates.cost(cache_hit_tokens=t[0] + extra[0], cache_miss_tokens=t[1] + extra[1],
                      completion_tokens=t[2] + extra[2])
    assert more >= base


@FAST
@given(millions=st.integers(min_value=0, max_value=1000), cls=st.sampled_from(["hit", "miss", "out"]),
       published=st.sampled_from([28, 70, 140, 270, 280, 420, 550, 560, 1100, 1680, 2190]))
def test_whole_millions_of_tokens_cost_exactly_the_published_price(millions, cls, published):
    rates = _rates(published, published, published)
    counts = {"cache_hit_tokens": 0, "cache_miss_tokens": 0, "completion_tokens": 0}
    counts[{"hit": "cache_hit_tokens", "miss": "cache_miss_tokens", "out": "completion_tokens"}[cls]] = millions * 10**6
    # published nano/token × 10^6 = the list's price per million, in nano-units
    assert rates.cost(**counts) == millions * published * 10**6


@FAST
@given(prompt=tokens, max_tokens=tokens, data=st.data())
def test_the_held_maximum_covers_every_outcome_within_max_tokens(prompt, max_tokens, data):
    rates = _rates(28, 280, 420, 0, 50, 75)
    hits = data.draw(st.integers(0, prompt))
    completion = data.draw(st.integers(0, max_tokens))
    cost = rates.cost(cache_hit_tokens=hits, cache_miss_tokens=prompt - hits, completion_tokens=completion)
    assert cost <= rates.max_cost(prompt_tokens=prompt, max_tokens=max_tokens)


@given(start=st.times(), end=st.times(), moment=st.times())
@settings(max_examples=200)
def test_a_window_crossing_midnight_is_the_union_of_its_two_sides(start, end, moment):
    if start == end:
        return
    if start < end:
        assert in_window(start, end, moment) == (start <= moment < end)
    else:
        assert in_window(start, end, moment) == (moment >= start or moment < end)


def _off_peak():
    make_prices()
    for cls in TokenClass.values:
        DiscountWindow.objects.get_or_create(model=MODEL, token_class=cls, start_time=time(16, 30), end_time=time(0, 30),
                                             effective_from=datetime(2021, 1, 1, tzinfo=UTC),
                                             defaults={"percent_off": 50})


@pytest.mark.django_db
@FAST
@given(day=st.dates(min_value=datetime(2021, 1, 2).date(), max_value=datetime(2030, 1, 1).date()),
       seconds=st.integers(min_value=0, max_value=24 * 3600 - 1))
def test_off_peak_applies_on_both_sides_of_midnight_utc(day, seconds):
    _off_peak()
    at = datetime.combine(day, time(0), tzinfo=UTC) + timedelta(seconds=seconds)
    off_peak = at.time() >= time(16, 30) or at.time() < time(0, 30)
    rates = rates_at(MODEL, at)
    assert rates.output.percent_off == (50 if off_peak else 0)
    assert rates.cost(cache_hit_tokens=0, cache_miss_tokens=10**6, completion_tokens=0) == (
        140_000_000 if off_peak else 280_000_000)


@pytest.mark.django_db
def test_off_peak_edges_are_start_inclusive_end_exclusive():
    _off_peak()
    day = datetime(2025, 3, 1, tzinfo=UTC)
    for hh, mm, ss, expected in [(16, 29, 59, 0), (16, 30, 0, 50), (23, 59, 59, 50), (0, 0, 0, 50), (0, 29, 59, 50),
                                 (0, 30, 0, 0)]:
        assert rates_at(MODEL, day.replace(hour=hh, minute=mm, second=ss)).output.percent_off == expected


@pytest.mark.django_db
@FAST
@given(offset=st.integers(min_value=-10**7, max_value=10**7))
def test_a_price_change_applies_to_requests_started_after_it(offset):
    change = datetime(2024, 6, 1, 12, tzinfo=UTC)
    make_prices(at=datetime(2020, 1, 1, tzinfo=UTC), out=1000)
    make_prices(at=change, out=400)
    at = change + timedelta(microseconds=offset)
    assert rates_at(MODEL, at).output.price.nano_per_token == (400 if at >= change else 1000)
