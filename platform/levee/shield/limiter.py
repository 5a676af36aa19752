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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from redis import exceptions as redis_exceptions

from levee.shield import store, telemetry

if TYPE_CHECKING:
    from django.http import JsonResponse

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


class Outcome(NamedTuple):
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

    def response(self) -> JsonResponse:
        """The API's error response for a refused decision, with Retry-After and x-ratelimit-*."""
        from levee.core.errors import error_response

        return error_response(self.status, self.message,
                              code="rate_limit_exceeded" if self.status == 429 else "server_overloaded",
                              headers=self.headers)


# KEYS: one per rule. ARGV: peek, lease id, lease ttl ms, then per rule: kind, limit, period ms, cost.
# Returns "all allowed, then per rule: allowed remaining reset-ms retry-ms", integers joined by spaces
# (one string to parse instead of a nested reply of 1 + 4 per rule).
# `nrules` is #KEYS here; the admission layer's door script (_DOOR) puts three more keys after the rules'.
_CHECK_CORE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local peek = ARGV[1] == '1'
local lease, lease_ttl = ARGV[2], tonumber(ARGV[3])
local out, writes, all_ok = {}, {}, 1
for i = 1, nrules do
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
"""
_CHECK = "local nrules = #KEYS" + _CHECK_CORE + """
table.insert(out, 1, all_ok)
return table.concat(out, ' ')
"""

# The admission layer's decision at a door (levee.shield.admission): the check above over the rules'
# keys, then, in the same round trip, (a) whether `member` is in a set whose `ready` marker exists
# (the API-key filter: 1 known, 0 unknown, 3 filter not built, 2 not asked) and (b) a count in the
# per-second windows of escalation (levee.shield.stats): in `refused` when a rule before `soft_from`
# refused or the member is unknown (evidence of an attack), else in `challenged` when only rules from
# `soft_from` on refused (a site budget spent: pressure, not proof of an attack) or `force` is set
# (the caller answers with the interstitial anyway).
# KEYS: rules..., set, ready marker, refused prefix, challenged prefix.
# ARGV: as _CHECK, then member ('' = none), force, soft_from (1-based rule index).
_DOOR = "local nrules = #KEYS - 4" + _CHECK_CORE + """
local extra = 3 + nrules * 4
local member, force, soft_from = ARGV[extra + 1], ARGV[extra + 2] == '1', tonumber(ARGV[extra + 3])
local known = 2
if all_ok == 1 and member ~= '' then
  if redis.call('EXISTS', KEYS[nrules + 2]) == 0 then known = 3
  else known = redis.call('SISMEMBER', KEYS[nrules + 1], member) end
end
local hard, soft = known == 0, force
for i = 1, nrules do
  if out[(i - 1) * 4 + 1] == 0 then
    if i < soft_from then hard = true else soft = true end
  end
end
local window = nil
if hard then window = KEYS[nrules + 3] elseif soft then window = KEYS[nrules + 4] end
if window and not peek then
  local w = window .. ':s:' .. t[1]
  redis.call('INCR', w)
  redis.call('EXPIRE', w, 700)
  local w10 = window .. ':t:' .. math.floor(tonumber(t[1]) / 10)
  redis.call('INCR', w10)
  redis.call('EXPIRE', w10, 700)
end
table.insert(out, 1, known)
table.insert(out, 1, all_ok)
return table.concat(out, ' ')
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

def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


_SMALL = [_bulk(b"%d" % n) for n in range(256)]


