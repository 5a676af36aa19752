"""Shield verbs: changing the mode (operator or automation). Each is one transaction with its audit row."""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from levee.shield import state
from levee.shield.models import MODES, MitigationState, ModeChange


def get_state() -> MitigationState:
    state_row, _ = MitigationState.objects.get_or_create(pk=1)
    return state_row


def set_mode(mode: str, *, reason: str, by=None, pinned: bool | None = None,
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
