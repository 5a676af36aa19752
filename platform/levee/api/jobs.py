"""The web side of a generation job: capacity checks, enqueue, reading the job's event stream, cancel.

Async throughout (the streaming views hold many connections per process): with a Redis broker the
job's Celery message is pushed from the event loop; with another broker Celery publishes it in a thread.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings

from inference import protocol
from levee.core.store import aredis_client as redis_client  # the one Redis module's, per event loop

if TYPE_CHECKING:
    from levee.api.models import LlmModel

log = logging.getLogger(__name__)
KEEPALIVE = {"type": "keepalive"}
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"  # who published, in the message's headers (as Celery)


@dataclass
class Overloaded(Exception):
    message: str
    retry_after: int


async def check_capacity(model: LlmModel) -> None:
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


def _redis_broker() -> str | None:
    """The broker's URL when it is a plain Redis one that the event loop can push to directly: no
    transport options (a key prefix or priority steps change where kombu writes) and no TLS settings
    of Celery's own (our client would not know them)."""
    from levee.celery import app

    url = settings.CELERY_BROKER_URL
    if url.split("://", 1)[0] in ("redis", "rediss") and not app.conf.broker_transport_options \
            and not app.conf.broker_use_ssl:
        return url
    return None


def lease_ms() -> int:
    """A reader's lease (protocol.reader_key) lasts this long unless refreshed."""
    return int(settings.LEVEE_READER_LEASE_SECONDS * 1000)


def reader_id() -> str:
    """This process's (this event loop's) reader id, for JobMessage.reader: the jobs it enqueues
    are the ones it follows."""
    return _hub().reader_id


def _lease_writes(pipe: aioredis.client.Pipeline, message: protocol.JobMessage) -> None:
    assert message.reader is not None
    pipe.set(protocol.reader_key(message.reader), 1, px=lease_ms())
    if message.hold_id:  # nothing sent yet: what the sweep charges if this process dies now
        pipe.set(protocol.sent_key(message.job_id), 0, ex=protocol.STREAM_TTL_S)


async def enqueue(message: protocol.JobMessage, queue: str) -> None:
    """Publish the job. A job naming its `reader` has that reader's lease written first (in the same
    round trip when the broker is the Redis of REDIS_URL), so no worker finds it missing before the
    hub refreshes it, and the hub keeps refreshing it until the job is followed."""
    broker = _redis_broker()
    leased = message.reader is not None
    if leased:
        _hub().keep_alive()
    if leased and broker != settings.REDIS_URL:
        async with redis_client().pipeline(transaction=False) as pipe:
            _lease_writes(pipe, message)
            await pipe.execute()
    if broker is None:
        await sync_to_async(_publish, thread_sensitive=False)(message.to_dict(), queue)
        return
    payload = protocol.celery_redis_message(protocol.GENERATE_TASK, [message.to_dict()], task_id=message.job_id,
                                            queue=queue, origin=_ORIGIN)
    if leased and broker == settings.REDIS_URL:
        async with redis_client(broker).pipeline(transaction=False) as pipe:
            _lease_writes(pipe, message)
            pipe.lpush(queue, payload)
            await pipe.execute()
        return
    await redis_client(broker).lpush(queue, payload)


async def cancel(job_id: str) -> None:
    await redis_client().set(protocol.cancel_key(job_id), 1, ex=protocol.STREAM_TTL_S)


@dataclass
class Lease:
    """A job followed under this process's reader lease. `delivered`: the completion tokens the
    reader has passed on to its client (its formatter says so; 0 for a whole reply until it is
    sent), mirrored to protocol.sent_key, which bounds what the sweep charges if this process dies."""
    job_id: str
    delivered: int = 0
    written: int | None = 0  # the value sent_key was last given (enqueue wrote 0; None: unknown)


