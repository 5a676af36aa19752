"""Balance and spend alerts (docs/billing.md, "Alerts").

After every charge and credit (a ledger entry of those kinds, on commit) the account's alert
settings are checked: the available balance falling below its low-balance threshold, and the
UTC day's spend reaching its daily threshold, each fire once per crossing — a compare-and-set on
the settings row decides which process sends it, and a balance back above the threshold re-arms
the low-balance alert. A beat task mails the optional daily digest. Each alert is mailed, and
POSTed to the account's webhook if it has one: the body signed with HMAC-SHA256 under the
account's secret (header `Levee-Signature: sha256=<hex>`), delivered by a Celery task that retries
with exponential back-off and logs every attempt on an AlertDelivery row (admin's delivery log).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Sum
from django.utils import formats, timezone, translation
from django.utils.translation import gettext, gettext_noop, ngettext

from levee.billing.models import (
    AlertDelivery,
    AlertSettings,
    AuditEvent,
    DailyUsage,
    DeliveryStatus,
    LedgerKind,
    Wallet,
)
from levee.billing.money import MAX_OPERATION_NANO, format_amount, localized
from levee.billing.pricing import currency
from levee.core.memo import Memo

if TYPE_CHECKING:
    from levee.accounts.models import User
    from levee.billing.models import LedgerEntry

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Levee-Signature"
# Ledger kinds after which the settings are checked: spending, and money coming in (re-arming).
CHECKED_KINDS = {LedgerKind.CHARGE, LedgerKind.TOPUP, LedgerKind.VOUCHER, LedgerKind.GRANT, LedgerKind.REFUND,
                 LedgerKind.ADJUSTMENT, LedgerKind.PAYBACK, LedgerKind.EXPIRY}

# Which accounts have alert settings, per process: the check after a charge costs no query for
# the (usual) account without any. A change reaches other processes within ALERT_MEMO_SECONDS.
ALERT_MEMO_SECONDS = 5
_settings_memo = Memo("alert-settings", ALERT_MEMO_SECONDS)
_settings_memo.clear_on_change(AlertSettings)


def _settings_of(wallet_id: int) -> AlertSettings | None:
    return _settings_memo.get(wallet_id, lambda: AlertSettings.objects.filter(user__wallet=wallet_id).first())


def sign(secret: str, body: bytes) -> str:
    """The Levee-Signature header value of a webhook body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- configuration -----------------------------------------------------------------------------------

def configure(user: User, *, low_balance_nano: int | None, daily_spend_nano: int | None, daily_digest: bool,
              webhook_url: str, actor: User | None, source: str, rotate_secret: bool = False) -> AlertSettings:
    """Set an account's alerts, with an AuditEvent in the same transaction. A webhook gets a secret
    when it is first set (or on `rotate_secret`). Raises ValueError for a bad amount or URL."""
    for name, value in (("low balance", low_balance_nano), ("daily spend", daily_spend_nano)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 < value <= MAX_OPERATION_NANO):
            raise ValueError(f"the {name} threshold must be a positive amount")
    webhook_url = (webhook_url or "").strip()
    if webhook_url:
        parsed = urlparse(webhook_url)
        if parsed.scheme not in ("https", "http") or not parsed.hostname or len(webhook_url) > 500:
            raise ValueError(gettext_noop("the webhook URL must be an http(s) URL"))
        if parsed.scheme == "http" and not settings.LEVEE_ALERT_WEBHOOK_ALLOW_PRIVATE:
            raise ValueError(gettext_noop("the webhook URL must use https"))
    now = timezone.now()
    with transaction.atomic():
        row, _ = AlertSettings.objects.select_for_update().get_or_create(user=user)
        row.low_balance_nano, row.daily_spend_nano, row.daily_digest = low_balance_nano, daily_spend_nano, daily_digest
        row.webhook_url = webhook_url
        if webhook_url and (rotate_secret or not row.webhook_secret):
            row.webhook_secret = "whsec_" + secrets.token_hex(24)
        row.low_balance_alerted = False  # a new threshold is judged afresh at the next check
        row.updated_at = now
        row.save()
        wallet, _ = Wallet.objects.get_or_create(user=user)
        AuditEvent.objects.create(actor=actor, action="alerts", source=source, wallet=wallet, created_at=now,
                                  reason=describe(row)[:200])
    return row


