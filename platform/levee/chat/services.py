"""Web chat verbs: start a conversation, rename or delete it, start a reply (quota + one reply at a
time), finish it.

Free web chat is recorded with billing's `record_free_usage` (zero cost) when its job ends, by the
web process that streamed it: see docs/web.md for why the web side settles rather than a task.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone
from redis.exceptions import RedisError

from inference import protocol
from levee.accounts.models import User
from levee.chat.models import TITLE_MAX_LENGTH, Conversation, Message, Role, Status

log = logging.getLogger(__name__)


class ChatRefused(Exception):
    """Why a reply was not started; nothing was written. `code` is stable for the page's script."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after, self.param = retry_after, param


def title_from(text: str) -> str:
    """A conversation's title: its first message, on one line, cut at a word near the limit."""
    line = re.sub(r"\s+", " ", text).strip()
    if len(line) <= TITLE_MAX_LENGTH:
        return line
    cut = line[: TITLE_MAX_LENGTH - 1]
    if " " in cut[TITLE_MAX_LENGTH // 2:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"


def create_conversation(user: User, *, model: str) -> Conversation:
    return Conversation.objects.create(user=user, model=model)


def clean_title(value: object) -> str:
    """A title the owner typed: trimmed, 1..TITLE_MAX_LENGTH characters, one line of printable text.
    Raises ChatRefused (param "title")."""
    if not isinstance(value, str) or not value.strip():
        raise ChatRefused(400, "missing_parameter", "Give the chat a title.", param="title")
    title = value.strip()
    # Cc: newlines, tabs, NUL (which PostgreSQL refuses), escapes; Cs: lone surrogates JSON lets through.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in title):
        raise ChatRefused(400, "invalid_parameter", "A title must be one line of text, without control characters.",
                          param="title")
    if len(title) > TITLE_MAX_LENGTH:
        raise ChatRefused(400, "invalid_parameter", f"A title may have at most {TITLE_MAX_LENGTH} characters.",
                          param="title")
    return title


def rename_conversation(conversation: Conversation, title: object) -> Conversation:
    """Set the title the owner chose. The list's order (last activity) does not change."""
    title = clean_title(title)
    Conversation.objects.filter(pk=conversation.pk).update(title=title)
    conversation.title = title
    return conversation


def streaming_job_ids(conversation: Conversation) -> list[str]:
    """The jobs still writing replies in this conversation (to cancel before deleting it)."""
    return list(conversation.messages.filter(status=Status.STREAMING).exclude(job_id="")
                .values_list("job_id", flat=True))


def delete_conversation(conversation: Conversation) -> None:
    """Delete the conversation and its messages. The caller cancels the jobs of replies still
    streaming first (`jobs.cancel`, async). Such a reply is finished before it goes, from what its
    job wrote to Redis, so the tokens it used still count against the day's free allowance, once
    (finish_reply's compare-and-set: the web process streaming it may get there first)."""

    streaming = list(conversation.messages.filter(status=Status.STREAMING)
                     .values_list("pk", "job_id", "prompt_tokens", "model", "created_at"))
    reasoners = _reasoner_names()
    outcomes = {}
    for reply_id, job_id, prompt_tokens, model, _created in streaming:
        try:
            outcomes[reply_id] = read_job_stream(job_id, prompt_tokens=prompt_tokens, reasoner=model in reasoners)
        except RedisError:  # count the prompt at least; the rest is lost with the stream
            log.warning("chat delete: Redis unreachable reading job %s; counting its prompt only", job_id)
            outcomes[reply_id] = JobOutcome(usage=protocol.usage_dict(0, prompt_tokens, 0))
    with transaction.atomic():
        for reply_id, job_id, _prompt, _model, created_at in streaming:
            outcome = outcomes[reply_id]
            finish_reply(reply_id, content=outcome.content, reasoning=outcome.reasoning, status=Status.STOPPED,
                         usage=outcome.usage, started_at=created_at, request_id=f"delete-{job_id or reply_id}",
                         finish_reason="deleted")
        conversation.delete()


def current_mode() -> str | None:
    """The shield's mitigation mode (for the quota); None if it cannot be read right now."""
    from levee.shield import api as shield

    try:
        return shield.current_mode()
    except Exception:  # the chat must still work; the quota then stays at its normal size
        log.warning("shield mode unavailable", exc_info=True)
        return None


def daily_quota(mode: str | None = None) -> int:
    """Tokens (prompt + reply) an account may use in free web chat per UTC day. Halved while the
    shield's mode is elevated (the modes table in docs/shield.md); under attack the shield sheds instead."""
    quota = settings.LEVEE_WEB_CHAT_DAILY_TOKENS
    return quota // 2 if mode == "elevated" else quota


def tokens_used_today(user: User, now: datetime | None = None) -> int:
    from levee.billing.models import DailyUsage, UsageSource

    now = (now or timezone.now()).astimezone(timezone.get_fixed_timezone(0))
    totals = DailyUsage.objects.filter(user=user, day=now.date(), source=UsageSource.WEB).aggregate(
        hit=Sum("prompt_cache_hit_tokens"), miss=Sum("prompt_cache_miss_tokens"), out=Sum("completion_tokens"))
    return sum(value or 0 for value in totals.values())


def seconds_to_midnight_utc(now: datetime | None = None) -> int:
    now = (now or timezone.now()).astimezone(timezone.get_fixed_timezone(0))
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()))


