"""The API-key filter: a Redis set of the digests of every unrevoked key, so the admission layer can
refuse a key that does not exist without a database query.

Why a set and not a negative cache: a flood of random keys never repeats a key, so remembering the
unknown ones would save nothing — every new guess would still cost a query. The set of known keys
is small (at most LEVEE_MAX_ACTIVE_KEYS per account, 16 bytes each) and answers any guess in one
SISMEMBER, inside the same script as the per-address limits (one round trip).

It is kept by signals (a key created or un-revoked is added on commit, a revoked or deleted one
removed) and rebuilt from the database whenever its `ready` marker is missing (a Redis restart or
flush) and every SHIELD_KEY_FILTER_TTL seconds (so a key created while Redis was unreachable gets
in). While the marker is missing, keys pass through to Django's own lookup. The filter only ever
says "certainly unknown"; Django still authenticates every key it lets through.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

from django.conf import settings

from levee.shield import store

log = logging.getLogger(__name__)

SET_KEY = "levee:shield:{keys}:digests"
READY_KEY = "levee:shield:{keys}:ready"
_last_rebuild = 0.0
_lock = threading.Lock()


def member(raw_key: bytes | str) -> bytes:
    """The filter's entry for a key: the first 128 bits of its SHA-256, hex (what ApiKey.digest starts with)."""
    if isinstance(raw_key, str):
        raw_key = raw_key.encode()
    return hashlib.sha256(raw_key).hexdigest()[:32].encode()


def _of_digest(digest: str) -> bytes:
    return digest[:32].encode()


def add(digest: str) -> None:
    try:
        store.client().sadd(SET_KEY, _of_digest(digest))
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; a new API key reaches the key filter at its next rebuild")


def remove(digest: str) -> None:
    try:
        store.client().srem(SET_KEY, _of_digest(digest))
    except store.ShieldRedisDown:
        pass  # a stale entry only lets a revoked key reach Django, which refuses it


def rebuild() -> int:
    """Add every unrevoked key's digest, then mark the filter ready. Only adds: a key created while
    this runs adds itself, and a revoked one left in only reaches Django's lookup. Returns the count."""
    from levee.keys.models import ApiKey

    digests = list(ApiKey.objects.filter(revoked_at__isnull=True).values_list("digest", flat=True))
    client = store.client()
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(digests), 1000):
        pipe.sadd(SET_KEY, *[_of_digest(d) for d in digests[start:start + 1000]])
    pipe.set(READY_KEY, len(digests), ex=settings.SHIELD_KEY_FILTER_TTL)
    pipe.execute()
    return len(digests)


def rebuild_soon() -> None:
    """From the event loop: rebuild in a thread, at most once every 5 s per process."""
    global _last_rebuild
    now = time.monotonic()
    if now - _last_rebuild < 5:
        return
    with _lock:
        if now - _last_rebuild < 5:
            return
        _last_rebuild = now
    threading.Thread(target=_rebuild_quietly, name="levee-key-filter", daemon=True).start()


def _rebuild_quietly() -> None:
    from django.db import close_old_connections

    try:
        rebuild()
    except Exception:  # noqa: BLE001 - a thread of its own: log, never raise into nothing
        log.exception("shield: rebuilding the API-key filter failed")
    finally:
        close_old_connections()


def refresh_if_ageing() -> None:
    """Called by the escalation leader about once a minute: rebuild before the marker lapses."""
    try:
        ttl: Any = store.client().ttl(READY_KEY)
    except store.ShieldRedisDown:
        return
    if ttl is None or ttl < 120:
        rebuild()
