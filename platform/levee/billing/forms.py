from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from levee.billing.models import Voucher
from levee.billing.money import InvalidAmount, format_amount, parse_amount
from levee.billing.services import normalize_code

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to misread


def new_voucher_code() -> str:
    body = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(16))
    return "-".join(body[i:i + 4] for i in range(0, 16, 4))


class AmountField(forms.CharField):
    """A decimal amount of the currency, parsed exactly into nano-units."""

    def __init__(self, *, allow_negative: bool = False, **kwargs: Any) -> None:
        self.allow_negative = allow_negative
        super().__init__(max_length=40, **kwargs)

    def clean(self, value: Any) -> int:
        value = super().clean(value)
        try:
            return parse_amount(value, allow_negative=self.allow_negative)
        except InvalidAmount:
            raise forms.ValidationError(_("Enter a decimal amount like 12.50 (at most nine decimal places, not zero)."),
                                        code="invalid") from None


class AdjustForm(forms.Form):
    amount = AmountField(allow_negative=True, label=_("Amount"),
                         help_text=_("In the deployment's currency; negative to debit, e.g. -5.00"))
    reason = forms.CharField(max_length=200, label=_("Reason"), help_text=_("Required: shown in the ledger and the audit log"))

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError(_("A reason is required."))
        return reason


class VoucherForm(forms.ModelForm):
    amount = AmountField(label=_("Amount"), help_text=_("In the deployment's currency, e.g. 10.00"))
    code = forms.CharField(max_length=64, required=False, label=_("Code"), help_text=_("Leave empty to generate one"))

    class Meta:
        model = Voucher
        fields = ["code", "amount", "expires_at", "max_redemptions", "note"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["amount"].initial = format_amount(self.instance.amount_nano, places=2)

    def clean_code(self) -> str:
        raw = self.cleaned_data.get("code") or ""
        if not raw.strip():
            return new_voucher_code()
        code = normalize_code(raw)
        if code is None:
            raise forms.ValidationError(_("Use letters, digits and dashes only (at most 64)."))
        return code

    def clean_expires_at(self) -> datetime:
        expires_at = self.cleaned_data["expires_at"]
        if expires_at <= timezone.now():
            raise forms.ValidationError(_("The expiry must be in the future."))
        return expires_at

    def save(self, commit: bool = True) -> Voucher:
        self.instance.amount_nano = self.cleaned_data["amount"]
        return super().save(commit)
