"""Sign-up credit: granted when an address is verified, never before (free credit is what
automated sign-ups come for). Alerts: checked after each charge or credit is committed."""
from datetime import timedelta

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.utils import timezone

from levee.accounts.models import User
from levee.accounts.signals import user_verified
from levee.billing.models import LedgerEntry
from levee.billing.money import parse_amount


@receiver(user_verified, dispatch_uid="levee.billing.signup_credit")
def grant_signup_credit(sender: type, user: User, **kwargs: object) -> None:
    from levee.billing.services import grant

    amount = parse_amount(settings.LEVEE_SIGNUP_CREDIT, allow_zero=True)
    if amount <= 0:
        return
    days = settings.LEVEE_SIGNUP_CREDIT_EXPIRY_DAYS
    expires_at = timezone.now() + timedelta(days=days) if days else None
    grant(user, amount, reason="sign-up credit", expires_at=expires_at, key="signup")


@receiver(post_save, sender="billing.LedgerEntry", dispatch_uid="levee.billing.alerts")
def check_alerts(sender: type, instance: LedgerEntry, created: bool, **kwargs: object) -> None:
    if created:
        from levee.billing.alerts import ledger_entry_saved

        ledger_entry_saved(instance)
