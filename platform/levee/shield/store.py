"""The shield's Redis client: one per process, short timeouts, so a dead Redis answers in milliseconds
instead of hanging a request. `ShieldRedisDown` is the one error the rest of the shield handles."""
from __future__ import annotations

import threading

import redis
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

_lock = threading.Lock()
_client: redis.Redis | None = None

# What "Redis is unreachable" looks like from redis-py.
ShieldRedisDown = (redis.ConnectionError, redis.TimeoutError)


def client() -> redis.Redis:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                timeout = settings.SHIELD_REDIS_TIMEOUT
                # Blocking pool: a burst beyond max_connections waits (up to 1 s) for a free
                # connection instead of failing, and only then counts as Redis being unreachable.
                pool = redis.BlockingConnectionPool.from_url(
                    settings.SHIELD_REDIS_URL, socket_timeout=timeout, socket_connect_timeout=settings.SHIELD_REDIS_CONNECT_TIMEOUT,
                    health_check_interval=30, max_connections=settings.SHIELD_REDIS_MAX_CONNECTIONS, timeout=1)
                _client = redis.Redis(connection_pool=pool)
    return _client


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
    global _client, _broker
    with _lock:
        _client = _broker = None
        _async_clients.clear()


@receiver(setting_changed)
def _on_setting_changed(setting, **kwargs):
    if setting in {"SHIELD_REDIS_URL", "CELERY_BROKER_URL", "SHIELD_REDIS_TIMEOUT"}:
        reset()
