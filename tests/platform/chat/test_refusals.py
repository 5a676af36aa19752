"""What the chat endpoints refuse: other people's conversations, bad input, an exhausted quota."""
import json

import pytest
from django.urls import reverse
from django.utils import timezone

from levee.billing.services import record_free_usage
from levee.chat.models import Conversation, Message
from tests.personas import ada, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def theirs(chat_model):
    stranger = make_user("eve@example.com")
    conversation = Conversation.objects.create(user=stranger, model=chat_model.name, title="secret plans")
    reply = Message.objects.create(conversation=conversation, role="assistant", content="classified",
                                   status="streaming", job_id="theirs")
    return conversation, reply


def test_another_users_conversation_is_404_everywhere(client, theirs, worker, redis_client):
    conversation, reply = theirs
    client.force_login(ada())
    assert client.get(reverse("chat-conversation", args=[conversation.pk])).status_code == 404
    assert client.get(reverse("chat-api-conversation", args=[conversation.pk])).status_code == 404
    response = client.post(reverse("chat-api-messages", args=[conversation.pk]),
                           data=json.dumps({"content": "hi"}), content_type="application/json")
    assert response.status_code == 404
    assert client.post(reverse("chat-api-stop", args=[conversation.pk, reply.pk])).status_code == 404
    assert redis_client.get("levee:job:theirs:cancel") is None
    page = client.get(reverse("chat")).content.decode()
    assert "secret plans" not in page
    assert worker.jobs == [] and conversation.messages.count() == 1


def test_anonymous_visitors_are_sent_to_log_in(client, theirs):
    conversation, _ = theirs
    assert client.get(reverse("chat"))["Location"].startswith(reverse("login"))
    response = client.post(reverse("chat-api-messages", args=[conversation.pk]),
                           data=json.dumps({"content": "hi"}), content_type="application/json")
    assert response.status_code == 401


@pytest.mark.parametrize("body,param", [
    ("not json", None),
    ("[1, 2]", None),
    ({"content": ""}, "content"),
    ({"content": "   "}, "content"),
    ({"content": 42}, "content"),
    ({"content": "x" * 16_001}, "content"),
    ({"content": "a\x00b"}, "content"),
    ({"content": "hi", "model": "no-such-model"}, "model"),
    ({"content": "hi", "model": ["deepseek-chat"]}, "model"),
])
def test_bad_input_is_a_4xx_and_writes_nothing(client, chat_model, worker, body, param):
    user = ada()
    client.force_login(user)
    conversation = Conversation.objects.create(user=user, model=chat_model.name)
    data = body if isinstance(body, str) else json.dumps(body)
    response = client.post(reverse("chat-api-messages", args=[conversation.pk]), data=data,
                           content_type="application/json")
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["param"] == param
    assert Message.objects.count() == 0 and worker.jobs == []
    conversation.refresh_from_db()
    assert conversation.title == ""


@pytest.mark.django_db(transaction=True)  # committed, as an admin's change is: the view reads on the database pool
def test_a_disabled_model_is_refused(client, chat_model, worker):
    user = ada()
    client.force_login(user)
    conversation = Conversation.objects.create(user=user, model=chat_model.name)
    chat_model.enabled = False
    chat_model.save()
    response = client.post(reverse("chat-api-messages", args=[conversation.pk]),
                           data=json.dumps({"content": "hi"}), content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "model_not_found"


def test_an_exhausted_quota_gets_a_clear_429_and_writes_nothing(client, chat_model, worker, settings):
    settings.LEVEE_WEB_CHAT_DAILY_TOKENS = 1000
    user = ada()
    client.force_login(user)
    now = timezone.now()
    record_free_usage(user=user, model="deepseek-chat", request_id="earlier", prompt_cache_hit_tokens=0,
                      prompt_cache_miss_tokens=400, completion_tokens=600, started_at=now, finished_at=now)
    conversation = Conversation.objects.create(user=user, model=chat_model.name)
    response = client.post(reverse("chat-api-messages", args=[conversation.pk]),
                           data=json.dumps({"content": "one more"}), content_type="application/json")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "daily_quota_exceeded"
    assert "1,000 tokens" in error["message"] and "00:00 UTC" in error["message"]
    assert 0 < int(response["Retry-After"]) <= 86400
    assert Message.objects.count() == 0 and worker.jobs == []


def test_creating_a_conversation_needs_an_offered_model(client, chat_model):
    client.force_login(ada())
    url = reverse("chat-api-conversations")
    bad = client.post(url, data=json.dumps({"model": "gpt-5"}), content_type="application/json")
    assert bad.status_code == 400 and Conversation.objects.count() == 0
    good = client.post(url, data=json.dumps({"model": "deepseek-chat"}), content_type="application/json")
    assert good.status_code == 201 and good.json()["title"] == "New chat"


def test_an_unverified_account_gets_no_free_chat(client, chat_model, worker):
    """Even with a session (from before verification was required to log in), no reply is started:
    whoever signs up with someone else's address gets nothing from it."""
    from levee.chat.services import create_conversation
    from tests.personas import make_user

    bob = make_user("bob@example.com", verified=False)
    client.force_login(bob)
    conversation = create_conversation(bob, model="deepseek-chat")
    response = client.post(reverse("chat-api-messages", args=[conversation.pk]),
                           data={"content": "hello", "model": "deepseek-chat"}, content_type="application/json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "email_not_verified"
    assert not Message.objects.filter(conversation=conversation).exists() and not worker.jobs


def test_the_database_going_away_is_a_503_for_the_chat_and_its_page_not_a_500(client, chat_model, worker,
                                                                                monkeypatch):
    """Seen in the chaos run (ops/chaos.py) once web chats joined it: a PostgreSQL restart while a
    message was being posted, or the page loaded, left as a 500."""
    from django.db import OperationalError

    from levee.chat import views

    user = ada()
    client.force_login(user)
    conversation = Conversation.objects.create(user=user, model=chat_model.name)

    def shutting_down(*args, **kwargs):
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(views, "_history", shutting_down)
    monkeypatch.setattr(views, "served_models", shutting_down)
    response = client.post(reverse("chat-api-messages", args=[conversation.pk]),
                           data=json.dumps({"content": "hi"}), content_type="application/json")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert "temporarily unavailable" in response.json()["error"]["message"]
    assert Message.objects.count() == 0 and worker.jobs == []  # nothing half-written, nothing queued
    page = client.get(reverse("chat"))
    assert page.status_code == 503 and page["Retry-After"] == "5"
    assert "temporarily unavailable" in page.content.decode()
