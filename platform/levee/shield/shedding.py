"""Load shedding by priority, from each model's queue depth and oldest wait.

Each (model, priority) pair is a small state machine in each process: it starts shedding as soon
as depth or wait reaches the priority's threshold; it stops only after both have stayed below
RESTORE_RATIO of the thresholds for HOLD seconds (hysteresis: a queue hovering at the line does
not flap), and then readmits a growing share of requests over RAMP seconds rather than opening the
gates at once. Every process reads the same Redis numbers, so they behave alike without talking.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import cast

from django.conf import settings

from levee.shield import store

log = logging.getLogger(__name__)
_METRIC_TTL = 0.5  # seconds a process reuses a model's queue numbers


def queue_name(model: str) -> str:
    return f"inference.{model}"  # Celery's Redis transport keeps each queue as a list of this name


def wait_key(model: str) -> str:
    return f"levee:model:{model}:wait_ms"  # maintained by the jobs side: the oldest queued job's wait


@dataclass
class _PairState:
    shedding: bool = False
    calm_since: float | None = None
    restored_at: float | None = None


_metrics: dict[str, tuple[float, int, int]] = {}
_states: dict[tuple[str, str], _PairState] = {}
_lock = threading.Lock()


def metrics_fresh(model: str) -> bool:
    cached = _metrics.get(model)
    return cached is not None and time.monotonic() - cached[0] < _METRIC_TTL


def queue_metrics(model: str) -> tuple[int, int]:
    """(depth, oldest wait in ms) of a model's queue, at most _METRIC_TTL old. Raises ShieldRedisDown."""
    now = time.monotonic()
    cached = _metrics.get(model)
    if cached and now - cached[0] < _METRIC_TTL:
        return cached[1], cached[2]
    pipe = store.broker().pipeline(transaction=False)
    pipe.llen(queue_name(model))
    depth = pipe.execute()[0]
    wait_raw = cast(bytes | None, store.client().get(wait_key(model)))
    try:
        wait_ms = int(float(wait_raw)) if wait_raw is not None else 0
    except ValueError:
        wait_ms = 0
    _metrics[model] = (now, int(depth), wait_ms)
    return int(depth), wait_ms


def shed(model: str, priority: str) -> int | None:
    """Retry-After seconds if a request of `priority` for `model` should be turned away now, else None.
    Without Redis there is nothing to measure, so nothing is shed here (the Redis-down policy of
    each entry point decides instead)."""
    if priority not in settings.SHIELD_SHED_DEPTH:
        raise ValueError(f"unknown priority {priority!r}")
    try:
        depth, wait_ms = queue_metrics(model)
    except store.ShieldRedisDown:
        return None
    on_depth, on_wait = settings.SHIELD_SHED_DEPTH[priority], settings.SHIELD_SHED_WAIT_MS[priority]
    ratio = settings.SHIELD_SHED_RESTORE_RATIO
    now = time.monotonic()
    with _lock:
        pair = _states.setdefault((model, priority), _PairState())
        if depth >= on_depth or wait_ms >= on_wait:
            if not pair.shedding:
                log.warning("shield: shedding %s for %s (depth %s, wait %s ms)", priority, model, depth, wait_ms)
            pair.shedding, pair.calm_since, pair.restored_at = True, None, None
        elif pair.shedding:
            if depth < on_depth * ratio and wait_ms < on_wait * ratio:
                pair.calm_since = pair.calm_since if pair.calm_since is not None else now
                if now - pair.calm_since >= settings.SHIELD_SHED_HOLD:
                    log.warning("shield: restoring %s for %s", priority, model)
                    pair.shedding, pair.restored_at = False, now
            else:
                pair.calm_since = None
        if pair.shedding:
            return settings.SHIELD_SHED_RETRY_AFTER
        if pair.restored_at is not None:
            share = (now - pair.restored_at) / max(settings.SHIELD_SHED_RAMP, 1e-9)
            if share >= 1:
                pair.restored_at = None
            elif random.random() > share:
                return settings.SHIELD_SHED_RETRY_AFTER
    return None


def forget() -> None:
    with _lock:
        _metrics.clear()
        _states.clear()
