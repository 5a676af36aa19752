"""The API-key filter: a Redis set of the digests of every unrevoked key, so the admission layer can
refuse a key that does not exist without a database query.

Before that, a string whose tag (levee.keys.tags) does not verify is refused by the layer with one
HMAC, no round trip, while `refuses_untagged()` holds: every active key's tag fingerprint, kept in a
second set (TAGS_KEY, read with the shield's state every half second), is one this process can
verify (ADR 0015). Keys minted before tags existed, or under a rotated-away SECRET_KEY, put "-" or a
foreign fingerprint there and every key goes the set's way until they are gone.

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

from levee.keys.tags import own_fingerprints
from levee.shield import state, store

log = logging.getLogger(__name__)

SET_KEY = "levee:shield:{keys}:digests"
READY_KEY = "levee:shield:{keys}:ready"
# The tag fingerprints of active keys ("-": a key with none), and BUILT once a rebuild has filled it;
# in the shield state's hash tag: read in the same round trip as the mode (levee.shield.state).
TAGS_KEY = state.KEY_TAGS_KEY
BUILT, UNTAGGED = b"+built", b"-"
_last_rebuild = 0.0
_lock = threading.Lock()


def member(raw_key: bytes | str) -> bytes:
    """The filter's entry for a key: the first 128 bits of its SHA-256, hex (what ApiKey.digest starts with)."""
    if isinstance(raw_key, str):
        raw_key = raw_key.encode()
    return hashlib.sha256(raw_key).hexdigest()[:32].encode()


def _of_digest(digest: str) -> bytes:
    return digest[:32].encode()


def _tag_member(tag_fp: str) -> bytes:
    return tag_fp.encode() if tag_fp else UNTAGGED


def add(digest: str, tag_fp: str = "") -> None:
    try:
        pipe = store.client().pipeline(transaction=False)
        pipe.sadd(SET_KEY, _of_digest(digest))
        pipe.sadd(TAGS_KEY, _tag_member(tag_fp))
        pipe.execute()
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; a new API key reaches the key filter at its next rebuild")


def remove(digest: str) -> None:
    try:
        store.client().srem(SET_KEY, _of_digest(digest))
    except store.ShieldRedisDown:
        pass  # a stale entry only lets a revoked key reach Django, which refuses it


def rebuild() -> int:
    """Add every unrevoked key's digest, then mark the filter ready. Only adds: a key created while
    this runs adds itself, and a revoked one left in only reaches Django's lookup. The tag
    fingerprints are set to those of the unrevoked keys, plus any added while this ran (a
    fingerprint that was there before the query and has no key now is dropped). Returns the count."""
    from levee.keys.models import ApiKey

    client = store.client()
    before = {m for m in client.smembers(TAGS_KEY) if m != BUILT}  # type: ignore[union-attr]
    rows = list(ApiKey.objects.filter(revoked_at__isnull=True).values_list("digest", "tag_fp"))
    in_use = {_tag_member(fp) for _, fp in rows}
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(rows), 1000):
        pipe.sadd(SET_KEY, *[_of_digest(d) for d, _ in rows[start:start + 1000]])
    pipe.sadd(TAGS_KEY, BUILT, *in_use)
    if before - in_use:
        pipe.srem(TAGS_KEY, *(before - in_use))
    pipe.set(READY_KEY, len(rows), ex=settings.SHIELD_KEY_FILTER_TTL)
    pipe.execute()
    return len(rows)


_verdict: tuple[frozenset[bytes] | None, frozenset[str], bool] = (None, frozenset(), False)


def refuses_untagged() -> bool:
    """Whether a string without a tag this process verifies is certainly no active key: the tag set
    is built and holds only fingerprints of this process's secrets. No I/O (the set as the state
    last read it)."""
    global _verdict
    tags, own = state.key_tags(), own_fingerprints()
    if _verdict[0] is not tags or _verdict[1] is not own:
        ok = tags is not None and BUILT in tags and all(m == BUILT or m.decode() in own for m in tags)
        _verdict = (tags, own, ok)
    return _verdict[2]


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
