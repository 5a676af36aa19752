"""How an API job's hold closes from the web side (docs/billing.md, "Closing a hold").

The web process that follows a job closes its hold itself, the moment the job ends, so a charge
never waits on a message nobody may deliver:

* the job's last event carries the worker's signed settlement: settle from it (verified, clamped);
* any other end (no worker started it in time, the worker went silent, the client left): charge
  what the client was sent, signed here with the same secret; a job that sent nothing is released,
  never charged.

When the database cannot be reached the same signed settlement goes to the platform's settle task
(which retries until it succeeds); when even that fails, the sweep finds a worker's settlement in
the job's stream. Settling is idempotent on the hold, so every one of these may also happen twice.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings

from inference import protocol
from levee.core.asyncdb import db

log = logging.getLogger(__name__)


def _enqueue_settle(hold_id: str, data: dict) -> None:
    from levee.celery import app

    app.send_task(protocol.SETTLE_TASK, args=[hold_id, data], queue=protocol.PLATFORM_QUEUE)


async def close_hold(*, hold_id: str, job_id: str, account: str, final: dict | None, delivered: dict[str, int],
                     started_at: datetime) -> str:
    """Close the hold of a job that ended: returns "settled", "released", "queued" (the database was
    away: the platform task has it), "refused" (a settlement the secret did not sign) or
    "unsettled" (neither the database nor the broker answered: the sweep closes it)."""
    from levee.billing import services as billing
    from levee.billing.tasks import SETTLEMENTS_REFUSED

    data = final.get("settlement") if final is not None else None
    if not isinstance(data, dict):
        if not delivered.get("completion_tokens"):
            try:
                await db(billing.release_hold)(hold_id, reason="the job delivered nothing")
            except Exception:
                log.exception("releasing hold %s failed; the sweep will release it", hold_id)
            return "released"
        data = protocol.sign_settlement(settings.LEVEE_WORKER_SECRET, hold_id=hold_id, job_id=job_id,
                                        account=account, usage=delivered, started_at=started_at.isoformat(),
                                        finished_at=datetime.now(UTC).isoformat())
    try:
        await db(billing.settle_signed)(data)
        return "settled"
    except billing.SettlementRefused as exc:
        SETTLEMENTS_REFUSED.labels("web").inc()
        log.error("job %s: refused its settlement for hold %s: %s", job_id, hold_id, exc)
        return "refused"
    except Exception:
        log.exception("settling hold %s failed; handing it to the platform's settle task", hold_id)
    try:
        await sync_to_async(_enqueue_settle, thread_sensitive=False)(hold_id, data)
        return "queued"
    except Exception:
        log.exception("could not queue the settlement of hold %s; the sweep will look in job %s's stream",
                      hold_id, job_id)
        return "unsettled"
