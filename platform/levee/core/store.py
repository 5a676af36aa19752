"""Levee's one Redis module: every connection a web or Celery process of the platform opens to Redis
is made here, so timeouts, pools, event loops and forks are handled once.

* `redis_client(url, ...)`: a synchronous client, one per URL and options per process (redis-py's
  pool is thread-safe; a dropped connection is re-made on the next call). The default timeouts are
  short: these calls sit on request paths and probes, and a Redis that does not answer in half a
  second is, for them, a Redis that is down. With `max_connections`, the pool blocks (up to 1 s)
  for a free connection instead of failing a burst.
* `aredis_client(url, ...)`: the same for the running event loop (redis.asyncio connections are
  bound to their loop): one per loop, URL and options.
* `lane(...)` / `alane(...)`: a `Lane` (or `AsyncLane`), the connections of a hot path that sends
  commands it has packed itself (the shield's limiter).

`RedisDown` is what "Redis is unreachable" looks like from redis-py. A forked child forgets its
parent's connections; `reset()` forgets them all (tests that point a setting elsewhere).
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

RedisDown = (redis.ConnectionError, redis.TimeoutError)
TIMEOUT_S = 0.5
_IDLE_PROBE_SECONDS = 1.0

_lock = threading.Lock()
_clients: dict[tuple, redis.Redis] = {}
_async_clients: dict[tuple, tuple[weakref.ref, aioredis.Redis]] = {}
_lanes: dict[tuple, Lane] = {}
_async_lanes: dict[tuple, tuple[weakref.ref, AsyncLane]] = {}


def _options(timeout: float | None, connect_timeout: float | None) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout if connect_timeout is not None
            else timeout, "health_check_interval": 30}


def redis_client(url: str | None = None, *, timeout: float | None = TIMEOUT_S, connect_timeout: float | None = None,
                 max_connections: int | None = None) -> redis.Redis:
    """A synchronous client for `url` (REDIS_URL by default), shared by the process."""
    key = (url or settings.REDIS_URL, timeout, connect_timeout, max_connections)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                options = _options(timeout, connect_timeout)
                if max_connections:
                    pool: redis.ConnectionPool = redis.BlockingConnectionPool.from_url(
                        key[0], max_connections=max_connections, timeout=1, **options)
                else:
                    pool = redis.ConnectionPool.from_url(key[0], **options)
                client = _clients[key] = redis.Redis(connection_pool=pool)
    return client


def aredis_client(url: str | None = None, *, timeout: float | None = None, connect_timeout: float | None = 2.0,
                  max_connections: int | None = None) -> aioredis.Redis:
    """A redis.asyncio client for `url` (REDIS_URL by default) on the running event loop. No read
    timeout by default: its users block on streams (XREAD) and time out themselves."""
    loop = asyncio.get_running_loop()
    key = (id(loop), url or settings.REDIS_URL, timeout, connect_timeout, max_connections)
    held = _async_clients.get(key)
    if held is None or held[0]() is not loop:  # none yet, or a dead loop's whose id was reused
        options = _options(timeout, connect_timeout)
        if max_connections:
            pool: aioredis.ConnectionPool = aioredis.BlockingConnectionPool.from_url(
                key[1], max_connections=max_connections, timeout=1, **options)
        else:
            pool = aioredis.ConnectionPool.from_url(key[1], **options)
        held = _async_clients[key] = (weakref.ref(loop), aioredis.Redis(connection_pool=pool))
    return held[1]


def lane(url: str, *, timeout: float, connect_timeout: float, max_connections: int) -> Lane:
    """The process's `Lane` to `url` with these options."""
    key = (url, timeout, connect_timeout, max_connections)
    held = _lanes.get(key)
    if held is None:
        with _lock:
            held = _lanes.get(key)
            if held is None:
                held = _lanes[key] = Lane(url, _options(timeout, connect_timeout), max_connections)
    return held


def alane(url: str, *, timeout: float, connect_timeout: float, max_connections: int) -> AsyncLane:
    """The running event loop's `AsyncLane` to `url` with these options."""
    loop = asyncio.get_running_loop()
    key = (id(loop), url, timeout, connect_timeout, max_connections)
    held = _async_lanes.get(key)
    if held is None or held[0]() is not loop:
        held = _async_lanes[key] = (weakref.ref(loop), AsyncLane(url, _options(timeout, connect_timeout),
                                                                  max_connections))
    return held[1]


def reset() -> None:
    """Forget every client and lane (closing the lanes' idle connections)."""
    with _lock:
        for held in _lanes.values():
            held.close()
        _clients.clear()
        _lanes.clear()
        _async_clients.clear()
        _async_lanes.clear()


def _after_fork() -> None:
    """A forked child must not share its parent's sockets: forget them without closing them (redis-py
    only shuts down a socket in the process that opened it)."""
    global _lock
    _lock = threading.Lock()
    _clients.clear()
    _lanes.clear()
    _async_clients.clear()
    _async_lanes.clear()


os.register_at_fork(after_in_child=_after_fork)


