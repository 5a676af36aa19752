"""Billing in Django admin. Money moves only through services (credit/debit action, vouchers);
ledger, holds, usage and audit rows are read-only here."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Field, Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from levee.accounts.operators import operator
from levee.billing import payments, services
from levee.billing.forms import AdjustForm, VoucherForm
from levee.billing.models import (
    AlertDelivery,
    AlertSettings,
    AuditEvent,
    DiscountWindow,
    Grant,
    Hold,
    LedgerEntry,
    Payment,
    Price,
    ProviderEvent,
    TopupSwitch,
    TopupSwitchChange,
    UsageRecord,
    Voucher,
    Wallet,
)
from levee.billing.money import localized
from levee.core.admin import ReadOnlyAdmin


def _money(model: type[Model], field: str, *, places: int = 9) -> Any:
    """A list column for a nano-unit field, written as the reader's language writes money (all nine
    places by default: operators see the exact amount), sorted by the field."""
    def column(obj: Any) -> str:
        value = getattr(obj, field)
        return "" if value is None else localized(value, places=places)

    column.__name__ = field
    model_field = model._meta.get_field(field)
    assert isinstance(model_field, Field), field
    return admin.display(description=model_field.verbose_name, ordering=field)(column)


class FutureOnlyAdmin(admin.ModelAdmin):
    """A price or window that has been in force is history (holds and usage point at it): it can be
    superseded by a new row, not edited."""

    def has_change_permission(self, request: HttpRequest, obj: Price | DiscountWindow | None = None) -> bool:
        return super().has_change_permission(request, obj) and (obj is None or obj.effective_from > timezone.now())

    def has_delete_permission(self, request: HttpRequest, obj: Price | DiscountWindow | None = None) -> bool:
        return super().has_delete_permission(request, obj) and (obj is None or obj.effective_from > timezone.now())


@admin.register(Price)
class PriceAdmin(FutureOnlyAdmin):
    list_display = ("model", "token_class", "currency", "nano_per_token", "effective_from", "note")
    list_filter = ("currency", "model", "token_class")


@admin.register(DiscountWindow)
class DiscountWindowAdmin(FutureOnlyAdmin):
    list_display = ("model", "token_class", "percent_off", "start_time", "end_time", "weekdays", "effective_from",
                    "effective_until")
    list_filter = ("model",)


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdmin):
    list_display = ("user", _money(Wallet, "granted_nano"), _money(Wallet, "topped_up_nano"), _money(Wallet, "held_nano"),
                    "updated_at")
    search_fields = ("user__email",)
    list_select_related = ("user",)
    actions = ["credit_or_debit"]

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return obj is None and request.user.has_perm("billing.change_wallet")  # the action, never the form

    @admin.action(description=_("Credit or debit selected wallets…"), permissions=["change"])
    def credit_or_debit(self, request: HttpRequest, queryset: QuerySet[Wallet]) -> TemplateResponse | None:
        form = AdjustForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            done = 0
            for wallet in queryset:
                try:
                    services.adjust(wallet, form.cleaned_data["amount"], actor=operator(request),
                                    reason=form.cleaned_data["reason"], source="admin")
                    done += 1
                except services.BillingRefused as exc:
                    self.message_user(request, f"{wallet.user}: {exc.page_message()}", messages.ERROR)
            if done:
                self.message_user(request, ngettext("Adjusted %(count)d wallet by %(amount)s.",
                                                    "Adjusted %(count)d wallets by %(amount)s.", done)
                                  % {"count": done, "amount": localized(form.cleaned_data["amount"], places=9)}, messages.SUCCESS)
            return None
        return TemplateResponse(request, "billing/admin/adjust.html", {
            **self.admin_site.each_context(request), "title": gettext("Credit or debit wallets"), "form": form,
            "wallets": queryset, "action_checkbox_name": ACTION_CHECKBOX_NAME, "opts": self.model._meta})


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "wallet", "kind", _money(LedgerEntry, "granted_delta"),
                    _money(LedgerEntry, "topped_up_delta"), _money(LedgerEntry, "held_delta"), "actor", "reason")
    list_filter = ("kind",)
    search_fields = ("wallet__user__email", "external_id", "reason")
    list_select_related = ("wallet__user", "actor")


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdmin):
    list_display = ("wallet", _money(Grant, "amount_nano"), _money(Grant, "remaining_nano"), "expires_at", "reason",
                    "created_at")
    search_fields = ("wallet__user__email",)


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = ("id", "wallet", "model", _money(Hold, "amount_nano"), "status", "deadline", "created_at")
    list_filter = ("status",)
    search_fields = ("request_id", "wallet__user__email")


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "user", "model", "source", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens",
                    "completion_tokens", _money(UsageRecord, "cost_nano"))
    list_filter = ("source", "model")
    search_fields = ("request_id", "user__email")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor", "action", "source", "wallet", _money(AuditEvent, "amount_nano"), "reason")
    list_filter = ("action", "source")


@admin.register(Voucher)
class VoucherAdmin(admin.ModelAdmin):
    form = VoucherForm
    list_display = ("code", "amount", "expires_at", "redeemed_count", "max_redemptions", "created_at")
    search_fields = ("code",)
    readonly_fields = ("redeemed_count", "created_by", "created_at")

    # A voucher someone has redeemed is part of their ledger's story: it is not rewritten or removed.
    def has_change_permission(self, request: HttpRequest, obj: Voucher | None = None) -> bool:
        return super().has_change_permission(request, obj) and (obj is None or obj.redeemed_count == 0)

    def has_delete_permission(self, request: HttpRequest, obj: Voucher | None = None) -> bool:
        return super().has_delete_permission(request, obj) and (obj is None or obj.redeemed_count == 0)

    @admin.display(description=_("amount"))
    def amount(self, voucher: Voucher) -> str:
        return localized(voucher.amount_nano, places=2)

    def save_model(self, request: HttpRequest, obj: Voucher, form: forms.ModelForm, change: bool) -> None:
        services.save_voucher(obj, by=operator(request))

    def delete_model(self, request: HttpRequest, obj: Voucher) -> None:
        services.delete_voucher(obj, by=operator(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Voucher]) -> None:
        for voucher in queryset:
            services.delete_voucher(voucher, by=operator(request))


class TopupSwitchForm(forms.ModelForm):
    change_reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=True,
                                    help_text=_("Required: why you are pausing or resuming top-ups (kept in the audit log)."),
                                    label=_("Reason for the change"))

    class Meta:
        model = TopupSwitch
        fields = ["paused", "message"]


@admin.register(TopupSwitch)
class TopupSwitchAdmin(admin.ModelAdmin):
    """The top-up pause switch: tick "paused", say why. Saved through payments.set_topups_paused
    (audited). New payments are refused while paused; balances keep working."""

    form = TopupSwitchForm
    list_display = ("paused", "message", "changed_by", "changed_at")
    readonly_fields = ("changed_by", "changed_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TopupSwitch | None = None) -> bool:
        return False

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> TopupSwitch | None:
        payments.switch()  # the row always exists
        return super().get_object(request, object_id, from_field)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return HttpResponseRedirect(reverse("admin:billing_topupswitch_change", args=[payments.switch().pk]))

    def save_model(self, request: HttpRequest, obj: TopupSwitch, form: forms.ModelForm, change: bool) -> None:
        changed = payments.set_topups_paused(form.cleaned_data["paused"], message=form.cleaned_data["message"],
                                             reason=form.cleaned_data["change_reason"], by=operator(request))
        if not changed:
            messages.info(request, gettext("The switch was already set that way; nothing changed."))
        obj.refresh_from_db()


@admin.register(TopupSwitchChange)
class TopupSwitchChangeAdmin(ReadOnlyAdmin):
    list_display = ("at", "by", "paused", "message", "reason")
    list_filter = ("paused",)


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "amount", "currency", "status", "refunded_minor", "disputed_minor",
                    _money(Payment, "unrecovered_nano"), "session_id", "payment_intent")
    list_filter = ("status", "provider")
    search_fields = ("user__email", "session_id", "payment_intent")

    @admin.display(description=_("amount"))
    def amount(self, payment: Payment) -> str:
        return localized(payment.amount_nano, places=2)


@admin.register(ProviderEvent)
class ProviderEventAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "type", "event_id", "payment_intent", "applied_at", "outcome")
    list_filter = ("type",)
    search_fields = ("event_id", "payment_intent")


@admin.register(AlertSettings)
class AlertSettingsAdmin(ReadOnlyAdmin):
    """Owners set their alerts on the usage page (levee.billing.alerts.configure, audited)."""

    list_display = ("user", _money(AlertSettings, "low_balance_nano"), _money(AlertSettings, "daily_spend_nano"),
                    "daily_digest", "webhook_url", "updated_at")
    search_fields = ("user__email", "webhook_url")
    exclude = ("webhook_secret",)


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    """The webhook delivery log: every alert POSTed to an account's webhook, each attempt's answer."""

    list_display = ("created_at", "user", "event", "url", "status", "attempts", "last_status_code", "last_error",
                    "delivered_at")
    list_filter = ("status", "event")
    search_fields = ("user__email", "url")
    actions = ["deliver_again"]

    @admin.action(description=_("Deliver the selected failed deliveries again"))
    def deliver_again(self, request: HttpRequest, queryset: QuerySet[AlertDelivery]) -> None:
        from levee.billing import alerts

        count = sum(alerts.redeliver(delivery, actor=operator(request)) for delivery in queryset)
        messages.info(request, ngettext("%(count)d delivery queued again.", "%(count)d deliveries queued again.", count)
                      % {"count": count})
