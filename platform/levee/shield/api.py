"""What the rest of Levee calls. Sync functions (wrap them with `sync_to_async` from async views)
plus async twins prefixed `a`.

    decision = admit_api_request(request, api_key, model="deepseek-chat", estimated_tokens=1200)
    if not decision.allowed:
        return decision.response()          # 429 (or 503) in the API's error format, with headers
    ...enqueue...; on the end of the job:
    settle_tokens(api_key.id, api_key.user_id, model=..., estimated=1200, actual=usage.total_tokens)
    release_lease(decision.lease)
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from rest_framework.request import Request

from levee.billing.tiers import api_tier
from levee.core.errors import error_response
from levee.core.memo import Memo
from levee.shield import limiter, state, store
from levee.shield.limiter import Decision
from levee.shield.shedding import shed
from levee.shield.subjects import Account, Key, api_subjects, ip_of

if TYPE_CHECKING:
    from levee.keys.models import ApiKey
    from levee.shield.models import LimitOverride

log = logging.getLogger(__name__)

__all__ = ["ApiAdmission", "Decision", "admit", "admit_api_request", "settle_tokens", "release_lease", "shed", "current_mode",
           "aadmit_api_request", "acorrect_tokens", "asettle_tokens", "arelease_lease", "ashed", "acurrent_mode", "refusal_response"]


def current_mode() -> str:
    """"normal", "elevated" or "under_attack", as of at most SHIELD_STATE_CACHE_SECONDS ago."""
    return state.current_mode()


def _http_request(request: HttpRequest | Request) -> HttpRequest:
    """The Django request under a DRF one: the shield's marks (its decision, the allowlisting) live there."""
    return request._request if isinstance(request, Request) else request


def admit_api_request(request: HttpRequest | Request, api_key: ApiKey, *, model: str, estimated_tokens: int) -> Decision:
    """Requests per minute, tokens per minute (reserving `estimated_tokens`) and one concurrency lease,
    for the key, its account, the client's address and subnet, all or nothing, in one round trip.
    The decision is also remembered on the request, so the shield's middleware puts its
    x-ratelimit-* headers on the response. If the DRF throttle already counted this request, only
    tokens and the lease are taken here."""
    http_request = _http_request(request)
    earlier = getattr(http_request, "shield_decision", None)
    costs = {"tokens": max(0, int(estimated_tokens))}
    if earlier is None or not earlier.allowed:
        costs["requests"] = 1
    decision = _decide(http_request, api_key, costs, lease=True)
    if earlier is not None and decision.allowed:
        decision.headers = {**earlier.headers, **decision.headers}
    http_request.shield_decision = decision  # type: ignore[attr-defined]  # read back by the shield's middleware
    return decision


def admit_plain_request(request: HttpRequest | Request, api_key: ApiKey) -> Decision:
    """Requests per minute only: every key-authenticated endpoint that is not a generation."""
    http_request = _http_request(request)
    decision = _decide(http_request, api_key, {"requests": 1}, lease=False)
    http_request.shield_decision = decision  # type: ignore[attr-defined]  # read back by the shield's middleware
    return decision


def _decide(http_request: HttpRequest, api_key: ApiKey, costs: dict[str, int], *, lease: bool) -> Decision:
    subjects = api_subjects(key_id=api_key.pk, user_id=api_key.user_id,
                            ip=ip_of(http_request),
                            allowlisted=getattr(http_request, "shield_allowlisted", False))
    try:
        decision = limiter.check(subjects, costs, lease_ttl=settings.SHIELD_LEASE_TTL if lease else None)
    except store.ShieldRedisDown:
        return _without_redis(api_key)
    if not decision.allowed:
        decision.status = 429
        decision.message = _refusal_message(decision)
    return decision


def _refusal_message(decision: Decision) -> str:
    worst = max((o for o in decision.outcomes if not o.allowed), key=lambda o: o.retry_after)
    what = {"requests": "requests per minute", "tokens": "tokens per minute",
            "jobs": "concurrent requests"}.get(worst.rule.name, worst.rule.name)
    whose = worst.subject.key().split(":", 1)[0].split(".", 1)[-1]
    return (f"Rate limit reached for {what} (limit {worst.rule.limit} per {whose}). "
            f"Please retry after {decision.retry_after}s.")


# --- Redis unreachable -------------------------------------------------------------------------
# Paid callers keep working under a per-process budget; free callers are refused (docs/adr/0005).

_fallback: dict[int, tuple[float, float]] = {}
_fallback_lock = threading.Lock()
_last_warning = 0.0