def _in_flight_cutoff(now: datetime) -> datetime:
    """A reply still marked streaming after its job's deadline belongs to a web process that died;
    it no longer blocks the account."""
    return now - timedelta(seconds=settings.LEVEE_JOB_QUEUE_TIMEOUT + settings.LEVEE_JOB_MAX_RUNTIME + 60)


@dataclass
class StartedReply:
    question: Message
    reply: Message
    max_tokens: int
    reused_question: bool = False  # a regenerated reply answers the question already there
    # Messages this reply replaces (ids in [start, end)), dropped once its job is queued: the edited
    # question and what followed it, or the reply being regenerated.
    replaces: tuple[int, int] | None = None


def start_reply(user: User, conversation: Conversation, *, text: str, model: str, prompt_tokens: int,
                room: int, job_id: str, mode: str | None = None, question: Message | None = None,
                replace_from: int | None = None, text_tokens: int = 0) -> StartedReply:
    """Write the owner's message and an empty streaming reply, if the account has quota left today
    and no other reply in progress. The reply may use at most `room` tokens (the model's limits) and
    never more than the quota left, so a day's use stays within the quota. One transaction with the
    account row locked: two tabs cannot both pass the checks.

    `question`: regenerate, answering this question again (no new one is written). `replace_from`:
    an edit, the first message the new question replaces. Either way the replaced messages stay
    until the job is queued (`drop_replaced`), so a refused enqueue loses nothing."""
    now = timezone.now()
    if not user.is_verified:  # a session from before verification was required to log in
        raise ChatRefused(403, "email_not_verified", "Confirm your email address to chat.")
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()
        busy = Message.objects.filter(conversation__user=user, status=Status.STREAMING,
                                      created_at__gt=_in_flight_cutoff(now)).exists()
        if busy:
            raise ChatRefused(409, "reply_in_progress",
                              "A reply is still being written in one of your chats. Wait for it or stop it first.")
        quota = daily_quota(mode)
        left = quota - tokens_used_today(user, now)
        if left <= prompt_tokens:
            wait = seconds_to_midnight_utc(now)
            hours, minutes = divmod(wait // 60, 60)
            raise ChatRefused(429, "daily_quota_exceeded",
                              f"You have used today's free chat allowance of {quota:,} tokens"
                              f"{' (this conversation is long: start a new chat to use fewer)' if left > 0 else ''}."
                              f" It renews at 00:00 UTC, in {hours} h {minutes} min. The API is not limited by it.",
                              retry_after=wait)
        max_tokens = min(room, left - prompt_tokens)
        reused = question is not None
        if question is None:
            question = Message.objects.create(conversation=conversation, role=Role.USER, content=text,
                                              content_tokens=text_tokens, created_at=now)
        reply = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, status=Status.STREAMING,
                                       model=model, job_id=job_id, prompt_tokens=prompt_tokens, created_at=now)
        if reused:
            replaces = (question.pk + 1, reply.pk)
        elif replace_from is not None:
            replaces = (replace_from, question.pk)
        else:
            replaces = None
        updates = {"updated_at": now, "model": model}
        if not conversation.title:
            updates["title"] = title_from(text)
        Conversation.objects.filter(pk=conversation.pk).update(**updates)
        for name, value in updates.items():
            setattr(conversation, name, value)
    return StartedReply(question, reply, max_tokens, reused_question=reused, replaces=replaces)


