"""Billing's tables. Amounts are integer nano-units of LEVEE_CURRENCY (see levee.billing.money).

Balances live on `Wallet` and change only through `levee.billing.services`, which writes one
immutable `LedgerEntry` per change in the same transaction; `reconcile` proves the two agree.
"""
from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class TokenClass(models.TextChoices):
    INPUT_CACHE_HIT = "input_cache_hit", "input, cache hit"
    INPUT_CACHE_MISS = "input_cache_miss", "input, cache miss"
    OUTPUT = "output", "output"


class Price(models.Model):
    """A published per-token price of one token class of one model, in force from an instant until
    the next row for the same (model, token class, currency). Rows are history: a row that has
    been in force is never edited (usage records and holds point at it)."""

    model = models.CharField(max_length=128)  # a plain name; the model table belongs to the jobs app
    token_class = models.CharField(max_length=16, choices=TokenClass.choices)
    currency = models.CharField(max_length=3)
    nano_per_token = models.PositiveBigIntegerField()
    effective_from = models.DateTimeField()
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["model", "token_class", "currency", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "token_class", "currency", "effective_from"],
                                    name="billing_price_one_row_per_instant"),
        ]
        indexes = [models.Index(fields=["model", "currency", "effective_from"])]

    def __str__(self) -> str:
        return f"{self.model} {self.token_class} {self.nano_per_token} nano {self.currency} from {self.effective_from:%Y-%m-%d %H:%M}Z"


class DiscountWindow(models.Model):
    """A daily time-of-day window (UTC) with a percentage off one token class of one model, in force
    between two instants. `start_time` after `end_time` means the window crosses midnight UTC
    (DeepSeek's off-peak hours, 16:30–00:30 UTC). Currency-independent: it is a percentage."""

    model = models.CharField(max_length=128)
    token_class = models.CharField(max_length=16, choices=TokenClass.choices)
    percent_off = models.PositiveSmallIntegerField()
    start_time = models.TimeField(help_text="UTC, inclusive")
    end_time = models.TimeField(help_text="UTC, exclusive; earlier than the start = crosses midnight")
    # ISO days of the week (1 = Monday … 7 = Sunday) the window *starts* on, e.g. "12345" for
    # weekdays; empty = every day. A window crossing midnight belongs to the day it starts.
    weekdays = models.CharField(max_length=7, blank=True, default="",
                                validators=[RegexValidator(r"^[1-7]{0,7}$", "digits 1 (Monday) to 7 (Sunday), e.g. 12345")],
                                help_text="days the window starts on, 1 = Monday … 7 = Sunday (e.g. 12345); empty = every day")
    effective_from = models.DateTimeField()
    effective_until = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["model", "token_class", "-effective_from"]
        constraints = [
            models.CheckConstraint(condition=Q(percent_off__gte=1, percent_off__lte=100),
                                   name="billing_window_percent_1_100"),
            models.CheckConstraint(condition=~Q(start_time=F("end_time")), name="billing_window_not_empty"),
            models.CheckConstraint(condition=Q(weekdays__regex=r"^[1-7]{0,7}$"), name="billing_window_weekdays_valid"),
            models.CheckConstraint(condition=Q(effective_until__isnull=True) | Q(effective_until__gt=F("effective_from")),
                                   name="billing_window_until_after_from"),
        ]

    def __str__(self) -> str:
        days = f" days {self.weekdays}" if self.weekdays else ""
        return f"{self.model} {self.token_class} -{self.percent_off}% {self.start_time:%H:%M}–{self.end_time:%H:%M} UTC{days}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.weekdays = "".join(sorted(set(self.weekdays or "")))
        super().save(*args, **kwargs)


