"""Billing's Celery tasks, on the `platform` queue. Names are stable: workers outside this code
base (the inference workers) send `levee.billing.settle` by name."""
from __future__ import annotations

import logging
from typing import cast

from celery import Task, shared_task
from django.conf import settings
from django.core.exceptions import ValidationError
from prometheus_client import Counter
from redis.exceptions import RedisError

from levee.billing import services
from levee.billing.models import Hold

log = logging.getLogger(__name__)

SETTLE_RETRY_ALERTS = Counter("levee_settle_retry_alerts", "Tries of a settle task past LEVEE_SETTLE_ALERT_RETRIES "
                              "(each one also logs at ERROR): a charge is waiting on the database.")
SETTLEMENTS_REFUSED = Counter("levee_settlements_refused", "Settlements refused: unsigned, badly signed, or not "
                              "matching their hold's job or account. Nothing was charged.", ["where"])


# Re-running is safe (settle is idempotent on the hold id), so the message is acknowledged only
# after the charge is committed: a worker dying mid-settle leaves it for another. It never gives
# up while the database is away (the hold's service was given; dropping the message would give it
# away for free): the back-off grows to a minute and, past LEVEE_SETTLE_ALERT_RETRIES tries, each
# try alerts.
@shared_task(name="levee.billing.settle", queue="platform", acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=30, time_limit=60, max_retries=None, bind=True)
def settle(self: Task, hold_id: str, settlement: dict) -> None:
    """Settle from a signed settlement (protocol.sign_settlement) for `hold_id`; the web enqueues it
    when it could not reach the database itself."""
    try:
        if not isinstance(settlement, dict) or settlement.get("hold_id") != hold_id:
            raise services.SettlementRefused(f"the settlement is not for hold {hold_id!r}")
        services.settle_signed(settlement)
    except services.SettlementRefused as exc:
        SETTLEMENTS_REFUSED.labels("task").inc()
        log.error("levee.billing.settle refused for hold %r: %s", hold_id, exc)
    except (ValueError, ValidationError, Hold.DoesNotExist, KeyError) as exc:
        # A malformed message will not get better by retrying; it is logged for an operator.
        log.error("levee.billing.settle dropped for hold %r: %s", hold_id, exc)
    except Exception as exc:  # the database is away: try again later, the hold stays open meanwhile
        tries = self.request.retries + 1
        if tries >= settings.LEVEE_SETTLE_ALERT_RETRIES:
            SETTLE_RETRY_ALERTS.inc()
            log.error("levee.billing.settle for hold %r has failed %d times (%r); retrying", hold_id, tries, exc)
        raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries)) from exc


def settlement_in_stream(job_id: str) -> dict | None:
    """The signed settlement the job's last event carries, if its stream holds one (None when Redis
    cannot say: the hold is then released, as before)."""
    from inference import protocol
    from levee.core.store import redis_client

    try:
        entries = cast(list, redis_client().xrevrange(protocol.stream_key(job_id), count=1))
    except RedisError:
        log.warning("sweep: could not read job %s's stream", job_id)
        return None
    for _id, fields in entries:
        try:
            event = protocol.decode_event(fields)
        except (protocol.ProtocolError, ValueError):
            return None
        if event.get("type") in (protocol.DONE, protocol.ERROR) and isinstance(event.get("settlement"), dict):
            return event["settlement"]
    return None


def sent_to_client(job_id: str) -> int | None:
    """The completion tokens the web had passed on to the job's client, as it last wrote them
    (protocol.sent_key; None when Redis cannot say: the job's settlement then stands as signed)."""
    from inference import protocol
    from levee.core.store import redis_client

    try:
        value = redis_client().get(protocol.sent_key(job_id))
    except RedisError:
        log.warning("sweep: could not read what job %s's client was sent", job_id)
        return None
    try:
        return max(0, int(value)) if value is not None else None  # type: ignore[arg-type]
    except ValueError:
        return None


@shared_task(name="levee.billing.sweep_holds", queue="platform", soft_time_limit=50, time_limit=60)
def sweep_holds() -> int:
    closed = services.sweep_holds(settlement_of=settlement_in_stream, sent_of=sent_to_client)
    if closed:
        log.info("closed %d stale hold(s)", closed)
    return closed


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
