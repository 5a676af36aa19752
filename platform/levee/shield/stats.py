"""Per-minute counters of what automatic mitigation watches (sign-up attempts, failed logins)."""
from __future__ import annotations

from levee.shield import store
from levee.shield.limiter import LuaScript

# Minutes by Redis's clock, not the process's, so every web process files its count under the same one.
_COUNT = """
local t = redis.call('TIME')
local key = KEYS[1] .. ':' .. math.floor(tonumber(t[1]) / 60)
redis.call('INCR', key)
redis.call('EXPIRE', key, 180)
return 1
"""
_COUNT_SCRIPT = LuaScript(_COUNT)


def _prefix(event: str) -> str:
    return f"levee:shield:stat:{{{event}}}"


def count(event: str) -> None:
    """Add one to this minute's count. Raises ShieldRedisDown."""
    _COUNT_SCRIPT.run([_prefix(event)])


def per_minute(event: str) -> int:
    """The busier of the last complete minute and the current one."""
    client = store.client()
    now_minute = int(client.time()[0]) // 60
    values = client.mget([f"{_prefix(event)}:{now_minute - 1}", f"{_prefix(event)}:{now_minute}"])
    return max(int(v or 0) for v in values)