def describe(row: AlertSettings) -> str:
    cur = currency()

    def amount(nano: int | None) -> str:
        return f"{format_amount(nano, places=2)} {cur}" if nano is not None else "off"

    return (f"low balance {amount(row.low_balance_nano)}, daily spend {amount(row.daily_spend_nano)}, "
            f"digest {'on' if row.daily_digest else 'off'}, webhook {row.webhook_url or 'off'}")


# --- checks ------------------------------------------------------------------------------------------

def ledger_entry_saved(entry: LedgerEntry) -> None:
    """post_save of a LedgerEntry: check the account's alerts once the transaction commits."""
    if entry.kind not in CHECKED_KINDS:
        return
    wallet_id = entry.wallet_id
    transaction.on_commit(lambda: check_wallet(wallet_id))


def check_wallet(wallet_id: int) -> list[str]:
    """Fire whichever alerts the account's state now calls for; returns the events fired."""
    row = _settings_of(wallet_id)
    if row is None or (row.low_balance_nano is None and row.daily_spend_nano is None):
        return []
    try:
        return _check(row.user_id)
    except Exception:  # an alert must never break the charge that prompted it
        log.exception("alert check failed for account %s", row.user_id)
        return []


def _check(user_id: int) -> list[str]:
    row = AlertSettings.objects.filter(user_id=user_id).select_related("user").first()
    if row is None:
        return []
    fired = []
    wallet = Wallet.objects.get(user_id=user_id)
    if row.low_balance_nano is not None:
        low = wallet.available_nano < row.low_balance_nano
        if low and AlertSettings.objects.filter(pk=row.pk, low_balance_alerted=False).update(low_balance_alerted=True):
            fired.append("balance.low")
            with _in_language_of(row):
                words = {"available": localized(wallet.available_nano), "threshold": localized(row.low_balance_nano),
                         "currency": currency()}
                subject = gettext("Levee: your balance is below %(threshold)s %(currency)s") % words
                text = gettext("Your available balance is %(available)s %(currency)s, below the %(threshold)s "
                               "%(currency)s you asked to be told about. Top up on the Usage page to keep your API "
                               "keys working.") % words
            _fire(row, "balance.low", {
                "available": format_amount(wallet.available_nano, places=2), "available_nano": wallet.available_nano,
                "threshold": format_amount(row.low_balance_nano, places=2), "threshold_nano": row.low_balance_nano},
                subject=subject, text=text)
        elif not low and row.low_balance_alerted:
            AlertSettings.objects.filter(pk=row.pk).update(low_balance_alerted=False)  # re-armed
    if row.daily_spend_nano is not None:
        today = timezone.now().astimezone(UTC).date()
        spent = DailyUsage.objects.filter(user_id=user_id, day=today).aggregate(total=Sum("cost_nano"))["total"] or 0
        if spent >= row.daily_spend_nano and AlertSettings.objects.filter(pk=row.pk).exclude(
                spend_alerted_on=today).update(spend_alerted_on=today):
            fired.append("spend.threshold")
            with _in_language_of(row):
                words = {"spent": localized(spent, places=6), "spent_short": localized(spent),
                         "threshold": localized(row.daily_spend_nano), "currency": currency()}
                subject = gettext("Levee: you have spent %(spent_short)s %(currency)s today") % words
                text = gettext("Your spend today (UTC) reached %(spent)s %(currency)s, past the %(threshold)s "
                               "%(currency)s you asked to be told about.") % words
            _fire(row, "spend.threshold", {
                "date": today.isoformat(), "spent": format_amount(spent, places=6), "spent_nano": spent,
                "threshold": format_amount(row.daily_spend_nano, places=2), "threshold_nano": row.daily_spend_nano},
                subject=subject, text=text)
    return fired


