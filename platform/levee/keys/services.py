"""API key verbs: create (the secret is returned once), authenticate, revoke."""
from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from levee.accounts.models import User
from levee.core.logging import bind_account
from levee.core.memo import MISSING, Memo
from levee.core.models import audit
from levee.keys import tags
from levee.keys.models import ApiKey

KEY_BODY_LENGTH = 48  # base62: 40 random (~238 bits), then the tag (levee.keys.tags)
PREFIX_LENGTH = 11  # "sk-" + 8
KEY_PATTERN = re.compile(rf"^sk-[A-Za-z0-9]{{{KEY_BODY_LENGTH}}}$")


class KeyRefused(Exception):
    """Why a key could not be created; `code` is stable for API clients."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def digest_of(raw: str) -> str:
    # Keys carry ~285 bits of entropy, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(raw.encode()).hexdigest()


def active_keys(user: User) -> QuerySet[ApiKey]:
    now = timezone.now()
    return ApiKey.objects.filter(user=user, revoked_at__isnull=True).exclude(expires_at__lte=now)


def create_api_key(user: User, *, name: str = "", expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Make a key for a verified account under its cap. Returns (row, the secret shown once)."""
    if not user.is_verified:
        raise KeyRefused("email_not_verified", "Verify your email address before creating API keys.")
    if not user.is_active:
        raise KeyRefused("account_inactive", "This account is disabled.")
    if expires_at is not None and expires_at <= timezone.now():
        raise KeyRefused("invalid_expiry", "expires_at must be in the future.")
    raw, tag_fp = tags.mint(KEY_BODY_LENGTH)
    with transaction.atomic():
        # Lock the owner so two concurrent creations cannot both pass the cap.
        User.objects.select_for_update().filter(pk=user.pk).first()
        if active_keys(user).count() >= settings.LEVEE_MAX_ACTIVE_KEYS:
            raise KeyRefused("too_many_keys",
                             f"An account may hold at most {settings.LEVEE_MAX_ACTIVE_KEYS} active keys; revoke one first.")
        key = ApiKey.objects.create(user=user, name=name.strip(), prefix=raw[:PREFIX_LENGTH],
                                    digest=digest_of(raw), tag_fp=tag_fp, expires_at=expires_at)
    return key, raw


# Authenticated keys, memoized per process by digest (levee.core.memo): a revocation, an expiry
# edit or a disabled account reaches other web processes within KEY_MEMO_SECONDS; the process
# that saves the change forgets at once. Unknown keys are not remembered.
KEY_MEMO_SECONDS = 2
_keys = Memo("api-keys", KEY_MEMO_SECONDS, keep_none=False)
_keys.clear_on_change(ApiKey, User)


def _lookup(raw: str, wanted: str) -> ApiKey | None:
    for key in ApiKey.objects.filter(prefix=raw[:PREFIX_LENGTH]).select_related("user"):
        if hmac.compare_digest(key.digest, wanted):
            return key
    return None


def _admit(key: ApiKey | None, now: datetime) -> ApiKey | None:
    if key is None or not key.is_usable(now) or not key.user.is_active:
        return None
    bind_account(key.user_id)  # log lines of this request carry the account from here on
    return key


def authenticate_key(raw: str) -> ApiKey | None:
    """The usable key whose secret is `raw`, or None. One indexed query (none while memoized); the
    comparison is constant-time."""
    if not KEY_PATTERN.match(raw or ""):
        return None
    wanted = digest_of(raw)
    key = _keys.get(wanted, lambda: _lookup(raw, wanted))
    now = timezone.now()
    if key is not None and key.is_usable(now) and _touch_due(key, now):
        _touch(key, now)
    return _admit(key, now)


async def aauthenticate_key(raw: str) -> ApiKey | None:
    """authenticate_key for async views: a memoized key that needs no write costs no thread."""
    if KEY_PATTERN.match(raw or ""):
        key = _keys.peek(digest_of(raw))
        now = timezone.now()
        if key is not MISSING and not _touch_due(key, now):
            return _admit(key, now)
    from levee.core.asyncdb import db

    return await db(authenticate_key)(raw)


def _touch_due(key: ApiKey, now: datetime) -> bool:
    window = timedelta(seconds=settings.LEVEE_KEY_LAST_USED_RESOLUTION)
    return key.last_used_at is None or now - key.last_used_at >= window


def _touch(key: ApiKey, now: datetime) -> None:
    """Record use at most once per resolution window, so a busy key does not write on every request."""
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    key.last_used_at = now


def revoke_api_key(key: ApiKey, *, by: User | None, source: str = "owner") -> bool:
    """Revoke; True if this call did it (compare-and-set, so a double click is harmless). A revocation
    by someone other than the key's owner (an operator in admin) is also written to the audit log."""
    now = timezone.now()
    with transaction.atomic():
        changed = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now, revoked_by=by)
        if changed and by is not None and by.pk != key.user_id:
            audit("api_key.revoked", f"{key.prefix} ({key.name}) of user {key.user_id}", by=by, source=source,
                  detail={"key_id": key.pk, "owner_id": key.user_id})
    if changed:
        key.revoked_at, key.revoked_by = now, by
        _keys.clear()
    return bool(changed)
