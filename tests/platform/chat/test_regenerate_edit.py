"""Regenerate the last reply and edit a sent question: both truncate (the replaced messages go once
the new job is queued; the history sent stops where the replaced part begins)."""
import json

import pytest
from django.urls import reverse

from levee.billing.models import UsageRecord
from levee.chat import views
from levee.chat.models import Conversation, Message
from tests.personas import ada, make_user

from .conftest import sse_events

pytestmark = pytest.mark.django_db


def _post(client, conversation, body):
    return client.post(reverse("chat-api-messages", args=[conversation.pk]), data=json.dumps(body),
                       content_type="application/json")


@pytest.fixture
def prompts(monkeypatch):
    """The messages each prompt was built from."""
    seen: list[list[dict]] = []

    def encode(model, messages):
        seen.append([dict(m) for m in messages])
        return [1] * sum(len(m["content"].split()) + 4 for m in messages)

    monkeypatch.setattr(views, "_encode", encode)
    return seen


@pytest.fixture
def chat(client, chat_model, worker):
    """A conversation of two finished turns."""
    user = ada()
    client.force_login(user)
    conversation = Conversation.objects.create(user=user, model=chat_model.name)
    for text in ("first question", "second question"):
        sse_events(_post(client, conversation, {"content": text}))
    return conversation


def _rows(conversation):
    return list(conversation.messages.values_list("role", "content", "status"))


def test_regenerate_replaces_the_last_reply_and_answers_the_same_question(client, chat, worker, prompts):
    old_reply = chat.messages.last()
    worker.script = worker.complete("A ", "fresh ", "answer")
    events = sse_events(_post(client, chat, {"regenerate": True}))
    assert [n for n, _ in events][0] == "start" and events[-1][1]["status"] == "complete"
    start = events[0][1]
    assert start["question_id"] == chat.messages.filter(content="second question").get().pk
    assert start["replaced"] == [start["question_id"] + 1, start["reply_id"]]
    assert prompts[-1] == [{"role": "user", "content": "first question"},
                           {"role": "assistant", "content": "Hello there!"},
                           {"role": "user", "content": "second question"}]
    assert _rows(chat) == [("user", "first question", "complete"), ("assistant", "Hello there!", "complete"),
                           ("user", "second question", "complete"), ("assistant", "A fresh answer", "complete")]
    assert not Message.objects.filter(pk=old_reply.pk).exists()
    assert UsageRecord.objects.count() == 3  # the replaced reply's tokens still count


def test_edit_truncates_from_the_edited_question_and_sends_the_new_text(client, chat, worker, prompts):
    first = chat.messages.filter(content="first question").get()
    events = sse_events(_post(client, chat, {"edit": first.pk, "content": "  a better first question "}))
    assert events[-1][1]["status"] == "complete"
    assert prompts[-1] == [{"role": "user", "content": "a better first question"}]
    assert _rows(chat) == [("user", "a better first question", "complete"), ("assistant", "Hello there!", "complete")]
    assert events[0][1]["replaced"] == [first.pk, events[0][1]["question_id"]]
    chat.refresh_from_db()
    assert chat.title == "first question"  # the title stays what it was


@pytest.mark.parametrize("body, status, code", [
    ({"regenerate": "yes"}, 400, "invalid_parameter"),
    ({"regenerate": True, "edit": 1}, 400, "invalid_parameter"),
    ({"edit": "1", "content": "x"}, 400, "invalid_parameter"),
    ({"edit": 10**9, "content": "x"}, 404, "message_not_found"),
])
def test_bad_regenerate_and_edit_requests_change_nothing(client, chat, worker, body, status, code):
    before, jobs = _rows(chat), len(worker.jobs)
    response = _post(client, chat, body)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert _rows(chat) == before and len(worker.jobs) == jobs


def test_an_edit_must_name_a_question_of_this_conversation(client, chat, worker):
    reply = chat.messages.filter(role="assistant").first()
    other = Conversation.objects.create(user=make_user("eve@example.com"), model="deepseek-chat")
    theirs = Message.objects.create(conversation=other, role="user", content="secret")
    for target in (reply.pk, theirs.pk):
        response = _post(client, chat, {"edit": target, "content": "x"})
        assert response.status_code == 404
    assert theirs.content == Message.objects.get(pk=theirs.pk).content


def test_nothing_to_regenerate_in_an_empty_conversation(client, chat_model, worker):
    user = ada()
    client.force_login(user)
    empty = Conversation.objects.create(user=user, model=chat_model.name)
    response = _post(client, empty, {"regenerate": True})
    assert response.status_code == 400 and response.json()["error"]["code"] == "nothing_to_regenerate"


def test_a_refused_enqueue_keeps_what_was_to_be_replaced(client, chat, worker, monkeypatch):
    from levee.api import jobs

    async def refuse(message, queue):
        raise ConnectionError("broker down")

    monkeypatch.setattr(jobs, "enqueue", refuse)
    before = _rows(chat)
    assert _post(client, chat, {"regenerate": True}).status_code == 503
    first = chat.messages.filter(content="first question").get()
    assert _post(client, chat, {"edit": first.pk, "content": "new"}).status_code == 503
    assert _rows(chat) == before
