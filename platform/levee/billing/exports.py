"""CSV exports of an owner's usage (per day × model × key, or per request) and ledger, streamed.

Each export covers a date range (UTC days, both ends inclusive, at most LEVEE_USAGE_MAX_DAYS); the
per-request and ledger exports also refuse, before writing anything, a range holding more than
LEVEE_EXPORT_MAX_ROWS rows, so a response is bounded in time and size. Rows are read from the
database in chunks and written as they come (the response is never held in memory whole).
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.http import StreamingHttpResponse

from levee.billing.models import LedgerEntry, UsageRecord
from levee.billing.money import format_amount

if TYPE_CHECKING:
    from levee.accounts.models import User
    from levee.billing.models import Wallet

DAILY_COLUMNS = ["date", "model", "key", "key_name", "source", "requests", "prompt_cache_hit_tokens",
                 "prompt_cache_miss_tokens", "completion_tokens", "total_tokens", "currency", "cost", "cost_nano"]
REQUEST_COLUMNS = ["started_at", "finished_at", "request_id", "model", "key", "key_name", "source",
                   "prompt_cache_hit_tokens", "prompt_cache_miss_tokens", "completion_tokens", "total_tokens",
                   "currency", "cost", "cost_nano"]
LEDGER_COLUMNS = ["created_at", "kind", "amount", "granted_delta_nano", "topped_up_delta_nano", "held_delta_nano",
                  "reason", "reference"]


class ExportTooLarge(Exception):
    def __init__(self, rows: int):
        super().__init__(f"the range holds {rows} rows, more than the {settings.LEVEE_EXPORT_MAX_ROWS} an export "
                         "may hold; choose a shorter range")
        self.rows = rows


def _bounds(start: date, end: date) -> tuple[datetime, datetime]:
    return (datetime.combine(start, time(0), tzinfo=UTC), datetime.combine(end + timedelta(days=1), time(0), tzinfo=UTC))


class _Echo:
    def write(self, value: str) -> str:
        return value


def stream_csv(filename: str, header: list[str], rows: Iterable[list[Any]]) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow(row)

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


def _key_columns(prefix: str | None, name: str | None) -> list[str]:
    return [f"{prefix}…" if prefix else "", name or ""]


def daily_rows(user: User, start: date, end: date) -> Iterator[list[Any]]:
    """One row per UTC day, model, key and source, from the usage records themselves."""
    since, until = _bounds(start, end)
    rows = (UsageRecord.objects.filter(user=user, started_at__gte=since, started_at__lt=until)
            .annotate(day=TruncDate("started_at", tzinfo=UTC))
            .values("day", "model", "api_key__prefix", "api_key__name", "source", "currency")
            .annotate(requests=Count("id"), hit=Sum("prompt_cache_hit_tokens"), miss=Sum("prompt_cache_miss_tokens"),
                      out=Sum("completion_tokens"), cost=Sum("cost_nano"))
            .order_by("day", "model", "api_key__prefix", "source"))
    for r in rows.iterator(chunk_size=2000):
        yield [r["day"].isoformat(), r["model"], *_key_columns(r["api_key__prefix"], r["api_key__name"]), r["source"],
               r["requests"], r["hit"], r["miss"], r["out"], r["hit"] + r["miss"] + r["out"], r["currency"],
               format_amount(r["cost"]), r["cost"]]


def request_rows(user: User, start: date, end: date) -> Iterator[list[Any]]:
    """One row per request. Raises ExportTooLarge (before any row) past LEVEE_EXPORT_MAX_ROWS."""
    since, until = _bounds(start, end)
    records = UsageRecord.objects.filter(user=user, started_at__gte=since, started_at__lt=until)
    count = records.count()
    if count > settings.LEVEE_EXPORT_MAX_ROWS:
        raise ExportTooLarge(count)

    def rows() -> Iterator[list[Any]]:
        for u in (records.select_related("api_key").order_by("started_at", "id")
                  .iterator(chunk_size=2000)):
            key = u.api_key
            total = u.prompt_cache_hit_tokens + u.prompt_cache_miss_tokens + u.completion_tokens
            yield [u.started_at.astimezone(UTC).isoformat(), u.finished_at.astimezone(UTC).isoformat(), u.request_id,
                   u.model, *_key_columns(key.prefix if key else None, key.name if key else None), u.source,
                   u.prompt_cache_hit_tokens, u.prompt_cache_miss_tokens, u.completion_tokens, total, u.currency,
                   format_amount(u.cost_nano), u.cost_nano]
    return rows()


def ledger_rows(wallet: Wallet, start: date, end: date) -> Iterator[list[Any]]:
    """The wallet's ledger entries in the range, oldest first. Raises ExportTooLarge."""
    since, until = _bounds(start, end)
    entries = LedgerEntry.objects.filter(wallet=wallet, created_at__gte=since, created_at__lt=until)
    count = entries.count()
    if count > settings.LEVEE_EXPORT_MAX_ROWS:
        raise ExportTooLarge(count)

    def rows() -> Iterator[list[Any]]:
        for e in entries.order_by("created_at", "id").iterator(chunk_size=2000):
            reference = e.external_id or (f"hold {e.hold_id}" if e.hold_id else "")
            yield [e.created_at.astimezone(UTC).isoformat(), e.kind, format_amount(e.balance_delta), e.granted_delta,
                   e.topped_up_delta, e.held_delta, e.reason, reference]
    return rows()
