"""The price book: which prices and discounts are in force at an instant, and what tokens cost.

The rounding rule (docs/billing.md, ADR 0004): a request's cost is the exact rational sum over its
token classes of tokens × nano_per_token × (100 − percent_off) / 100, rounded down to a whole nano
once, for the whole request. Never per class, never per token: the customer never pays more than
the published price, and at most one nano less.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from levee.billing.models import DiscountWindow, Hold, Price, TokenClass
from levee.billing.money import per_million
from levee.core.memo import Memo

CLASSES = (TokenClass.INPUT_CACHE_HIT, TokenClass.INPUT_CACHE_MISS, TokenClass.OUTPUT)


class PriceNotFound(LookupError):
    """No price is in force for this model (in this currency) at this instant."""

    def __init__(self, model: str, at: datetime):
        super().__init__(f"no price for model {model!r} at {at.isoformat()}")
        self.model = model


def in_window(start: time, end: time, moment: time) -> bool:
    """Whether a UTC time of day falls in [start, end); a window whose end is not after its start
    crosses midnight and covers [start, 24:00) and [00:00, end)."""
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end


def window_covers(window: DiscountWindow, at: datetime) -> bool:
    """Whether a discount window's daily span covers instant `at`, on the days it runs: a window
    with weekdays (ISO 1–7) counts on the days it starts, so the after-midnight part of a
    crossing window belongs to the day before."""
    moment = at.astimezone(UTC)
    t = moment.time()
    if not in_window(window.start_time, window.end_time, t):
        return False
    if not window.weekdays:
        return True
    started = moment.date()
    if window.start_time >= window.end_time and t < window.end_time:  # the part after midnight
        started -= timedelta(days=1)
    return str(started.isoweekday()) in window.weekdays


_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def days_label(weekdays: str) -> str:
    """"12345" -> "Mon–Fri", "67" -> "Sat–Sun", "135" -> "Mon, Wed, Fri", "" -> "every day"."""
    days = sorted({int(d) for d in weekdays})
    if not days or len(days) == 7:
        return "every day"
    if len(days) > 1 and days == list(range(days[0], days[-1] + 1)):
        return f"{_DAY_NAMES[days[0] - 1]}–{_DAY_NAMES[days[-1] - 1]}"
    return ", ".join(_DAY_NAMES[d - 1] for d in days)


@dataclass(frozen=True)
class Rate:
    price: Price
    percent_off: int = 0

    @property
    def hundredths(self) -> int:
        """The per-token price × 100, an integer: the exact numerator before the one division."""
        return self.price.nano_per_token * (100 - self.percent_off)


@dataclass(frozen=True)
class Rates:
    cache_hit: Rate
    cache_miss: Rate
    output: Rate

    def cost(self, *, cache_hit_tokens: int, cache_miss_tokens: int, completion_tokens: int) -> int:
        exact_hundredths = (cache_hit_tokens * self.cache_hit.hundredths
                            + cache_miss_tokens * self.cache_miss.hundredths
                            + completion_tokens * self.output.hundredths)
        return exact_hundredths // 100

    def max_cost(self, *, prompt_tokens: int, max_tokens: int) -> int:
        """The most a request can cost: every prompt token at the dearer input rate, max_tokens of output."""
        dearer = max(self.cache_hit.hundredths, self.cache_miss.hundredths)
        return (prompt_tokens * dearer + max_tokens * self.output.hundredths) // 100


def currency() -> str:
    return settings.LEVEE_CURRENCY


# Each model's whole price history and discount windows, per process (levee.core.memo): a price
# change saved in admin reaches other processes within PRICE_MEMO_SECONDS; changes scheduled ahead
# (the usual way, effective_from in the future) apply at their exact instant everywhere.
PRICE_MEMO_SECONDS = 5
_book_memo = Memo("prices", PRICE_MEMO_SECONDS)
_book_memo.clear_on_change(Price, DiscountWindow)


def _model_book(model: str, currency_code: str) -> tuple[list[Price], list[DiscountWindow]]:
    def load() -> tuple[list[Price], list[DiscountWindow]]:
        prices = list(Price.objects.filter(model=model, currency=currency_code).order_by("-effective_from", "-pk"))
        return prices, list(DiscountWindow.objects.filter(model=model))
    return _book_memo.get((model, currency_code), load)


def rates_at(model: str, at: datetime | None = None) -> Rates:
    """The prices and discounts in force for `model` at instant `at` (now by default)."""
    at = at or timezone.now()
    book, windows = _model_book(model, currency())
    prices: dict[str, Price] = {}
    for price in book:  # newest first
        if price.effective_from <= at:
            prices.setdefault(price.token_class, price)
    if len(prices) < len(CLASSES):
        raise PriceNotFound(model, at)
    percent: dict[str, int] = {cls: 0 for cls in CLASSES}
    for window in windows:
        in_force = window.effective_from <= at and (window.effective_until is None or window.effective_until > at)
        if in_force and window_covers(window, at):
            percent[window.token_class] = max(percent[window.token_class], window.percent_off)
    return Rates(*(Rate(prices[cls], percent[cls]) for cls in CLASSES))


def windows_in_force(at: datetime) -> QuerySet[DiscountWindow]:
    return DiscountWindow.objects.filter(Q(effective_until__isnull=True) | Q(effective_until__gt=at),
                                         effective_from__lte=at)


def rates_from_hold(hold: Hold) -> Rates:
    return Rates(Rate(hold.price_cache_hit, hold.percent_off_cache_hit),
                 Rate(hold.price_cache_miss, hold.percent_off_cache_miss),
                 Rate(hold.price_output, hold.percent_off_output))


def price_book(at: datetime | None = None, models: Collection[str] | None = None) -> dict:
    """What the pricing page and /api/pricing show: the list prices in force, the discount windows
    in force, and the next scheduled change of either; of the `models` named (None: every model
    with a price)."""
    at = at or timezone.now()

    def only(rows: QuerySet) -> QuerySet:
        return rows if models is None else rows.filter(model__in=list(models))

    current: dict[tuple[str, str], Price] = {}
    for price in only(Price.objects.filter(currency=currency(), effective_from__lte=at)).order_by("-effective_from"):
        current.setdefault((price.model, price.token_class), price)
    entries: dict[str, dict] = {}
    for (model, cls), price in sorted(current.items()):
        entries.setdefault(model, {"model": model, "prices": {}})["prices"][cls] = {
            "per_million_tokens": per_million(price.nano_per_token), "nano_per_token": price.nano_per_token,
            "effective_from": price.effective_from.isoformat()}
    windows = [{"model": w.model, "token_class": w.token_class, "percent_off": w.percent_off,
                "start_utc": w.start_time.strftime("%H:%M"), "end_utc": w.end_time.strftime("%H:%M"),
                "weekdays": [int(d) for d in w.weekdays] or list(range(1, 8)), "days": days_label(w.weekdays),
                "effective_until": w.effective_until.isoformat() if w.effective_until else None}
               for w in only(windows_in_force(at)).order_by("model", "token_class")]
    next_change = _next_change(at, only)
    return {"currency": currency(), "at": at.isoformat(), "models": list(entries.values()),
            "discount_windows": windows, "next_change": next_change}


def _next_change(at: datetime, only: Callable[[QuerySet], QuerySet]) -> dict | None:
    """The soonest instant after `at` at which a price or a discount window starts or stops, with
    what happens then (of the rows `only` keeps)."""
    prices = only(Price.objects.filter(currency=currency()))
    windows = only(DiscountWindow.objects.all())
    instants = [p.effective_from for p in prices.filter(effective_from__gt=at).order_by("effective_from")[:1]]
    instants += [w.effective_from for w in windows.filter(effective_from__gt=at).order_by("effective_from")[:1]]
    instants += [w.effective_until for w in windows.filter(effective_until__gt=at).order_by("effective_until")[:1]]
    if not instants:
        return None
    when = min(instants)
    return {
        "at": when.isoformat(),
        "prices": [{"model": p.model, "token_class": p.token_class, "per_million_tokens": per_million(p.nano_per_token),
                    "nano_per_token": p.nano_per_token}
                   for p in prices.filter(effective_from=when).order_by("model", "token_class")],
        "discount_windows_starting": [{"model": w.model, "token_class": w.token_class, "percent_off": w.percent_off}
                                      for w in windows.filter(effective_from=when)],
        "discount_windows_ending": [{"model": w.model, "token_class": w.token_class, "percent_off": w.percent_off}
                                    for w in windows.filter(effective_until=when)],
    }


def seed_published_prices() -> None:
    """(Re)write the DeepSeek price lists that migration 0002 seeds; idempotent. For tests whose
    transactional flush removed the seeded rows, and for a database restored without them."""
    import importlib

    from django.apps import apps

    importlib.import_module("levee.billing.migrations.0002_seed_deepseek_prices").seed(apps, None)
