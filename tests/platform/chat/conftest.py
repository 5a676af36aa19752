"""A fake inference worker for the chat views: `enqueue` writes the job's events straight into its
Redis stream, as a worker would, so the view's real reading, streaming and saving code runs."""
import json

import pytest
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync, sync_to_async

from inference import protocol
from levee.api import jobs
from levee.api.models import LlmModel
from levee.chat import views


class FakeWorker:
    def __init__(self, redis_client):
        self.redis = redis_client
        self.jobs: list[dict] = []
        self.script = self.complete("Hello", " there", "!")

    @staticmethod
    def complete(*pieces, finish="stop"):
        return [("delta", {"text": p}) for p in pieces] + [("done", {"finish_reason": finish})]

    async def enqueue(self, message, queue):
        self.jobs.append({"queue": queue, **message.to_dict()})
        key = protocol.stream_key(message.job_id)
        prompt = len(message.prompt_ids)
        self.redis.xadd(key, protocol.encode_event(protocol.STARTED, worker="fake"))
        made = 0
        for kind, payload in self.script:
            if kind == "delta":
                made += 1
            usage = protocol.usage_dict(0, prompt, made)
            self.redis.xadd(key, protocol.encode_event(kind, usage=usage, **payload))


@pytest.fixture
def worker(redis_client, monkeypatch, settings):
    fake = FakeWorker(redis_client)

    async def no_capacity_check(model):
        return None

    # The test client runs each request and each body on an event loop of its own; jobs keeps one
    # Redis client per loop, which a recycled loop id could hand a closed loop. A fresh one each time:
    monkeypatch.setattr(jobs, "redis_client", lambda: aioredis.Redis.from_url(settings.REDIS_URL))
    monkeypatch.setattr(jobs, "enqueue", fake.enqueue)
    # The views do database work on a shared thread pool; here it must stay on the test's own
    # connection (and so inside the test's transaction).
    monkeypatch.setattr(views, "db", lambda fn: sync_to_async(fn))
    monkeypatch.setattr(jobs, "check_capacity", no_capacity_check)
    # One token per word: the demo tokenizer is not what these tests are about.
    monkeypatch.setattr(views, "_encode",
                        lambda model, messages: [1] * sum(len(m["content"].split()) + 4 for m in messages))
    return fake


@pytest.fixture
def chat_model(db):
    model, _ = LlmModel.objects.get_or_create(name="deepseek-chat", defaults={"context_length": 2048,
                                                                             "max_output": 1024,
                                                                             "default_max_tokens": 256})
    LlmModel.objects.filter(pk=model.pk).update(enabled=True)
    return model


def sse_events(response) -> list[tuple[str, dict]]:
    """(event, data) pairs of an SSE body; comments (keep-alives) are skipped."""
    async def collect():
        return b"".join([chunk async for chunk in response.streaming_content])

    raw = async_to_sync(collect)().decode()
    events = []
    for block in raw.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads(next(line[6:] for line in lines if line.startswith("data: ")))
        events.append((name, data))
    return events
