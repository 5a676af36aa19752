"""Billing's tables. Amounts are integer nano-units of LEVEE_CURRENCY (see levee.billing.money).

Balances live on `Wallet` and change only through `levee.billing.services`, which writes one
immutable `LedgerEntry` per change in the same transaction; `reconcile` proves the two agree.
"""
from __future__ import annotations

import uuid
from typing import Any, NoReturn

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class TokenClass(models.TextChoices):
    INPUT_CACHE_HIT = "input_cache_hit", _("input, cache hit")
    INPUT_CACHE_MISS = "input_cache_miss", _("input, cache miss")
    OUTPUT = "output", _("output")


class Price(models.Model):
    """A published per-token price of one token class of one model, in force from an instant until
    the next row for the same (model, token class, currency). Rows are history: a row that has
    been in force is never edited (usage records and holds point at it)."""

    model = models.CharField(max_length=128, verbose_name=_("model"))  # a plain name; the model table belongs to the jobs app
    token_class = models.CharField(max_length=16, choices=TokenClass.choices, verbose_name=_("token class"))
    currency = models.CharField(max_length=3, verbose_name=_("currency"))
    nano_per_token = models.PositiveBigIntegerField(verbose_name=_("nano per token"))
    effective_from = models.DateTimeField(verbose_name=_("effective from"))
    note = models.CharField(max_length=200, blank=True, verbose_name=_("note"))

    class Meta:
        verbose_name = _("price")
        verbose_name_plural = _("prices")
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

    model = models.CharField(max_length=128, verbose_name=_("model"))
    token_class = models.CharField(max_length=16, choices=TokenClass.choices, verbose_name=_("token class"))
    percent_off = models.PositiveSmallIntegerField(verbose_name=_("percent off"))
    start_time = models.TimeField(help_text=_("UTC, inclusive"), verbose_name=_("start time"))
    end_time = models.TimeField(help_text=_("UTC, exclusive; earlier than the start = crosses midnight"),
                                verbose_name=_("end time"))
    # ISO days of the week (1 = Monday … 7 = Sunday) the window *starts* on, e.g. "12345" for
    # weekdays; empty = every day. A window crossing midnight belongs to the day it starts.
    weekdays = models.CharField(max_length=7, blank=True, default="",
                                validators=[RegexValidator(r"^[1-7]{0,7}$", _("digits 1 (Monday) to 7 (Sunday), e.g. 12345"))],
                                help_text=_("days the window starts on, 1 = Monday … 7 = Sunday (e.g. 12345); empty = every day"),
                                verbose_name=_("weekdays"))
    effective_from = models.DateTimeField(verbose_name=_("effective from"))
    effective_until = models.DateTimeField(null=True, blank=True, verbose_name=_("effective until"))
    note = models.CharField(max_length=200, blank=True, verbose_name=_("note"))

    class Meta:
        verbose_name = _("discount window")
        verbose_name_plural = _("discount windows")
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

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="wallet",
                                verbose_name=_("user"))
    granted_nano = models.BigIntegerField(default=0, verbose_name=_("granted nano"))
    topped_up_nano = models.BigIntegerField(default=0, verbose_name=_("topped up nano"))
    held_nano = models.BigIntegerField(default=0, verbose_name=_("held nano"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    updated_at = models.DateTimeField(default=timezone.now, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("wallet")
        verbose_name_plural = _("wallets")
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

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="grants",
                               verbose_name=_("wallet"))
    amount_nano = models.BigIntegerField(verbose_name=_("amount nano"))
    remaining_nano = models.BigIntegerField(verbose_name=_("remaining nano"))
    expires_at = models.DateTimeField(null=True, blank=True, verbose_name=_("expires at"))
    reason = models.CharField(max_length=200, verbose_name=_("reason"))
    # Makes a grant idempotent per wallet ("signup" is given once however often the signal fires).
    key = models.CharField(max_length=64, null=True, blank=True, verbose_name=_("key"))  # noqa: DJ001 - NULL = no key, outside the unique constraint
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+", verbose_name=_("created by"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("grant")
        verbose_name_plural = _("grants")
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
    OPEN = "open", _("Open")
    SETTLED = "settled", _("Settled")
    RELEASED = "released", _("Released")


class Hold(models.Model):
    """A reservation of a request's maximum cost. The prices in force when it was placed (and the
    discount percentages then) are remembered here and charged at settle."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("id"))
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="holds",
                               verbose_name=_("wallet"))
    api_key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                verbose_name=_("api key"))
    model = models.CharField(max_length=128, verbose_name=_("model"))
    request_id = models.CharField(max_length=64, verbose_name=_("request id"))
    # The generation job the hold pays for: a signed settlement must name it (empty: none yet).
    job_id = models.CharField(max_length=64, blank=True, default="", verbose_name=_("job id"))
    prompt_tokens = models.PositiveIntegerField(verbose_name=_("prompt tokens"))
    max_tokens = models.PositiveIntegerField(verbose_name=_("max tokens"))
    amount_nano = models.BigIntegerField(verbose_name=_("amount nano"))
    status = models.CharField(max_length=8, choices=HoldStatus.choices, default=HoldStatus.OPEN,
                              verbose_name=_("status"))
    deadline = models.DateTimeField(verbose_name=_("deadline"))
    price_cache_hit = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="+",
                                        verbose_name=_("price cache hit"))
    price_cache_miss = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="+",
                                         verbose_name=_("price cache miss"))
    price_output = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="+",
                                     verbose_name=_("price output"))
    percent_off_cache_hit = models.PositiveSmallIntegerField(default=0,
                                                             verbose_name=_("percent off cache hit"))
    percent_off_cache_miss = models.PositiveSmallIntegerField(default=0,
                                                              verbose_name=_("percent off cache miss"))
    percent_off_output = models.PositiveSmallIntegerField(default=0, verbose_name=_("percent off output"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    closed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("closed at"))
    close_reason = models.CharField(max_length=200, blank=True, verbose_name=_("close reason"))

    class Meta:
        verbose_name = _("hold")
        verbose_name_plural = _("holds")
        constraints = [models.CheckConstraint(condition=Q(amount_nano__gte=0), name="billing_hold_amount_not_negative")]
        indexes = [
            models.Index(fields=["deadline"], condition=Q(status="open"), name="billing_hold_open_deadline"),
            models.Index(fields=["request_id"]),
        ]

    def __str__(self) -> str:
        return f"hold {self.id} {self.status}"


class LedgerKind(models.TextChoices):
    GRANT = "grant", _("grant")
    TOPUP = "topup", _("top-up")
    VOUCHER = "voucher", _("voucher")
    HOLD = "hold", _("hold")
    CHARGE = "charge", _("charge")
    RELEASE = "release", _("release")
    REFUND = "refund", _("refund")
    ADJUSTMENT = "adjustment", _("adjustment")
    EXPIRY = "expiry", _("expiry")
    PAYBACK = "payback", _("taken back")  # a payment provider took paid money back (refund, dispute)


class LedgerQuerySet(models.QuerySet["LedgerEntry"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise TypeError("ledger entries are immutable")

    def delete(self) -> NoReturn:
        raise TypeError("ledger entries are immutable")


class LedgerEntry(models.Model):
    """One change of a wallet, never edited or deleted. Each column of the wallet equals the sum of
    its delta here: granted_nano = Σ granted_delta, topped_up_nano = Σ topped_up_delta,
    held_nano = Σ held_delta."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="entries",
                               verbose_name=_("wallet"))
    kind = models.CharField(max_length=12, choices=LedgerKind.choices, verbose_name=_("kind"))
    granted_delta = models.BigIntegerField(default=0, verbose_name=_("granted delta"))
    topped_up_delta = models.BigIntegerField(default=0, verbose_name=_("topped up delta"))
    held_delta = models.BigIntegerField(default=0, verbose_name=_("held delta"))
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+", help_text=_("who acted; empty for the system"),
                              verbose_name=_("actor"))
    hold = models.ForeignKey(Hold, null=True, blank=True, on_delete=models.PROTECT, related_name="entries",
                             verbose_name=_("hold"))
    grant = models.ForeignKey(Grant, null=True, blank=True, on_delete=models.PROTECT, related_name="entries",
                              verbose_name=_("grant"))
    reason = models.CharField(max_length=200, blank=True, verbose_name=_("reason"))
    # "<source>:<id>" of a payment provider's top-up (or "refund:<usage id>"): at most one entry each.
    external_id = models.CharField(max_length=200, null=True, blank=True, verbose_name=_("external id"))  # noqa: DJ001 - NULL = none, outside the unique constraint
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    objects = LedgerQuerySet.as_manager()

    class Meta:
        verbose_name = _("ledger entry")
        ordering = ["-id"]
        verbose_name_plural = _("ledger entries")
        constraints = [
            models.UniqueConstraint(fields=["external_id"], condition=Q(external_id__isnull=False),
                                    name="billing_ledger_external_id_once"),
        ]
        indexes = [models.Index(fields=["wallet", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.balance_delta:+d} nano (held {self.held_delta:+d})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise TypeError("ledger entries are immutable")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("ledger entries are immutable")

    @property
    def balance_delta(self) -> int:
        return self.granted_delta + self.topped_up_delta


class UsageSource(models.TextChoices):
    API = "api", _("Api")
    WEB = "web", _("Web")


class UsageRecord(models.Model):
    """One request's tokens and what it cost, with the price rows and discounts it was charged at."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="usage_records",
                             verbose_name=_("user"))
    api_key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                verbose_name=_("api key"))
    hold = models.OneToOneField(Hold, null=True, blank=True, on_delete=models.PROTECT, related_name="usage",
                                verbose_name=_("hold"))
    model = models.CharField(max_length=128, verbose_name=_("model"))
    request_id = models.CharField(max_length=64, verbose_name=_("request id"))
    source = models.CharField(max_length=3, choices=UsageSource.choices, verbose_name=_("source"))
    prompt_cache_hit_tokens = models.PositiveIntegerField(verbose_name=_("prompt cache hit tokens"))
    prompt_cache_miss_tokens = models.PositiveIntegerField(verbose_name=_("prompt cache miss tokens"))
    completion_tokens = models.PositiveIntegerField(verbose_name=_("completion tokens"))
    price_cache_hit = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                        verbose_name=_("price cache hit"))
    price_cache_miss = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                         verbose_name=_("price cache miss"))
    price_output = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                     verbose_name=_("price output"))
    percent_off_cache_hit = models.PositiveSmallIntegerField(default=0,
                                                             verbose_name=_("percent off cache hit"))
    percent_off_cache_miss = models.PositiveSmallIntegerField(default=0,
                                                              verbose_name=_("percent off cache miss"))
    percent_off_output = models.PositiveSmallIntegerField(default=0, verbose_name=_("percent off output"))
    cost_nano = models.BigIntegerField(verbose_name=_("cost nano"))  # what was charged
    currency = models.CharField(max_length=3, verbose_name=_("currency"))
    started_at = models.DateTimeField(verbose_name=_("started at"))
    finished_at = models.DateTimeField(verbose_name=_("finished at"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("usage record")
        verbose_name_plural = _("usage records")
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

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+",
                             verbose_name=_("user"))
    day = models.DateField(verbose_name=_("day"))
    model = models.CharField(max_length=128, verbose_name=_("model"))
    source = models.CharField(max_length=3, choices=UsageSource.choices, verbose_name=_("source"))
    requests = models.PositiveIntegerField(default=0, verbose_name=_("requests"))
    prompt_cache_hit_tokens = models.PositiveBigIntegerField(default=0,
                                                             verbose_name=_("prompt cache hit tokens"))
    prompt_cache_miss_tokens = models.PositiveBigIntegerField(default=0,
                                                              verbose_name=_("prompt cache miss tokens"))
    completion_tokens = models.PositiveBigIntegerField(default=0, verbose_name=_("completion tokens"))
    cost_nano = models.BigIntegerField(default=0, verbose_name=_("cost nano"))

    class Meta:
        verbose_name = _("daily usage")
        verbose_name_plural = _("daily usage")
        constraints = [models.UniqueConstraint(fields=["user", "day", "model", "source"], name="billing_daily_usage_key")]

    def __str__(self) -> str:
        return f"{self.day} {self.model} {self.source}"


class Voucher(models.Model):
    """A code an admin makes; each account may redeem it once, up to `max_redemptions` in all.
    Redeemed value lands in the topped-up balance (a voucher stands for money paid elsewhere)."""

    code = models.CharField(max_length=64, unique=True, help_text=_("letters, digits and dashes; matched without regard to case"),
                            verbose_name=_("code"))
    amount_nano = models.BigIntegerField(verbose_name=_("amount nano"))
    expires_at = models.DateTimeField(verbose_name=_("expires at"))
    max_redemptions = models.PositiveIntegerField(default=1, verbose_name=_("max redemptions"))
    redeemed_count = models.PositiveIntegerField(default=0, verbose_name=_("redeemed count"))
    note = models.CharField(max_length=200, blank=True, verbose_name=_("note"))
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+", verbose_name=_("created by"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("voucher")
        verbose_name_plural = _("vouchers")
        constraints = [
            models.CheckConstraint(condition=Q(amount_nano__gt=0), name="billing_voucher_positive"),
            models.CheckConstraint(condition=Q(max_redemptions__gte=1), name="billing_voucher_redeemable"),
            models.CheckConstraint(condition=Q(redeemed_count__lte=F("max_redemptions")),
                                   name="billing_voucher_not_over_redeemed"),
        ]

    def __str__(self) -> str:
        return self.code


class VoucherRedemption(models.Model):
    voucher = models.ForeignKey(Voucher, on_delete=models.PROTECT, related_name="redemptions",
                                verbose_name=_("voucher"))
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="+", verbose_name=_("wallet"))
    entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="+",
                                 verbose_name=_("entry"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("voucher redemption")
        verbose_name_plural = _("voucher redemptions")
        constraints = [models.UniqueConstraint(fields=["voucher", "wallet"], name="billing_voucher_once_per_wallet")]

    def __str__(self) -> str:
        return f"{self.voucher_id} by wallet {self.wallet_id}"


class AuditEvent(models.Model):
    """Operator actions on money (admin credit/debit, the credit command, voucher creation)."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+", verbose_name=_("actor"))
    action = models.CharField(max_length=32, verbose_name=_("action"))
    source = models.CharField(max_length=16, help_text=_("admin, command, …"), verbose_name=_("source"))
    wallet = models.ForeignKey(Wallet, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                               verbose_name=_("wallet"))
    amount_nano = models.BigIntegerField(default=0, verbose_name=_("amount nano"))
    reason = models.CharField(max_length=200, verbose_name=_("reason"))
    entry = models.ForeignKey(LedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                              verbose_name=_("entry"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor or self.source}"


class CapPeriod(models.TextChoices):
    DAY = "day", _("Day")
    MONTH = "month", _("Month")
    LIFETIME = "lifetime", _("Lifetime")


class KeySpend(models.Model):
    """What one capped API key's requests reserve (open holds) or were charged, per period a cap
    counts over: the UTC day or month its holds were placed in, or all time (`starts` 1970-01-01).
    A row exists only while the key carries a cap of that period (levee.billing.caps)."""

    api_key = models.ForeignKey("keys.ApiKey", on_delete=models.CASCADE, related_name="+",
                                verbose_name=_("api key"))
    period = models.CharField(max_length=8, choices=CapPeriod.choices, verbose_name=_("period"))
    starts = models.DateField(verbose_name=_("starts"))
    spent_nano = models.BigIntegerField(default=0, verbose_name=_("spent nano"))

    class Meta:
        verbose_name = _("key spend")
        verbose_name_plural = _("key spends")
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

    paused = models.BooleanField(default=False, verbose_name=_("paused"))
    message = models.CharField(max_length=300, blank=True,
                               help_text=_("Shown to owners while paused (empty: a standard sentence)."),
                               verbose_name=_("message"))
    changed_at = models.DateTimeField(default=timezone.now, verbose_name=_("changed at"))
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", verbose_name=_("changed by"))

    class Meta:
        verbose_name = verbose_name_plural = _("top-up switch")
        constraints = [models.CheckConstraint(condition=Q(pk=1), name="billing_topupswitch_singleton")]

    def __str__(self) -> str:
        return "top-ups paused" if self.paused else "top-ups open"


class TopupSwitchChange(models.Model):
    """Audit log of the top-up switch: who paused or resumed top-ups, when and why."""

    at = models.DateTimeField(default=timezone.now, db_index=True, verbose_name=_("at"))
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                           verbose_name=_("by"))
    paused = models.BooleanField(verbose_name=_("paused"))
    message = models.CharField(max_length=300, blank=True, verbose_name=_("message"))
    reason = models.TextField(verbose_name=_("reason"))

    class Meta:
        verbose_name = _("top-up switch change")
        verbose_name_plural = _("top-up switch changes")
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {'paused' if self.paused else 'resumed'}"


class PaymentStatus(models.TextChoices):
    OPEN = "open", _("Open")  # a checkout session was made; nothing paid yet
    CREDITED = "credited", _("Credited")
    EXPIRED = "expired", _("Expired")


class Payment(models.Model):
    """One top-up through a payment provider's hosted checkout (Stripe Checkout): the session made
    for it and what came of it. Money moves only through the ledger (`entry`, the top-up; refunds
    and disputes are further entries whose external ids name this payment)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("id"))
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments",
                             verbose_name=_("user"))
    checkout_url: str = ""  # not a column: the session's URL, set by start_checkout
    provider = models.CharField(max_length=16, default="stripe", verbose_name=_("provider"))
    session_id = models.CharField(max_length=255, unique=True, null=True, blank=True,
                                  verbose_name=_("session id"))  # noqa: DJ001 - set once made
    payment_intent = models.CharField(max_length=255, unique=True, null=True, blank=True,
                                      verbose_name=_("payment intent"))  # noqa: DJ001 - known once paid
    amount_nano = models.BigIntegerField(verbose_name=_("amount nano"))
    amount_minor = models.PositiveBigIntegerField(help_text=_("in the currency's minor unit (cents, fen)"),
                                                  verbose_name=_("amount minor"))
    currency = models.CharField(max_length=3, verbose_name=_("currency"))
    status = models.CharField(max_length=8, choices=PaymentStatus.choices, default=PaymentStatus.OPEN,
                              verbose_name=_("status"))
    entry = models.OneToOneField(LedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                 verbose_name=_("entry"))
    refunded_minor = models.PositiveBigIntegerField(default=0, help_text=_("refunded in all (the provider's running total)"),
                                                    verbose_name=_("refunded minor"))
    disputed_minor = models.PositiveBigIntegerField(default=0, help_text=_("held by open or lost disputes"),
                                                    verbose_name=_("disputed minor"))
    unrecovered_nano = models.BigIntegerField(default=0, help_text=_("taken back by the provider but already spent"),
                                              verbose_name=_("unrecovered nano"))
    receipt_sent_at = models.DateTimeField(null=True, blank=True, verbose_name=_("receipt sent at"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    credited_at = models.DateTimeField(null=True, blank=True, verbose_name=_("credited at"))

    class Meta:
        verbose_name = _("payment")
        verbose_name_plural = _("payments")
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=Q(amount_nano__gt=0), name="billing_payment_positive")]

    def __str__(self) -> str:
        return f"{self.provider} {self.session_id or self.pk} {self.amount_minor} {self.currency} {self.status}"


class ProviderEvent(models.Model):
    """Every verified webhook event, once (its id is unique): a redelivery is recognised and
    answered without effect. `payment_intent` lets an event that arrived before its payment was
    known (a refund before checkout.session.completed) be applied when it is."""

    provider = models.CharField(max_length=16, default="stripe", verbose_name=_("provider"))
    event_id = models.CharField(max_length=255, verbose_name=_("event id"))
    type = models.CharField(max_length=100, verbose_name=_("type"))
    payment_intent = models.CharField(max_length=255, blank=True, db_index=True,
                                      verbose_name=_("payment intent"))
    payload = models.JSONField(verbose_name=_("payload"))
    received_at = models.DateTimeField(default=timezone.now, verbose_name=_("received at"))
    applied_at = models.DateTimeField(null=True, blank=True, verbose_name=_("applied at"))
    outcome = models.CharField(max_length=200, blank=True, verbose_name=_("outcome"))

    class Meta:
        verbose_name = _("provider event")
        verbose_name_plural = _("provider events")
        ordering = ["-received_at"]
        constraints = [models.UniqueConstraint(fields=["provider", "event_id"], name="billing_provider_event_once")]

    def __str__(self) -> str:
        return f"{self.provider} {self.type} {self.event_id}"


class AlertSettings(models.Model):
    """An account's alerts (levee.billing.alerts): a low-balance threshold, a daily spend threshold,
    a daily digest, all mailed; and an optional webhook the same events are POSTed to, signed with
    HMAC-SHA256 over the body with `webhook_secret`. The *_alerted fields make each crossing fire
    once (compare-and-set)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_settings",
                                verbose_name=_("user"))
    low_balance_nano = models.BigIntegerField(null=True, blank=True, help_text=_("mail when available falls below"),
                                              verbose_name=_("low balance nano"))
    daily_spend_nano = models.BigIntegerField(null=True, blank=True, help_text=_("mail when a UTC day's spend reaches"),
                                              verbose_name=_("daily spend nano"))
    daily_digest = models.BooleanField(default=False, verbose_name=_("daily digest"))
    webhook_url = models.URLField(max_length=500, blank=True, verbose_name=_("webhook url"))
    webhook_secret = models.CharField(max_length=64, blank=True, verbose_name=_("webhook secret"))
    low_balance_alerted = models.BooleanField(default=False, verbose_name=_("low balance alerted"))
    spend_alerted_on = models.DateField(null=True, blank=True, verbose_name=_("spend alerted on"))
    digest_sent_on = models.DateField(null=True, blank=True, verbose_name=_("digest sent on"))
    updated_at = models.DateTimeField(default=timezone.now, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("alert settings")
        verbose_name_plural = _("alert settings")
        constraints = [
            models.CheckConstraint(condition=Q(low_balance_nano__isnull=True) | Q(low_balance_nano__gt=0),
                                   name="billing_alert_low_balance_positive"),
            models.CheckConstraint(condition=Q(daily_spend_nano__isnull=True) | Q(daily_spend_nano__gt=0),
                                   name="billing_alert_daily_spend_positive"),
        ]

    def __str__(self) -> str:
        return f"alerts of {self.user}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    DELIVERED = "delivered", _("Delivered")
    FAILED = "failed", _("Failed")


class AlertDelivery(models.Model):
    """One alert event for an account's webhook and how its delivery went (the admin's delivery
    log): attempts, the last answer or error, retried with back-off by a Celery task."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("id"))
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+",
                             verbose_name=_("user"))
    event = models.CharField(max_length=40, verbose_name=_("event"))
    url = models.URLField(max_length=500, verbose_name=_("url"))
    body = models.TextField(help_text=_("exactly the bytes sent and signed"), verbose_name=_("body"))
    status = models.CharField(max_length=9, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING,
                              verbose_name=_("status"))
    attempts = models.PositiveSmallIntegerField(default=0, verbose_name=_("attempts"))
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True,
                                                        verbose_name=_("last status code"))
    last_error = models.CharField(max_length=300, blank=True, verbose_name=_("last error"))
    log = models.JSONField(default=list, help_text=_("one {at, status_code, error} per attempt"),
                           verbose_name=_("log"))
    created_at = models.DateTimeField(default=timezone.now, db_index=True, verbose_name=_("created at"))
    delivered_at = models.DateTimeField(null=True, blank=True, verbose_name=_("delivered at"))

    class Meta:
        verbose_name = _("alert delivery")
        ordering = ["-created_at"]
        verbose_name_plural = _("alert deliveries")

    def __str__(self) -> str:
        return f"{self.event} to {self.url}: {self.status}"
