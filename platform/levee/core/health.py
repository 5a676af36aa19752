"""Readiness: can this process serve traffic now? The database, Redis, and a live worker per model.

A load balancer polls /readyz every few seconds from several places and an attacker may poll it
too (it is exempt from rate limits), so one answer is reused for LEVEE_READYZ_CACHE_MS (1 s by
default) per process: at most one `SELECT 1` and one Redis round trip a second, whatever the load.
Nothing older than that is ever served.
"""
from __future__ import annotations

import threading
import time

from django.conf import settings
from django.db import connection

_cache: tuple[float, dict] | None = None
_lock = threading.Lock()


def _timed(fn) -> dict:
    began = time.perf_counter()
    try:
        detail = fn() or {}
        ok = detail.pop("ok", True)
    except Exception as exc:
        # The class name only: the body is public, and a driver's message can name hosts and users.
        ok, detail = False, {"error": exc.__class__.__name__}
    return {"ok": ok, "ms": round((time.perf_counter() - began) * 1000, 1), **detail}


def _database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        connection.close_if_unusable_or_obsolete()
        raise
    return {}


def _redis() -> dict:
    from levee.core.store import redis_client

    redis_client().ping()
    return {}


def _workers() -> dict:
    from levee.core.metrics import enabled_models, model_state

    state = model_state(enabled_models())
    live = {name: s["live_workers"] for name, s in state.items()}
    return {"ok": all(live.values()), "models": live}


def check() -> dict:
    checks = {"database": _timed(_database), "redis": _timed(_redis)}
    if checks["database"]["ok"] and checks["redis"]["ok"]:
        checks["workers"] = _timed(_workers)
    else:
        checks["workers"] = {"ok": False, "error": "needs the database and Redis"}
    return {"status": "ok" if all(c["ok"] for c in checks.values()) else "unavailable",
            "checks": [{"name": name, **result} for name, result in checks.items()]}


def readiness() -> dict:
    global _cache
    ttl = settings.LEVEE_READYZ_CACHE_MS / 1000
    now = time.monotonic()
    cached = _cache
    if cached is not None and now - cached[0] < ttl:
        return cached[1]
    with _lock:  # one thread checks; the others wait a moment and reuse its answer
        cached = _cache
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        result = check()
        _cache = (time.monotonic(), result)
        return result
