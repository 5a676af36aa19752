"""POST /chat/api/conversations/<id>/messages: a reply through the job path, streamed and saved."""
import json

import pytest
from django.urls import reverse
from django.utils import timezone

from levee.billing.models import UsageRecord
from levee.billing.services import record_free_usage
from levee.chat.models import Conversation, Message
from tests.personas import ada, make_user

from .conftest import sse_events

pytestmark = pytest.mark.django_db


def _post(client, conversation, body, **extra):
    url = reverse("chat-api-messages", args=[conversation.pk])
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json", **extra)


@pytest.fixture
def owner(client):
    user = ada()
    client.force_login(user)
    return user


@pytest.fixture
def conversation(owner, chat_model):
    return Conversation.objects.create(user=owner, model=chat_model.name)


def test_a_reply_streams_in_pieces_and_is_saved_with_free_usage(client, conversation, worker):
    response = _post(client, conversation, {"content": "Hello, what is Levee?", "model": "deepseek-chat"})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = sse_events(response)
    assert [name for name, _ in events] == ["start", "delta", "delta", "delta", "done"]
    assert "".join(data["text"] for name, data in events if name == "delta") == "Hello there!"
    assert events[-1][1]["status"] == "complete"

    question, reply = Message.objects.filter(conversation=conversation)
    assert (question.role, question.content) == ("user", "Hello, what is Levee?")
    assert (reply.role, reply.content, reply.status, reply.completion_tokens) == ("assistant", "Hello there!", "complete", 3)
    conversation.refresh_from_db()
    assert conversation.title == "Hello, what is Levee?"

    job = worker.jobs[0]
    assert job["hold_id"] is None and job["user"] == str(conversation.user_id)
    assert job["queue"] == "inference.deepseek-chat"
    record = UsageRecord.objects.get()
    assert (record.source, record.cost_nano, record.completion_tokens) == ("web", 0, 3)
    assert record.prompt_tokens == reply.prompt_tokens > 0


def test_the_second_turn_sends_the_history(client, conversation, worker):
    sse_events(_post(client, conversation, {"content": "one"}))
    sse_events(_post(client, conversation, {"content": "two words"}))
    first, second = worker.jobs
    assert len(second["prompt_ids"]) > len(first["prompt_ids"]) + len("two words".split())
    conversation.refresh_from_db()
    assert conversation.title == "one" and conversation.messages.count() == 4


def test_a_stopped_job_keeps_the_part_received(client, conversation, worker):
    worker.script = worker.complete("Half", " a", finish="cancelled")
    events = sse_events(_post(client, conversation, {"content": "Tell me a long story"}))
    assert events[-1] == ("done", {"status": "stopped", "finish_reason": "cancelled",
                                   "usage": events[-1][1]["usage"]})
    reply = Message.objects.get(role="assistant")
    assert (reply.content, reply.status) == ("Half a", "stopped")
    assert UsageRecord.objects.get().completion_tokens == 2


def test_a_failed_job_is_saved_as_an_error(client, conversation, worker):
    worker.script = [("delta", {"text": "Par"}), ("error", {"code": "engine_error", "message": "Generation failed"})]
    events = sse_events(_post(client, conversation, {"content": "hi"}))
    assert events[-1] == ("error", {"code": "engine_error", "message": "Generation failed"})
    reply = Message.objects.get(role="assistant")
    assert (reply.status, reply.content, reply.error) == ("error", "Par", "Generation failed")


def test_the_stop_endpoint_flags_the_job_cancelled(client, conversation, worker, redis_client):
    reply = Message.objects.create(conversation=conversation, role="assistant", status="streaming",
                                   job_id="job123", model="deepseek-chat")
    response = client.post(reverse("chat-api-stop", args=[conversation.pk, reply.pk]))
    assert response.status_code == 200 and response.json()["stopping"] is True
    assert redis_client.get("levee:job:job123:cancel") == b"1"


def test_one_reply_at_a_time_per_account(client, conversation, worker):
    other = Conversation.objects.create(user=conversation.user, model="deepseek-chat")
    Message.objects.create(conversation=other, role="assistant", status="streaming", job_id="busy")
    response = _post(client, conversation, {"content": "hi"})
    assert response.status_code == 409 and response.json()["error"]["code"] == "reply_in_progress"
    assert worker.jobs == [] and conversation.messages.count() == 0


