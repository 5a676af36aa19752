"""Per-key spend caps: an API key may carry a daily, a monthly and a lifetime limit (UTC periods).

A cap counts what the key's requests reserve (open holds) or were charged, by the period their
hold was placed in. The count lives in one `KeySpend` row per key and period, and a hold is
admitted by a conditional `UPDATE … SET spent = spent + amount WHERE spent + amount <= cap` on
each capped row, in the same transaction as the wallet reservation: PostgreSQL re-checks the
condition on the latest row version after waiting for a concurrent writer, so parallel requests
admit exactly what fits. Rows are taken in one order (day, month, lifetime) and always before the
wallet row, by placing and by closing a hold alike, so no two transactions wait on each other in
opposite orders.
"""
from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import F, Q, Sum, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from levee.billing.models import AuditEvent, CapPeriod, Hold, HoldStatus, KeySpend, UsageRecord, Wallet
from levee.billing.money import MAX_OPERATION_NANO, format_amount

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from levee.accounts.models import User
    from levee.core.errors import ApiError
    from levee.keys.models import ApiKey

EPOCH = date(1970, 1, 1)
ORDER = (CapPeriod.DAY, CapPeriod.MONTH, CapPeriod.LIFETIME)
FIELDS = {CapPeriod.DAY: "daily_cap_nano", CapPeriod.MONTH: "monthly_cap_nano",
          CapPeriod.LIFETIME: "lifetime_cap_nano"}
_WORDS = {CapPeriod.DAY: ("daily", "today (UTC)"), CapPeriod.MONTH: ("monthly", "this month (UTC)"),
          CapPeriod.LIFETIME: ("lifetime", "in all")}


class SpendCapReached(Exception):
    """A request would take its key past one of the key's spend caps; nothing was written."""

    status = 402

    def __init__(self, *, period: str, cap_nano: int, spent_nano: int, needed_nano: int):
        from levee.billing.pricing import currency

        adjective, when = _WORDS[CapPeriod(period)]
        cur = currency()
        super().__init__(
            f"This API key's {adjective} spend cap of {cap_text(cap_nano)} {cur} is reached: "
            f"{format_amount(spent_nano, places=6)} {cur} spent or reserved {when}, and this request may cost up "
            f"to {format_amount(needed_nano, places=6)} {cur}. Raise the cap on the API keys page or use another key.")
        self.period, self.cap_nano, self.spent_nano, self.needed_nano = period, cap_nano, spent_nano, needed_nano

    @property
    def code(self) -> str:
        return f"{_WORDS[CapPeriod(self.period)][0]}_spend_cap_reached"

    @property
    def param(self) -> str:
        return FIELDS[CapPeriod(self.period)].removesuffix("_nano")

    def api_error(self) -> ApiError:
        from levee.core.errors import ApiError

        return ApiError(402, str(self), code=self.code, param=self.param)


def cap_places(nano: int) -> int:
    """How many decimals a cap is shown with: two when it is whole cents, else six."""
    return 2 if nano % 10**7 == 0 else 6


def cap_text(nano: int) -> str:
    """A cap as people write it (plain digits, as the API and the form fields take it)."""
    return format_amount(nano, places=cap_places(nano))


def period_starts(at: datetime) -> dict[str, date]:
    """The first day of each period the instant `at` falls in (UTC)."""
    day = at.astimezone(UTC).date()
    return {CapPeriod.DAY: day, CapPeriod.MONTH: day.replace(day=1), CapPeriod.LIFETIME: EPOCH}


def _rows_of(api_key_id: int | None, at: datetime) -> QuerySet[KeySpend]:
    starts = period_starts(at)
    match = Q()
    for period in ORDER:
        match |= Q(period=period, starts=starts[period])
    return KeySpend.objects.filter(match, api_key_id=api_key_id)


def reserve(api_key: ApiKey, amount: int, at: datetime) -> None:
    """Count `amount` against each cap `api_key` carries, or raise SpendCapReached. Call inside the
    transaction that reserves the wallet (the increments roll back with it)."""
    starts = period_starts(at)
    for period in ORDER:
        cap = getattr(api_key, FIELDS[period])
        if cap is None:
            continue
        key = {"api_key_id": api_key.pk, "period": period, "starts": starts[period]}
        for _ in range(2):
            if KeySpend.objects.filter(**key, spent_nano__lte=Value(cap) - amount).update(
                    spent_nano=F("spent_nano") + amount):
                break
            spent = KeySpend.objects.filter(**key).values_list("spent_nano", flat=True).first()
            if spent is not None:
                raise SpendCapReached(period=period, cap_nano=cap, spent_nano=spent, needed_nano=amount)
            # The period's first request: make its row (a concurrent first request may win), count again.
            KeySpend.objects.bulk_create([KeySpend(**key)], ignore_conflicts=True)


