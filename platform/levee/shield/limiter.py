"""One rate-limit abstraction, one atomic backend.

A limited thing is a `Subject`: it names itself (`key()`) and says what it may do (`rules()`), the
way Zulip's `RateLimitedObject` does. `check()` decides every rule of every subject given to it in
one Redis round trip, inside one Lua script, so there is no read-modify-write from Python:

* rate rules are GCRA (a leaky bucket kept as one "theoretical arrival time" per key), weighted by
  cost, so "requests per minute" (cost 1) and "tokens per minute" (cost = estimated tokens) are the
  same code;
* concurrency rules are a sorted set of leases scored by their expiry, so the leases of a process
  that died without releasing them lapse by themselves;
* all-or-nothing: if any rule refuses, the script writes nothing, so a refused request is charged
  to no subject;
* time is Redis's `TIME`, so web processes with skewed clocks agree.

Every key of one subject carries the subject's key as its `{hash tag}`, so a subject's keys live in
one Redis Cluster slot. A decision spanning several subjects spans slots: on a single Redis it is
one script; with SHIELD_REDIS_CLUSTER it is one script per subject, with the earlier subjects'
charges given back when a later one refuses (see `_check_per_slot`).
"""
from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass, field
from functools import lru_cache

from django.conf import settings
from redis import exceptions as redis_exceptions

from levee.shield import store, telemetry

RATE, CONCURRENT = "rate", "concurrent"


@dataclass(frozen=True)
class Rule:
    """`limit` units of `name` per `period` seconds (a rate), or `limit` at once (concurrent)."""

    name: str
    limit: int
    period: float = 60.0
    kind: str = RATE


class Subject:
    """Something limited: an address, a subnet, an account, an API key, the whole site."""

    def key(self) -> str:
        raise NotImplementedError

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def redis_key(self, rule: Rule) -> str:
        return f"levee:rl:{{{self.key()}}}:{rule.name}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key()}>"


@dataclass
class FixedSubject(Subject):
    """A subject whose key and rules are given outright (tests, benchmarks, one-off limits)."""

    ident: str
    fixed_rules: list[Rule] = field(default_factory=list)

    def key(self) -> str:
        return self.ident

    def rules(self) -> list[Rule]:
        return list(self.fixed_rules)


@dataclass(frozen=True)
class Outcome:
    subject: Subject
    rule: Rule
    allowed: bool
    remaining: int
    reset: float  # seconds until this key is back to full
    retry_after: float  # seconds until a refused request of the same cost would pass


@dataclass
class Decision:
    allowed: bool
    retry_after: int = 0
    headers: dict = field(default_factory=dict)
    lease: str | None = None
    reason: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    degraded: bool = False  # decided without Redis (fallback limiter)
    status: int = 429  # when refused: 429 rate limited, 503 overloaded / limiter unavailable
    message: str | None = None

    def response(self):
        """The API's error response for a refused decision, with Retry-After and x-ratelimit-*."""
        from levee.core.errors import error_response

        return error_response(self.status, self.message,
                              code="rate_limit_exceeded" if self.status == 429 else "server_overloaded",
                              headers=self.headers)