def abandon_reply(started: StartedReply) -> None:
    """The job could not be enqueued: remove what was written, as if the request never came (a
    regenerated reply's question was there before and stays; replaced messages were never dropped)."""
    ids = [started.reply.pk] if started.reused_question else [started.question.pk, started.reply.pk]
    Message.objects.filter(pk__in=ids).delete()


def drop_replaced(started: StartedReply) -> int:
    """Delete the messages a queued reply replaces (truncate on edit and regenerate). Their usage
    records are billing's and stay: replacing a message never gives quota back."""
    if started.replaces is None:
        return 0
    start, end = started.replaces
    deleted, _ = Message.objects.filter(conversation_id=started.reply.conversation_id, pk__gte=start, pk__lt=end) \
        .exclude(status=Status.STREAMING).delete()
    return deleted


def finish_reply(reply_id: int, *, content: str, status: str, usage: dict, started_at: datetime,
                 request_id: str, finish_reason: str = "", error: str = "", reasoning: str = "") -> bool:
    """Save the reply and record its tokens as free usage, once: only a reply still streaming is
    finished (compare-and-set), so a second caller (stop racing done) changes nothing. True if this
    call finished it."""
    from levee.billing.services import record_free_usage

    now = timezone.now()
    prompt = usage.get("prompt_cache_hit_tokens", 0) + usage.get("prompt_cache_miss_tokens", 0)
    with transaction.atomic():
        changed = Message.objects.filter(pk=reply_id, status=Status.STREAMING).update(
            content=content, reasoning=reasoning, status=status, finish_reason=finish_reason[:32], error=error[:300],
            prompt_tokens=prompt or F("prompt_tokens"), completion_tokens=usage.get("completion_tokens", 0),
            content_tokens=usage.get("completion_tokens", 0), finished_at=now)
        if not changed:
            return False
        reply = Message.objects.select_related("conversation__user").get(pk=reply_id)
        Conversation.objects.filter(pk=reply.conversation_id).update(updated_at=now)
        if prompt or usage.get("completion_tokens"):
            record_free_usage(user=reply.conversation.user, model=reply.model, request_id=request_id,
                              prompt_cache_hit_tokens=usage.get("prompt_cache_hit_tokens", 0),
                              prompt_cache_miss_tokens=usage.get("prompt_cache_miss_tokens", 0),
                              completion_tokens=usage.get("completion_tokens", 0),
                              started_at=started_at, finished_at=max(now, started_at))
    return True


def fail_reply(reply_id: int) -> None:
    """Last resort when a reply cannot be saved: mark it failed so it no longer blocks the account."""
    Message.objects.filter(pk=reply_id, status=Status.STREAMING).update(
        status=Status.ERROR, error="The reply could not be saved.", finished_at=timezone.now())


def _reasoner_names() -> set[str]:
    from levee.api.models import LlmModel

    return set(LlmModel.objects.filter(reasoner=True).values_list("name", flat=True))


