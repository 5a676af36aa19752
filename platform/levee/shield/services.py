"""Shield verbs: changing the mode (operator or automation), address rules and limit overrides. Each
is one transaction with its audit row (ModeChange for the mode, core's AuditLog for the rest); the
new configuration reaches every process through the Redis mirror once the transaction commits."""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from levee.accounts.models import User
from levee.core.models import audit
from levee.shield import state
from levee.shield.models import MODES, AddressRule, LimitOverride, MitigationState, ModeChange


def get_state() -> MitigationState:
    state_row, _ = MitigationState.objects.get_or_create(pk=1)
    return state_row


def set_mode(mode: str, *, reason: str, by: User | None = None, pinned: bool | None = None,
             source: str = ModeChange.OPERATOR) -> bool:
    """Move the site to `mode` (and set or clear the operator pin). Returns True if anything changed.
    The change is mirrored to Redis on commit, so every process follows within a second."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("a reason is required")
    with transaction.atomic():
        MitigationState.objects.get_or_create(pk=1)
        row = MitigationState.objects.select_for_update().get(pk=1)
        new_pinned = row.pinned if pinned is None else pinned
        if source == ModeChange.AUTOMATIC and row.pinned:
            return False
        if row.mode == mode and row.pinned == new_pinned:
            return False
        ModeChange.objects.create(by=by, source=source, from_mode=row.mode, to_mode=mode,
                                  pinned=new_pinned, reason=reason)
        row.mode, row.pinned, row.reason, row.changed_by, row.changed_at = mode, new_pinned, reason, by, timezone.now()
        row.save(update_fields=["mode", "pinned", "reason", "changed_by", "changed_at"])
        transaction.on_commit(lambda: state.mirror_mode(mode))
    return True


def mode_details() -> dict:
    """For dashboards and metrics: {"mode", "set_by", "set_at", "reason", "pinned"}."""
    row = MitigationState.objects.select_related("changed_by").filter(pk=1).first() or MitigationState(pk=1)
    return {"mode": row.mode, "set_by": row.changed_by.email if row.changed_by else None,
            "set_at": row.changed_at, "reason": row.reason, "pinned": row.pinned}


def _fields(row: AddressRule | LimitOverride) -> dict[str, str | None]:
    names = ("network", "action", "reason", "expires_at") if isinstance(row, AddressRule) else \
        ("requests_per_minute", "tokens_per_minute", "concurrent_jobs", "note")
    return {name: (str(v) if (v := getattr(row, name)) is not None else None) for name in names}


def save_address_rule(rule: AddressRule, *, by: User | None = None, source: str = "admin") -> AddressRule:
    """Creates or changes an allow/block rule for a network (mirrored to every process on commit)."""
    created = rule.pk is None
    with transaction.atomic():
        if created and by is not None and getattr(by, "pk", None) is not None:
            rule.created_by = by
        rule.save()
        audit("address_rule." + ("created" if created else "changed"), rule, by=by, source=source, detail=_fields(rule))
    return rule


def delete_address_rule(rule: AddressRule, *, by: User | None = None, source: str = "admin") -> None:
    with transaction.atomic():
        audit("address_rule.deleted", rule, by=by, source=source, detail=_fields(rule))
        rule.delete()


def save_limit_override(override: LimitOverride, *, by: User | None = None,
                        source: str = "admin") -> LimitOverride:
    """Creates or changes an account's or a key's own limits (mirrored to every process on commit)."""
    created = override.pk is None
    with transaction.atomic():
        override.save()
        audit("limit_override." + ("created" if created else "changed"), override, by=by, source=source,
              detail=_fields(override))
    return override


def delete_limit_override(override: LimitOverride, *, by: User | None = None,
                          source: str = "admin") -> None:
    with transaction.atomic():
        audit("limit_override.deleted", override, by=by, source=source, detail=_fields(override))
        override.delete()
