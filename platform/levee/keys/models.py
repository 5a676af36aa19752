from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class ApiKey(models.Model):
    """An API key. Only a SHA-256 digest of the secret is stored; `prefix` (the first characters,
    e.g. `sk-AbCd1234`) finds candidate rows and is what owners and admins see."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys",
                             verbose_name=_("user"))
    name = models.CharField(max_length=64, blank=True, verbose_name=_("name"))
    prefix = models.CharField(max_length=16, db_index=True, verbose_name=_("prefix"))
    digest = models.CharField(max_length=64, unique=True, verbose_name=_("digest"))
    # The fingerprint of the secret the key's tag was made with (levee.keys.tags); "" for a key
    # minted before keys carried tags.
    tag_fp = models.CharField(max_length=8, blank=True, default="", editable=False,
                              verbose_name=_("tag fingerprint"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    last_used_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last used at"))
    expires_at = models.DateTimeField(null=True, blank=True, verbose_name=_("expires at"))
    revoked_at = models.DateTimeField(null=True, blank=True, verbose_name=_("revoked at"))
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", verbose_name=_("revoked by"))
    # Spend caps in nano-units of LEVEE_CURRENCY (NULL = none), enforced when a hold is placed
    # (levee.billing.caps): what the key's requests reserve or were charged in the UTC day, the
    # UTC month, or ever. Set through levee.billing.caps.set_caps, which seeds the counters.
    daily_cap_nano = models.BigIntegerField(null=True, blank=True, verbose_name=_("daily cap nano"))
    monthly_cap_nano = models.BigIntegerField(null=True, blank=True, verbose_name=_("monthly cap nano"))
    lifetime_cap_nano = models.BigIntegerField(null=True, blank=True, verbose_name=_("lifetime cap nano"))

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "revoked_at"])]
        constraints = [
            models.CheckConstraint(condition=Q(daily_cap_nano__isnull=True) | Q(daily_cap_nano__gt=0),
                                   name="keys_daily_cap_positive"),
            models.CheckConstraint(condition=Q(monthly_cap_nano__isnull=True) | Q(monthly_cap_nano__gt=0),
                                   name="keys_monthly_cap_positive"),
            models.CheckConstraint(condition=Q(lifetime_cap_nano__isnull=True) | Q(lifetime_cap_nano__gt=0),
                                   name="keys_lifetime_cap_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @property
    def caps(self) -> dict[str, int]:
        """The caps this key carries: {"day"|"month"|"lifetime": nano}."""
        pairs = (("day", self.daily_cap_nano), ("month", self.monthly_cap_nano), ("lifetime", self.lifetime_cap_nano))
        return {period: cap for period, cap in pairs if cap is not None}

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
