"""Per-minute event counts in Redis, shared by every web process and box: what the dashboard plots.

One hash per minute (`levee:ops:rate:<unix minute>`, field = event name, value = count), kept two
hours. Prometheus has the same events as counters, but those live per process and are for the
monitoring system; these are for a human watching the admin dashboard during an attack, who needs
"sign-ups in the last minute" across the fleet without a Prometheus server.

Recording never fails a request and never waits on Redis: counts are kept in the process and filed
at most once a second (ADR 0014's reasoning: a refusal must not buy a round trip); when Redis is down
they are lost and a warning is logged.
"""
from __future__ import annotations

import logging
import threading
import time

from redis.exceptions import RedisError

from levee.core.store import redis_client

log = logging.getLogger(__name__)
KEEP_S = 2 * 3600


def _key(minute: int) -> str:
    return f"levee:ops:rate:{minute}"


_lock = threading.Lock()
_pending: dict[tuple[int, str], int] = {}  # (minute, event) -> count not yet in Redis
_filed_at = 0.0
FILE_EVERY_S = 1.0


def record(event: str, n: int = 1) -> None:
    """Count `n` of `event` in this minute. Counts are kept in the process and filed in one pipeline
    by the first record a second after the last filing (and by `flush`, which the escalation beat
    and `series` call): a refusal costs a dictionary update, not a Redis round trip on the event
    loop. Thread-safe (views record from their threads, the admission layer from the loop)."""
    minute = int(time.time() // 60)
    with _lock:
        _pending[(minute, event)] = _pending.get((minute, event), 0) + n
        due = time.monotonic() - _filed_at >= FILE_EVERY_S
    if due:
        flush()


def forget() -> None:
    """Drop what this process has not filed (tests)."""
    with _lock:
        _pending.clear()


def flush() -> None:
    """File what this process has counted. Redis down: those counts are lost and a warning is logged."""
    global _pending, _filed_at
    with _lock:
        batch, _pending, _filed_at = _pending, {}, time.monotonic()
    if not batch:
        return
    try:
        pipe = redis_client().pipeline(transaction=False)
        for (minute, event), n in batch.items():
            pipe.hincrby(_key(minute), event, n)
            pipe.expire(_key(minute), KEEP_S)
        pipe.execute()
    except RedisError as exc:
        log.warning("%d rate counts not recorded: Redis unavailable (%s)", sum(batch.values()),
                    exc.__class__.__name__)


def series(minutes: int = 15, *, now: float | None = None) -> tuple[list[int], dict[str, list[int]]]:
    """(minute starts, {event: counts}) for the last `minutes` minutes, oldest first, the current
    (partial) minute last. Raises RedisError."""
    flush()  # this process's own counts first
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
