"""Counters of what automatic mitigation watches (sign-up attempts, failed logins, admission refusals).

Each event is counted three ways, by Redis's clock so every web process files it under the same
bucket: per minute (`per_minute`, dashboards), per second (the sliding ~10 s window escalation
reads) and per ten seconds (the recent baseline that window is compared with)."""
from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import cast

from redis.exceptions import RedisError

from levee.shield import store
from levee.shield.limiter import LuaScript, _bulk, _int

# KEYS: the event's prefix. ARGV: how many (default 1).
_COUNT = """
local t = tonumber(redis.call('TIME')[1])
local n = tonumber(ARGV[1] or 1)
local minute = KEYS[1] .. ':' .. math.floor(t / 60)
redis.call('INCRBY', minute, n)
redis.call('EXPIRE', minute, 180)
local second = KEYS[1] .. ':s:' .. t
redis.call('INCRBY', second, n)
redis.call('EXPIRE', second, 700)
local tens = KEYS[1] .. ':t:' .. math.floor(t / 10)
redis.call('INCRBY', tens, n)
redis.call('EXPIRE', tens, 700)
return 1
"""
_COUNT_SCRIPT = LuaScript(_COUNT)

# KEYS: one prefix per event. ARGV: window seconds, baseline seconds (ending where the window starts).
# Returns "<now> then per event: <count in the window> <baseline count per window>", the baseline as
# the mean over the complete ten-second buckets before the window, in thousandths.
_WINDOWS = """
local now = tonumber(redis.call('TIME')[1])
local window, span = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {now}
for i = 1, #KEYS do
  local n = 0
  for s = now - window + 1, now do n = n + tonumber(redis.call('GET', KEYS[i] .. ':s:' .. s) or 0) end
  local first, last = math.floor((now - window - span) / 10), math.floor((now - window) / 10) - 1
  local total, buckets = 0, 0
  for b = first, last do
    total = total + tonumber(redis.call('GET', KEYS[i] .. ':t:' .. b) or 0)
    buckets = buckets + 1
  end
  out[#out + 1] = n
  out[#out + 1] = buckets > 0 and math.floor(total * window * 1000 / (buckets * 10)) or 0
end
return table.concat(out, ' ')
"""
_WINDOWS_SCRIPT = LuaScript(_WINDOWS)


def prefix(event: str) -> str:
    return f"levee:shield:stat:{{{event}}}"


def count(event: str, n: int = 1) -> None:
    """Add `n` to this minute's, this second's and these ten seconds' counts. Raises ShieldRedisDown."""
    _COUNT_SCRIPT.run([prefix(event)], [n])


class Batched:
    """Events of one kind counted in this process and filed in Redis in batches: by the first count
    a second after the last filing (one round trip a second per process instead of one per event),
    or by `aflush()`. For events decided without Redis (the admission layer's answers to bare
    browsers under pressure), so counting them does not cost the round trip their answer saved.
    A batch lands in the second it is filed, at most a second late: the escalation windows are ten
    seconds long. The escalation beat files what is due too (`aflush_due`), so the last counts
    before a flood stops do not wait for the next event. One event loop per process counts and
    files (no lock)."""

    def __init__(self, event: str, every: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.event, self.every, self.clock = event, every, clock
        self.pending = 0
        self.filed_at = clock()
        _batches.add(self)

    async def add(self) -> None:
        self.pending += 1
        if self.clock() - self.filed_at >= self.every:
            await self.aflush()

    async def aflush(self) -> None:
        """File what is pending; Redis unreachable, it stays pending for the next try."""
        n, self.pending, self.filed_at = self.pending, 0, self.clock()
        if not n:
            return
        body = b"".join([_int(1), _bulk(prefix(self.event).encode()), _bulk(b"%d" % n)])
        try:
            await _COUNT_SCRIPT.acall(3, body)
        except RedisError:  # unreachable (or a script error): kept for the next try, never raised
            self.pending += n


_batches: weakref.WeakSet[Batched] = weakref.WeakSet()


async def aflush_due(*, all_pending: bool = False) -> None:
    """File every batch of this process that has waited its interval (the escalation beat's call),
    or, with `all_pending`, every batch with counts (the process is shutting down)."""
    for batch in list(_batches):
        if batch.pending and (all_pending or batch.clock() - batch.filed_at >= batch.every):
            await batch.aflush()


def per_minute(event: str) -> int:
    """The busier of the last complete minute and the current one."""
    client = store.client()
    now_minute = int(cast(tuple[int, int], client.time())[0]) // 60
    values = cast(list[bytes | None], client.mget([f"{prefix(event)}:{now_minute - 1}", f"{prefix(event)}:{now_minute}"]))
    return max(int(v or 0) for v in values)


def windows(events: list[str], *, window: int, baseline: int) -> dict[str, tuple[int, float]]:
    """Per event: (count in the last `window` seconds, the mean count per window over the
    `baseline` seconds before it). One round trip. Raises ShieldRedisDown."""
    raw = _WINDOWS_SCRIPT.run([prefix(e) for e in events], [window, baseline]).split()
    return {event: (int(raw[1 + 2 * i]), int(raw[2 + 2 * i]) / 1000) for i, event in enumerate(events)}
