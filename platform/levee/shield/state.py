"""What every process must agree on quickly: the mitigation mode, the address rules and the limit
overrides. The database is the truth; Redis carries a mirror of the mode and a version number that
moves whenever rules or overrides change; each process re-reads both at most every
SHIELD_STATE_CACHE_SECONDS (one MGET), so an operator's change takes effect everywhere within a second.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.utils import timezone

from levee.shield import store
from levee.shield.models import MODES, NORMAL

if TYPE_CHECKING:
    from levee.shield.models import LimitOverride

# An address rule as each process holds it: the network, and when the rule lapses (epoch seconds) or None.
_Rule = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, float | None]

log = logging.getLogger(__name__)

# One hash tag, so the single MGET of all three is Redis Cluster-safe.
MODE_KEY = "levee:{shield-state}:mode"
RULES_KEY = "levee:{shield-state}:address-rules"  # JSON mirror of the unexpired AddressRule rows
VERSION_KEY = "levee:{shield-state}:config-version"  # moves when limit overrides change
KEY_TAGS_KEY = "levee:{shield-state}:key-tags"  # levee.shield.keyfilter.TAGS_KEY, read here with the rest


@dataclass
class _Snapshot:
    fetched: float = -1e9
    mode: str = NORMAL
    version: bytes | None = None
    rules_raw: bytes | None = None
    redis_ok: bool = True
    rules_loaded: float = -1e9
    deny: list[_Rule] = field(default_factory=list)
    allow: list[_Rule] = field(default_factory=list)
    overrides: dict[tuple[str, int], LimitOverride | None] = field(default_factory=dict)
    key_tags: frozenset[bytes] | None = None  # levee.shield.keyfilter's TAGS_KEY, None when unread


_snap = _Snapshot()
_lock = threading.Lock()


def _mode_from_db() -> str:
    from levee.shield.models import MitigationState

    row = MitigationState.objects.filter(pk=1).only("mode").first()
    return row.mode if row else NORMAL


def _rules_from_db() -> bytes:
    from levee.shield.models import AddressRule

    moment = timezone.now()
    rows = [{"network": r.network, "action": r.action,
             "expires": r.expires_at.timestamp() if r.expires_at else None}
            for r in AddressRule.objects.all() if not (r.expires_at and r.expires_at <= moment)]
    return json.dumps(rows, sort_keys=True).encode()


def _refresh(now: float) -> None:
    """One round trip (an MGET and the key-tag set); the database only when Redis has lost its
    mirror (restart) or is unreachable."""
    mode: str | bytes | None
    rules_raw: bytes | None
    version: bytes | None
    try:
        pipe = store.client().pipeline(transaction=False)
        pipe.mget([MODE_KEY, RULES_KEY, VERSION_KEY])
        pipe.smembers(KEY_TAGS_KEY)
        (mode, rules_raw, version), tags = cast(tuple[list[bytes | None], set[bytes]], pipe.execute())
        redis_ok = True
    except store.ShieldRedisDown:
        mode = rules_raw = version = None
        tags = None
        redis_ok = False
    if tags != _snap.key_tags:
        _snap.key_tags = frozenset(tags) if tags is not None else None
    reused = not redis_ok and now - _snap.rules_loaded < 30
    if reused:
        mode, rules_raw = _snap.mode, _snap.rules_raw  # keep the last known state for a while
    if mode is None:
        mode = _mode_from_db().encode()
        if redis_ok:
            _set_quietly(MODE_KEY, mode, nx=True)
    if rules_raw is None:
        rules_raw = _rules_from_db()
        if redis_ok:
            _set_quietly(RULES_KEY, rules_raw, nx=True)
    mode = mode.decode() if isinstance(mode, bytes) else mode
    _snap.mode = mode if mode in MODES else NORMAL
    _snap.redis_ok, _snap.fetched = redis_ok, now
    if rules_raw != _snap.rules_raw:
        _parse_rules(rules_raw)
    if not reused:
        _snap.rules_loaded = now
    if version != _snap.version or not redis_ok:
        _snap.overrides = {}
        _snap.version = version


def _set_quietly(key: str, value: bytes, **kwargs: Any) -> None:
    try:
        store.client().set(key, value, **kwargs)
    except store.ShieldRedisDown:
        pass


def _parse_rules(raw: bytes) -> None:
    deny: list[_Rule] = []
    allow: list[_Rule] = []
    for row in json.loads(raw or b"[]"):
        entry = (ipaddress.ip_network(row["network"]), row["expires"])
        (deny if row["action"] == "deny" else allow).append(entry)
    _snap.deny, _snap.allow, _snap.rules_raw = deny, allow, raw


def _fresh() -> _Snapshot:
    now = time.monotonic()
    if now - _snap.fetched >= settings.SHIELD_STATE_CACHE_SECONDS:
        with _lock:
            if now - _snap.fetched >= settings.SHIELD_STATE_CACHE_SECONDS:
                _refresh(now)
    return _snap


def current_mode() -> str:
    return _fresh().mode


def cached_mode() -> str:
    """The mode as last read, without refreshing (no I/O: safe on the event loop)."""
    return _snap.mode


def key_tags() -> frozenset[bytes] | None:
    """The API keys' tag fingerprints as last read (levee.shield.keyfilter), no I/O; the same object
    until they change."""
    return _snap.key_tags


def redis_reachable() -> bool:
    """As of the last refresh (at most SHIELD_STATE_CACHE_SECONDS ago)."""
    return _fresh().redis_ok


def address_verdict(ip: str) -> str | None:
    """"deny", "allow" or None for an address, by the unexpired rules; deny wins."""
    snap = _fresh()
    if not snap.deny and not snap.allow:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    wall = time.time()
    for verdict, rules in (("deny", snap.deny), ("allow", snap.allow)):
        for net, expires in rules:
            if addr.version == net.version and addr in net and (expires is None or expires > wall):
                return verdict
    return None


def override_for(kind: str, pk: int) -> LimitOverride | None:
    """The LimitOverride of a user or key (or None), cached until the config version moves."""
    snap = _fresh()
    cache_key = (kind, pk)
    if cache_key in snap.overrides:
        return snap.overrides[cache_key]
    from levee.shield.models import LimitOverride

    row = LimitOverride.objects.filter(**{f"{kind}_id": pk}).first()
    if len(snap.overrides) > 50_000:
        snap.overrides.clear()
    snap.overrides[cache_key] = row
    return row


_MISSING = object()


def cached_override(kind: str, pk: int) -> object:
    """The cached override (or None), or `state.MISSING` when a database read is needed first.
    Never refreshes and never touches the database: safe on the event loop."""
    if due():
        return MISSING
    return _snap.overrides.get((kind, pk), MISSING)


MISSING = _MISSING


def publish_config() -> None:
    """Mirror the address rules to Redis and move the override version, so every process picks
    both up at its next refresh. If Redis is down, processes fall back to the database themselves."""
    try:
        pipe = store.client().pipeline(transaction=True)
        pipe.set(RULES_KEY, _rules_from_db())
        pipe.incr(VERSION_KEY)
        pipe.execute()
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; address rules and overrides reach other processes within 30 s")


def mirror_mode(mode: str) -> None:
    try:
        store.client().set(MODE_KEY, mode)
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; mode %s is in the database only", mode)


def forget() -> None:
    """Drop this process's cache (tests)."""
    global _snap
    with _lock:
        _snap = _Snapshot()


def due() -> bool:
    """Whether the next read will go to Redis (async callers hop to a thread first: it may read the DB)."""
    return time.monotonic() - _snap.fetched >= settings.SHIELD_STATE_CACHE_SECONDS


def refresh_if_due() -> None:
    _fresh()
