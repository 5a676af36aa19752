"""The web chat counts each message's tokens once, trims a long conversation by adding them up
(one encoding per reply, not one per dropped turn), and limits messages per account before any
tokenizing."""
import json

import pytest
from django.urls import reverse

from levee.chat import views
from levee.chat.models import Message
from levee.chat.services import create_conversation
from levee.core import memo
from tests.personas import ada

from .conftest import sse_events

pytestmark = pytest.mark.django_db


def _post(client, conversation, text):
    return client.post(reverse("chat-api-messages", args=[conversation.pk]),
                       data=json.dumps({"content": text}), content_type="application/json")


@pytest.fixture
def conversation(client, chat_model):
    user = ada()
    client.force_login(user)
    return create_conversation(user, model="deepseek-chat")


@pytest.fixture
def encodings(monkeypatch):
    """How many prompts were encoded, and of how many messages each (with conftest's one-token-a-word encoder)."""
    calls = []
    fake = views._encode
    monkeypatch.setattr(views, "_encode", lambda model, messages: calls.append(len(messages)) or fake(model, messages))
    return calls


def test_each_message_stores_its_token_count(client, conversation, worker):
    sse_events(_post(client, conversation, "three little words"))
    question, reply = Message.objects.order_by("id")
    assert question.content_tokens == 3 + 4  # conftest's encoder: a token a word, four for the template
    assert reply.content_tokens == reply.completion_tokens == 3  # "Hello", " there", "!"


@pytest.mark.django_db(transaction=True)  # the model row is read (and memoized) from another connection
def test_a_long_conversation_is_trimmed_by_arithmetic(client, conversation, chat_model, worker, encodings):
    chat_model.context_length = 200
    chat_model.save()
    memo.clear_all()
    for n in range(6):
        sse_events(_post(client, conversation, " ".join(["word"] * 30) + f" {n}"))
    encodings.clear()
    sse_events(_post(client, conversation, "last question"))
    # Two encodings: the new message counted alone, then the trimmed prompt, once.
    assert len(encodings) == 2 and encodings[0] == 1
    job = worker.jobs[-1]
    assert len(job["prompt_ids"]) <= chat_model.context_length - views.MIN_REPLY_TOKENS
    assert encodings[1] < 13 and encodings[1] % 2 == 1  # oldest turns dropped in pairs, the new one kept


def test_chat_messages_are_limited_per_account_before_tokenizing(client, conversation, worker, encodings, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "chat.account": {"requests": (2, 60)}}
    for text in ("one", "two"):
        response = _post(client, conversation, text)
        assert response.status_code == 200
        sse_events(response)
    before = len(encodings)
    refused = _post(client, conversation, "three")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(encodings) == before and Message.objects.count() == 4
