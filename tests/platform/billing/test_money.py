import pytest

from levee.billing.money import InvalidAmount, format_amount, parse_amount, per_million


@pytest.mark.parametrize("text, nano", [
    ("1", 10**9), ("0.28", 280_000_000), ("12.500000001", 12_500_000_001), (" 3.5 ", 3_500_000_000),
    ("0.000000001", 1), ("1000000", 10**15),
])
def test_it_parses_decimal_amounts_exactly(text, nano):
    assert parse_amount(text) == nano


@pytest.mark.parametrize("text", [
    "", "abc", "1e3", "1.0000000001", "-5", "+5", "1,000", "1 000", "0", "0.000", "NaN", "inf", ".5", "5.",
    "１２", "١", "1000000.000000001", "9" * 17, "1" * 41, None, 5,
])
def test_it_refuses_garbage_negative_zero_and_out_of_range_amounts(text):
    with pytest.raises(InvalidAmount):
        parse_amount(text)


def test_a_debit_may_be_negative_when_allowed():
    assert parse_amount("-2.25", allow_negative=True) == -2_250_000_000


def test_it_formats_without_ever_rounding_up():
    assert format_amount(1_999_999_999, places=2) == "1.99"
    assert format_amount(10**9) == "1.000000000"
    assert format_amount(-5_000_000, places=2) == "0.00"
    assert format_amount(-1_500_000_000, places=2) == "-1.50"


def test_per_million_reads_like_a_published_price():
    assert per_million(280) == "0.28"
    assert per_million(28) == "0.028"
    assert per_million(2190) == "2.19"
    assert per_million(1000) == "1.00"