class _KernelTimeoutConnection(redis.Connection):
    """A TCP connection whose read and write timeouts the kernel enforces (SO_RCVTIMEO / SO_SNDTIMEO
    on a blocking socket). With a Python-level timeout (`settimeout`), CPython polls the socket
    before every send and every receive: two more system calls per round trip. A timeout then
    surfaces as `redis.ConnectionError` rather than `redis.TimeoutError`; both are RedisDown.
    Where the options cannot be set, the Python timeout stays."""

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        timeout = self.socket_timeout
        if timeout:
            whole = int(timeout)
            timeval = struct.pack("ll", whole, int(round((timeout - whole) * 1_000_000)))
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            except (OSError, struct.error):
                return sock
            sock.settimeout(None)
        return sock

    def stale(self) -> bool:
        """Without waiting: has the server closed this idle connection, or sent something unasked?"""
        sock = self._sock
        if sock is None:
            return False
        if sock.gettimeout() is not None:  # the kernel options could not be set: a peek would wait
            return self.can_read()
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False  # open, nothing waiting
        except OSError:
            return True
        return True  # b"": closed by the server; bytes: out of step


def _drop_if_stale(conn: redis.Connection) -> None:
    """What redis-py's pool does on every checkout (a non-blocking read: two `settimeout` calls and a
    `recv`), done only for a connection idle over a second: one the server closed while it sat in
    the list (a restart, Redis's idle `timeout`) is disconnected here, so the command reconnects
    instead of failing."""
    try:
        stale = conn.stale() if isinstance(conn, _KernelTimeoutConnection) else conn.can_read()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        stale = True
    if stale:
        conn.disconnect()


class Lane:
    """Sends one command the caller has already packed (RESP bytes) and reads its reply, on the
    shield's short-timeout connections: the limiter's hot path (one script per decision).

    Around each command redis-py's client also takes a connection from a queue guarded by a
    condition variable, probes it with a non-blocking read (two `settimeout` calls and a `recv`),
    packs the arguments and records observability counters; on a local Redis that costs about as
    much as the round trip. The lane instead keeps idle connections in a list (last in, first out;
    no lock unless it must make or wait for one), at most SHIELD_REDIS_MAX_CONNECTIONS, and a caller
    waits up to 1 s for one when all are busy (then `redis.ConnectionError`: Redis unreachable, as
    with the pool). The connections are redis-py's own, same URL, handshake and 30 s health check;
    on plain TCP the 0.25 s timeout is the kernel's (`_KernelTimeoutConnection`). A connection idle
    for over a second is checked before use (`_drop_if_stale`), so one the server closed reconnects
    instead of failing the command. One whose command failed mid-way is disconnected by redis-py and
    reconnects on its next use; an error reply (NOSCRIPT, a script error) leaves it in step. No
    retries, as with the client."""

    def __init__(self, url: str, options: dict, max_connections: int, wait: float = 1.0):
        self._pool = redis.ConnectionPool.from_url(url, **options)  # parses the URL; makes no connections
        if self._pool.connection_class is redis.Connection:  # plain TCP (not TLS, not a Unix socket)
            self._pool.connection_class = _KernelTimeoutConnection
        self._idle: list = []  # list.pop() and .append() are atomic: the common case takes no lock
        self._made = 0
        self._max = max_connections
        self._waiting = 0
        self._cond = threading.Condition(threading.Lock())
        self._wait = wait

    def call(self, packed: bytes) -> Any:
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._checkout()
        if time.monotonic() - getattr(conn, "lane_used", 0.0) > _IDLE_PROBE_SECONDS:
            _drop_if_stale(conn)
        try:
            conn.send_packed_command((packed,))
            return conn.read_response()
        finally:
            conn.lane_used = time.monotonic()
            self._idle.append(conn)  # after a failure redis-py has disconnected it; the next use reconnects
            if self._waiting:
                with self._cond:
                    self._cond.notify()

    def _checkout(self) -> redis.Connection:
        """No idle connection: make one while under the cap, else wait for one to come back."""
        with self._cond:
            if self._made < self._max:
                self._made += 1
                return self._pool.connection_class(**self._pool.connection_kwargs)
            # A returning caller appends before it reads `_waiting`, and we count ourselves before
            # looking: either we see its connection or it sees us and notifies.
            self._waiting += 1
            try:
                deadline = time.monotonic() + self._wait
                while True:
                    try:
                        return self._idle.pop()
                    except IndexError:
                        pass
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise redis.ConnectionError("No connection available.")
                    self._cond.wait(left)
            finally:
                self._waiting -= 1

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()


class AsyncLane:
    """`Lane` for one event loop (redis.asyncio connections are bound to their loop)."""

    def __init__(self, url: str, options: dict, max_connections: int, wait: float = 1.0):
        self._pool = aioredis.ConnectionPool.from_url(url, **options)
        self._idle: list = []
        self._slots = asyncio.Semaphore(max_connections)
        self._wait = wait

    async def call(self, packed: bytes) -> Any:
        slots = self._slots
        if slots.locked():
            try:
                await asyncio.wait_for(slots.acquire(), self._wait)
            except TimeoutError:
                raise redis.ConnectionError("No connection available.") from None
        else:
            await slots.acquire()
        try:
            try:
                conn = self._idle.pop()
            except IndexError:
                conn = self._pool.connection_class(**self._pool.connection_kwargs)
            if time.monotonic() - getattr(conn, "lane_used", 0.0) > _IDLE_PROBE_SECONDS and conn.is_connected:
                try:
                    stale = await conn.can_read_destructive()
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    stale = True
                if stale:
                    await conn.disconnect()
            try:
                await conn.send_packed_command(packed)
                return await conn.read_response()
            finally:
                conn.lane_used = time.monotonic()
                self._idle.append(conn)  # after a failure or a cancellation redis-py has disconnected it
        finally:
            slots.release()
