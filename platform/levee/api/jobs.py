"""The web side of a generation job: capacity checks, enqueue, reading the job's event stream, cancel.

Async throughout (the streaming views hold many connections per process); the only blocking call,
Celery's publish, runs in a thread.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings

from inference import protocol

KEEPALIVE = {"type": "keepalive"}
_clients: dict[int, aioredis.Redis] = {}


def redis_client() -> aioredis.Redis:
    """One client (and pool) per event loop: asyncio connections cannot cross loops."""
    loop = asyncio.get_running_loop()
    client = _clients.get(id(loop))
    if client is None:
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=None,
                                         health_check_interval=30)
        _clients[id(loop)] = client
    return client


@dataclass
class Overloaded(Exception):
    message: str
    retry_after: int


async def check_capacity(model) -> None:
    """Refuse before any hold when nobody can serve the model soon. Raises Overloaded; Redis errors propagate."""
    client = redis_client()
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcount(protocol.workers_key(model.name), now - protocol.WORKER_TTL_S, "+inf")
        pipe.llen(model.queue_name)
        live, depth = await pipe.execute()
    if not live:
        raise Overloaded(f"No inference worker is serving {model.name} right now; retry shortly.", 10)
    if depth >= model.max_queue_depth:
        raise Overloaded(f"{model.name} is overloaded ({depth} requests waiting); retry shortly.", 5)


def _publish(message: dict, queue: str) -> None:
    from levee.celery import app

    app.send_task(protocol.GENERATE_TASK, args=[message], queue=queue, task_id=message["job_id"],
                  retry=False)


async def enqueue(message: protocol.JobMessage, queue: str) -> None:
    await sync_to_async(_publish, thread_sensitive=False)(message.to_dict(), queue)


async def cancel(job_id: str) -> None:
    await redis_client().set(protocol.cancel_key(job_id), 1, ex=protocol.STREAM_TTL_S)


async def events(job_id: str, *, queue_timeout: float, heartbeat_timeout: float,
                 keepalive_every: float = 5.0) -> AsyncIterator[dict]:
    """The job's events from the first; KEEPALIVE while it waits; a synthetic error event when it
    does not start within queue_timeout or a started job goes silent for heartbeat_timeout."""
    client = redis_client()
    key = protocol.stream_key(job_id)
    last_id = "0"
    started = False
    since_news = time.monotonic()
    since_keepalive = time.monotonic()
    begun = time.monotonic()
    while True:
        # A queued job has nothing to say until it starts: wake only for its keep-alive, so a thousand
        # waiting streams cost a few wake-ups a second rather than a thousand.
        block_ms = 1000 if started else int(keepalive_every * 1000)
        reply = await client.xread({key: last_id}, count=256, block=block_ms)
        now = time.monotonic()
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id
                event = protocol.decode_event(fields)
                since_news = now
                if event["type"] == protocol.STARTED:
                    started = True
                if event["type"] in (protocol.HEARTBEAT, protocol.STARTED):
                    continue
                yield event
                if event["type"] in (protocol.DONE, protocol.ERROR):
                    return
        if started and now - since_news > heartbeat_timeout:
            yield {"type": protocol.ERROR, "code": "worker_lost", "synthetic": True,
                   "message": "The inference worker stopped responding; the request was aborted."}
            return
        if not started and now - begun > queue_timeout:
            yield {"type": protocol.ERROR, "code": "queue_timeout", "synthetic": True,
                   "message": "The request was not started in time; the service is overloaded."}
            return
        if not started and now - since_keepalive >= keepalive_every:
            since_keepalive = now
            yield KEEPALIVE
