"""Search across the owner's conversations (full-text on PostgreSQL, substrings elsewhere) and the
Markdown and JSON exports."""
import json

import pytest
from django.db import connection
from django.urls import reverse

from levee.chat.models import Conversation, Message
from tests.personas import ada, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client):
    user = ada()
    client.force_login(user)
    return user


def _chat(user, title, *turns, model="deepseek-chat"):
    conversation = Conversation.objects.create(user=user, model=model, title=title)
    for role, content in turns:
        Message.objects.create(conversation=conversation, role=role, content=content, model=model)
    return conversation


def _search(client, q):
    response = client.get(reverse("chat-api-search"), {"q": q})
    assert response.status_code == 200
    return response.json()["results"]


def test_search_finds_words_in_messages_and_titles_of_the_owner_only(client, owner):
    rust = _chat(owner, "Systems", ("user", "How do I borrow a value in Rust?"),
                 ("assistant", "A reference borrows the value without taking ownership."))
    soup = _chat(owner, "Dinner ideas", ("user", "A quick tomato soup recipe"))
    _chat(make_user("eve@example.com"), "Eve's Rust notes", ("user", "Rust borrow checker secrets"))
    hits = _search(client, "borrow")
    assert [h["conversation"] for h in hits] == [rust.pk]
    assert "borrow" in hits[0]["snippet"].lower() and hits[0]["message"] is not None
    assert [h["conversation"] for h in _search(client, "dinner")] == [soup.pk]  # the title
    assert _search(client, "secrets") == []  # another account's words are never found
    assert _search(client, "   ") == []


def test_search_matches_every_word_and_cuts_long_text_around_the_hit(client, owner):
    long = "word " * 200 + "needle in a haystack " + "word " * 200
    found = _chat(owner, "", ("assistant", long))
    _chat(owner, "", ("assistant", "only a needle here"))
    hits = _search(client, "needle haystack")
    assert [h["conversation"] for h in hits] == [found.pk]
    assert hits[0]["snippet"].startswith("…") and hits[0]["snippet"].endswith("…")
    assert "needle in a haystack" in hits[0]["snippet"] and len(hits[0]["snippet"]) < 160


def test_search_finds_chinese_text_without_spaces(client, owner):
    found = _chat(owner, "", ("user", "请用中文解释一下混合专家模型的原理"))
    assert [h["conversation"] for h in _search(client, "混合专家")] == [found.pk]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's full-text search")
def test_postgres_uses_full_text_search_with_its_index(client, owner):
    _chat(owner, "", ("user", "The quick brown fox jumps"))
    assert len(_search(client, '"quick brown" -cat')) == 1  # websearch syntax: a phrase and a NOT
    assert _search(client, '"brown quick"') == []
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'chat_message_content_fts'")
        assert "to_tsvector('simple'" in cursor.fetchone()[0]


def test_search_needs_a_login_and_refuses_nul(client):
    assert client.get(reverse("chat-api-search"), {"q": "x"}).status_code == 401
    client.force_login(ada())
    response = client.get(reverse("chat-api-search"), {"q": "a\x00b"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "q"


def test_export_as_markdown_and_json(client, owner):
    chat = _chat(owner, "Sums <b>", ("user", "What is 2 + 2?"))
    Message.objects.create(conversation=chat, role="assistant", content="It is **4**.", reasoning="Two and two.\nFour.",
                           model="deepseek-reasoner", completion_tokens=5)
    md = client.get(reverse("chat-export", args=[chat.pk, "md"]))
    assert md.status_code == 200 and md["Content-Type"].startswith("text/markdown")
    assert md["Content-Disposition"] == f'attachment; filename="levee-chat-{chat.pk}.md"'
    assert md.content.decode() == ("# Sums <b>\n\n## You\n\nWhat is 2 + 2?\n\n## Assistant (deepseek-reasoner)\n\n"
                                   "> **Thought**\n> Two and two.\n> Four.\n\nIt is **4**.\n")
    data = json.loads(client.get(reverse("chat-export", args=[chat.pk, "json"])).content)
    assert data["title"] == "Sums <b>" and [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["reasoning"] == "Two and two.\nFour." and data["messages"][1]["completion_tokens"] == 5
    assert client.get(reverse("chat-export", args=[chat.pk, "html"])).status_code == 404


def test_export_in_chinese_and_never_of_another_account(client, owner):
    chat = _chat(owner, "你好", ("user", "你好"), ("assistant", "你好！"))
    md = client.get(reverse("chat-export", args=[chat.pk, "md"]), HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    assert md == "# 你好\n\n## 你\n\n你好\n\n## 助手 (deepseek-chat)\n\n你好！\n"
    other = _chat(make_user("eve@example.com"), "theirs", ("user", "secret"))
    assert client.get(reverse("chat-export", args=[other.pk, "md"])).status_code == 404
