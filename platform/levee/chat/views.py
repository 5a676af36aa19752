"""The chat page and its JSON/SSE endpoints (session auth + CSRF).

A reply goes through the same job path as the paid API (levee.api.jobs + inference.protocol): shed
check, capacity check, quota, enqueue, then the job's events are streamed to the browser as SSE.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, render
from redis.exceptions import RedisError

from inference import protocol
from levee.accounts.operators import signed_in
from levee.api import jobs, reader
from levee.api.models import LlmModel, aenabled_model
from levee.api.reader import JobReader
from levee.api.services import served_models
from levee.api.tokens import opens_thinking
from levee.chat import services
from levee.chat.models import Conversation, Message, Status
from levee.core import jsonbody
from levee.core.asyncdb import db  # database work on the shared pool: a stream must not hold a connection
from levee.core.errors import error_response
from levee.shield import api as shield

log = logging.getLogger(__name__)

# Room always left for a reply when old turns are dropped to fit a long conversation into the context.
MIN_REPLY_TOKENS = 64


def _message_row(message: Message) -> dict:
    return {"id": message.pk, "role": message.role, "content": message.content, "reasoning": message.reasoning,
            "status": message.status, "model": message.model, "error": message.error}


def _conversation_row(conversation: Conversation) -> dict:
    return {"id": conversation.pk, "title": conversation.display_title, "model": conversation.model,
            "updated_at": conversation.updated_at.isoformat()}


@login_required
def chat_page(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    user = signed_in(request)
    conversation = None
    messages: list[dict] = []
    if conversation_id is not None:
        conversation = get_object_or_404(Conversation, pk=conversation_id, user=user)
        messages = [_message_row(m) for m in conversation.messages.all()]
    models, _checked = served_models()
    return render(request, "chat/chat.html", {
        # A conversation gets its title with its first message; one left empty (its first message was
        # refused) is not worth a place in the list.
        "conversation": conversation,
        "conversations": Conversation.objects.filter(user=user).exclude(title="")[:100],
        "models": models,
        "selected_model": conversation.model if conversation and conversation.model in models
        else (models[0] if models else ""),
        "messages_data": messages,
        "used": services.tokens_used_today(user),  # the quota: levee.chat.context
    })


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = jsonbody.loads(request.body or b"{}")
    except jsonbody.BadJSON as exc:
        raise services.ChatRefused(400, "invalid_format", f"The body must be a JSON object ({exc}).") from None
    if not isinstance(body, dict):
        raise services.ChatRefused(400, "invalid_format", "The body must be a JSON object.")
    return body


def _refused(exc: services.ChatRefused) -> JsonResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=headers)


async def _enabled_model(name: object) -> LlmModel:
    if not isinstance(name, str) or not name:
        raise services.ChatRefused(400, "missing_parameter", "Choose a model.", param="model")
    model = await aenabled_model(name)
    if model is None:
        raise services.ChatRefused(400, "model_not_found", f"Model Not Exist: {name[:64]}", param="model")
    return model


def create_conversation(request: HttpRequest) -> JsonResponse:
    """POST /chat/api/conversations {"model": "..."} → the new, empty conversation."""
    if request.method != "POST":
        return error_response(405, f"{request.method} is not allowed here")
    if not request.user.is_authenticated:
        return error_response(401, "Log in to chat.", code="not_authenticated")
    try:
        body = _json_body(request)
        name = body.get("model")
        if not isinstance(name, str) or not LlmModel.objects.filter(name=name, enabled=True).exists():
            raise services.ChatRefused(400, "model_not_found", "Choose one of the models offered.", param="model")
    except services.ChatRefused as exc:
        return _refused(exc)
    conversation = services.create_conversation(request.user, model=name)
    return JsonResponse(_conversation_row(conversation), status=201)


async def conversation_detail(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """GET /chat/api/conversations/<id>: the conversation and its messages.
    PATCH {"title": "..."}: rename it → the conversation.
    DELETE: delete it and its messages → 204; a reply still being written has its job cancelled first."""
    if request.method not in ("GET", "PATCH", "DELETE"):
        return error_response(405, f"{request.method} is not allowed here", headers={"Allow": "GET, PATCH, DELETE"})
    user = await db(get_user)(request)
    if not user.is_authenticated:
        return error_response(401, "Log in to chat.", code="not_authenticated")
    conversation = await db(lambda: Conversation.objects.filter(pk=conversation_id, user=user).first())()
    if conversation is None:
        return error_response(404, "No such conversation.")
    if request.method == "PATCH":
        try:
            body = _json_body(request)
            if "title" not in body:
                raise services.ChatRefused(400, "missing_parameter", "Give the chat a title.", param="title")
            await db(services.rename_conversation)(conversation, body["title"])
        except services.ChatRefused as exc:
            return _refused(exc)
        return JsonResponse(_conversation_row(conversation))
    if request.method == "DELETE":
        # Stop the worker before the reply's row goes: nobody would be left to read what it writes.
        for job_id in await db(services.streaming_job_ids)(conversation):
            try:
                await jobs.cancel(job_id)
            except RedisError:
                return error_response(503, "Could not reach the service to stop the reply being written; retry.",
                                      headers={"Retry-After": "2"})
        await db(services.delete_conversation)(conversation)
        return HttpResponse(status=204)
    messages = await db(lambda: [_message_row(m) for m in conversation.messages.all()])()
    return JsonResponse({**_conversation_row(conversation), "messages": messages})


def _mode() -> str | None:
    return services.current_mode()


def _encode(model: LlmModel, messages: list[dict[str, str]]) -> list[int]:
    from levee.api.tokens import encode_prompt

    return encode_prompt(model, messages)


# Template tokens around one turn (role markers, end of turn) and around the whole prompt (BOS, the
# generation prompt): an estimate for the arithmetic; the one real encoding checks it.
TURN_OVERHEAD_TOKENS = 8
PROMPT_OVERHEAD_TOKENS = 8


def _turn_tokens(turn: dict) -> int:
    return (turn["tokens"] or len(turn["content"].encode())) + TURN_OVERHEAD_TOKENS  # UTF-8 bytes bound byte-level BPE


def _fit_prompt(model: LlmModel, history: list[dict], text: str, text_tokens: int) -> list[int]:
    """The prompt ids for the conversation so far plus `text`, dropping the oldest turns until a
    reply of at least MIN_REPLY_TOKENS fits in the context. Which turns stay is decided by adding up
    the messages' stored token counts; the prompt is then encoded once (again only if the estimate
    was short), never once per dropped turn."""
    budget = model.context_length - MIN_REPLY_TOKENS
    turns = list(history)
    total = PROMPT_OVERHEAD_TOKENS + text_tokens + TURN_OVERHEAD_TOKENS + sum(_turn_tokens(t) for t in turns)
    while True:
        while turns and total > budget:
            dropped, turns = turns[:2], turns[2:]  # a question and its answer
            total -= sum(_turn_tokens(t) for t in dropped)
        ids = _encode(model, [{"role": t["role"], "content": t["content"]} for t in turns]
                      + [{"role": "user", "content": text}])
        if len(ids) <= budget:
            return ids
        if not turns:
            raise services.ChatRefused(400, "context_length_exceeded",
                                       f"The message is too long for {model.name} ({len(ids)} tokens; "
                                       f"at most {budget}).", param="content")
        total = max(total, budget) + 1  # the estimate was short: drop another turn and encode again


def _history(conversation: Conversation, before: int | None = None) -> list[dict]:
    """The turns sent with a new question: every finished message (before message id `before`, for
    an edit or a regeneration, which replace the rest)."""
    messages = conversation.messages.exclude(status=Status.STREAMING).exclude(content="")
    if before is not None:
        messages = messages.filter(pk__lt=before)
    # The answer only: a reasoner's reasoning is not fed back to the model (DeepSeek's rule for
    # deepseek-reasoner; multi-turn prompts with it are out of the model's training distribution).
    return [{"role": m.role, "content": m.content, "tokens": m.content_tokens} for m in messages]


def _target(conversation: Conversation, body: dict) -> tuple[str, Message | None, int | None]:
    """What a message request answers: (kind, the question to answer again, the first message an edit
    replaces). `{"regenerate": true}`: the last reply again, for the question before it; `{"edit": id,
    "content"}`: that question of the owner's, rewritten (it and everything after it are replaced)."""
    regenerate, edit = body.get("regenerate", False), body.get("edit")
    if regenerate not in (True, False):
        raise services.ChatRefused(400, "invalid_parameter", "regenerate must be true or false.", param="regenerate")
    if regenerate and edit is not None:
        raise services.ChatRefused(400, "invalid_parameter", "Either regenerate or edit, not both.", param="edit")
    if regenerate:
        last = conversation.messages.order_by("-pk").first()
        question = conversation.messages.filter(role="user").order_by("-pk").first()
        if last is None or last.role != "assistant" or question is None or last.status == Status.STREAMING:
            raise services.ChatRefused(400, "nothing_to_regenerate", "There is no finished reply to regenerate.",
                                       param="regenerate")
        return "regenerate", question, None
    if edit is not None:
        if type(edit) is not int:
            raise services.ChatRefused(400, "invalid_parameter", "edit must be a message id.", param="edit")
        target = conversation.messages.filter(pk=edit, role="user").first()
        if target is None:
            raise services.ChatRefused(404, "message_not_found", "No such message of yours in this conversation.",
                                       param="edit")
        return "edit", None, target.pk
    return "new", None, None