def send_digests(*, now: datetime | None = None) -> int:
    """Mail yesterday's (UTC) usage to each account that asked for a daily digest, once a day."""
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    yesterday = today - timedelta(days=1)
    sent = 0
    for row in AlertSettings.objects.filter(daily_digest=True).exclude(digest_sent_on=today).select_related("user"):
        if not AlertSettings.objects.filter(pk=row.pk).exclude(digest_sent_on=today).update(digest_sent_on=today):
            continue  # another beat run took it
        with _in_language_of(row):
            subject = gettext("Levee: your usage on %(day)s") % {"day": formats.date_format(yesterday, "SHORT_DATE_FORMAT")}
            text = _digest_text(row.user, yesterday)
        _fire(row, "spend.daily_digest", digest_of(row.user, yesterday), subject=subject, text=text)
        sent += 1
    return sent


def digest_of(user: User, day: date) -> dict[str, Any]:
    rows = (DailyUsage.objects.filter(user=user, day=day).values("model").order_by("model")
            .annotate(requests=Sum("requests"), cost=Sum("cost_nano"), hit=Sum("prompt_cache_hit_tokens"),
                      miss=Sum("prompt_cache_miss_tokens"), out=Sum("completion_tokens")))
    models = [{"model": r["model"], "requests": r["requests"], "total_tokens": r["hit"] + r["miss"] + r["out"],
               "cost": format_amount(r["cost"], places=6), "cost_nano": r["cost"]} for r in rows]
    total = sum(m["cost_nano"] for m in models)
    wallet = Wallet.objects.filter(user=user).first()
    return {"date": day.isoformat(), "models": models, "cost": format_amount(total, places=6), "cost_nano": total,
            "available": format_amount(wallet.available_nano if wallet else 0, places=2)}


def _in_language_of(row: AlertSettings) -> Any:
    """Mail in the account's language (its preference, else the site's)."""
    return translation.override(row.user.language or settings.LANGUAGE_CODE)


def _digest_text(user: User, day: date) -> str:
    """The digest mail's text, in the active language, amounts and counts as it writes numbers."""
    d = digest_of(user, day)
    cur = currency()

    def count(n: int) -> str:
        return formats.number_format(n, force_grouping=True)

    lines = [gettext("Your Levee usage on %(day)s (UTC):") % {"day": formats.date_format(day, "SHORT_DATE_FORMAT")}, ""]
    lines += ["  " + ngettext("%(model)s: %(requests)s request, %(tokens)s tokens, %(cost)s %(currency)s",
                              "%(model)s: %(requests)s requests, %(tokens)s tokens, %(cost)s %(currency)s",
                              m["requests"])
              % {"model": m["model"], "requests": count(m["requests"]), "tokens": count(m["total_tokens"]),
                 "cost": localized(m["cost_nano"], places=6), "currency": cur}
              for m in d["models"]] or ["  " + gettext("no requests")]
    wallet = Wallet.objects.filter(user=user).first()
    lines += ["", gettext("Total: %(cost)s %(currency)s. Available balance: %(available)s %(currency)s.")
              % {"cost": localized(d["cost_nano"], places=6), "currency": cur,
                 "available": localized(wallet.available_nano if wallet else 0)}]
    return "\n".join(lines) + "\n"


# --- firing and delivering -----------------------------------------------------------------------

def _fire(row: AlertSettings, event: str, data: dict[str, Any], *, subject: str, text: str) -> AlertDelivery | None:
    """Mail the alert; record and enqueue its webhook delivery if the account has a webhook."""
    try:
        send_mail(subject, text, None, [row.user.email], fail_silently=False)
    except Exception:
        log.exception("could not mail the %s alert of account %s", event, row.user_id)
    if not row.webhook_url:
        return None
    body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": event, "created": int(time.time()),
                       "currency": currency(), "data": data}, separators=(",", ":"))
    delivery = AlertDelivery.objects.create(user_id=row.user_id, event=event, url=row.webhook_url, body=body)
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


def _enqueue(delivery_id: uuid.UUID | str) -> None:
    from levee.billing.tasks import deliver_alert

    try:
        deliver_alert.apply_async(args=(str(delivery_id),), queue=settings.LEVEE_ALERT_QUEUE)
    except Exception:  # the broker is away: the row stays pending (admin shows it)
        log.exception("could not enqueue alert delivery %s", delivery_id)


class Undeliverable(Exception):
    """A delivery that retrying cannot help (a URL pointing into private networks)."""