@dataclass
class JobOutcome:
    """What a job wrote to its event stream: the answer, a reasoner's reasoning, the last usage, and
    its `done`/`error` event if it got that far."""
    content: str = ""
    reasoning: str = ""
    usage: dict = field(default_factory=dict)
    end: dict | None = None


def read_job_stream(job_id: str, *, prompt_tokens: int, reasoner: bool) -> JobOutcome:
    """Read a job's whole event stream (empty if it is gone) with the reader the streaming views use
    (levee.api.reader), so a reasoner's <think>…</think> is split out of the answer the same way.
    Raises RedisError."""
    from levee.api.reader import Done, JobReader

    reader = JobReader(job_id, prompt_tokens=prompt_tokens, reasoner=reasoner, thinking_opened=reasoner,
                       replace_nul=True).replay_stored()
    end = reader.end
    if isinstance(end, Done):
        end_event: dict | None = {"type": protocol.DONE, "finish_reason": end.finish_reason, "usage": end.usage}
    elif end is not None:
        end_event = {"type": protocol.ERROR, "code": end.code, "message": end.message, "usage": end.usage}
    else:
        end_event = None
    return JobOutcome(content=reader.text, reasoning=reader.reasoning_text, usage=reader.usage, end=end_event)


def sweep_stale_replies(*, now: datetime | None = None, limit: int = 500) -> int:
    """Finish replies left "streaming" by a web process that died mid-reply (past their job's
    deadline): what the job wrote to its event stream, if that is still in Redis (an hour), becomes
    the reply (a reasoner's reasoning apart from its answer) and its tokens count against the day's
    free allowance; otherwise the reply is marked interrupted. Returns how many replies were finished."""

    now = now or timezone.now()
    stale = list(Message.objects.filter(status=Status.STREAMING, created_at__lt=_in_flight_cutoff(now))
                 .order_by("id").values_list("pk", "job_id", "prompt_tokens", "model", "created_at")[:limit])
    reasoners = _reasoner_names() if stale else set()
    finished = 0
    for reply_id, job_id, prompt_tokens, model, created_at in stale:
        try:
            outcome = read_job_stream(job_id, prompt_tokens=prompt_tokens, reasoner=model in reasoners)
        except RedisError:  # the streams may still be there: leave the rest to the next run
            log.warning("chat sweep: Redis unreachable; %s stale replies wait for the next run", len(stale) - finished)
            break
        end = outcome.end
        if end is not None and end["type"] == protocol.DONE:
            status, reason, error = Status.COMPLETE, end.get("finish_reason", ""), ""
        elif outcome.content or outcome.reasoning:
            status, reason, error = Status.STOPPED, "", "The connection was lost; this is the part that arrived."
        else:
            status, reason, error = Status.ERROR, "", "The reply was interrupted."
        finished += finish_reply(reply_id, content=outcome.content, reasoning=outcome.reasoning, status=status,
                                 usage=outcome.usage, started_at=created_at, request_id=f"sweep-{job_id or reply_id}",
                                 finish_reason=reason, error=error)
    return finished


# --- search and export --------------------------------------------------------------------------

SEARCH_MAX_CHARS = 200
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def _terms(query: str) -> list[str]:
    return [t for t in (w.strip('"\'-') for w in query.split()) if t and t.lower() not in {"or", "and"}]


def snippet(text: str, terms: list[str], *, before: int = 40, after: int = 100) -> str:
    """One line of `text` around the first of `terms` found (case-insensitive), with … where cut."""
    flat = " ".join(text.split())
    lowered = flat.lower()
    hits = [i for i in (lowered.find(t.lower()) for t in terms) if i >= 0]
    at = min(hits) if hits else 0
    start, end = max(0, at - before), min(len(flat), at + after)
    return ("…" if start else "") + flat[start:end] + ("…" if end < len(flat) else "")


