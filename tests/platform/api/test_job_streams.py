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


def _job(job_id: str, *, reader: str | None, hold_id: str | None = "h-1") -> protocol.JobMessage:
    return protocol.JobMessage(job_id=job_id, model="deepseek-chat", prompt_ids=[1], user="7", hold_id=hold_id,
                               deadline=time.time() + 60, pickup_deadline=time.time() + 60,
                               sampling=protocol.Sampling(max_tokens=4), reader=reader)


@pytest.mark.parametrize("broker", ["same", "other"])
def test_a_job_naming_its_reader_has_the_lease_before_any_worker_can_take_it(redis_client, settings, broker):
    """The process's lease is written with (or before) the job's message, so a worker never finds a
    live reader's job without one, and nothing sent yet is what the sweep would charge; on another
    broker URL they go to REDIS_URL first. The hub keeps the lease alive until the job is followed."""
    settings.LEVEE_READER_LEASE_SECONDS = 1
    if broker == "other":  # the same Redis under another URL: kombu's keys land beside ours
        settings.CELERY_BROKER_URL = settings.REDIS_URL.replace("127.0.0.1", "localhost")
    else:
        settings.CELERY_BROKER_URL = settings.REDIS_URL
    job_id, queue = uuid.uuid4().hex, f"inference.lease-{uuid.uuid4().hex[:8]}"

    async def main():
        reader = jobs.reader_id()
        await jobs.enqueue(_job(job_id, reader=reader), queue)
        written = (await jobs.redis_client().exists(protocol.reader_key(reader)),
                   await jobs.redis_client().get(protocol.sent_key(job_id)))
        await asyncio.sleep(1.5)  # past the TTL: the hub refreshed it meanwhile
        return reader, written, await jobs.redis_client().exists(protocol.reader_key(reader))

    reader, written, later = asyncio.run(main())
    assert redis_client.llen(queue) == 1
    assert written == (1, b"0") and later == 1  # nothing passed on to the client yet
    assert 3500 < redis_client.ttl(protocol.sent_key(job_id)) <= protocol.STREAM_TTL_S


def test_a_job_naming_no_reader_takes_no_lease(redis_client, settings):
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    job_id, queue = uuid.uuid4().hex, f"inference.lease-{uuid.uuid4().hex[:8]}"
    asyncio.run(jobs.enqueue(_job(job_id, reader=None), queue))
    assert redis_client.llen(queue) == 1
    assert redis_client.keys("levee:reader:*") == [] and not redis_client.exists(protocol.sent_key(job_id))


def test_the_reader_keeps_one_lease_for_all_its_jobs_with_what_each_delivered_and_lets_it_lapse(
        redis_client, settings):
    settings.LEVEE_READER_LEASE_SECONDS = 1  # refreshed every 0.2 s
    ids = [uuid.uuid4().hex, uuid.uuid4().hex]
    leases = [jobs.Lease(job_id) for job_id in ids]

    async def main():
        followers = [asyncio.create_task(_collect(job_id, lease=lease)) for job_id, lease in zip(ids, leases, strict=True)]
        reader = jobs.reader_id()
        seen = []
        for delivered in (0, 3, 9):
            leases[0].delivered, leases[1].delivered = delivered, 2 * delivered
            await asyncio.sleep(1.5)  # longer than the lease: only the refreshes keep it
            seen.append((await jobs.redis_client().exists(protocol.reader_key(reader)),
                         await jobs.redis_client().mget([protocol.sent_key(j) for j in ids])))
        for job_id in ids:
            await jobs.redis_client().xadd(protocol.stream_key(job_id), _event(protocol.ERROR, code="x", usage={}))
        await asyncio.gather(*followers)
        await asyncio.sleep(1.5)
        seen.append((await jobs.redis_client().exists(protocol.reader_key(reader)),
                     await jobs.redis_client().mget([protocol.sent_key(j) for j in ids])))
        return seen

    # 0 is never written (enqueue writes it); what was sent outlives the lease
    assert asyncio.run(main()) == [(1, [None, None]), (1, [b"3", b"6"]), (1, [b"9", b"18"]), (0, [b"9", b"18"])]
    assert redis_client.keys("levee:reader:*") == []