def lock(hold: Hold) -> None:
    """Lock the counter rows a closing hold will adjust (before the wallet: the placing order)."""
    list(_rows_of(hold.api_key_id, hold.created_at).order_by("id").select_for_update(no_key=True)
         .values_list("id", flat=True))


def adjust(hold: Hold, delta: int) -> None:
    """Move the counters of the periods `hold` was placed in by `delta` (negative when a closing
    hold charges less than it reserved). A counter never goes below zero."""
    if delta:
        _rows_of(hold.api_key_id, hold.created_at).update(spent_nano=Greatest(F("spent_nano") + delta, Value(0)))


def is_capped(hold: Hold) -> bool:
    """Whether the hold's key carries a cap now (its counters then exist and follow its holds)."""
    return hold.api_key_id is not None and hold.api_key is not None and bool(hold.api_key.caps)


def spent_in(api_key: ApiKey, period: str, starts: date) -> int:
    """What the key's holds placed since `starts` reserve or were charged, from the holds themselves
    (the value a counter is seeded with)."""
    since = datetime.combine(starts, time(0), tzinfo=UTC)
    held = Hold.objects.filter(api_key=api_key, status=HoldStatus.OPEN, created_at__gte=since).aggregate(
        total=Sum("amount_nano"))["total"] or 0
    charged = UsageRecord.objects.filter(hold__api_key=api_key, hold__created_at__gte=since).aggregate(
        total=Sum("cost_nano"))["total"] or 0
    return held + charged


def current(api_key: ApiKey, at: datetime | None = None) -> dict[str, int]:
    """The key's counted spend per capped period now."""
    found = {row.period: row.spent_nano for row in _rows_of(api_key.pk, at or timezone.now())}
    return {period: found.get(period, 0) for period in ORDER if getattr(api_key, FIELDS[period]) is not None}


def set_caps(api_key: ApiKey, *, daily: int | None, monthly: int | None, lifetime: int | None, actor: User | None,
             source: str) -> ApiKey:
    """Set (an int of nano-units) or remove (None) the key's caps, seeding each new counter from
    the key's holds so far in its period, with an AuditEvent in the same transaction. Raises
    ValueError for an amount that is not a positive integer within one operation's limit."""
    from levee.keys.models import ApiKey

    wanted = {CapPeriod.DAY: daily, CapPeriod.MONTH: monthly, CapPeriod.LIFETIME: lifetime}
    for period, value in wanted.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 < value <= MAX_OPERATION_NANO):
            raise ValueError(f"the {_WORDS[period][0]} cap must be a positive amount of at most "
                             f"{format_amount(MAX_OPERATION_NANO, places=2)}")
    now = timezone.now()
    starts = period_starts(now)
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        before = dict(key.caps)
        for period, value in wanted.items():
            setattr(key, FIELDS[period], value)
            if value is None:
                KeySpend.objects.filter(api_key=key, period=period).delete()
            elif period not in before:
                KeySpend.objects.update_or_create(api_key=key, period=period, starts=starts[period],
                                                  defaults={"spent_nano": spent_in(key, period, starts[period])})
        key.save(update_fields=list(FIELDS.values()))
        wallet, _ = Wallet.objects.get_or_create(user_id=key.user_id)
        AuditEvent.objects.create(actor=actor, action="key_caps", source=source, wallet=wallet,
                                  reason=f"key {key.prefix}: {describe(key)}"[:200], created_at=now)
    for field in FIELDS.values():
        setattr(api_key, field, getattr(key, field))
    return key


def describe(api_key: ApiKey) -> str:
    """"daily 5.00, monthly none, lifetime none"."""
    parts = []
    for period in ORDER:
        value = getattr(api_key, FIELDS[period])
        parts.append(f"{_WORDS[period][0]} {cap_text(value) if value is not None else 'none'}")
    return ", ".join(parts)
