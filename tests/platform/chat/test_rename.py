"""PATCH /chat/api/conversations/<id> {"title"}: the owner renames a conversation; bad titles are
refused in the API's error format and change nothing."""
import json

import pytest
from django.test import Client
from django.urls import reverse

from levee.chat.models import TITLE_MAX_LENGTH, Conversation
from tests.personas import ada, make_user

pytestmark = pytest.mark.django_db


def _patch(client, conversation, body):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.patch(reverse("chat-api-conversation", args=[conversation.pk]), data=data,
                        content_type="application/json")


@pytest.fixture
def conversation(client, chat_model):
    user = ada()
    client.force_login(user)
    return Conversation.objects.create(user=user, model=chat_model.name, title="First words")


def test_the_owner_renames_a_conversation_and_the_title_is_trimmed(client, conversation, worker):
    before = conversation.updated_at
    response = _patch(client, conversation, {"title": "  Holiday plans  "})
    assert response.status_code == 200
    assert response.json()["id"] == conversation.pk and response.json()["title"] == "Holiday plans"
    conversation.refresh_from_db()
    assert conversation.title == "Holiday plans"
    assert conversation.updated_at == before  # renaming is not activity: the list keeps its order


def test_a_title_of_exactly_the_limit_is_accepted(client, conversation, worker):
    title = "é" * TITLE_MAX_LENGTH
    assert _patch(client, conversation, {"title": title}).status_code == 200
    conversation.refresh_from_db()
    assert conversation.title == title


@pytest.mark.parametrize("body,code", [
    ({"title": "x" * (TITLE_MAX_LENGTH + 1)}, "invalid_parameter"),
    ({"title": ""}, "missing_parameter"),
    ({"title": "   "}, "missing_parameter"),
    ({"title": "two\nlines"}, "invalid_parameter"),
    ({"title": "a\tb"}, "invalid_parameter"),
    ({"title": "nul\x00here"}, "invalid_parameter"),
    ({"title": "\x1b[31mred"}, "invalid_parameter"),
    ({"title": "lone \ud800 surrogate"}, "invalid_format"),  # refused by the JSON parser (levee.core.jsonbody)
    ({"title": 42}, "missing_parameter"),
    ({"title": None}, "missing_parameter"),
    ({"name": "Holiday"}, "missing_parameter"),
])
def test_a_bad_title_is_a_400_naming_the_title_and_changes_nothing(client, conversation, worker, body, code):
    response = _patch(client, conversation, body)
    assert response.status_code == 400
    error = response.json()["error"]
    param = None if code == "invalid_format" else "title"
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]
    conversation.refresh_from_db()
    assert conversation.title == "First words"


def test_a_body_that_is_not_a_json_object_is_a_400(client, conversation, worker):
    for body in ("not json", "[1, 2]"):
        response = _patch(client, conversation, body)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_format"
    conversation.refresh_from_db()
    assert conversation.title == "First words"


def test_another_users_conversation_cannot_be_renamed(client, chat_model, worker):
    theirs = Conversation.objects.create(user=make_user("eve@example.com"), model=chat_model.name, title="secret")
    client.force_login(ada())
    response = _patch(client, theirs, {"title": "mine now"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    theirs.refresh_from_db()
    assert theirs.title == "secret"


def test_renaming_needs_a_session_and_the_csrf_token(conversation, worker):
    anonymous = Client()
    assert _patch(anonymous, conversation, {"title": "x"}).status_code == 401
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(conversation.user)
    assert _patch(strict, conversation, {"title": "x"}).status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "First words"


def test_other_methods_are_405(client, conversation, worker):
    url = reverse("chat-api-conversation", args=[conversation.pk])
    for method in (client.post, client.put):
        response = method(url, data=json.dumps({"title": "x"}), content_type="application/json")
        assert response.status_code == 405 and response["Allow"] == "GET, PATCH, DELETE"
    conversation.refresh_from_db()
    assert conversation.title == "First words"


def test_the_detail_still_answers_get_with_the_messages(client, conversation, worker):
    conversation.messages.create(role="user", content="hello")
    data = client.get(reverse("chat-api-conversation", args=[conversation.pk])).json()
    assert data["title"] == "First words" and [m["content"] for m in data["messages"]] == ["hello"]