def _without_redis(api_key: ApiKey) -> Decision:
    global _last_warning
    tier = api_tier(api_key.user, api_key)
    now = time.monotonic()
    if now - _last_warning > 10:
        _last_warning = now
        log.warning("shield: Redis unreachable; %s API %s (per-process fallback limit %s/min per key)",
                    "paid" if tier == "paid_api" else "free",
                    "fails open" if tier == "paid_api" else "fails closed",
                    settings.SHIELD_FALLBACK_REQUESTS_PER_MINUTE)
    if tier != "paid_api":
        decision = Decision(allowed=False, retry_after=30, headers={"Retry-After": "30"},
                            reason="limiter unavailable", degraded=True)
        decision.status, decision.message = 503, "Server Overloaded: please retry after a brief wait."
        return decision
    rate = settings.SHIELD_FALLBACK_REQUESTS_PER_MINUTE / 60.0
    capacity = float(settings.SHIELD_FALLBACK_REQUESTS_PER_MINUTE)
    with _fallback_lock:
        tokens, last = _fallback.get(api_key.pk, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        _fallback[api_key.pk] = (tokens, now)
    retry = 0 if allowed else max(1, int((1 - tokens) / rate) + 1)
    decision = Decision(allowed=allowed, retry_after=retry, headers={"Retry-After": str(retry)} if retry else {},
                        reason=None if allowed else "fallback limit", degraded=True)
    decision.status = 429
    decision.message = f"Rate limit reached (limit {settings.SHIELD_FALLBACK_REQUESTS_PER_MINUTE} requests per minute)."
    return decision


def refusal_response(decision: Decision) -> JsonResponse:
    """The API's error response for a refused decision (429 rate limit or 503 overloaded)."""
    return decision.response()


def settle_tokens(api_key_id: int, user_id: int, *, model: str, estimated: int, actual: int) -> None:
    """Correct tokens per minute once the job's real usage is known (refunds an over-estimate,
    charges an under-estimate). Never raises for Redis trouble: settlement must not fail a job."""
    try:
        limiter.adjust([Key(api_key_id), Account(user_id)], "tokens", estimated=estimated, actual=actual)
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; tokens of key %s not settled (%s estimated, %s used)",
                    api_key_id, estimated, actual)


def release_lease(lease: str | None) -> None:
    """Give back the concurrency lease of `admit_api_request` when the job ends (any way it ends).
    A lease never released lapses after SHIELD_LEASE_TTL."""
    try:
        limiter.release(lease)
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; lease %s will lapse on its own", (lease or "").split("|")[0])


# --- async twins ------------------------------------------------------------------------------
# The admission of a streaming request runs on the event loop (redis.asyncio): no thread hop, and
# no queueing behind whatever the worker's sync-view thread is doing (password hashing, under a
# login flood). Only a limit override not yet cached is read from the database, in that thread.


def _overrides(key_id: int, user_id: int) -> tuple[LimitOverride | None, LimitOverride | None]:
    return state.override_for("api_key", key_id), state.override_for("user", user_id)


async def aadmit_api_request(request: HttpRequest | Request, api_key: ApiKey, *, model: str,
                             estimated_tokens: int) -> Decision:
    """`admit_api_request` for async views."""
    http_request = _http_request(request)
    key_override = state.cached_override("api_key", api_key.pk)
    account_override = state.cached_override("user", api_key.user_id)
    if key_override is state.MISSING or account_override is state.MISSING:
        key_override, account_override = await sync_to_async(_overrides)(api_key.pk, api_key.user_id)
    earlier = getattr(http_request, "shield_decision", None)
    costs = {"tokens": max(0, int(estimated_tokens))}
    if earlier is None or not earlier.allowed:
        costs["requests"] = 1
    subjects = api_subjects(key_id=api_key.pk, user_id=api_key.user_id, ip=ip_of(http_request),
                            allowlisted=getattr(http_request, "shield_allowlisted", False),
                            key_override=key_override, account_override=account_override)
    try:
        decision = await limiter.acheck(subjects, costs, lease_ttl=settings.SHIELD_LEASE_TTL)
    except store.ShieldRedisDown:
        decision = await sync_to_async(_without_redis)(api_key)
    else:
        if not decision.allowed:
            decision.status, decision.message = 429, _refusal_message(decision)
    if earlier is not None and decision.allowed:
        decision.headers = {**earlier.headers, **decision.headers}
    http_request.shield_decision = decision  # type: ignore[attr-defined]  # read back by the shield's middleware
    return decision