class Wallet(models.Model):
    """An account's money. balance = granted + topped_up; available = balance - held (open holds).
    The constraints make overspending impossible even for a buggy caller."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="wallet")
    granted_nano = models.BigIntegerField(default=0)
    topped_up_nano = models.BigIntegerField(default=0)
    held_nano = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(granted_nano__gte=0), name="billing_wallet_granted_not_negative"),
            models.CheckConstraint(condition=Q(topped_up_nano__gte=0), name="billing_wallet_topped_up_not_negative"),
            models.CheckConstraint(condition=Q(held_nano__gte=0), name="billing_wallet_held_not_negative"),
            models.CheckConstraint(condition=Q(held_nano__lte=F("granted_nano") + F("topped_up_nano")),
                                   name="billing_wallet_holds_covered"),
        ]

    def __str__(self) -> str:
        return f"wallet of {self.user}"

    @property
    def balance_nano(self) -> int:
        return self.granted_nano + self.topped_up_nano

    @property
    def available_nano(self) -> int:
        return self.balance_nano - self.held_nano


class Grant(models.Model):
    """Granted credit (sign-up credit, promotions). Spent before topped-up money, soonest expiry
    first; what is left at `expires_at` leaves the wallet through an `expiry` ledger entry."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="grants")
    amount_nano = models.BigIntegerField()
    remaining_nano = models.BigIntegerField()
    expires_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=200)
    # Makes a grant idempotent per wallet ("signup" is given once however often the signal fires).
    key = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001 - NULL = no key, outside the unique constraint
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount_nano__gt=0), name="billing_grant_positive"),
            models.CheckConstraint(condition=Q(remaining_nano__gte=0, remaining_nano__lte=F("amount_nano")),
                                   name="billing_grant_remaining_in_range"),
            models.UniqueConstraint(fields=["wallet", "key"], condition=Q(key__isnull=False),
                                    name="billing_grant_key_once_per_wallet"),
        ]
        indexes = [models.Index(fields=["expires_at"], condition=Q(remaining_nano__gt=0),
                                name="billing_grant_live_expiry")]

    def __str__(self) -> str:
        return f"grant {self.pk} of {self.amount_nano} nano ({self.reason})"


class HoldStatus(models.TextChoices):
    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"


class Hold(models.Model):
    """A reservation of a request's maximum cost. The prices in force when it was placed (and the
    discount percentages then) are remembered here and charged at settle."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="holds")
    api_key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=128)
    request_id = models.CharField(max_length=64)
    # The generation job the hold pays for: a signed settlement must name it (empty: none yet).
    job_id = models.CharField(max_length=64, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField()
    max_tokens = models.PositiveIntegerField()
    amount_nano = models.BigIntegerField()
    status = models.CharField(max_length=8, choices=HoldStatus.choices, default=HoldStatus.OPEN)
    deadline = models.DateTimeField()
    price_cache_hit = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="+")
    price_cache_miss = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="+")
    price_output = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="+")
    percent_off_cache_hit = models.PositiveSmallIntegerField(default=0)
    percent_off_cache_miss = models.PositiveSmallIntegerField(default=0)
    percent_off_output = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount_nano__gte=0), name="billing_hold_amount_not_negative")]
        indexes = [
            models.Index(fields=["deadline"], condition=Q(status="open"), name="billing_hold_open_deadline"),
            models.Index(fields=["request_id"]),
        ]

    def __str__(self) -> str:
        return f"hold {self.id} {self.status}"


class LedgerKind(models.TextChoices):
    GRANT = "grant"
    TOPUP = "topup", "top-up"
    VOUCHER = "voucher"
    HOLD = "hold"
    CHARGE = "charge"
    RELEASE = "release"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    EXPIRY = "expiry"
    PAYBACK = "payback", "taken back"  # a payment provider took paid money back (refund, dispute)


class LedgerQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("ledger entries are immutable")

    def delete(self):
        raise TypeError("ledger entries are immutable")


class LedgerEntry(models.Model):
    """One change of a wallet, never edited or deleted. Each column of the wallet equals the sum of
    its delta here: granted_nano = Σ granted_delta, topped_up_nano = Σ topped_up_delta,
    held_nano = Σ held_delta."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=12, choices=LedgerKind.choices)
    granted_delta = models.BigIntegerField(default=0)
    topped_up_delta = models.BigIntegerField(default=0)
    held_delta = models.BigIntegerField(default=0)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+", help_text="who acted; empty for the system")
    hold = models.ForeignKey(Hold, null=True, blank=True, on_delete=models.PROTECT, related_name="entries")
    grant = models.ForeignKey(Grant, null=True, blank=True, on_delete=models.PROTECT, related_name="entries")
    reason = models.CharField(max_length=200, blank=True)
    # "<source>:<id>" of a payment provider's top-up (or "refund:<usage id>"): at most one entry each.
    external_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL = none, outside the unique constraint
    created_at = models.DateTimeField(default=timezone.now)

    objects = LedgerQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            models.UniqueConstraint(fields=["external_id"], condition=Q(external_id__isnull=False),
                                    name="billing_ledger_external_id_once"),
        ]
        indexes = [models.Index(fields=["wallet", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.balance_delta:+d} nano (held {self.held_delta:+d})"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError("ledger entries are immutable")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("ledger entries are immutable")

    @property
    def balance_delta(self) -> int:
        return self.granted_delta + self.topped_up_delta


class UsageSource(models.TextChoices):
    API = "api"
    WEB = "web"


class UsageRecord(models.Model):
    """One request's tokens and what it cost, with the price rows and discounts it was charged at."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="usage_records")
    api_key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    hold = models.OneToOneField(Hold, null=True, blank=True, on_delete=models.PROTECT, related_name="usage")
    model = models.CharField(max_length=128)
    request_id = models.CharField(max_length=64)
    source = models.CharField(max_length=3, choices=UsageSource.choices)
    prompt_cache_hit_tokens = models.PositiveIntegerField()
    prompt_cache_miss_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    price_cache_hit = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    price_cache_miss = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    price_output = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    percent_off_cache_hit = models.PositiveSmallIntegerField(default=0)
    percent_off_cache_miss = models.PositiveSmallIntegerField(default=0)
    percent_off_output = models.PositiveSmallIntegerField(default=0)
    cost_nano = models.BigIntegerField()  # what was charged
    currency = models.CharField(max_length=3)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(cost_nano__gte=0), name="billing_usage_cost_not_negative")]
        indexes = [models.Index(fields=["user", "started_at"]), models.Index(fields=["request_id"])]

    def __str__(self) -> str:
        return f"{self.model} {self.request_id} {self.cost_nano} nano"

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_cache_hit_tokens + self.prompt_cache_miss_tokens


class DailyUsage(models.Model):
    """Per account, UTC day, model and source: totals of its usage records, kept in the same
    transaction as each record (see docs/billing.md for why on write rather than by a task)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    model = models.CharField(max_length=128)
    source = models.CharField(max_length=3, choices=UsageSource.choices)
    requests = models.PositiveIntegerField(default=0)
    prompt_cache_hit_tokens = models.PositiveBigIntegerField(default=0)
    prompt_cache_miss_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_nano = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "day", "model", "source"], name="billing_daily_usage_key")]

    def __str__(self) -> str:
        return f"{self.day} {self.model} {self.source}"


