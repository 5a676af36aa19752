"""The shield's Redis client: one per process, short timeouts, so a dead Redis answers in milliseconds
instead of hanging a request. `ShieldRedisDown` is the one error the rest of the shield handles."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time

import redis
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

_lock = threading.Lock()
_client: redis.Redis | None = None
_lane: Lane | None = None

# What "Redis is unreachable" looks like from redis-py.
ShieldRedisDown = (redis.ConnectionError, redis.TimeoutError)


def client() -> redis.Redis:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                # Blocking pool: a burst beyond max_connections waits (up to 1 s) for a free
                # connection instead of failing, and only then counts as Redis being unreachable.
                pool = redis.BlockingConnectionPool.from_url(
                    settings.SHIELD_REDIS_URL, max_connections=settings.SHIELD_REDIS_MAX_CONNECTIONS, timeout=1,
                    **_connection_options())
                _client = redis.Redis(connection_pool=pool)
    return _client


def _connection_options() -> dict:
    return {"socket_timeout": settings.SHIELD_REDIS_TIMEOUT,
            "socket_connect_timeout": settings.SHIELD_REDIS_CONNECT_TIMEOUT, "health_check_interval": 30}


_IDLE_PROBE_SECONDS = 1.0


class _KernelTimeoutConnection(redis.Connection):
    """A TCP connection whose read and write timeouts the kernel enforces (SO_RCVTIMEO / SO_SNDTIMEO
    on a blocking socket). With a Python-level timeout (`settimeout`), CPython polls the socket
    before every send and every receive: two more system calls per round trip. A timeout then
    surfaces as `redis.ConnectionError` rather than `redis.TimeoutError`; both are ShieldRedisDown.
    Where the options cannot be set, the Python timeout stays."""

    def _connect(self):
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


def _drop_if_stale(conn) -> None:
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

    def call(self, packed: bytes):
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

    def _checkout(self):
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


def lane() -> Lane:
    """The limiter's connections to the shield's Redis (see `Lane`)."""
    global _lane
    if _lane is None:
        with _lock:
            if _lane is None:
                _lane = Lane(settings.SHIELD_REDIS_URL, _connection_options(), settings.SHIELD_REDIS_MAX_CONNECTIONS)
    return _lane


_async_clients: dict = {}


def aclient():
    """A redis.asyncio client for the running event loop (such clients are bound to their loop)."""
    import asyncio
    import weakref

    import redis.asyncio as aredis

    loop = asyncio.get_running_loop()
    entry = _async_clients.get(id(loop))
    if entry is None or entry[0]() is not loop or entry[2] != settings.SHIELD_REDIS_URL:
        timeout = settings.SHIELD_REDIS_TIMEOUT
        pool = aredis.BlockingConnectionPool.from_url(
            settings.SHIELD_REDIS_URL, socket_timeout=timeout, socket_connect_timeout=settings.SHIELD_REDIS_CONNECT_TIMEOUT,
            max_connections=settings.SHIELD_REDIS_MAX_CONNECTIONS, timeout=1)
        entry = (weakref.ref(loop), aredis.Redis(connection_pool=pool), settings.SHIELD_REDIS_URL)
        _async_clients[id(loop)] = entry
    return entry[1]


class AsyncLane:
    """`Lane` for one event loop (redis.asyncio connections are bound to their loop)."""

    def __init__(self, url: str, options: dict, max_connections: int, wait: float = 1.0):
        import asyncio

        import redis.asyncio as aredis

        self._pool = aredis.ConnectionPool.from_url(url, **options)
        self._idle: list = []
        self._slots = asyncio.Semaphore(max_connections)
        self._wait = wait

    async def call(self, packed: bytes):
        import asyncio

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


_async_lanes: dict = {}


def alane() -> AsyncLane:
    """The limiter's connections for the running event loop (see `Lane`)."""
    import asyncio
    import weakref

    loop = asyncio.get_running_loop()
    entry = _async_lanes.get(id(loop))
    if entry is None or entry[0]() is not loop or entry[2] != settings.SHIELD_REDIS_URL:
        entry = (weakref.ref(loop), AsyncLane(settings.SHIELD_REDIS_URL, _connection_options(),
                                              settings.SHIELD_REDIS_MAX_CONNECTIONS), settings.SHIELD_REDIS_URL)
        _async_lanes[id(loop)] = entry
    return entry[1]


def broker() -> redis.Redis:
    """The Celery broker's Redis, where queue depths live. The same server unless configured apart."""
    if settings.CELERY_BROKER_URL == settings.SHIELD_REDIS_URL:
        return client()
    return _broker_client()


_broker: redis.Redis | None = None


def _broker_client() -> redis.Redis:
    global _broker
    if _broker is None:
        timeout = settings.SHIELD_REDIS_TIMEOUT
        _broker = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=timeout,
                                       socket_connect_timeout=timeout)
    return _broker


def reset() -> None:
    """Forget the clients (tests point the shield at another Redis by changing the setting)."""
    global _client, _broker, _lane
    with _lock:
        if _lane is not None:
            _lane.close()
        _client = _broker = _lane = None
        _async_clients.clear()
        _async_lanes.clear()


def _after_fork() -> None:
    """A forked child must not share its parent's sockets: forget them without closing them (redis-py
    only shuts down a socket in the process that opened it)."""
    global _client, _broker, _lane, _lock
    _lock = threading.Lock()
    _client = _broker = _lane = None
    _async_clients.clear()
    _async_lanes.clear()


os.register_at_fork(after_in_child=_after_fork)


@receiver(setting_changed)
def _on_setting_changed(setting, **kwargs):
    if setting in {"SHIELD_REDIS_URL", "CELERY_BROKER_URL", "SHIELD_REDIS_TIMEOUT"}:
        reset()
