"""Money and the price book's instants as the reader's language writes them.

    {% load money %}
    {{ wallet.held_nano|money }}          nano-units (an int) → "1,234.50" (two places; `|money:6` for six)
    {{ info.total_balance|money }}        a decimal string billing made → the same digits, grouped
    {{ book.next_change.at|isotime|date:"DATETIME_FORMAT" }}   an ISO 8601 string → a datetime for `date`

Formatting only: the digits are billing's exact ones (levee.billing.money.localized), never a float,
and what a form field holds stays plain digits (parse_amount takes no separators).
"""
from __future__ import annotations

from datetime import datetime

from django import template

from levee.billing.money import localized

register = template.Library()


@register.filter
def money(value: int | str | None, places: int = 2) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        raise TypeError("money: a bool is not an amount")
    return localized(value, places=int(places)) if isinstance(value, int) else localized(str(value))


@register.filter
def isotime(value: str | None) -> datetime | str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return value
