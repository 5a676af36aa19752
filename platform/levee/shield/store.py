"""The shield's Redis: which server and what patience (SHIELD_REDIS_URL, SHIELD_REDIS_TIMEOUT,
SHIELD_REDIS_CONNECT_TIMEOUT, SHIELD_REDIS_MAX_CONNECTIONS) — short timeouts, so a dead Redis
answers in milliseconds instead of hanging a request. The connections themselves are made by
levee.core.store. `ShieldRedisDown` is the one error the rest of the shield handles."""
from __future__ import annotations

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from levee.core import store
from levee.core.store import AsyncLane, Lane

__all__ = ["AsyncLane", "Lane", "ShieldRedisDown", "aclient", "alane", "broker", "client", "lane", "reset"]

# What "Redis is unreachable" looks like from redis-py.
ShieldRedisDown = store.RedisDown


def _patience() -> dict:
    return {"timeout": settings.SHIELD_REDIS_TIMEOUT, "connect_timeout": settings.SHIELD_REDIS_CONNECT_TIMEOUT,
            "max_connections": settings.SHIELD_REDIS_MAX_CONNECTIONS}


def client() -> redis.Redis:
    """The shield's synchronous client (a blocking pool: a burst waits up to 1 s for a connection)."""
    return store.redis_client(settings.SHIELD_REDIS_URL, **_patience())


def aclient() -> aioredis.Redis:
    """The shield's client on the running event loop."""
    return store.aredis_client(settings.SHIELD_REDIS_URL, **_patience())


def lane() -> Lane:
    """The limiter's connections to the shield's Redis (see `Lane`)."""
    return store.lane(settings.SHIELD_REDIS_URL, **_patience())


def alane() -> AsyncLane:
    """The limiter's connections for the running event loop (see `AsyncLane`)."""
    return store.alane(settings.SHIELD_REDIS_URL, **_patience())


def broker() -> redis.Redis:
    """The Celery broker's Redis, where queue depths live. The same server unless configured apart."""
    if settings.CELERY_BROKER_URL == settings.SHIELD_REDIS_URL:
        return client()
    return store.redis_client(settings.CELERY_BROKER_URL, timeout=settings.SHIELD_REDIS_TIMEOUT)


def reset() -> None:
    """Forget the clients (tests point the shield at another Redis by changing the setting)."""
    store.reset()


@receiver(setting_changed)
def _on_setting_changed(setting: str, **kwargs: object) -> None:
    if setting in {"SHIELD_REDIS_URL", "CELERY_BROKER_URL", "SHIELD_REDIS_TIMEOUT", "REDIS_URL"}:
        reset()