def _check_destination(url: str) -> None:
    if settings.LEVEE_ALERT_WEBHOOK_ALLOW_PRIVATE:
        return
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from None
    for address in addresses:
        ip = ipaddress.ip_address(str(address).split("%")[0])
        if not ip.is_global:
            raise Undeliverable(f"{host} resolves to a non-public address ({ip})")


def attempt(delivery_id: uuid.UUID | str) -> bool:
    """One delivery attempt, logged on the row. True when delivered (or nothing left to do);
    False when it should be retried. Raises Undeliverable for a destination never to be tried."""
    delivery = AlertDelivery.objects.select_related("user").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return True
    row = AlertSettings.objects.filter(user_id=delivery.user_id).first()
    secret = row.webhook_secret if row else ""
    body = delivery.body.encode()
    status_code, error = None, ""
    try:
        _check_destination(delivery.url)
        request = urllib.request.Request(delivery.url, data=body, method="POST", headers={
            "Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
            "Levee-Event": delivery.event, "Levee-Delivery": str(delivery.pk),
            "Levee-Attempt": str(delivery.attempts + 1), "User-Agent": "Levee-Webhooks/1"})
        with urllib.request.urlopen(request, timeout=settings.LEVEE_ALERT_WEBHOOK_TIMEOUT) as response:
            status_code = response.status
    except urllib.error.HTTPError as exc:
        status_code, error = exc.code, f"HTTP {exc.code}"
    except Undeliverable as exc:
        _log_attempt(delivery, None, str(exc), final=DeliveryStatus.FAILED)
        raise
    except (OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    ok = status_code is not None and 200 <= status_code < 300
    last = delivery.attempts + 1 >= settings.LEVEE_ALERT_WEBHOOK_MAX_ATTEMPTS
    _log_attempt(delivery, status_code, error,
                 final=DeliveryStatus.DELIVERED if ok else (DeliveryStatus.FAILED if last else None))
    return ok or last


def _log_attempt(delivery: AlertDelivery, status_code: int | None, error: str, *, final: str | None) -> None:
    now = timezone.now()
    entry = {"at": now.isoformat(), "status_code": status_code, "error": error}
    updates: dict[str, Any] = {"attempts": delivery.attempts + 1, "last_status_code": status_code, "last_error": error[:300],
               "log": [*delivery.log, entry]}
    if final:
        updates["status"] = final
        if final == DeliveryStatus.DELIVERED:
            updates["delivered_at"] = now
    # Compare-and-set on the attempt count: two workers running one delivery log it once each.
    AlertDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts).update(**updates)


def backoff(attempts_made: int) -> float:
    """Seconds before the next attempt: base × 2^(attempts − 1), at most an hour."""
    return min(3600.0, settings.LEVEE_ALERT_WEBHOOK_BACKOFF_SECONDS * 2 ** max(0, attempts_made - 1))


def redeliver(delivery: AlertDelivery, *, actor: User | None) -> bool:
    """An operator's "deliver again" of a failed delivery: pending again, a fresh round of attempts,
    with an AuditEvent in the same transaction. True if it was failed (and is now queued)."""
    with transaction.atomic():
        if not AlertDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.FAILED).update(
                status=DeliveryStatus.PENDING, attempts=0):
            return False
        AuditEvent.objects.create(actor=actor, action="alert_redeliver", source="admin",
                                  reason=f"delivery {delivery.pk} ({delivery.event}) to {delivery.url}"[:200])
        transaction.on_commit(lambda: _enqueue(delivery.pk))
    return True


def view(user: User) -> dict[str, Any]:
    """The account's alert settings as the API and the usage page show them."""
    row = AlertSettings.objects.filter(user=user).first() or AlertSettings(user=user)

    def amount(nano: int | None) -> str | None:
        return format_amount(nano, places=2) if nano is not None else None

    return {"object": "alert_settings", "currency": currency(), "low_balance": amount(row.low_balance_nano),
            "daily_spend": amount(row.daily_spend_nano), "daily_digest": row.daily_digest,
            "webhook_url": row.webhook_url or None, "webhook_secret": row.webhook_secret or None}
