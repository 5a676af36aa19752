"""Money is an integer count of nano-units of the deployment's currency (1 USD = 10**9 nano).

Every published per-token price is a whole number of nano-units ($0.28 per million tokens is
280 nano per token), so sums and products of prices and token counts are exact. Nothing here
imports Django models, so settings and the pricing maths can use it freely.
"""
from __future__ import annotations

import re

NANO_PER_UNIT = 10**9
TOKENS_PER_MILLION = 10**6
# The largest amount one operator action, voucher or top-up may move: a typo guard, not a policy.
MAX_OPERATION_NANO = 10**6 * NANO_PER_UNIT

_AMOUNT = re.compile(r"(-)?([0-9]{1,16})(?:\.([0-9]{1,9}))?", re.ASCII)


class InvalidAmount(ValueError):
    """An amount string that is not a plain decimal with at most nine places, or out of range."""


def parse_amount(text: str, *, allow_negative: bool = False, allow_zero: bool = False,
                 maximum: int = MAX_OPERATION_NANO) -> int:
    """Parse "12.5" (units of the currency) into nano-units, exactly. No exponents, signs other
    than a leading minus (when allowed), separators, spaces inside, or more than nine decimals."""
    if not isinstance(text, str) or len(text) > 40:
        raise InvalidAmount("the amount must be a decimal number like 12.50")
    match = _AMOUNT.fullmatch(text.strip())
    if not match:
        raise InvalidAmount("the amount must be a decimal number like 12.50, with at most 9 decimal places")
    negative, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    nano = int(whole) * NANO_PER_UNIT + int(fraction.ljust(9, "0"))
    if negative:
        if not allow_negative:
            raise InvalidAmount("the amount must not be negative")
        nano = -nano
    if nano == 0 and not allow_zero:
        raise InvalidAmount("the amount must not be zero")
    if abs(nano) > maximum:
        raise InvalidAmount(f"the amount must be at most {format_amount(maximum, places=2)}")
    return nano


def format_amount(nano: int, *, places: int = 9) -> str:
    """Nano-units as a decimal string with `places` decimals, truncated toward zero (a display
    never shows more money than there is)."""
    if not 0 <= places <= 9:
        raise ValueError("places must be between 0 and 9")
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_UNIT)
    if places == 0:
        return f"{sign}{whole}"
    digits = f"{frac:09d}"[:places]
    if sign and whole == 0 and int(digits) == 0:
        sign = ""
    return f"{sign}{whole}.{digits}"


def localized(amount: int | str, *, places: int = 2) -> str:
    """An amount as the active language writes numbers: Django's l10n formats (decimal separator,
    digit grouping, thousands separator) applied to the exact digits — nano-units through
    format_amount (truncated to `places`), or a decimal string such as per_million's kept as it is.
    Text only: never parse it back (parse_amount takes plain digits)."""
    from django.utils import formats, numberformat

    text = format_amount(amount, places=places) if isinstance(amount, int) else str(amount)
    return numberformat.format(text, formats.get_format("DECIMAL_SEPARATOR"),
                               grouping=formats.get_format("NUMBER_GROUPING"),
                               thousand_sep=formats.get_format("THOUSAND_SEPARATOR"), force_grouping=True)


class Amount:
    """An amount inside a message's parameters: `str()` is the API's plain digits, `localized()` the
    page's (see BillingRefused.page_message)."""

    __slots__ = ("nano", "places")

    def __init__(self, nano: int, places: int = 2):
        self.nano, self.places = nano, places

    def __str__(self) -> str:
        return format_amount(self.nano, places=self.places)

    def localized(self) -> str:
        return localized(self.nano, places=self.places)


def per_million(nano_per_token: int) -> str:
    """A per-token price shown the way providers publish it: per million tokens, trailing zeros cut
    to at least two places (280 -> "0.28", 35 -> "0.035")."""
    text = format_amount(nano_per_token * TOKENS_PER_MILLION)
    whole, frac = text.split(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{whole}.{frac}"
