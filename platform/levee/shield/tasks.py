"""Automatic mitigation: raise the mode when sign-ups or failed logins spike, lower it one step
after a calm cool-down; never while an operator has pinned the mode."""
from __future__ import annotations

import logging
import time

from celery import shared_task
from django.conf import settings

from levee.shield import services, stats, store
from levee.shield.models import MODES, NORMAL, ModeChange

log = logging.getLogger(__name__)
_LAST_HOT = "levee:shield:auto:last-hot"


def measured_mode(signups: int, failed_logins: int) -> str:
    wanted = NORMAL
    for mode in MODES[1:]:
        if (signups >= settings.SHIELD_AUTO_SIGNUPS_PER_MINUTE[mode]
                or failed_logins >= settings.SHIELD_AUTO_FAILED_LOGINS_PER_MINUTE[mode]):
            wanted = mode
    return wanted


def evaluate_mode() -> str | None:
    """One look at the rates; returns the new mode if it changed. Idempotent and cheap."""
    if not settings.SHIELD_AUTO_ENABLED:
        return None
    try:
        signups, failed = stats.per_minute("signup"), stats.per_minute("failed_login")
        client = store.client()
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; automatic mitigation skipped")
        return None
    row = services.get_state()
    if row.pinned:
        return None
    wanted = measured_mode(signups, failed)
    current = MODES.index(row.mode)
    now = time.time()
    reason = f"measured {signups} sign-up attempts/min and {failed} failed logins/min"
    if MODES.index(wanted) >= current:
        client.set(_LAST_HOT, now)
        if MODES.index(wanted) > current and services.set_mode(wanted, reason=reason, source=ModeChange.AUTOMATIC):
            log.warning("shield: raised mitigation mode to %s (%s)", wanted, reason)
            return wanted
        return None
    calm_since = max(float(client.get(_LAST_HOT) or 0), row.changed_at.timestamp())
    if now - calm_since >= settings.SHIELD_AUTO_COOLDOWN:
        lower = MODES[current - 1]
        if services.set_mode(lower, reason=f"calm for {settings.SHIELD_AUTO_COOLDOWN}s: {reason}",
                             source=ModeChange.AUTOMATIC):
            client.set(_LAST_HOT, now)
            log.warning("shield: lowered mitigation mode to %s", lower)
            return lower
    return None


@shared_task(name="levee.shield.evaluate_mode", queue="platform", ignore_result=True,
             soft_time_limit=5, time_limit=10)
def evaluate_mode_task():
    return evaluate_mode()
