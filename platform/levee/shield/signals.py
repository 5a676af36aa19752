"""Receivers: tell every process when address rules or limit overrides change, and keep the API-key
filter (levee.shield.keyfilter) in step with keys. (An account's canonical email is recorded by
levee.accounts where accounts are made: levee.shield.emails.record_canonical_email.)"""
from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from levee.shield import state
from levee.shield.models import AddressRule, LimitOverride


@receiver([post_save, post_delete], sender=AddressRule)
@receiver([post_save, post_delete], sender=LimitOverride)
def _config_changed(sender: type, **kwargs: Any) -> None:
    transaction.on_commit(state.publish_config)


@receiver(post_save, sender="keys.ApiKey")
def _key_saved(sender: type, instance: Any, **kwargs: Any) -> None:
    from levee.shield import keyfilter

    digest, tag_fp, revoked = instance.digest, instance.tag_fp, instance.revoked_at is not None
    transaction.on_commit(lambda: keyfilter.remove(digest) if revoked else keyfilter.add(digest, tag_fp))


@receiver(post_delete, sender="keys.ApiKey")
def _key_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    from levee.shield import keyfilter

    digest = instance.digest
    transaction.on_commit(lambda: keyfilter.remove(digest))
