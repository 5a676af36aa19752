"""A reasoner model in the web chat: its <think>…</think> streams as `reasoning` events and is saved
apart from the answer, which alone goes back to the model on the next turn."""
import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse
from django.utils import timezone

from inference import protocol
from levee.api.models import LlmModel
from levee.chat import services, views
from levee.chat.models import Conversation, Message, Role, Status
from tests.personas import ada

from .conftest import sse_events

pytestmark = pytest.mark.django_db

# The tags cut across deltas, as a tokenizer cuts them.
THINKING = [("delta", {"text": p}) for p in ("<thi", "nk>\nLet me", " think.</th", "ink>\n\nIt is", " 4.")]


@pytest.fixture
def reasoner(db, monkeypatch):
    model, _ = LlmModel.objects.update_or_create(name="deepseek-reasoner", defaults={
        "context_length": 2048, "max_output": 1024, "default_max_tokens": 256, "reasoner": True, "enabled": True})

    async def enabled_model(name):
        # The memo reads on the database pool, outside this test's transaction.
        return await sync_to_async(LlmModel.objects.filter(name=name, enabled=True).first)()

    monkeypatch.setattr(views, "aenabled_model", enabled_model)
    return model


@pytest.fixture
def owner(client):
    user = ada()
    client.force_login(user)
    return user


def _post(client, conversation, text):
    return client.post(reverse("chat-api-messages", args=[conversation.pk]),
                       data=json.dumps({"content": text}), content_type="application/json")


def test_a_reasoners_thinking_streams_apart_from_its_answer_and_is_saved_apart(client, owner, reasoner, worker):
    conversation = Conversation.objects.create(user=owner, model=reasoner.name)
    worker.script = THINKING + [("done", {"finish_reason": "stop"})]
    events = sse_events(_post(client, conversation, "What is 2 + 2?"))
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done" and events[-1][1]["status"] == "complete"
    assert "".join(d["text"] for n, d in events if n == "reasoning") == "Let me think."
    assert "".join(d["text"] for n, d in events if n == "delta") == "It is 4."
    assert names.index("delta") > max(i for i, n in enumerate(names) if n == "reasoning")
    reply = Message.objects.get(role="assistant")
    assert (reply.reasoning, reply.content) == ("Let me think.", "It is 4.")
    detail = client.get(reverse("chat-api-conversation", args=[conversation.pk])).json()
    assert detail["messages"][1]["reasoning"] == "Let me think."


def test_the_page_hands_the_stored_reasoning_to_the_script(client, owner, reasoner, worker):
    conversation = Conversation.objects.create(user=owner, model=reasoner.name, title="t")
    Message.objects.create(conversation=conversation, role="assistant", content="It is 4.", reasoning="Let me <b>think")
    page = client.get(reverse("chat-conversation", args=[conversation.pk])).content.decode()
    data = page.split('id="initial-messages" type="application/json">')[1].split("</script>")[0]
    assert json.loads(data)[0]["reasoning"] == "Let me <b>think"


def test_a_reply_cut_off_while_thinking_keeps_its_reasoning(client, owner, reasoner, worker):
    conversation = Conversation.objects.create(user=owner, model=reasoner.name)
    worker.script = [("delta", {"text": "<think>Hmm, per"}), ("delta", {"text": "haps </thi"}),
                     ("done", {"finish_reason": "length"})]
    events = sse_events(_post(client, conversation, "hard question"))
    # What the splitter held back in case it became </think> is sent when the reply ends.
    assert "".join(d["text"] for n, d in events if n == "reasoning") == "Hmm, perhaps </thi"
    assert not [n for n, _ in events if n == "delta"]
    reply = Message.objects.get(role="assistant")
    assert (reply.reasoning, reply.content, reply.status) == ("Hmm, perhaps </thi", "", "complete")


def test_an_ordinary_model_is_not_split(client, owner, chat_model, worker):
    conversation = Conversation.objects.create(user=owner, model=chat_model.name)
    worker.script = THINKING + [("done", {"finish_reason": "stop"})]
    events = sse_events(_post(client, conversation, "hi"))
    assert "reasoning" not in [n for n, _ in events]
    reply = Message.objects.get(role="assistant")
    assert (reply.reasoning, reply.content) == ("", "<think>\nLet me think.</think>\n\nIt is 4.")


def test_the_next_turn_sends_the_answer_without_the_reasoning(client, owner, reasoner, worker, monkeypatch):
    conversation = Conversation.objects.create(user=owner, model=reasoner.name)
    prompts = []

    def encode(model, messages):
        prompts.append(messages)
        return [1] * sum(len(m["content"].split()) + 4 for m in messages)

    monkeypatch.setattr(views, "_encode", encode)
    worker.script = THINKING + [("done", {"finish_reason": "stop"})]
    sse_events(_post(client, conversation, "What is 2 + 2?"))
    sse_events(_post(client, conversation, "And 3 + 3?"))
    assert prompts[-1] == [{"role": "user", "content": "What is 2 + 2?"},
                           {"role": "assistant", "content": "It is 4."},
                           {"role": "user", "content": "And 3 + 3?"}]


def test_the_sweep_splits_a_lost_reasoners_reply_too(owner, reasoner, redis_client, settings):
    conversation = Conversation.objects.create(user=owner, model=reasoner.name)
    created = timezone.now() - timedelta(seconds=settings.LEVEE_JOB_QUEUE_TIMEOUT + settings.LEVEE_JOB_MAX_RUNTIME + 120)
    reply = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, status=Status.STREAMING,
                                   model=reasoner.name, job_id="lostthinker", prompt_tokens=5, created_at=created)
    key = protocol.stream_key("lostthinker")
    for n, (_kind, payload) in enumerate(THINKING, start=1):
        redis_client.xadd(key, protocol.encode_event(protocol.DELTA, usage=protocol.usage_dict(0, 5, n), **payload))
    redis_client.xadd(key, protocol.encode_event(protocol.DONE, finish_reason="stop",
                                                 usage=protocol.usage_dict(0, 5, len(THINKING))))
    assert services.sweep_stale_replies() == 1
    reply.refresh_from_db()
    assert (reply.status, reply.reasoning, reply.content, reply.completion_tokens) == (
        Status.COMPLETE, "Let me think.", "It is 4.", len(THINKING))