def _int(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 256 else _bulk(b"%d" % n)


class LuaScript:
    """A Lua script sent as a hand-packed EVALSHA on the shield's lane (`store.Lane`); on NOSCRIPT (a
    restarted or flushed Redis) the same call goes as EVAL, which also loads the script."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._evalsha = b"$7\r\nEVALSHA\r\n" + _bulk(self.sha.encode())
        self._eval = b"$4\r\nEVAL\r\n" + _bulk(source.encode())

    def run(self, keys: list[str], args: Sequence[object] = ()) -> Any:
        """Call it with `keys` and `args` (str() of each)."""
        items = [_int(len(keys)), *(_bulk(k.encode()) for k in keys), *(_bulk(str(a).encode()) for a in args)]
        return self.call(len(items), b"".join(items))

    def call(self, count: int, body: bytes) -> Any:
        """`body`: the packed numkeys, keys and arguments, `count` elements."""
        head = b"*%d\r\n" % (count + 2)
        lane = store.lane()
        try:
            return lane.call(head + self._evalsha + body)
        except redis_exceptions.NoScriptError:
            return lane.call(head + self._eval + body)

    async def acall(self, count: int, body: bytes) -> Any:
        head = b"*%d\r\n" % (count + 2)
        lane = store.alane()
        try:
            return await lane.call(head + self._evalsha + body)
        except redis_exceptions.NoScriptError:
            return await lane.call(head + self._eval + body)


_CHECK_SCRIPT, _ADJUST_SCRIPT, _DOOR_SCRIPT = LuaScript(_CHECK), LuaScript(_ADJUST), LuaScript(_DOOR)


class _Part(NamedTuple):
    """What one rule of one subject contributes to a decision, packed once and reused: its Redis key
    and, for the check script, its kind, limit and period (the cost is added per call)."""

    redis_key: str
    key: bytes  # RESP bulk of the key
    args: bytes  # RESP bulks: kind, limit, period ms
    label: str  # the metrics label: "<subject kind>.<rule name>"
    header: str | None  # the x-ratelimit-* suffix ("requests", "tokens"), None if it has none


_parts: dict = {}
_PARTS_MAX = 100_000


def _part(subject: Subject, rule: Rule) -> _Part:
    ident = subject.key()
    cache_key = (ident, rule.name, rule.kind, rule.limit, rule.period)
    part = _parts.get(cache_key)
    if part is None:
        if len(_parts) >= _PARTS_MAX:
            _parts.clear()
        redis_key = subject.redis_key(rule)
        args = _bulk(rule.kind.encode()) + _int(max(1, rule.limit)) + _int(int(rule.period * 1000))
        part = _Part(redis_key, _bulk(redis_key.encode()), args, f"{ident.split(':', 1)[0]}.{rule.name}",
                     _HEADER_NAMES.get(rule.name))
        _parts[cache_key] = part
    return part


# (subject, rule, cost, part) per rule decided
_Picked = list[tuple[Subject, Rule, int, _Part]]


def _plan(subjects: list[Subject], costs: dict[str, int], lease_ttl: float | None) -> _Picked:
    picked: _Picked = []
    for subject in subjects:
        for rule in subject.rules():
            if rule.kind == CONCURRENT:
                if lease_ttl is None:
                    continue
                cost = 1
            else:
                given = costs.get(rule.name)
                if given is None:
                    continue
                cost = max(0, int(given))
            picked.append((subject, rule, cost, _part(subject, rule)))
    return picked


_PLAIN_HEAD = _int(0) + _bulk(b"") + _int(0)  # no peek, no lease


def _head(peek: bool, lease_id: str, lease_ttl: float | None) -> bytes:
    if not peek and not lease_id:
        return _PLAIN_HEAD
    return _int(1 if peek else 0) + _bulk(lease_id.encode()) + _int(int((lease_ttl or 0) * 1000))


def _check_body(picked: _Picked, head: bytes) -> tuple[int, bytes]:
    """The check script's numkeys, keys and arguments, packed: (element count, bytes)."""
    n = len(picked)
    chunks = [_int(n)]
    chunks += [part.key for _, _, _, part in picked]
    chunks.append(head)
    for _, _, cost, part in picked:
        chunks.append(part.args)
        chunks.append(_int(cost))
    return 4 + 5 * n, b"".join(chunks)


def _outcomes(picked: _Picked, reply: bytes, first: int = 1) -> tuple[bool, list[Outcome]]:
    raw = reply.split()
    outcomes = []
    i = first
    for subject, rule, _cost, _part in picked:
        remaining = int(raw[i + 1])
        outcomes.append(Outcome(subject, rule, raw[i] == b"1", remaining if remaining > 0 else 0,
                                int(raw[i + 2]) / 1000, int(raw[i + 3]) / 1000))
        i += 4
    return raw[0] == b"1", outcomes


def _decision(picked: _Picked, lease_id: str, allowed: bool, outcomes: list[Outcome], peek: bool) -> Decision:
    lease = None
    if allowed and lease_id and not peek:
        lease_keys = [part.redis_key for _, rule, _, part in picked if rule.kind == CONCURRENT]
        if lease_keys:
            lease = "|".join([lease_id, *lease_keys])
    if not peek and telemetry.counting:
        # outcomes follow `picked` (in cluster mode they may stop early: a refusing subject ends it)
        for (_, _, _, part), outcome in zip(picked, outcomes, strict=False):
            telemetry.rule_decided(part.label, outcome.allowed)
    if allowed:
        return Decision(allowed=True, headers=_headers(picked, outcomes, 0), lease=lease, outcomes=outcomes)
    worst = max((o for o in outcomes if not o.allowed), key=lambda o: o.retry_after)
    retry_after = max(1, math.ceil(worst.retry_after))
    reason = f"{worst.rule.name} limit of {worst.subject.key().split(':', 1)[0]}"
    return Decision(allowed=False, retry_after=retry_after, headers=_headers(picked, outcomes, retry_after),
                    reason=reason, outcomes=outcomes)


def check(subjects: list[Subject], costs: dict[str, int], *, lease_ttl: float | None = None,
          peek: bool = False) -> Decision:
    """Decide every rule of every subject whose name is in `costs` (and, when `lease_ttl` is given,
    every concurrency rule, taking a lease). Charges nothing unless everything passes.

    Raises one of `store.ShieldRedisDown` when Redis cannot be reached; callers choose the policy."""
    picked = _plan(subjects, costs, lease_ttl)
    if not picked:
        return Decision(allowed=True)
    lease_id = secrets.token_hex(8) if lease_ttl is not None else ""
    head = _head(peek, lease_id, lease_ttl)
    if settings.SHIELD_REDIS_CLUSTER and len({subject.key() for subject, _, _, _ in picked}) > 1:
        groups: dict[str, _Picked] = {}
        for item in picked:
            groups.setdefault(item[0].key(), []).append(item)
        picked = [item for group in groups.values() for item in group]  # outcomes come in this order
        allowed, outcomes = _check_per_slot(list(groups.values()), head, lease_id, peek=peek)
    else:
        allowed, outcomes = _run_check(picked, head)
    return _decision(picked, lease_id, allowed, outcomes, peek)


async def acheck(subjects: list[Subject], costs: dict[str, int], *, lease_ttl: float | None = None,
                 peek: bool = False) -> Decision:
    """`check` on the event loop (redis.asyncio): for async views, no thread hop. The subjects'
    rules() must not need the database (pass pre-resolved overrides). Cluster mode falls back to
    the sync path in a worker thread."""
    if settings.SHIELD_REDIS_CLUSTER:
        from asgiref.sync import sync_to_async

        return await sync_to_async(check, thread_sensitive=False)(subjects, costs, lease_ttl=lease_ttl, peek=peek)
    picked = _plan(subjects, costs, lease_ttl)
    if not picked:
        return Decision(allowed=True)
    lease_id = secrets.token_hex(8) if lease_ttl is not None else ""
    count, body = _check_body(picked, _head(peek, lease_id, lease_ttl))
    allowed, outcomes = _outcomes(picked, await _CHECK_SCRIPT.acall(count, body))
    return _decision(picked, lease_id, allowed, outcomes, peek)


async def acheck_door(subjects: list[Subject], costs: dict[str, int], *, member: bytes = b"",
                     member_set: str = "", ready_key: str = "", refused: str, challenged: str,
                     soft_from: int | None = None, peek: bool = False,
                     force_count: bool = False) -> tuple[Decision, int]:
    """`acheck` for the admission layer's doors, on a single Redis: one script that decides the rate
    rules of `subjects` (no leases), asks whether `member` is in `member_set` (when given and the
    rules passed) and counts the outcome in the escalation windows `refused` or `challenged`: a
    refusal by a rule of the subjects before index `soft_from` (default: all) or an unknown member
    is a refusal; one only by later subjects' rules, or `force_count`, a challenge (see _DOOR).
    Returns the decision and the membership answer: 1 known, 0 unknown, 3 the set is not built,
    2 not asked."""
    picked = _plan(subjects, costs, None)
    soft_subjects = set(map(id, subjects[soft_from:])) if soft_from is not None else set()
    first_soft = next((i + 1 for i, item in enumerate(picked) if id(item[0]) in soft_subjects), len(picked) + 1)
    count, body = _check_body(picked, _int(1) + _bulk(b"") + _int(0) if peek else _PLAIN_HEAD)
    tail = [_bulk(member_set.encode() or b"-"), _bulk(ready_key.encode() or b"-"), _bulk(refused.encode()),
            _bulk(challenged.encode())]
    # the extra keys go after the rules' keys, the extra arguments after the rules' arguments
    n = len(picked)
    keys_end = len(_int(n)) + sum(len(part.key) for _, _, _, part in picked)
    body = (_int(n + 4) + body[len(_int(n)):keys_end] + b"".join(tail) + body[keys_end:]
            + _bulk(member) + _int(1 if force_count else 0) + _int(first_soft))
    reply = await _DOOR_SCRIPT.acall(count + 7, body)
    allowed, outcomes = _outcomes(picked, reply, first=2)
    known = int(reply.split(b" ", 2)[1])
    return _decision(picked, "", allowed, outcomes, peek), known


def _run_check(picked: _Picked, head: bytes) -> tuple[bool, list[Outcome]]:
    count, body = _check_body(picked, head)
    return _outcomes(picked, _CHECK_SCRIPT.call(count, body))


def _check_per_slot(groups: list[_Picked], head: bytes, lease_id: str, *,
                    peek: bool) -> tuple[bool, list[Outcome]]:
    """Redis Cluster: one script per subject (its keys share a hash tag, so one slot), in order; if a
    later subject refuses, what the earlier ones charged is given back. Each subject never admits
    past its limit; a request refused this way may briefly hold an earlier subject's allowance,
    which can only refuse a concurrent request too early, never admit one too many."""
    outcomes: list[Outcome] = []
    charged: list[_Picked] = []
    for group in groups:
        ok, group_outcomes = _run_check(group, head)
        outcomes += group_outcomes
        if not ok:
            if not peek:
                _give_back(charged, lease_id=lease_id)
            return False, outcomes
        charged.append(group)
    return True, outcomes


def _adjust_args(rule: Rule, delta: int) -> bytes:
    return _int(max(1, rule.limit)) + _int(int(rule.period * 1000)) + _bulk(b"%d" % delta)


def _run_adjust(keys: list[bytes], args: list[bytes]) -> None:
    _ADJUST_SCRIPT.call(1 + 4 * len(keys), b"".join([_int(len(keys)), *keys, *args]))


def _give_back(groups: list[_Picked], *, lease_id: str) -> None:
    client = store.client()
    for group in groups:
        keys, args = [], []
        for _subject, rule, cost, part in group:
            if rule.kind == RATE and cost:
                keys.append(part.key)
                args.append(_adjust_args(rule, -min(cost, rule.limit)))
            elif rule.kind == CONCURRENT and lease_id:
                client.zrem(part.redis_key, lease_id)
        if keys:
            _run_adjust(keys, args)


def _adjust_plan(subjects: list[Subject], name: str, estimated: int, actual: int) -> tuple[list, list]:
    keys, args = [], []
    for subject in subjects:
        for rule in subject.rules():
            if rule.name == name and rule.kind == RATE:
                delta = int(actual) - min(max(0, int(estimated)), rule.limit)
                if delta:
                    keys.append(_part(subject, rule).key)
                    args.append(_adjust_args(rule, delta))
    return keys, args


def adjust(subjects: list[Subject], name: str, *, estimated: int, actual: int) -> None:
    """Settle rule `name` on each subject once the real count is known: charge the difference between
    `actual` and what `check` reserved (the estimate, capped at the rule's limit), or refund it."""
    keys, args = _adjust_plan(subjects, name, estimated, actual)
    if keys:
        _run_adjust(keys, args)


async def aadjust(subjects: list[Subject], name: str, *, estimated: int, actual: int) -> None:
    """`adjust` on the event loop; the subjects' rules() must not need the database."""
    keys, args = _adjust_plan(subjects, name, estimated, actual)
    if keys:
        await _ADJUST_SCRIPT.acall(1 + 4 * len(keys), b"".join([_int(len(keys)), *keys, *args]))


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
_HEADER_KEYS = {label: (f"x-ratelimit-limit-{label}", f"x-ratelimit-remaining-{label}", f"x-ratelimit-reset-{label}")
                for label in _HEADER_NAMES.values()}


def _headers(picked: _Picked, outcomes: list[Outcome], refused_retry: int) -> dict:
    """`rate_headers`, with the header names the plan already looked up."""
    tightest: dict[str, Outcome] = {}
    for (_, _, _, part), o in zip(picked, outcomes, strict=False):
        label = part.header
        if label is not None:
            seen = tightest.get(label)
            if seen is None or o.remaining < seen.remaining or (o.remaining == seen.remaining and o.reset > seen.reset):
                tightest[label] = o
    headers: dict[str, str] = {}
    for label, o in tightest.items():
        limit_key, remaining_key, reset_key = _HEADER_KEYS[label]
        headers[limit_key] = str(o.rule.limit)
        headers[remaining_key] = str(o.remaining)
        headers[reset_key] = duration(o.reset)
    if refused_retry:
        headers["Retry-After"] = str(refused_retry)
    return headers


def rate_headers(outcomes: list[Outcome], *, refused_retry: int = 0) -> dict:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` from the tightest subject per rule."""
    tightest: dict[str, Outcome] = {}
    for o in outcomes:
        name = o.rule.name
        if name in _HEADER_NAMES:
            seen = tightest.get(name)
            if seen is None or o.remaining < seen.remaining or (o.remaining == seen.remaining and o.reset > seen.reset):
                tightest[name] = o
    headers: dict[str, str] = {}
    for name, label in _HEADER_NAMES.items():
        tight = tightest.get(name)
        if tight is not None:
            headers[f"x-ratelimit-limit-{label}"] = str(tight.rule.limit)
            headers[f"x-ratelimit-remaining-{label}"] = str(tight.remaining)
            headers[f"x-ratelimit-reset-{label}"] = duration(tight.reset)
    if refused_retry:
        headers["Retry-After"] = str(refused_retry)
    return headers