class _StreamHub:
    """One reader per event loop for every job stream the process is following: a single blocking
    XREAD over all of them, its entries handed to each follower's queue. Thirty-two generating
    streams cost one round trip per engine step instead of thirty-two; a thousand waiting ones,
    one blocked connection instead of a thousand. A follower that joins while the XREAD is blocked
    wakes it through the hub's own small stream, so nobody waits out the block.

    The hub also holds the process's reader lease (protocol.reader_key(reader_id), named by every
    job it enqueues): while it follows jobs, or has just enqueued one, a task of its own refreshes
    it every LEVEE_READER_LEASE_SECONDS / 5 (at most every second), one SET whatever the number of
    streams, and in the same pipeline writes protocol.sent_key for each job whose delivered count
    moved. When the process dies the lease lapses and the workers cancel its jobs
    (inference.worker); the sweep charges each no more than its sent_key (levee.billing.tasks)."""

    BLOCK_MS = 5000

    def __init__(self, client: aioredis.Redis, loop: asyncio.AbstractEventLoop):
        self.client, self.loop = client, loop
        self.followers: dict[bytes, asyncio.Queue] = {}
        self.last_ids: dict[bytes, bytes | str] = {}
        self.reader_id = uuid.uuid4().hex
        self.wake_key = f"levee:hub:{self.reader_id}".encode()
        self.task: asyncio.Task | None = None
        self.reading: set[bytes] = set()  # the keys the XREAD in flight covers
        self.leases: dict[str, Lease] = {}  # the jobs followed, by id
        self.lease_until = 0.0  # monotonic: keep the lease alive until then even with no job followed
        self.lease_task: asyncio.Task | None = None

    def keep_alive(self) -> None:
        """A job naming this reader was just enqueued: keep the lease alive until it is followed."""
        self.lease_until = time.monotonic() + lease_ms() / 1000
        self._keep()

    def hold_lease(self, lease: Lease) -> None:
        self.leases[lease.job_id] = lease
        self._keep()

    def drop_lease(self, lease: Lease) -> None:
        if self.leases.get(lease.job_id) is lease:
            del self.leases[lease.job_id]

    def _keep(self) -> None:
        if self.lease_task is None:
            self.lease_task = self.loop.create_task(self._keep_leases())

    async def _keep_leases(self) -> None:
        every = min(1.0, lease_ms() / 5000)
        try:
            while self.leases or time.monotonic() < self.lease_until:
                moved = [(lease, lease.delivered) for lease in self.leases.values() if lease.written != lease.delivered]
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        pipe.set(protocol.reader_key(self.reader_id), 1, px=lease_ms())
                        for lease, delivered in moved:
                            pipe.set(protocol.sent_key(lease.job_id), delivered, ex=protocol.STREAM_TTL_S)
                        await pipe.execute()
                    for lease, delivered in moved:
                        lease.written = delivered
                except Exception as exc:  # Redis away: the streams' reader tells the followers
                    log.warning("could not refresh the reader lease (%d jobs): %r", len(self.leases), exc)
                await asyncio.sleep(every)
        finally:
            self.lease_task = None  # no await since the last look at the leases: a new one starts a new task

    async def follow(self, key: str) -> asyncio.Queue:
        key_b = key.encode()
        queue: asyncio.Queue = asyncio.Queue()
        self.followers[key_b], self.last_ids[key_b] = queue, "0"
        if self.task is None:
            self.task = self.loop.create_task(self._run())
        elif key_b not in self.reading:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": 1}, maxlen=8, approximate=False)
                pipe.expire(self.wake_key, 3600)
                await pipe.execute()
        return queue

    def unfollow(self, key: str) -> None:
        key_b = key.encode()
        self.followers.pop(key_b, None)
        self.last_ids.pop(key_b, None)

    async def _run(self) -> None:
        wake_id: bytes | str = "$"
        try:
            while self.followers:
                streams = dict(self.last_ids)
                streams[self.wake_key] = wake_id
                self.reading = set(streams)
                reply = await self.client.xread(streams, count=256, block=self.BLOCK_MS)
                self.reading = set()
                for key, entries in reply or []:
                    if key == self.wake_key:
                        wake_id = entries[-1][0]
                        continue
                    queue = self.followers.get(key)
                    if queue is not None:
                        self.last_ids[key] = entries[-1][0]
                        queue.put_nowait(entries)
        except Exception as exc:  # Redis is gone: every follower hears it; the next follow() restarts
            log.warning("job stream reader stopped: %r", exc)
            for queue in self.followers.values():
                queue.put_nowait(exc)
        finally:
            # No await between the last look at the followers and this: a follow() from here on
            # starts a new reader. (The wake stream expires by itself.)
            self.reading = set()
            self.task = None


_hubs: dict[int, _StreamHub] = {}


def _hub() -> _StreamHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(id(loop))
    if hub is None or hub.loop is not loop:
        hub = _hubs[id(loop)] = _StreamHub(redis_client(), loop)
    return hub


async def events(job_id: str, *, queue_timeout: float, heartbeat_timeout: float,
                 keepalive_every: float = 5.0, lease: Lease | None = None) -> AsyncIterator[dict]:
    """The job's events from the first; KEEPALIVE while it waits; a synthetic error event when it
    does not start within queue_timeout or a started job goes silent for heartbeat_timeout. With a
    `lease`, this process's reader lease is kept alive meanwhile, and what it says was delivered
    written for the sweep (protocol.sent_key)."""
    hub = _hub()
    key = protocol.stream_key(job_id)
    if lease is not None:
        hub.hold_lease(lease)
    queue = await hub.follow(key)
    started = False
    since_news = time.monotonic()
    since_keepalive = time.monotonic()
    begun = time.monotonic()
    try:
        while True:
            # A queued job has nothing to say until it starts: wake only for its keep-alive, so a
            # thousand waiting streams cost a few wake-ups a second rather than a thousand.
            try:
                batch = await asyncio.wait_for(queue.get(), 1.0 if started else keepalive_every)
            except TimeoutError:
                batch = []
            if isinstance(batch, Exception):
                raise batch
            now = time.monotonic()
            for _entry_id, fields in batch:
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
    finally:
        hub.unfollow(key)
        if lease is not None:
            hub.drop_lease(lease)
