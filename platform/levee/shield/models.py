from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

NORMAL, ELEVATED, UNDER_ATTACK = "normal", "elevated", "under_attack"
MODES = [NORMAL, ELEVATED, UNDER_ATTACK]
MODE_CHOICES = [(NORMAL, _("normal")), (ELEVATED, _("elevated")), (UNDER_ATTACK, _("under attack"))]


class MitigationState(models.Model):
    """The one row that says how defensive the site is. Written only through
    `levee.shield.services.set_mode`, which audits the change and mirrors it to Redis."""

    mode = models.CharField(max_length=16, choices=MODE_CHOICES, default=NORMAL, verbose_name=_("mode"))
    pinned = models.BooleanField(default=False, help_text=_("Pinned: automatic escalation and de-escalation leave the mode alone."),
                                 verbose_name=_("pinned"))
    reason = models.TextField(blank=True, verbose_name=_("reason"))
    changed_at = models.DateTimeField(default=timezone.now, verbose_name=_("changed at"))
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", verbose_name=_("changed by"))

    class Meta:
        verbose_name = _("mitigation mode")
        verbose_name_plural = _("mitigation mode")
        constraints = [models.CheckConstraint(condition=Q(pk=1), name="shield_mitigationstate_singleton"),
                       models.CheckConstraint(condition=Q(mode__in=MODES), name="shield_mitigationstate_mode_valid")]

    def __str__(self) -> str:
        return f"{self.mode}{' (pinned)' if self.pinned else ''}"


class ModeChange(models.Model):
    """Audit log: who (or the automation) moved the mode, when, why, from what to what."""

    OPERATOR, AUTOMATIC = "operator", "automatic"

    at = models.DateTimeField(default=timezone.now, db_index=True, verbose_name=_("at"))
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                           verbose_name=_("by"))
    source = models.CharField(max_length=16, choices=[(OPERATOR, _("operator")), (AUTOMATIC, _("automatic"))],
                              verbose_name=_("source"))
    from_mode = models.CharField(max_length=16, choices=MODE_CHOICES, verbose_name=_("from mode"))
    to_mode = models.CharField(max_length=16, choices=MODE_CHOICES, verbose_name=_("to mode"))
    pinned = models.BooleanField(default=False, verbose_name=_("pinned"))
    reason = models.TextField(verbose_name=_("reason"))

    class Meta:
        verbose_name = _("mode change")
        verbose_name_plural = _("mode changes")
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.from_mode} → {self.to_mode}"


def validate_network(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(_("%(value)s is not an IP address or network (CIDR)."), params={"value": repr(value)}) from None


class AddressRule(models.Model):
    """Deny or allow an address range before anything else runs. Allowed ranges skip the per-address
    and per-subnet limits (a partner's egress, an office); denied ones get 403."""

    ALLOW, DENY = "allow", "deny"

    network = models.CharField(max_length=64, validators=[validate_network], help_text=_("e.g. 203.0.113.0/24 or 2001:db8::/48"),
                               verbose_name=_("network"))
    action = models.CharField(max_length=8, choices=[(DENY, _("deny")), (ALLOW, _("allow"))],
                              verbose_name=_("action"))
    reason = models.CharField(max_length=200, verbose_name=_("reason"))
    expires_at = models.DateTimeField(null=True, blank=True, help_text=_("Empty: until removed."),
                                      verbose_name=_("expires at"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", verbose_name=_("created by"))

    class Meta:
        verbose_name = _("address rule")
        verbose_name_plural = _("address rules")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.action} {self.network}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.network = str(ipaddress.ip_network(self.network, strict=False))
        super().save(*args, **kwargs)


class LimitOverride(models.Model):
    """Per-account or per-key limits that replace the defaults (empty fields keep the default)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="limit_override", verbose_name=_("user"))
    api_key = models.OneToOneField("keys.ApiKey", null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="limit_override", verbose_name=_("api key"))
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True,
                                                      verbose_name=_("requests per minute"))
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True,
                                                    verbose_name=_("tokens per minute"))
    concurrent_jobs = models.PositiveIntegerField(null=True, blank=True, verbose_name=_("concurrent jobs"))
    note = models.CharField(max_length=200, blank=True, verbose_name=_("note"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("limit override")
        verbose_name_plural = _("limit overrides")
        constraints = [models.CheckConstraint(
            condition=(Q(user__isnull=False) & Q(api_key__isnull=True)) | (Q(user__isnull=True) & Q(api_key__isnull=False)),
            name="shield_limitoverride_one_subject")]

    def __str__(self) -> str:
        return f"limits for {self.user or self.api_key}"

    def clean(self) -> None:
        if bool(self.user_id) == bool(self.api_key_id):
            raise ValidationError(_("Choose either an account or an API key."))


class SignupIdentity(models.Model):
    """The canonical form of an account's address (case, Gmail dots and +tags folded), so
    `A.da+x@googlemail.com` is recognised as `ada@gmail.com` at sign-up."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="signup_identity",
                                verbose_name=_("user"))
    canonical_email = models.CharField(max_length=254, unique=True, verbose_name=_("canonical email"))

    class Meta:
        verbose_name = _("sign-up identity")
        verbose_name_plural = _("sign-up identities")

    def __str__(self) -> str:
        return self.canonical_email
