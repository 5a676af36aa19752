"""A synchronous Redis client for the web tier's small reads and writes (health, metrics, rates).

Short timeouts: these calls sit on request paths and probes, and a Redis that does not answer in
half a second is, for them, a Redis that is down. One client (and connection pool) per URL and
process; redis-py's pool is thread-safe, and a dropped connection is re-made on the next call.
"""
from __future__ import annotations

import threading

import redis
from django.conf import settings

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()
TIMEOUT_S = 0.5


def redis_client(url: str | None = None) -> redis.Redis:
    url = url or settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S,
                                              health_check_interval=30)
                _clients[url] = client
    return client
