"""Escalation in seconds: every web process runs a small loop (started by the admission layer) that
every SHIELD_ESCALATION_INTERVAL seconds records its event-loop lag and, if it wins a short Redis
lease (one process per interval, site-wide), evaluates the mode:

* sliding windows of SHIELD_ESCALATION_WINDOW (10) seconds of sign-up attempts, failed logins,
  admission refusals (a per-address or per-subnet limit, an unknown API key: evidence of an attack)
  and admission challenges (a hashing budget spent, a bare browser sent to the interstitial:
  pressure) (levee.shield.stats, per-second buckets by Redis's clock), plus the worst sustained
  event-loop lag (the least of a process's last three beats) reported by any web process in the
  last few seconds (CPU pressure: a loop that keeps waking late is a process with no CPU to spare);
* a signal is hot for a mode when its window reaches that mode's absolute floor
  (SHIELD_ESCALATION_FLOORS) and, when the site is below that mode, also
  SHIELD_ESCALATION_BASELINE_FACTOR times its recent baseline (the mean per window over the
  previous SHIELD_ESCALATION_BASELINE seconds), so a busy-but-normal site needs a real jump;
* sign-ups and challenges raise the mode to `elevated` at most — which asks new browsers for a proof
  of work, never turns anyone away — so a launch-day spike of real sign-ups (many new browsers at
  once: sign-ups, a spent new-browser budget) costs people a second of work, not their
  registration; `under_attack` needs failed logins, refusals or CPU pressure;
* lowering: one step after SHIELD_AUTO_COOLDOWN seconds without a hot signal;
* every change goes through services.set_mode (audited); a pinned mode is never moved.

The Celery beat task (levee.shield.evaluate_mode) calls the same `evaluate`, so a site with no web
traffic still calms down.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from django.conf import settings

from levee.core import rates
from levee.shield import stats, store
from levee.shield.models import ELEVATED, MODES, NORMAL, UNDER_ATTACK, ModeChange

log = logging.getLogger(__name__)

EVENTS = ("signup", "failed_login", "refused", "challenged")
_LEADER = "levee:shield:{escalation}:leader"
_LAG = "levee:shield:{escalation}:lag"
_LAST_HOT = "levee:shield:auto:last-hot"
_ME = f"{socket.gethostname()}:{os.getpid()}"

_task: asyncio.Task | None = None


def hot_signals(windows: dict[str, tuple[int, float]], lag_ms: float, current: str) -> dict[str, list[str]]:
    """Per mode above normal: the signals that are hot for it (a pure function: the tests' handle)."""
    factor = settings.SHIELD_ESCALATION_BASELINE_FACTOR
    hot: dict[str, list[str]] = {}
    for mode in (ELEVATED, UNDER_ATTACK):
        holding = MODES.index(current) >= MODES.index(mode)
        floors = settings.SHIELD_ESCALATION_FLOORS[mode]
        names = []
        for event, floor in floors.items():
            if event == "lag_ms":
                if lag_ms >= floor:
                    names.append(f"event-loop lag {lag_ms:.0f} ms")
                continue
            count, baseline = windows.get(event, (0, 0.0))
            if count >= floor and (holding or count >= factor * baseline):
                names.append(f"{count} {event.replace('_', ' ')} in {settings.SHIELD_ESCALATION_WINDOW}s "
                             f"(baseline {baseline:.1f})")
        if names:
            hot[mode] = names
    return hot


def wanted_mode(hot: dict[str, list[str]]) -> str:
    for mode in (UNDER_ATTACK, ELEVATED):
        if hot.get(mode):
            return mode
    return NORMAL


def _worst_lag(client: Any, now: float) -> float:
    worst = 0.0
    for raw in client.hvals(_LAG):
        try:
            lag, at = raw.split()
            if now - float(at) <= 5:
                worst = max(worst, float(lag))
        except ValueError:
            continue
    return worst


def evaluate() -> str | None:
    """One look at the windows; returns the new mode if it changed. Idempotent and cheap."""
    from levee.shield import services

    if not settings.SHIELD_AUTO_ENABLED:
        return None
    try:
        client = store.client()
        windows = stats.windows(list(EVENTS), window=settings.SHIELD_ESCALATION_WINDOW,
                                baseline=settings.SHIELD_ESCALATION_BASELINE)
        lag = _worst_lag(client, time.time())
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; automatic mitigation skipped")
        return None
    row = services.get_state()
    if row.pinned:
        return None
    hot = hot_signals(windows, lag, row.mode)
    wanted = wanted_mode(hot)
    current = MODES.index(row.mode)
    now = time.time()
    if hot:
        client.set(_LAST_HOT, now)
    if MODES.index(wanted) > current:
        reason = "measured " + "; ".join(hot[wanted])
        if services.set_mode(wanted, reason=reason, source=ModeChange.AUTOMATIC):
            log.warning("shield: raised mitigation mode to %s (%s)", wanted, reason)
            return wanted
        return None
    if MODES.index(wanted) == current or hot.get(row.mode):
        return None
    last_hot: Any = client.get(_LAST_HOT)
    calm_since = max(float(last_hot or 0), row.changed_at.timestamp())
    if now - calm_since >= settings.SHIELD_AUTO_COOLDOWN:
        lower = MODES[current - 1]
        if services.set_mode(lower, reason=f"calm for {settings.SHIELD_AUTO_COOLDOWN}s", source=ModeChange.AUTOMATIC):
            client.set(_LAST_HOT, now)
            log.warning("shield: lowered mitigation mode to %s", lower)
            return lower
    return None


_ticks = 0


_recent_lags: list[float] = []


def tick(lag_ms: float) -> str | None:
    """One beat of a web process's loop: report its lag — the least of its last three beats, so one
    pause (a collection, a slow hop) is not pressure, a loop that keeps waking late is — and, if it
    holds the lease, evaluate. It also files the dashboard's counts this process has kept."""
    global _ticks
    rates.flush()
    interval = settings.SHIELD_ESCALATION_INTERVAL
    _recent_lags.append(lag_ms)
    del _recent_lags[:-3]
    sustained = min(_recent_lags) if len(_recent_lags) == 3 else 0.0
    try:
        client = store.client()
        pipe = client.pipeline(transaction=False)
        pipe.hset(_LAG, _ME, f"{sustained:.1f} {time.time():.3f}")
        pipe.expire(_LAG, 60)
        pipe.set(_LEADER, _ME, nx=True, px=max(100, int(interval * 900)))
        pipe.get(_LEADER)
        leader = pipe.execute()[-1]
    except store.ShieldRedisDown:
        return None
    if leader != _ME.encode():
        return None
    _ticks += 1
    if _ticks % max(1, int(60 / interval)) == 0:
        from levee.shield import keyfilter

        keyfilter.refresh_if_ageing()
    return evaluate()


async def _loop() -> None:
    from levee.core.asyncdb import db

    loop = asyncio.get_running_loop()
    run_tick = db(tick)  # the shared database pool: evaluate() may read and write the mode's row
    while True:
        interval = settings.SHIELD_ESCALATION_INTERVAL
        started = loop.time()
        await asyncio.sleep(interval)
        lag_ms = max(0.0, (loop.time() - started - interval) * 1000)
        try:
            await stats.aflush_due()  # the counts made in the process without Redis, once a flood has stopped too
            await run_tick(lag_ms)
        except Exception:  # noqa: BLE001 - the loop must outlive any one bad beat
            log.exception("shield: escalation beat failed")


def ensure_running() -> None:
    """Start this process's loop on the running event loop, once (and again if it died)."""
    global _task
    if _task is not None and not _task.done():
        return
    if not settings.SHIELD_AUTO_ENABLED or not settings.SHIELD_ESCALATION_IN_WEB:
        return
    try:
        _task = asyncio.get_running_loop().create_task(_loop(), name="levee-escalation")
    except RuntimeError:
        _task = None


async def stop() -> None:
    global _task
    if _task is not None:
        _task.cancel()
        try:
            await _task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
        _task = None