def search(user: User, query: str, *, limit: int = 20) -> list[dict]:
    """The owner's conversations whose messages or title match `query`, newest first, one hit each
    with a snippet. PostgreSQL: full-text search (websearch syntax, the `simple` configuration, so
    no language's stemming; a GIN index serves it) — and, since its parser does not split Chinese or
    Japanese into words, a substring match as well when the query has such characters. Elsewhere
    (SQLite): every word as a case-insensitive substring."""
    from django.db import connection
    from django.db.models import Q
    from django.db.models.expressions import RawSQL

    query = " ".join(query.split())[:SEARCH_MAX_CHARS]
    terms = _terms(query)
    if not terms:
        return []
    messages = Message.objects.filter(conversation__user=user).exclude(content="")
    if connection.vendor == "postgresql":
        match = Q(pk__in=RawSQL(
            f"SELECT id FROM {Message._meta.db_table} "
            "WHERE to_tsvector('simple', content) @@ websearch_to_tsquery('simple', %s)", [query]))
        if _CJK.search(query):
            match |= Q(content__icontains=query) if len(terms) == 1 else Q(
                *[Q(content__icontains=t) for t in terms])
    else:
        match = Q(*[Q(content__icontains=t) for t in terms])
    titled = Conversation.objects.filter(user=user).exclude(title="")
    titled = titled.filter(*[Q(title__icontains=t) for t in terms])
    found: dict[int, dict] = {}
    for c in titled.order_by("-updated_at", "-id")[:limit]:
        found[c.pk] = {"conversation": c.pk, "title": c.display_title, "message": None, "role": None,
                       "snippet": "", "updated_at": c.updated_at}
    hits = (messages.filter(match).select_related("conversation")
            .order_by("-conversation__updated_at", "-pk")[: limit * 10])
    for m in hits:
        entry = found.get(m.conversation_id)
        if entry is not None and entry["message"] is not None:
            continue  # one hit per conversation: its newest matching message
        found[m.conversation_id] = {"conversation": m.conversation_id, "title": m.conversation.display_title,
                                    "message": m.pk, "role": m.role, "snippet": snippet(m.content, terms),
                                    "updated_at": m.conversation.updated_at}
    ordered = sorted(found.values(), key=lambda r: (r["updated_at"], r["conversation"]), reverse=True)[:limit]
    return [{**r, "updated_at": r["updated_at"].isoformat()} for r in ordered]


def export_json(conversation: Conversation) -> dict:
    """The conversation as data: what the page shows, with the model and token counts of each reply."""
    return {
        "id": conversation.pk, "title": conversation.display_title, "model": conversation.model,
        "created_at": conversation.created_at.isoformat(), "updated_at": conversation.updated_at.isoformat(),
        "messages": [{"id": m.pk, "role": m.role, "content": m.content, "reasoning": m.reasoning,
                      "status": m.status, "model": m.model, "created_at": m.created_at.isoformat(),
                      "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens}
                     for m in conversation.messages.all()],
    }


def export_markdown(conversation: Conversation) -> str:
    """The conversation as Markdown, in the reader's language: a heading per turn, the text as
    written (a model's Markdown stays Markdown), a reasoner's thinking as a quote before its answer."""
    from django.utils.translation import gettext as _

    you, assistant, thought = _("You"), _("Assistant"), _("Thought")
    ended: dict[str, str] = {Status.STOPPED: _("Stopped."), Status.ERROR: _("The reply could not be completed.")}
    out = ["# " + conversation.display_title, ""]
    for m in conversation.messages.all():
        out += ["## " + (you if m.role == Role.USER else f"{assistant} ({m.model or conversation.model})"), ""]
        if m.reasoning:
            out.append(f"> **{thought}**")
            out.extend(">" if not line else "> " + line for line in m.reasoning.splitlines())
            out.append("")
        out.append(m.content)
        if m.status in ended:
            out += ["", f"*({ended[m.status]})*"]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
