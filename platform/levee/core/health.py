"""Readiness: can this process serve traffic now? The database, Redis, and a live worker per model.

A load balancer polls /readyz every few seconds from several places and an attacker may poll it
too (it is exempt from rate limits), so one answer is reused for LEVEE_READYZ_CACHE_MS (1 s by
default) per process: at most one `SELECT 1` and one Redis round trip a second, whatever the load.
Nothing older than that is ever served.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection

_cache: tuple[float, dict] | None = None
_lock = threading.Lock()


def _timed(fn: Callable[[], dict | None]) -> dict:
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


# core knows no app: an app adds what readiness also needs (the API: a live worker per model) in its
# AppConfig.ready(). These run only when the database and Redis answer.
_checks: dict[str, Callable[[], dict]] = {}


def register_check(name: str, check: Callable[[], dict]) -> None:
    """`check` returns details, with "ok": False when not ready, or raises."""
    _checks[name] = check


def check() -> dict:
    checks = {"database": _timed(_database), "redis": _timed(_redis)}
    for name, extra in list(_checks.items()):
        if checks["database"]["ok"] and checks["redis"]["ok"]:
            checks[name] = _timed(extra)
        else:
            checks[name] = {"ok": False, "error": "needs the database and Redis"}
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