class Voucher(models.Model):
    """A code an admin makes; each account may redeem it once, up to `max_redemptions` in all.
    Redeemed value lands in the topped-up balance (a voucher stands for money paid elsewhere)."""

    code = models.CharField(max_length=64, unique=True, help_text="letters, digits and dashes; matched without regard to case")
    amount_nano = models.BigIntegerField()
    expires_at = models.DateTimeField()
    max_redemptions = models.PositiveIntegerField(default=1)
    redeemed_count = models.PositiveIntegerField(default=0)
    note = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount_nano__gt=0), name="billing_voucher_positive"),
            models.CheckConstraint(condition=Q(max_redemptions__gte=1), name="billing_voucher_redeemable"),
            models.CheckConstraint(condition=Q(redeemed_count__lte=F("max_redemptions")),
                                   name="billing_voucher_not_over_redeemed"),
        ]

    def __str__(self) -> str:
        return self.code


class VoucherRedemption(models.Model):
    voucher = models.ForeignKey(Voucher, on_delete=models.PROTECT, related_name="redemptions")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="+")
    entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["voucher", "wallet"], name="billing_voucher_once_per_wallet")]

    def __str__(self) -> str:
        return f"{self.voucher_id} by wallet {self.wallet_id}"


class AuditEvent(models.Model):
    """Operator actions on money (admin credit/debit, the credit command, voucher creation)."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+")
    action = models.CharField(max_length=32)
    source = models.CharField(max_length=16, help_text="admin, command, …")
    wallet = models.ForeignKey(Wallet, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    amount_nano = models.BigIntegerField(default=0)
    reason = models.CharField(max_length=200)
    entry = models.ForeignKey(LedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor or self.source}"


class CapPeriod(models.TextChoices):
    DAY = "day"
    MONTH = "month"
    LIFETIME = "lifetime"


class KeySpend(models.Model):
    """What one capped API key's requests reserve (open holds) or were charged, per period a cap
    counts over: the UTC day or month its holds were placed in, or all time (`starts` 1970-01-01).
    A row exists only while the key carries a cap of that period (levee.billing.caps)."""

    api_key = models.ForeignKey("keys.ApiKey", on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=8, choices=CapPeriod.choices)
    starts = models.DateField()
    spent_nano = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "period", "starts"], name="billing_key_spend_once"),
            models.CheckConstraint(condition=Q(spent_nano__gte=0), name="billing_key_spend_not_negative"),
        ]

    def __str__(self) -> str:
        return f"key {self.api_key_id} {self.period} from {self.starts}: {self.spent_nano} nano"


class TopupSwitch(models.Model):
    """The one row that says whether new payments are taken. Written only through
    `levee.billing.payments.set_topups_paused`, which writes a TopupSwitchChange with it. Pausing
    refuses new top-ups; balances, holds and charges keep working, and payments already made
    are still credited when their webhook arrives."""

    paused = models.BooleanField(default=False)
    message = models.CharField(max_length=300, blank=True,
                               help_text="Shown to owners while paused (empty: a standard sentence).")
    changed_at = models.DateTimeField(default=timezone.now)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        verbose_name = verbose_name_plural = "top-up switch"
        constraints = [models.CheckConstraint(condition=Q(pk=1), name="billing_topupswitch_singleton")]

    def __str__(self) -> str:
        return "top-ups paused" if self.paused else "top-ups open"


class TopupSwitchChange(models.Model):
    """Audit log of the top-up switch: who paused or resumed top-ups, when and why."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    paused = models.BooleanField()
    message = models.CharField(max_length=300, blank=True)
    reason = models.TextField()

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {'paused' if self.paused else 'resumed'}"


