import re

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class BillingConfig(AppConfig):
    name = "levee.billing"
    label = "billing"

    def ready(self) -> None:
        from django.conf import settings

        from levee.billing import monitoring, signals  # noqa: F401  (signals: the sign-up credit, alerts after ledger entries)
        from levee.core import dashboard, metrics

        metrics.register_state("billing", monitoring.metric_families)
        dashboard.register_panel("billing", monitoring.dashboard_panel)
        from levee.billing.money import InvalidAmount, parse_amount

        if not re.fullmatch(r"[A-Z]{3}", settings.LEVEE_CURRENCY):
            raise ImproperlyConfigured(f"LEVEE_CURRENCY={settings.LEVEE_CURRENCY!r} is not an ISO 4217 code like USD")
        try:
            parse_amount(settings.LEVEE_SIGNUP_CREDIT, allow_zero=True)
        except InvalidAmount as exc:
            raise ImproperlyConfigured(f"LEVEE_SIGNUP_CREDIT={settings.LEVEE_SIGNUP_CREDIT!r}: {exc}") from None
        for name in ("LEVEE_TOPUP_MIN", "LEVEE_TOPUP_MAX"):
            try:
                parse_amount(getattr(settings, name))
            except InvalidAmount as exc:
                raise ImproperlyConfigured(f"{name}={getattr(settings, name)!r}: {exc}") from None
        try:
            [parse_amount(a) for a in settings.LEVEE_TOPUP_AMOUNTS]
        except InvalidAmount as exc:
            raise ImproperlyConfigured(f"LEVEE_TOPUP_AMOUNTS={settings.LEVEE_TOPUP_AMOUNTS!r}: {exc}") from None
