"""DELETE /chat/api/conversations/<id>: the owner deletes a conversation and its messages; a reply
still being written has its job cancelled first, and its tokens still count."""
import pytest
from django.test import Client
from django.urls import reverse
from redis.exceptions import RedisError

from inference import protocol
from levee.api import jobs
from levee.billing.models import UsageRecord
from levee.chat.models import Conversation, Message
from tests.personas import ada, make_user

pytestmark = pytest.mark.django_db


def _delete(client, conversation):
    return client.delete(reverse("chat-api-conversation", args=[conversation.pk]))


@pytest.fixture
def owner(client):
    user = ada()
    client.force_login(user)
    return user


def _conversation(user, model, *, streaming_job=None):
    conversation = Conversation.objects.create(user=user, model=model, title="To go")
    Message.objects.create(conversation=conversation, role="user", content="hi")
    Message.objects.create(conversation=conversation, role="assistant", content="hello")
    if streaming_job:
        Message.objects.create(conversation=conversation, role="user", content="a long story, please")
        Message.objects.create(conversation=conversation, role="assistant", status="streaming", model=model,
                               job_id=streaming_job, prompt_tokens=7)
    return conversation


def test_deleting_removes_the_conversation_and_its_messages_only(client, owner, chat_model, worker):
    doomed = _conversation(owner, chat_model.name)
    kept = _conversation(owner, chat_model.name)
    response = _delete(client, doomed)
    assert response.status_code == 204 and response.content == b""
    assert not Conversation.objects.filter(pk=doomed.pk).exists()
    assert not Message.objects.filter(conversation_id=doomed.pk).exists()
    assert kept.messages.count() == 2
    assert client.get(reverse("chat-conversation", args=[doomed.pk])).status_code == 404


def test_a_reply_being_written_has_its_job_cancelled_and_its_tokens_counted(
        client, owner, chat_model, worker, redis_client):
    conversation = _conversation(owner, chat_model.name, streaming_job="writingjob")
    key = protocol.stream_key("writingjob")
    redis_client.xadd(key, protocol.encode_event(protocol.STARTED, worker="w"))
    redis_client.xadd(key, protocol.encode_event(protocol.DELTA, text="Once upon", usage=protocol.usage_dict(0, 7, 2)))
    assert _delete(client, conversation).status_code == 204
    assert redis_client.get(protocol.cancel_key("writingjob")) == b"1"
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    # The tokens the job used still count against the day's free allowance, once.
    record = UsageRecord.objects.get(user=owner)
    assert (record.prompt_tokens, record.completion_tokens, record.cost_nano) == (7, 2, 0)


def test_with_redis_unreachable_nothing_is_deleted(client, owner, chat_model, worker, monkeypatch):
    conversation = _conversation(owner, chat_model.name, streaming_job="stuckjob")

    async def unreachable(job_id):
        raise RedisError("down")

    monkeypatch.setattr(jobs, "cancel", unreachable)
    response = _delete(client, conversation)
    assert response.status_code == 503 and response["Retry-After"]
    assert conversation.messages.count() == 4 and UsageRecord.objects.count() == 0


def test_another_users_conversation_cannot_be_deleted(client, owner, chat_model, worker, redis_client):
    theirs = _conversation(make_user("eve@example.com"), chat_model.name, streaming_job="theirjob")
    response = _delete(client, theirs)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert theirs.messages.count() == 4
    assert redis_client.get(protocol.cancel_key("theirjob")) is None


def test_deleting_needs_a_session_and_the_csrf_token(owner, chat_model, worker):
    conversation = _conversation(owner, chat_model.name)
    assert _delete(Client(), conversation).status_code == 401
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner)
    assert _delete(strict, conversation).status_code == 403
    assert conversation.messages.count() == 2