def test_a_reply_is_capped_by_the_quota_left(client, conversation, worker, settings):
    settings.LEVEE_WEB_CHAT_DAILY_TOKENS = 50
    sse_events(_post(client, conversation, {"content": "hi"}))
    assert worker.jobs[0]["sampling"]["max_tokens"] == 50 - len(worker.jobs[0]["prompt_ids"])


def test_the_shields_shedding_refuses_free_chat(client, conversation, worker, monkeypatch):
    from levee.shield import api as shield

    calls = []

    async def shed(model, priority):
        calls.append((model, priority))
        return 30

    monkeypatch.setattr(shield, "ashed", shed)
    response = _post(client, conversation, {"content": "hi"})
    assert response.status_code == 503 and response["Retry-After"] == "30"
    assert calls == [("deepseek-chat", "free_chat")]
    assert worker.jobs == [] and Message.objects.count() == 0


def test_an_elevated_mode_halves_the_quota(client, conversation, worker, monkeypatch, settings):
    from levee.shield import api as shield

    settings.LEVEE_WEB_CHAT_DAILY_TOKENS = 100
    monkeypatch.setattr(shield, "current_mode", lambda: "elevated")
    sse_events(_post(client, conversation, {"content": "hi"}))
    assert worker.jobs[0]["sampling"]["max_tokens"] == 50 - len(worker.jobs[0]["prompt_ids"])


def test_a_csrf_less_post_is_refused(conversation, worker):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(conversation.user)
    assert _post(strict, conversation, {"content": "hi"}).status_code == 403
    assert worker.jobs == [] and Message.objects.count() == 0


def test_quota_left_is_counted_from_todays_web_usage_only(owner):
    from levee.chat.services import tokens_used_today

    now = timezone.now()
    record_free_usage(user=owner, model="deepseek-chat", request_id="r1", prompt_cache_hit_tokens=1,
                      prompt_cache_miss_tokens=2, completion_tokens=3, started_at=now, finished_at=now)
    record_free_usage(user=make_user("x@example.com"), model="deepseek-chat", request_id="r2",
                      prompt_cache_hit_tokens=0, prompt_cache_miss_tokens=100, completion_tokens=0,
                      started_at=now, finished_at=now)
    assert tokens_used_today(owner) == 6


def test_a_nul_from_the_model_is_kept_as_a_replacement_character(client, conversation, worker):
    worker.script = worker.complete("a\x00b")
    events = sse_events(_post(client, conversation, {"content": "hi"}))
    assert events[1] == ("delta", {"text": "a\ufffdb"}) and events[-1][1]["status"] == "complete"
    assert Message.objects.get(role="assistant").content == "a\ufffdb"


def test_a_reply_that_cannot_be_saved_does_not_block_the_account(client, conversation, worker, monkeypatch):
    from levee.chat import services

    def broken(*args, **kwargs):
        raise RuntimeError("database trouble")

    monkeypatch.setattr(services, "finish_reply", broken)
    sse_events(_post(client, conversation, {"content": "hi"}))
    reply = Message.objects.get(role="assistant")
    assert reply.status == "error"


def test_a_browser_that_leaves_mid_reply_stops_the_job_and_keeps_the_part_received(
        client, conversation, worker, redis_client):
    import asyncio
    import contextlib

    from asgiref.sync import async_to_sync

    worker.script = [("delta", {"text": "Once"}), ("delta", {"text": " upon"})]  # still running
    response = _post(client, conversation, {"content": "A story, please"})

    async def leave_after_the_first_words():
        # The ASGI handler cancels the task serving the body when the client disconnects.
        got = []

        async def serve():
            async for chunk in response.streaming_content:
                got.append(chunk)

        task = asyncio.ensure_future(serve())
        while len(got) < 3:  # start and both deltas
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return got

    got = async_to_sync(leave_after_the_first_words)()
    assert got[2].startswith(b"event: delta")
    reply = Message.objects.get(role="assistant")
    assert (reply.status, reply.finish_reason, reply.content) == ("stopped", "client_gone", "Once upon")
    job_id = worker.jobs[0]["job_id"]
    assert redis_client.get(f"levee:job:{job_id}:cancel") == b"1"
    assert UsageRecord.objects.get().completion_tokens == 2
