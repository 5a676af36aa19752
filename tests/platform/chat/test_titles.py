"""Titles and message text are data: the server escapes them in HTML and hands messages to the page
as JSON the browser renders as text."""
import pytest
from django.urls import reverse

from levee.chat.models import Conversation, Message
from levee.chat.services import title_from
from tests.personas import ada

pytestmark = pytest.mark.django_db

EVIL = '<img src=x onerror=window.__xss=1><script>window.__xss=2</script>'


def test_titles_come_from_the_first_message_on_one_line():
    assert title_from("  Hello\n\n  world  ") == "Hello world"
    long = title_from("word " * 40)
    assert len(long) <= 80 and long.endswith("…") and not long.endswith(" …")


def test_titles_and_messages_are_escaped_in_the_page(client, chat_model):
    user = ada()
    client.force_login(user)
    conversation = Conversation.objects.create(user=user, model=chat_model.name, title=title_from(EVIL))
    Message.objects.create(conversation=conversation, role="assistant", content=EVIL + "</script>")
    for url in (reverse("chat"), reverse("chat-conversation", args=[conversation.pk])):
        page = client.get(url).content.decode()
        assert "<img src=x" not in page and "<script>window" not in page
        assert "&lt;img src=x onerror=window.__xss=1&gt;" in page
    # The messages travel as JSON inside <script type="application/json">, with < escaped.
    page = client.get(reverse("chat-conversation", args=[conversation.pk])).content.decode()
    assert "\\u003Cimg src=x" in page and "\\u003C/script\\u003E" in page


def test_a_conversation_whose_first_message_was_refused_is_not_listed(client, chat_model):
    user = ada()
    client.force_login(user)
    Conversation.objects.create(user=user, model=chat_model.name)
    Conversation.objects.create(user=user, model=chat_model.name, title="Kept")
    page = client.get(reverse("chat")).content.decode()
    assert "Kept" in page and "New chat</a>" not in page.split('id="conversation-list"')[1]