async def acorrect_tokens(api_key: Any, *, estimated: int, actual: int) -> None:
    """Replace a reservation's estimate by a better one (a prompt's real token count, once it is
    tokenized), on the event loop when the limit overrides are cached. Never raises for Redis trouble."""
    key_override = state.cached_override("api_key", api_key.pk)
    account_override = state.cached_override("user", api_key.user_id)
    if key_override is state.MISSING or account_override is state.MISSING:
        from levee.core.asyncdb import db

        await db(settle_tokens)(api_key.pk, api_key.user_id, model="", estimated=estimated, actual=actual)
        return
    try:
        await limiter.aadjust([Key(api_key.pk, key_override), Account(api_key.user_id, account_override)], "tokens",
                              estimated=estimated, actual=actual)
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; tokens of key %s not corrected", api_key.pk)


async def arelease_lease(lease: str | None) -> None:
    """`release_lease` for async views."""
    try:
        await limiter.arelease(lease)
    except store.ShieldRedisDown:
        log.warning("shield: Redis unreachable; lease %s will lapse on its own", (lease or "").split("|")[0])


async def acurrent_mode() -> str:
    if not state.due():
        return state.current_mode()  # cached: no I/O
    return await sync_to_async(current_mode)()  # a refresh may read the database


# Settlement reads overrides and runs once per job: Django's sync thread is fine for it.
asettle_tokens = sync_to_async(settle_tokens)
_shed_in_thread = sync_to_async(shed, thread_sensitive=False)


async def ashed(model: str, priority: str) -> int | None:
    """shed() for async views: inline while the model's queue numbers are fresh (no I/O then), in a
    worker thread when they must be read from Redis (every 0.5 s per process)."""
    from levee.shield.shedding import metrics_fresh

    if metrics_fresh(model):
        return shed(model, priority)
    return await _shed_in_thread(model, priority)


# --- one generation request's admission ---------------------------------------------------------

# The caller's shedding priority (paid API is shed last; billing says who pays): memoized per
# account, so a top-up moves an account to the paid tier within TIER_MEMO_SECONDS.
TIER_MEMO_SECONDS = 10
_tiers = Memo("api-tiers", TIER_MEMO_SECONDS)


class ApiAdmission:
    """The shield's share of one generation request, from `admit`: its refusal (an error response)
    or its tokens-per-minute reservation and concurrency lease, corrected and given back exactly
    once however the request ends."""

    def __init__(self, key: Any, model: str, estimated: int, lease: Any, refusal: Any = None) -> None:
        self.key, self.model, self.estimated, self.lease, self.refusal = key, model, estimated, lease, refusal
        self._done = refusal is not None  # a refused request holds nothing

    async def correct(self, estimate: int) -> None:
        """Replace the reservation's estimate by a better one (the prompt's real token count)."""
        if estimate != self.estimated and not self._done:
            await acorrect_tokens(self.key, estimated=self.estimated, actual=estimate)
            self.estimated = estimate

    async def finish(self, actual_tokens: int) -> None:
        """The request is over: its tokens settled at `actual_tokens`, its lease returned. Idempotent."""
        if self._done:
            return
        self._done = True
        await asettle_tokens(self.key.pk, self.key.user_id, model=self.model, estimated=self.estimated,
                             actual=actual_tokens)
        await arelease_lease(self.lease)


async def admit(request: Any, api_key: Any, *, model: str, estimated_tokens: int) -> ApiAdmission:
    """Everything the shield decides for a generation request, in order: shedding by the caller's
    priority, then its limits (reserving `estimated_tokens` and a concurrency lease). A caller
    refused here has cost no tokenizer time. Marks the request's `shed` and `limits` phases."""
    priority = await _tiers.aget(api_key.user_id, lambda: api_tier(api_key.user, api_key))
    retry_after = await ashed(model, priority)
    if retry_after:
        return ApiAdmission(api_key, model, 0, None, refusal=error_response(
            503, f"{model} is shedding load; retry shortly.", headers={"Retry-After": str(retry_after)}))
    phases = getattr(request, "phases", None)
    if phases is not None:
        phases.mark("shed")
    decision = await aadmit_api_request(request, api_key, model=model, estimated_tokens=estimated_tokens)
    if not decision.allowed:
        return ApiAdmission(api_key, model, 0, None, refusal=decision.response())
    if phases is not None:
        phases.mark("limits")
    return ApiAdmission(api_key, model, estimated_tokens, decision.lease)