class PaymentStatus(models.TextChoices):
    OPEN = "open"  # a checkout session was made; nothing paid yet
    CREDITED = "credited"
    EXPIRED = "expired"


class Payment(models.Model):
    """One top-up through a payment provider's hosted checkout (Stripe Checkout): the session made
    for it and what came of it. Money moves only through the ledger (`entry`, the top-up; refunds
    and disputes are further entries whose external ids name this payment)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments")
    checkout_url: str = ""  # not a column: the session's URL, set by start_checkout
    provider = models.CharField(max_length=16, default="stripe")
    session_id = models.CharField(max_length=255, unique=True, null=True, blank=True)  # noqa: DJ001 - set once made
    payment_intent = models.CharField(max_length=255, unique=True, null=True, blank=True)  # noqa: DJ001 - known once paid
    amount_nano = models.BigIntegerField()
    amount_minor = models.PositiveBigIntegerField(help_text="in the currency's minor unit (cents, fen)")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=8, choices=PaymentStatus.choices, default=PaymentStatus.OPEN)
    entry = models.OneToOneField(LedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    refunded_minor = models.PositiveBigIntegerField(default=0, help_text="refunded in all (the provider's running total)")
    disputed_minor = models.PositiveBigIntegerField(default=0, help_text="held by open or lost disputes")
    unrecovered_nano = models.BigIntegerField(default=0, help_text="taken back by the provider but already spent")
    receipt_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    credited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=Q(amount_nano__gt=0), name="billing_payment_positive")]

    def __str__(self) -> str:
        return f"{self.provider} {self.session_id or self.pk} {self.amount_minor} {self.currency} {self.status}"


class ProviderEvent(models.Model):
    """Every verified webhook event, once (its id is unique): a redelivery is recognised and
    answered without effect. `payment_intent` lets an event that arrived before its payment was
    known (a refund before checkout.session.completed) be applied when it is."""

    provider = models.CharField(max_length=16, default="stripe")
    event_id = models.CharField(max_length=255)
    type = models.CharField(max_length=100)
    payment_intent = models.CharField(max_length=255, blank=True, db_index=True)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    applied_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [models.UniqueConstraint(fields=["provider", "event_id"], name="billing_provider_event_once")]

    def __str__(self) -> str:
        return f"{self.provider} {self.type} {self.event_id}"


class AlertSettings(models.Model):
    """An account's alerts (levee.billing.alerts): a low-balance threshold, a daily spend threshold,
    a daily digest, all mailed; and an optional webhook the same events are POSTed to, signed with
    HMAC-SHA256 over the body with `webhook_secret`. The *_alerted fields make each crossing fire
    once (compare-and-set)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_settings")
    low_balance_nano = models.BigIntegerField(null=True, blank=True, help_text="mail when available falls below")
    daily_spend_nano = models.BigIntegerField(null=True, blank=True, help_text="mail when a UTC day's spend reaches")
    daily_digest = models.BooleanField(default=False)
    webhook_url = models.URLField(max_length=500, blank=True)
    webhook_secret = models.CharField(max_length=64, blank=True)
    low_balance_alerted = models.BooleanField(default=False)
    spend_alerted_on = models.DateField(null=True, blank=True)
    digest_sent_on = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "alert settings"
        constraints = [
            models.CheckConstraint(condition=Q(low_balance_nano__isnull=True) | Q(low_balance_nano__gt=0),
                                   name="billing_alert_low_balance_positive"),
            models.CheckConstraint(condition=Q(daily_spend_nano__isnull=True) | Q(daily_spend_nano__gt=0),
                                   name="billing_alert_daily_spend_positive"),
        ]

    def __str__(self) -> str:
        return f"alerts of {self.user}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class AlertDelivery(models.Model):
    """One alert event for an account's webhook and how its delivery went (the admin's delivery
    log): attempts, the last answer or error, retried with back-off by a Celery task."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    event = models.CharField(max_length=40)
    url = models.URLField(max_length=500)
    body = models.TextField(help_text="exactly the bytes sent and signed")
    status = models.CharField(max_length=9, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    log = models.JSONField(default=list, help_text="one {at, status_code, error} per attempt")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "alert deliveries"

    def __str__(self) -> str:
        return f"{self.event} to {self.url}: {self.status}"