# KEYS: one per rule. ARGV: peek, lease id, lease ttl ms, then per rule: kind, limit, period ms, cost.
# Returns {all allowed, then per rule: allowed, remaining, reset ms, retry ms}.
_CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local peek = ARGV[1] == '1'
local lease, lease_ttl = ARGV[2], tonumber(ARGV[3])
local out, writes, all_ok = {}, {}, 1
for i = 1, #KEYS do
  local base = 3 + (i - 1) * 4
  local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
  local period, cost = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local ok, remaining, reset, retry = 1, 0, 0, 0
  if kind == 'rate' then
    if cost > limit then cost = limit end
    local step = period / limit
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    local new_tat = tat + cost * step
    local allow_at = new_tat - period
    if allow_at - now > 0.001 then
      ok, retry = 0, math.ceil(allow_at - now)
      remaining = math.floor((period - (tat - now)) / step + 1e-9)
      reset = math.ceil(tat - now)
    else
      remaining = math.floor((period - (new_tat - now)) / step + 1e-9)
      reset = math.ceil(new_tat - now)
      writes[#writes + 1] = {'rate', KEYS[i], new_tat, reset}
    end
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local held = redis.call('ZCARD', KEYS[i])
    if held + 1 > limit then
      ok, retry, remaining = 0, 1000, 0
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      if first[2] then reset = math.ceil(tonumber(first[2]) - now) end
    else
      remaining = limit - held - 1
      writes[#writes + 1] = {'lease', KEYS[i]}
    end
  end
  if ok == 0 then all_ok = 0 end
  out[#out + 1] = ok
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if all_ok == 1 and not peek then
  for _, w in ipairs(writes) do
    if w[1] == 'rate' then
      redis.call('SET', w[2], string.format('%.3f', w[3]), 'PX', w[4] + 1000)
    else
      redis.call('ZADD', w[2], now + lease_ttl, lease)
      redis.call('PEXPIRE', w[2], lease_ttl + 1000)
    end
  end
end
table.insert(out, 1, all_ok)
return out
"""

# KEYS: token keys. ARGV per key: limit, period ms, delta (may be negative: a refund).
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local limit, period, delta = tonumber(ARGV[i*3-2]), tonumber(ARGV[i*3-1]), tonumber(ARGV[i*3])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + delta * period / limit
  if new_tat <= now then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  end
end
return #KEYS
"""

_scripts: dict = {}


@lru_cache(maxsize=8)
def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def _script(name: str, source: str):
    client = store.client()
    cached = _scripts.get(name)
    if cached is None or cached[0] is not client:
        cached = (client, client.register_script(source))
        _scripts[name] = cached
    return cached[1]


def _plan(subjects: list[Subject], costs: dict[str, int], lease_ttl: float | None, peek: bool):
    picked: list[tuple[Subject, Rule, int]] = []
    for subject in subjects:
        for rule in subject.rules():
            if rule.kind == CONCURRENT:
                if lease_ttl is not None:
                    picked.append((subject, rule, 1))
            elif rule.name in costs:
                picked.append((subject, rule, max(0, int(costs[rule.name]))))
    lease_id = secrets.token_hex(8) if lease_ttl is not None else ""
    head = ["1" if peek else "0", lease_id, str(int((lease_ttl or 0) * 1000))]
    return picked, head


def _script_call(picked: list[tuple[Subject, Rule, int]], head: list[str]) -> tuple[list[str], list[str]]:
    keys, args = [], list(head)
    for subject, rule, cost in picked:
        keys.append(subject.redis_key(rule))
        args += [rule.kind, str(max(1, rule.limit)), str(int(rule.period * 1000)), str(cost)]
    return keys, args


def _outcomes(picked: list[tuple[Subject, Rule, int]], raw: list) -> tuple[bool, list[Outcome]]:
    outcomes = []
    for i, (subject, rule, _cost) in enumerate(picked):
        ok, remaining, reset_ms, retry_ms = raw[1 + 4 * i: 5 + 4 * i]
        outcomes.append(Outcome(subject, rule, bool(ok), max(0, int(remaining)), reset_ms / 1000, retry_ms / 1000))
    return bool(raw[0]), outcomes


def _decision(picked, head, allowed: bool, outcomes: list[Outcome], peek: bool) -> Decision:
    lease = None
    lease_keys = [subject.redis_key(rule) for subject, rule, _ in picked if rule.kind == CONCURRENT]
    if allowed and lease_keys and not peek:
        lease = "|".join([head[1], *lease_keys])
    if not peek:
        telemetry.limiter_outcomes(outcomes)
    refused = [o for o in outcomes if not o.allowed]
    reason = None
    retry_after = 0
    if refused:
        worst = max(refused, key=lambda o: o.retry_after)
        retry_after = max(1, math.ceil(worst.retry_after))
        reason = f"{worst.rule.name} limit of {worst.subject.key().split(':', 1)[0]}"
    return Decision(allowed=allowed, retry_after=retry_after, headers=rate_headers(outcomes, refused_retry=retry_after),
                    lease=lease, reason=reason, outcomes=outcomes)


def check(subjects: list[Subject], costs: dict[str, int], *, lease_ttl: float | None = None,
          peek: bool = False) -> Decision:
    """Decide every rule of every subject whose name is in `costs` (and, when `lease_ttl` is given,
    every concurrency rule, taking a lease). Charges nothing unless everything passes.

    Raises one of `store.ShieldRedisDown` when Redis cannot be reached; callers choose the policy."""
    picked, head = _plan(subjects, costs, lease_ttl, peek)
    if not picked:
        return Decision(allowed=True)
    if settings.SHIELD_REDIS_CLUSTER and len({subject.key() for subject, _, _ in picked}) > 1:
        allowed, outcomes = _check_per_slot(picked, head, peek=peek)
    else:
        allowed, outcomes = _run_check(picked, head)
    return _decision(picked, head, allowed, outcomes, peek)


async def acheck(subjects: list[Subject], costs: dict[str, int], *, lease_ttl: float | None = None,
                 peek: bool = False) -> Decision:
    """`check` on the event loop (redis.asyncio): for async views, no thread hop. The subjects'
    rules() must not need the database (pass pre-resolved overrides). Cluster mode falls back to
    the sync path in a worker thread."""
    if settings.SHIELD_REDIS_CLUSTER:
        from asgiref.sync import sync_to_async

        return await sync_to_async(check, thread_sensitive=False)(subjects, costs, lease_ttl=lease_ttl, peek=peek)
    picked, head = _plan(subjects, costs, lease_ttl, peek)
    if not picked:
        return Decision(allowed=True)
    keys, args = _script_call(picked, head)
    client = store.aclient()
    try:
        raw = await client.evalsha(_sha(_CHECK), len(keys), *keys, *args)
    except redis_exceptions.NoScriptError:
        raw = await client.eval(_CHECK, len(keys), *keys, *args)
    allowed, outcomes = _outcomes(picked, raw)
    return _decision(picked, head, allowed, outcomes, peek)


def _run_check(picked: list[tuple[Subject, Rule, int]], head: list[str]) -> tuple[bool, list[Outcome]]:
    keys, args = _script_call(picked, head)
    return _outcomes(picked, _script("check", _CHECK)(keys=keys, args=args))


def _check_per_slot(picked: list[tuple[Subject, Rule, int]], head: list[str], *,
                    peek: bool) -> tuple[bool, list[Outcome]]:
    """Redis Cluster: one script per subject (its keys share a hash tag, so one slot), in order; if a
    later subject refuses, what the earlier ones charged is given back. Each subject never admits
    past its limit; a request refused this way may briefly hold an earlier subject's allowance,
    which can only refuse a concurrent request too early, never admit one too many."""
    groups: dict[str, list[tuple[Subject, Rule, int]]] = {}
    for item in picked:
        groups.setdefault(item[0].key(), []).append(item)
    outcomes: list[Outcome] = []
    charged: list[list[tuple[Subject, Rule, int]]] = []
    for group in groups.values():
        ok, group_outcomes = _run_check(group, head)
        outcomes += group_outcomes
        if not ok:
            if not peek:
                _give_back(charged, lease_id=head[1])
            return False, outcomes
        charged.append(group)
    return True, outcomes


def _give_back(groups: list[list[tuple[Subject, Rule, int]]], *, lease_id: str) -> None:
    client = store.client()
    for group in groups:
        keys, args = [], []
        for subject, rule, cost in group:
            if rule.kind == RATE and cost:
                keys.append(subject.redis_key(rule))
                args += [str(max(1, rule.limit)), str(int(rule.period * 1000)), str(-min(cost, rule.limit))]
            elif rule.kind == CONCURRENT and lease_id:
                client.zrem(subject.redis_key(rule), lease_id)
        if keys:
            _script("adjust", _ADJUST)(keys=keys, args=args)


def adjust(subjects: list[Subject], name: str, *, estimated: int, actual: int) -> None:
    """Settle rule `name` on each subject once the real count is known: charge the difference between
    `actual` and what `check` reserved (the estimate, capped at the rule's limit), or refund it."""
    keys, args = [], []
    for subject in subjects:
        for rule in subject.rules():
            if rule.name == name and rule.kind == RATE:
                delta = int(actual) - min(max(0, int(estimated)), rule.limit)
                if delta:
                    keys.append(subject.redis_key(rule))
                    args += [str(max(1, rule.limit)), str(int(rule.period * 1000)), str(delta)]
    if keys:
        _script("adjust", _ADJUST)(keys=keys, args=args)


async def arelease(lease: str | None) -> None:
    if not lease:
        return
    lease_id, *keys = lease.split("|")
    pipe = store.aclient().pipeline(transaction=False)
    for key in keys:
        pipe.zrem(key, lease_id)
    await pipe.execute()


def release(lease: str | None) -> None:
    """Give a concurrency lease back. Unknown or already-expired leases are fine."""
    if not lease:
        return
    lease_id, *keys = lease.split("|")
    pipe = store.client().pipeline(transaction=False)
    for key in keys:
        pipe.zrem(key, lease_id)
    pipe.execute()


def duration(seconds: float) -> str:
    """OpenAI's reset format: `120ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = int(math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# Only these rule names appear in x-ratelimit-* headers (OpenAI's vocabulary).
_HEADER_NAMES = {"requests": "requests", "tokens": "tokens"}


def rate_headers(outcomes: list[Outcome], *, refused_retry: int = 0) -> dict:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` from the tightest subject per rule."""
    headers: dict[str, str] = {}
    for name, label in _HEADER_NAMES.items():
        mine = [o for o in outcomes if o.rule.name == name]
        if not mine:
            continue
        tight = min(mine, key=lambda o: (o.remaining, -o.reset))
        headers[f"x-ratelimit-limit-{label}"] = str(tight.rule.limit)
        headers[f"x-ratelimit-remaining-{label}"] = str(tight.remaining)
        headers[f"x-ratelimit-reset-{label}"] = duration(tight.reset)
    if refused_retry:
        headers["Retry-After"] = str(refused_retry)
    return headers
