"""The operators' audit log: every change an operator makes outside money (address rules, limit
overrides, key revocations) leaves a row here, written by the service that makes the change in the
same transaction. Money has its own log (billing.AuditEvent) and the mitigation mode its own
(shield.ModeChange); both predate this one and carry fields of their own."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditLog(models.Model):
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", help_text="Who did it; empty for the system and commands.")
    action = models.CharField(max_length=48, help_text="e.g. address_rule.created, api_key.revoked")
    target = models.CharField(max_length=200, help_text="What was changed, as the operator would name it.")
    detail = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16, default="admin", help_text="admin, command, api, …")
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.target}"


def audit(action: str, target: object, *, by: Any = None, source: str = "admin",
          detail: dict[str, Any] | None = None) -> AuditLog:
    """Writes one audit row. Call it inside the transaction of the change it records."""
    actor = by if getattr(by, "pk", None) is not None else None
    return AuditLog.objects.create(actor=actor, action=action, target=str(target)[:200], detail=detail or {},
                                   source=source)
