"""Receivers: keep the canonical email beside each account, tell every process when address rules
or limit overrides change, and keep the API-key filter (levee.shield.keyfilter) in step with keys."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from levee.shield import state
from levee.shield.emails import canonical_email
from levee.shield.models import AddressRule, LimitOverride, SignupIdentity


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def _record_canonical_email(sender, instance, created, **kwargs):
    canonical = canonical_email(instance.email)
    if created:
        # Operators may create look-alike accounts on purpose; the sign-up path checks before creating.
        SignupIdentity.objects.bulk_create([SignupIdentity(user=instance, canonical_email=canonical)],
                                           ignore_conflicts=True)
    else:
        try:
            with transaction.atomic():
                SignupIdentity.objects.filter(user=instance).exclude(canonical_email=canonical).update(
                    canonical_email=canonical)
        except IntegrityError:  # another account already holds this canonical form: keep the old one
            pass


@receiver([post_save, post_delete], sender=AddressRule)
@receiver([post_save, post_delete], sender=LimitOverride)
def _config_changed(sender, **kwargs):
    transaction.on_commit(state.publish_config)


@receiver(post_save, sender="keys.ApiKey")
def _key_saved(sender: type, instance: Any, **kwargs: Any) -> None:
    from levee.shield import keyfilter

    digest, revoked = instance.digest, instance.revoked_at is not None
    transaction.on_commit(lambda: keyfilter.remove(digest) if revoked else keyfilter.add(digest))


@receiver(post_delete, sender="keys.ApiKey")
def _key_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    from levee.shield import keyfilter

    digest = instance.digest
    transaction.on_commit(lambda: keyfilter.remove(digest))
