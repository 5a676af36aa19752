"""The operators' audit log: every change an operator makes outside money (address rules, limit
overrides, key revocations) leaves a row here, written by the service that makes the change in the
same transaction. Money has its own log (billing.AuditEvent) and the mitigation mode its own
(shield.ModeChange); both predate this one and carry fields of their own."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class AuditLog(models.Model):
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", help_text=_("Who did it; empty for the system and commands."),
                              verbose_name=_("actor"))
    action = models.CharField(max_length=48, help_text=_("e.g. address_rule.created, api_key.revoked"),
                              verbose_name=_("action"))
    target = models.CharField(max_length=200, help_text=_("What was changed, as the operator would name it."),
                              verbose_name=_("target"))
    detail = models.JSONField(default=dict, blank=True, verbose_name=_("detail"))
    source = models.CharField(max_length=16, default="admin", help_text=_("admin, command, api, …"),
                              verbose_name=_("source"))
    at = models.DateTimeField(default=timezone.now, db_index=True, verbose_name=_("at"))

    class Meta:
        verbose_name = _("audit log")
        verbose_name_plural = _("audit logs")
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.target}"


def audit(action: str, target: object, *, by: Any = None, source: str = "admin",
          detail: dict[str, Any] | None = None) -> AuditLog:
    """Writes one audit row. Call it inside the transaction of the change it records."""
    actor = by if getattr(by, "pk", None) is not None else None
    return AuditLog.objects.create(actor=actor, action=action, target=str(target)[:200], detail=detail or {},
                                   source=source)
