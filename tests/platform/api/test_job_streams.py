"""The web side's reader of job event streams (levee.api.jobs.events): one XREAD per process for
every stream it follows, against the real Redis."""
import asyncio
import time
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from inference import protocol
from levee.api import jobs
from levee.core import store


def _event(kind, **fields):
    return protocol.encode_event(kind, **fields)


async def _collect(job_id, **kwargs):
    out = []
    async for event in jobs.events(job_id, queue_timeout=kwargs.pop("queue_timeout", 10),
                                   heartbeat_timeout=kwargs.pop("heartbeat_timeout", 10), **kwargs):
        out.append(event)
    return out


def test_each_follower_gets_its_own_events_in_order(redis_client):
    ids = [uuid.uuid4().hex for _ in range(5)]

    async def main():
        readers = [asyncio.create_task(_collect(job)) for job in ids]
        await asyncio.sleep(0.05)
        for n in range(3):
            for i, job in enumerate(ids):
                key = protocol.stream_key(job)
                if n == 0:
                    await jobs.redis_client().xadd(key, _event(protocol.STARTED))
                await jobs.redis_client().xadd(key, _event(protocol.DELTA, text=f"{i}:{n}"))
        for job in ids:
            await jobs.redis_client().xadd(protocol.stream_key(job), _event(protocol.DONE, finish_reason="stop",
                                                                            usage={}))
        return await asyncio.gather(*readers)

    results = asyncio.run(main())
    for i, events in enumerate(results):
        assert [e.get("text") for e in events if e["type"] == protocol.DELTA] == [f"{i}:0", f"{i}:1", f"{i}:2"]
        assert events[-1]["type"] == protocol.DONE


def test_a_stream_joining_while_the_reader_is_blocked_is_not_made_to_wait_out_the_block(redis_client):
    first, second = uuid.uuid4().hex, uuid.uuid4().hex

    async def main():
        waiting = asyncio.create_task(_collect(first))  # the reader now blocks (BLOCK_MS) on it
        await asyncio.sleep(0.2)
        await jobs.redis_client().xadd(protocol.stream_key(second), _event(protocol.STARTED))
        await jobs.redis_client().xadd(protocol.stream_key(second), _event(protocol.DONE, finish_reason="stop",
                                                                          usage={}))
        began = time.monotonic()
        events = await _collect(second)
        took = time.monotonic() - began
        await jobs.redis_client().xadd(protocol.stream_key(first), _event(protocol.ERROR, code="x", message="end"))
        await waiting
        return events, took

    events, took = asyncio.run(main())
    assert [e["type"] for e in events] == [protocol.DONE]
    assert took < jobs._StreamHub.BLOCK_MS / 1000 / 2  # woken, not timed out


def test_a_queued_job_gets_keepalives_and_then_a_queue_timeout(redis_client):
    events = asyncio.run(_collect(uuid.uuid4().hex, queue_timeout=0.5, keepalive_every=0.2))
    assert jobs.KEEPALIVE in events
    assert events[-1]["code"] == "queue_timeout"


def test_redis_going_away_reaches_the_follower(redis_client, settings, monkeypatch):
    async def main():
        jobs._hubs.clear()
        settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
        try:
            await _collect(uuid.uuid4().hex)
        finally:
            jobs._hubs.clear()
            store.reset()

    with pytest.raises(RedisConnectionError):
        asyncio.run(main())
