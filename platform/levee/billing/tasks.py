"""Billing's Celery tasks, on the `platform` queue. Names are stable: workers outside this code
base (the inference workers) send `levee.billing.settle` by name."""
from __future__ import annotations

import logging
from datetime import datetime

from celery import Task, shared_task
from django.core.exceptions import ValidationError

from levee.billing import services
from levee.billing.models import Hold

log = logging.getLogger(__name__)

_USAGE_INTS = ("prompt_cache_hit_tokens", "prompt_cache_miss_tokens", "completion_tokens")
_USAGE_TIMES = ("started_at", "finished_at")


def parse_usage(usage: dict) -> dict:
    """The settle message's usage dict → settle_hold's keyword arguments. Raises ValueError."""
    if not isinstance(usage, dict):
        raise ValueError("usage must be an object")
    # Keys beyond these (a newer worker's extras) are ignored: dropping the message would lose a charge.
    missing = (set(_USAGE_INTS) | set(_USAGE_TIMES)) - set(usage)
    if missing:
        raise ValueError(f"usage is missing {sorted(missing)}")
    parsed: dict = {name: usage[name] for name in _USAGE_INTS}
    for name in _USAGE_TIMES:
        value = usage[name]
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        if moment is None or moment.tzinfo is None:
            raise ValueError(f"{name} must be an ISO-8601 instant with a UTC offset, not {value!r}")
        parsed[name] = moment
    return parsed


# Re-running is safe (settle is idempotent on the hold id), so the message is acknowledged only
# after the charge is committed: a worker dying mid-settle leaves it for another.
@shared_task(name="levee.billing.settle", queue="platform", acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=30, time_limit=60, max_retries=5, bind=True)
def settle(self, hold_id: str, usage: dict) -> None:
    try:
        kwargs = parse_usage(usage)
        services.settle_hold(hold_id, **kwargs)
    except (ValueError, ValidationError, Hold.DoesNotExist) as exc:
        # A malformed message will not get better by retrying; it is logged for an operator.
        log.error("levee.billing.settle dropped for hold %r: %s", hold_id, exc)
    except Exception as exc:  # the database is away: try again later, the hold stays open meanwhile
        raise self.retry(exc=exc, countdown=2 ** self.request.retries) from exc


@shared_task(name="levee.billing.sweep_holds", queue="platform", soft_time_limit=50, time_limit=60)
def sweep_holds() -> int:
    released = services.sweep_holds()
    if released:
        log.info("released %d stale hold(s)", released)
    return released


@shared_task(name="levee.billing.expire_grants", queue="platform", soft_time_limit=50, time_limit=60)
def expire_grants() -> int:
    return services.expire_grants()


@shared_task(name="levee.billing.deliver_alert", queue="platform", bind=True, acks_late=True,
             soft_time_limit=40, time_limit=60, max_retries=None)
def deliver_alert(self: Task, delivery_id: str) -> None:
    """POST one alert to its account's webhook; on failure retry with exponential back-off
    (levee.billing.alerts.backoff) until LEVEE_ALERT_WEBHOOK_MAX_ATTEMPTS attempts are logged."""
    from levee.billing import alerts

    try:
        done = alerts.attempt(delivery_id)
    except alerts.Undeliverable as exc:
        log.warning("alert delivery %s dropped: %s", delivery_id, exc)
        return
    if not done:
        attempts = self.request.retries + 1
        raise self.retry(countdown=alerts.backoff(attempts))


@shared_task(name="levee.billing.alert_digests", queue="platform", soft_time_limit=250, time_limit=300)
def alert_digests() -> int:
    from levee.billing import alerts

    return alerts.send_digests()
