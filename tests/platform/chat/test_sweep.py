"""Replies left "streaming" by a web process that died: the periodic sweep finishes them from what
the job wrote to Redis, or marks them interrupted, and counts the tokens once."""
from datetime import timedelta

import pytest
from django.utils import timezone

from inference import protocol
from levee.billing.models import UsageRecord
from levee.chat import services
from levee.chat.models import Conversation, Message, Role, Status
from tests.personas import ada

pytestmark = pytest.mark.django_db


def _streaming_reply(user, *, job_id, age_seconds):
    conversation = Conversation.objects.create(user=user, model="deepseek-chat")
    created = timezone.now() - timedelta(seconds=age_seconds)
    Message.objects.create(conversation=conversation, role=Role.USER, content="hi", created_at=created)
    return Message.objects.create(conversation=conversation, role=Role.ASSISTANT, status=Status.STREAMING,
                                  model="deepseek-chat", job_id=job_id, prompt_tokens=5, created_at=created)


def _old(settings):
    return settings.LEVEE_JOB_QUEUE_TIMEOUT + settings.LEVEE_JOB_MAX_RUNTIME + 120


def test_a_lost_reply_is_finished_from_its_job_stream_and_counted_once(redis_client, settings):
    user = ada()
    reply = _streaming_reply(user, job_id="lostjob", age_seconds=_old(settings))
    key = protocol.stream_key("lostjob")
    redis_client.xadd(key, protocol.encode_event(protocol.STARTED, worker="w"))
    redis_client.xadd(key, protocol.encode_event(protocol.DELTA, text="Hello ", usage=protocol.usage_dict(0, 5, 1)))
    redis_client.xadd(key, protocol.encode_event(protocol.DELTA, text="there", usage=protocol.usage_dict(0, 5, 2)))
    redis_client.xadd(key, protocol.encode_event(protocol.DONE, finish_reason="stop",
                                                 usage=protocol.usage_dict(0, 5, 2)))
    fresh = _streaming_reply(user, job_id="livejob", age_seconds=5)  # still within its deadline

    assert services.sweep_stale_replies() == 1
    reply.refresh_from_db()
    fresh.refresh_from_db()
    assert (reply.status, reply.content, reply.finish_reason, reply.completion_tokens) == (
        Status.COMPLETE, "Hello there", "stop", 2)
    assert fresh.status == Status.STREAMING
    assert UsageRecord.objects.filter(user=user, completion_tokens=2, cost_nano=0).count() == 1
    assert services.sweep_stale_replies() == 0  # nothing left to do, nothing counted twice
    assert UsageRecord.objects.filter(user=user).count() == 1


def test_a_lost_reply_whose_stream_is_gone_is_marked_interrupted(redis_client, settings):
    reply = _streaming_reply(ada(), job_id="expiredjob", age_seconds=_old(settings))
    assert services.sweep_stale_replies() == 1
    reply.refresh_from_db()
    assert reply.status == Status.ERROR and "interrupted" in reply.error and reply.finished_at is not None


def test_a_lost_reply_cut_off_midway_keeps_the_part_that_arrived(redis_client, settings):
    reply = _streaming_reply(ada(), job_id="cutjob", age_seconds=_old(settings))
    redis_client.xadd(protocol.stream_key("cutjob"),
                      protocol.encode_event(protocol.DELTA, text="Half a", usage=protocol.usage_dict(0, 5, 2)))
    assert services.sweep_stale_replies() == 1
    reply.refresh_from_db()
    assert (reply.status, reply.content, reply.completion_tokens) == (Status.STOPPED, "Half a", 2)


def test_the_sweep_runs_on_beat_on_the_platform_queue(settings):
    from levee.celery import app

    app.loader.import_default_modules()
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "levee.chat.sweep_stale_replies")
    assert entry["options"]["queue"] == "platform"
    assert app.tasks["levee.chat.sweep_stale_replies"].queue == "platform"


def test_with_redis_unreachable_the_sweep_waits_for_the_next_run(redis_client, settings, monkeypatch):
    import redis as redis_lib

    import levee.core.store

    reply = _streaming_reply(ada(), job_id="laterjob", age_seconds=_old(settings))
    monkeypatch.setattr(levee.core.store, "redis_client",
                        lambda url=None: redis_lib.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2))
    assert services.sweep_stale_replies() == 0
    reply.refresh_from_db()
    assert reply.status == Status.STREAMING  # not marked interrupted: its stream may still be there
