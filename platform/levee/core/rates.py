"""Per-minute event counts in Redis, shared by every web process and box: what the dashboard plots.

One hash per minute (`levee:ops:rate:<unix minute>`, field = event name, value = count), kept two
hours. Prometheus has the same events as counters, but those live per process and are for the
monitoring system; these are for a human watching the admin dashboard during an attack, who needs
"sign-ups in the last minute" across the fleet without a Prometheus server.

Recording never fails a request: when Redis is down the count is lost and a warning is logged.
"""
from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from levee.core.store import redis_client

log = logging.getLogger(__name__)
KEEP_S = 2 * 3600


def _key(minute: int) -> str:
    return f"levee:ops:rate:{minute}"


def record(event: str, n: int = 1) -> None:
    minute = int(time.time() // 60)
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.hincrby(_key(minute), event, n)
        pipe.expire(_key(minute), KEEP_S)
        pipe.execute()
    except RedisError as exc:
        log.warning("rate %s not recorded: Redis unavailable (%s)", event, exc.__class__.__name__)


def series(minutes: int = 15, *, now: float | None = None) -> tuple[list[int], dict[str, list[int]]]:
    """(minute starts, {event: counts}) for the last `minutes` minutes, oldest first, the current
    (partial) minute last. Raises RedisError."""
    current = int((now or time.time()) // 60)
    starts = list(range(current - minutes + 1, current + 1))
    pipe = redis_client().pipeline(transaction=False)
    for minute in starts:
        pipe.hgetall(_key(minute))
    rows = pipe.execute()
    events: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        for name, count in row.items():
            events.setdefault(name.decode(), [0] * len(starts))[i] = int(count)
    return [m * 60 for m in starts], events