def _count_text(model: LlmModel, text: str) -> int:
    """A new message's tokens, as a prompt of its own (so with its template tokens: an upper bound)."""
    return len(_encode(model, [{"role": "user", "content": text}]))


async def _admit_message(user: Any) -> None:
    """Chat messages per account (SHIELD_LIMITS "chat.account"), before any tokenizing. Raises ChatRefused."""
    from levee.shield import limiter, store
    from levee.shield.subjects import ChatAccount

    try:
        decision = await limiter.acheck([ChatAccount(user.pk)], {"requests": 1})
    except store.ShieldRedisDown:
        raise services.ChatRefused(503, "server_overloaded", "Chat is briefly unavailable; retry shortly.",
                                   retry_after=5) from None
    if not decision.allowed:
        raise services.ChatRefused(429, "rate_limit_exceeded", "You are sending messages faster than the chat "
                                   f"allows; wait {decision.retry_after} s.", retry_after=decision.retry_after)


async def post_message(request: HttpRequest, conversation_id: int) -> HttpResponseBase:
    """POST /chat/api/conversations/<id>/messages {"content": "...", "model": "..."} → text/event-stream:
    `start` (message ids, title), `reasoning` (a reasoner's thinking, text) and `delta` (the answer,
    text), then `done` or `error`; `: keep-alive` while queued. With `"regenerate": true` (no content)
    the last reply is written again; with `"edit": <message id>` that question is replaced by content
    and what followed it goes (see _target)."""
    if request.method != "POST":
        return error_response(405, f"{request.method} is not allowed here")
    user = await db(get_user)(request)
    if not user.is_authenticated:
        return error_response(401, "Log in to chat.", code="not_authenticated")
    conversation = await db(lambda: Conversation.objects.filter(pk=conversation_id, user=user).first())()
    if conversation is None:
        return error_response(404, "No such conversation.")
    try:
        await _admit_message(user)
        body = _json_body(request)
        _kind, question, replace_from = await db(_target)(conversation, body)
        text = question.content if question is not None else body.get("content")
        if not isinstance(text, str) or not text.strip():
            raise services.ChatRefused(400, "missing_parameter", "Write a message first.", param="content")
        text = text.strip()
        if len(text) > settings.LEVEE_WEB_CHAT_MAX_MESSAGE_CHARS or "\x00" in text:
            raise services.ChatRefused(400, "invalid_parameter",
                                       f"A message may have at most {settings.LEVEE_WEB_CHAT_MAX_MESSAGE_CHARS:,} "
                                       f"characters.", param="content")
        model = await _enabled_model(body.get("model") or conversation.model)
        history = await db(_history)(conversation, question.pk if question is not None else replace_from)
        text_tokens = await sync_to_async(_count_text, thread_sensitive=False)(model, text)
        prompt_ids = await sync_to_async(_fit_prompt, thread_sensitive=False)(model, history, text, text_tokens)
        retry_after = await shield.ashed(model.name, "free_chat")
        if retry_after:
            raise services.ChatRefused(503, "server_overloaded",
                                       "Free chat is paused for a moment while the service is under heavy load. "
                                       "Please retry shortly.", retry_after=int(retry_after))
        try:
            await jobs.check_capacity(model)
        except jobs.Overloaded as exc:
            raise services.ChatRefused(503, "server_overloaded", exc.message, retry_after=exc.retry_after) from None
        except RedisError:
            log.exception("redis unavailable before a chat enqueue")
            raise services.ChatRefused(503, "server_overloaded", "The service is temporarily unavailable; retry shortly.",
                                       retry_after=5) from None
        room = min(model.default_max_tokens, model.max_output, model.context_length - len(prompt_ids))
        job_id = uuid.uuid4().hex
        started = await db(services.start_reply)(
            user, conversation, text=text, model=model.name, prompt_tokens=len(prompt_ids), room=room,
            job_id=job_id, mode=await db(_mode)(), question=question, replace_from=replace_from,
            text_tokens=text_tokens)
    except services.ChatRefused as exc:
        return _refused(exc)

    pickup = time.time() + settings.LEVEE_JOB_QUEUE_TIMEOUT
    message = protocol.JobMessage(job_id=job_id, model=model.name, prompt_ids=prompt_ids, user=str(user.pk),
                                  hold_id=None, deadline=pickup + settings.LEVEE_JOB_MAX_RUNTIME, pickup_deadline=pickup,
                                  reader=jobs.reader_id(), sampling=protocol.Sampling(max_tokens=started.max_tokens))
    try:
        await jobs.enqueue(message, model.queue_name)
    except Exception:  # the broker refused: nothing started, so the messages go too
        log.exception("enqueue failed for chat job %s", job_id)
        await db(services.abandon_reply)(started)
        return error_response(503, "The service is temporarily unavailable; retry shortly.",
                              headers={"Retry-After": "5"})
    if started.replaces is not None:
        try:
            await db(services.drop_replaced)(started)
        except Exception:  # the reply goes on; the old messages stay visible until deleted by hand
            log.exception("dropping the messages replaced by chat job %s failed", job_id)
    reply = _Reply(request=request, conversation=conversation, started=started, job_id=job_id,
                   reasoner=model.reasoner, thinking_opened=model.reasoner and opens_thinking(model, prompt_ids))
    response = StreamingHttpResponse(reply.sse(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _Reply:
    """Formats one job's typed events (levee.api.reader) for the browser, and saves the reply (with
    its free usage) when it ends."""

    def __init__(self, *, request: HttpRequest, conversation: Conversation, started: services.StartedReply, job_id: str,
                 reasoner: bool = False, thinking_opened: bool = False) -> None:
        self.conversation, self.started, self.job_id = conversation, started, job_id
        self.request_id = getattr(request, "request_id", job_id)
        self.started_at = datetime.now(UTC)
        # A model can emit NUL, which PostgreSQL text refuses: shown and kept as U+FFFD.
        self.reader = JobReader(job_id, prompt_tokens=started.reply.prompt_tokens, reasoner=reasoner,
                                thinking_opened=thinking_opened, replace_nul=True)

    @staticmethod
    def _text(reasoning: str, content: str) -> Iterator[bytes]:
        if reasoning:
            yield _sse("reasoning", {"text": reasoning})
        if content:
            yield _sse("delta", {"text": content})

    async def _finish(self, status: str, *, finish_reason: str = "", error: str = "") -> None:
        self.reader.flush()  # whatever the splitter still holds back
        try:
            await db(services.finish_reply)(
                self.started.reply.pk, content=self.reader.text, reasoning=self.reader.reasoning_text,
                status=status, usage=self.reader.usage, started_at=self.started_at, request_id=self.request_id,
                finish_reason=finish_reason, error=error)
        except Exception:
            # Never leave the reply "streaming": that would block the account's next message.
            log.exception("saving the reply of chat job %s failed", self.job_id)
            await db(services.fail_reply)(self.started.reply.pk)

    async def sse(self) -> AsyncIterator[bytes]:
        finished = False
        try:
            yield _sse("start", {"conversation": _conversation_row(self.conversation),
                                 "question_id": self.started.question.pk, "reply_id": self.started.reply.pk,
                                 "max_tokens": self.started.max_tokens,
                                 "replaced": list(self.started.replaces) if self.started.replaces else None})
            async with aclosing(self.reader.follow()) as events:  # closed early: the job is cancelled
                async for event in events:
                    if isinstance(event, reader.Keepalive):
                        yield b": keep-alive\n\n"
                    elif isinstance(event, reader.Text):
                        for chunk in self._text(event.reasoning, event.content):
                            yield chunk
                    elif isinstance(event, reader.Done):
                        for chunk in self._text(event.reasoning, event.content):
                            yield chunk
                        reason = event.finish_reason
                        status = Status.STOPPED if reason == "cancelled" else Status.COMPLETE
                        await self._finish(status, finish_reason=reason)
                        finished = True
                        yield _sse("done", {"status": status, "finish_reason": reason, "usage": self.reader.usage})
                    elif isinstance(event, reader.Failed):
                        message = event.message or "The reply could not be completed."
                        await self._finish(Status.ERROR, finish_reason="error", error=message)
                        finished = True
                        yield _sse("error", {"code": event.code, "message": message})
        finally:
            if not finished:
                # The browser went away mid-reply (the reader cancelled the job): keep what was
                # received. The running usage of the last delta is recorded (the worker may make a
                # few more tokens).
                try:
                    await asyncio.shield(self._finish(Status.STOPPED, finish_reason="client_gone"))
                except Exception:
                    log.exception("saving the partial reply of job %s failed", self.job_id)


async def stop_reply(request: HttpRequest, conversation_id: int, message_id: int) -> JsonResponse:
    """POST /chat/api/conversations/<id>/messages/<message id>/stop: ask the job to stop. The open
    stream then ends with `done` (status stopped) and the part written so far is kept."""
    if request.method != "POST":
        return error_response(405, f"{request.method} is not allowed here")
    user = await db(get_user)(request)
    if not user.is_authenticated:
        return error_response(401, "Log in to chat.", code="not_authenticated")
    reply = await db(lambda: Message.objects.filter(pk=message_id, conversation_id=conversation_id,
                                                    conversation__user=user).first())()
    if reply is None:
        return error_response(404, "No such message.")
    if reply.status == Status.STREAMING and reply.job_id:
        try:
            await jobs.cancel(reply.job_id)
        except RedisError:
            return error_response(503, "Could not reach the service to stop the reply; retry.",
                                  headers={"Retry-After": "2"})
    return JsonResponse({"id": reply.pk, "status": reply.status, "stopping": reply.status == Status.STREAMING})


def search(request: HttpRequest) -> HttpResponse:
    """GET /chat/api/search?q=… → {"query", "results": [{conversation, title, message, role, snippet,
    updated_at}]}: the owner's conversations that match, newest first (services.search)."""
    if request.method != "GET":
        return error_response(405, f"{request.method} is not allowed here", headers={"Allow": "GET"})
    if not request.user.is_authenticated:
        return error_response(401, "Log in to chat.", code="not_authenticated")
    query = request.GET.get("q", "")
    if "\x00" in query:
        return error_response(400, "The query may not contain NUL characters.", code="invalid_parameter", param="q")
    return JsonResponse({"query": query, "results": services.search(request.user, query)})


EXPORTS = {"md": "text/markdown; charset=utf-8", "json": "application/json"}


@login_required
def export(request: HttpRequest, conversation_id: int, fmt: str) -> HttpResponse:
    """GET /chat/<id>/export.md or .json: the conversation as a download."""
    conversation = get_object_or_404(Conversation, pk=conversation_id, user=request.user)
    if fmt not in EXPORTS:
        raise Http404("no such export format")
    if fmt == "json":
        body = json.dumps(services.export_json(conversation), ensure_ascii=False, indent=2) + "\n"
    else:
        body = services.export_markdown(conversation)
    response = HttpResponse(body.encode(), content_type=EXPORTS[fmt])
    response["Content-Disposition"] = f'attachment; filename="levee-chat-{conversation.pk}.{fmt}"'
    return response
