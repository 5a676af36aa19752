"""The OpenAI-compatible API in DeepSeek's dialect: /models and /chat/completions (bare and /v1)."""
from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from inference import protocol
from inference.tokenizer import ChatTemplateError
from levee.api import jobs, plan, reader, schema
from levee.api.models import LlmModel, aenabled_model
from levee.api.reader import JobReader
from levee.api.tools import CallDelta
from levee.core.asyncdb import db
from levee.core.errors import error_response
from levee.core.middleware import sessionless
from levee.core.timing import Phases
from levee.keys.authentication import bearer_token, masked
from levee.keys.services import aauthenticate_key

if TYPE_CHECKING:
    from levee.keys.models import ApiKey
    from levee.shield.api import ApiAdmission

log = logging.getLogger(__name__)
T = TypeVar("T")


def _api_error(exc: schema.RequestError) -> JsonResponse:
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code)


def key_endpoint(method: str, *, token: Callable[[HttpRequest], str | None] = bearer_token) -> Callable[..., Any]:
    """An async API endpoint for one HTTP method, authenticated by an API key: the view is called
    as view(request, key) only when both hold; otherwise the error leaves in the API's format.
    `token(request)` finds the key in the request (the Authorization header by default)."""
    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @sessionless
        @csrf_exempt
        @functools.wraps(view)
        async def endpoint(request: HttpRequest) -> HttpResponseBase:
            if request.method != method:
                return error_response(405, f"{request.method} is not allowed here")
            request.phases = phases = Phases(request)  # type: ignore[attr-defined]  # Levee's own request attribute
            phases.mark("edge")
            try:
                key, failure = await _authenticate(request, token)
                if failure:
                    return failure
                phases.mark("auth")
                return phases.apply(await view(request, key))
            except DatabaseError:  # PostgreSQL is away (a restart, a failover): nothing was charged
                log.exception("database unavailable for %s", request.path)
                return error_response(503, "The service is temporarily unavailable; retry shortly.",
                                      headers={"Retry-After": "5"})

        return endpoint

    return wrap


async def _authenticate(request: HttpRequest, find_token: Callable[[HttpRequest], str | None] = bearer_token,
                       ) -> tuple[ApiKey | None, JsonResponse | None]:
    token = find_token(request)
    if token is None:
        return None, error_response(401, "Authentication Fails (no api key provided)")
    key = await aauthenticate_key(token)
    if key is None:
        return None, error_response(401, f"Authentication Fails, Your api key: {masked(token)} is invalid")
    return key, None


def _model_row(model: LlmModel) -> dict:
    return {"id": model.name, "object": "model", "owned_by": model.owned_by,
            "created": int(model.created_at.timestamp())}


@key_endpoint("GET")
async def list_models(request: HttpRequest, key: ApiKey) -> HttpResponseBase:
    from levee.shield import api as shield

    decision = await sync_to_async(shield.admit_plain_request, thread_sensitive=False)(request, key)
    if not decision.allowed:
        return decision.response()
    models = await db(lambda: list(LlmModel.objects.filter(enabled=True)))()
    return JsonResponse({"object": "list", "data": [_model_row(m) for m in models]})


@key_endpoint("POST")
async def chat_completions(request: HttpRequest, key: ApiKey) -> HttpResponseBase:
    return await _chat(request, key, beta=False)


@key_endpoint("POST")
async def beta_chat_completions(request: HttpRequest, key: ApiKey) -> HttpResponseBase:
    """/beta/chat/completions: prefix completion and strict functions (DeepSeek's beta base URL)."""
    return await _chat(request, key, beta=True)


async def _chat(request: Any, key: Any, *, beta: bool) -> HttpResponseBase:
    try:
        chat = schema.parse_chat_request(schema.parse_json(request.body))
        model, chars = await _served_model(chat)
        request.phases.mark("parse")
    except schema.RequestError as exc:
        return _api_error(exc)
    return await _run(request, key, model, chat, chars, lambda: build_plan(model, chat, beta=beta))


async def _served_model(chat: schema.ChatRequest, chars: int | None = None, *, param: str = "messages",
                        what: str = "messages") -> tuple[LlmModel, int]:
    """The enabled model a request names, and the prompt's characters (`chars`, by default those of
    the chat's messages and tools), refused untokenized when they cannot fit its context (more than
    context × the model's prompt_chars_per_token). Every API door starts with this. Raises RequestError."""
    model = await aenabled_model(chat.model)
    if model is None:
        raise schema.RequestError(400, f"Model Not Exist: {chat.model}", param="model", code="model_not_found")
    chars = _prompt_chars(chat) if chars is None else chars
    if chars > model.context_length * model.prompt_chars_per_token:  # cannot fit: refused untokenized
        raise schema.RequestError(400, f"This model's maximum context length is {model.context_length} tokens; "
                                       f"the {what} have {chars} characters, more than any prompt that fits.",
                                  param=param, code="context_length_exceeded")
    return model, chars


async def off_loop(chars: int, work: Callable[[], T]) -> T:
    """`work()` (tokenizing a prompt of `chars` characters): inline when short (a thread hop costs
    more), else in a worker thread; `tokenizers` releases the GIL for the encoding itself
    (inference.tokenizer), so the event loop keeps serving other requests and streams meanwhile."""
    if chars <= INLINE_ENCODE_CHARS:
        return work()
    return await sync_to_async(work, thread_sensitive=False)()


async def build_plan(model: LlmModel, chat: schema.ChatRequest, *, beta: bool) -> tuple[plan.Plan, int]:
    """The rendered, tokenized prompt (off the event loop when long) and the reply's max_tokens.
    Raises RequestError."""
    work = await off_loop(_prompt_chars(chat), lambda: _plan(model, chat, beta))
    return work, _max_tokens(model, chat, len(work.prompt_ids))


async def plan_request(chat: schema.ChatRequest, *, beta: bool) -> tuple[LlmModel, plan.Plan]:
    """(model, plan) of a parsed chat request, tokenized now. Raises RequestError."""
    model, _chars = await _served_model(chat)
    work, _max = await build_plan(model, chat, beta=beta)
    return model, work


INLINE_ENCODE_CHARS = 2000


def _prompt_chars(chat: schema.ChatRequest) -> int:
    chars = sum(len(m.get("content") or "") for m in chat.messages if isinstance(m, dict))
    return chars + sum(len(json.dumps(t.parameters)) + len(t.description) for t in chat.tools)


def _plan(model: LlmModel, chat: schema.ChatRequest, beta: bool) -> plan.Plan:
    try:
        return plan.build(model, chat, beta=beta)
    except ChatTemplateError as exc:  # e.g. a template that refuses a role order
        raise schema.RequestError(400, f"The messages cannot be rendered for {model.name}: {exc}",
                                  param="messages", code="invalid_request_error") from None


def _max_tokens(model: LlmModel, chat: schema.ChatRequest, prompt_tokens: int) -> int:
    room = model.context_length - prompt_tokens
    if room < 1:
        raise schema.RequestError(400, f"This model's maximum context length is {model.context_length} tokens; "
                                       f"the messages have {prompt_tokens}.", param="messages",
                                  code="context_length_exceeded")
    if chat.max_tokens is None:
        return min(model.default_max_tokens, model.max_output, room)
    if chat.max_tokens > model.max_output:
        raise schema.RequestError(422, f"max_tokens must be at most {model.max_output} for {model.name}",
                                  param="max_tokens", code="invalid_parameter")
    if chat.max_tokens > room:
        raise schema.RequestError(400, f"max_tokens {chat.max_tokens} plus {prompt_tokens} prompt tokens exceeds "
                                       f"the context length {model.context_length}", param="max_tokens",
                                  code="context_length_exceeded")
    return chat.max_tokens


def _overloaded(message: str, retry_after: int) -> JsonResponse:
    return error_response(503, message, headers={"Retry-After": str(retry_after)})


async def _run(request: Any, key: Any, model: LlmModel, chat: schema.ChatRequest, chars: int,
               build: Callable[[], Awaitable[tuple[plan.Plan, int]]], formatter: Any = None) -> HttpResponseBase:
    """Shed, limit, then `build` the prompt (tokenize), hold, enqueue, and answer with `formatter`
    (default: a chat completion)."""
    from levee.shield import api as shield

    job_id = uuid.uuid4().hex
    # The shield first (shedding by priority, paid API last; then the caller's own limits), then
    # tokenizing, capacity and money: a caller over its limits costs no tokenizer time. Before
    # tokenizing, the prompt's tokens are bounded by its characters (and the context): that much
    # is reserved, and corrected to the real count the moment it is known.
    guess = min(chars, model.context_length) + (chat.max_tokens or min(model.default_max_tokens, model.max_output))
    admission = await shield.admit(request, key, model=model.name, estimated_tokens=guess)
    if admission.refusal is not None:
        return admission.refusal
    try:
        try:
            work, max_tokens = await build()
        except schema.RequestError as exc:
            await admission.finish(0)
            return _api_error(exc)
        request.phases.mark("tokenize")
        await admission.correct(len(work.prompt_ids) + max_tokens)
        response = await _start(request, key, model, chat, work, max_tokens, job_id, admission, formatter)
    except BaseException:
        await admission.finish(0)
        raise
    if response.status_code != 200:
        await admission.finish(0)
    return response


async def _start(request: Any, key: ApiKey, model: LlmModel, chat: schema.ChatRequest, work: plan.Plan, max_tokens: int,
                 job_id: str, admission: ApiAdmission, formatter: Callable[..., _Completion] | None) -> HttpResponseBase:
    from levee.billing import services as billing

    try:
        await jobs.check_capacity(model)
    except jobs.Overloaded as exc:
        return _overloaded(exc.message, exc.retry_after)
    except RedisError:
        log.exception("redis unavailable before enqueue")
        return _overloaded("The service is temporarily unavailable; retry shortly.", 5)
    request.phases.mark("capacity")
    prompt_ids = work.prompt_ids

    pickup = time.time() + settings.LEVEE_JOB_QUEUE_TIMEOUT  # no worker starts it after this
    deadline = pickup + settings.LEVEE_JOB_MAX_RUNTIME
    try:
        hold = await db(billing.place_hold)(
            user=key.user, api_key=key, model=model.name, prompt_tokens=len(prompt_ids), max_tokens=max_tokens,
            request_id=request.request_id, deadline=datetime.fromtimestamp(deadline, tz=UTC), job_id=job_id)
    except billing.InsufficientBalance:
        return error_response(402, "Insufficient Balance")
    except billing.SpendCapReached as exc:
        return error_response(402, str(exc), code=exc.code, param=exc.param)
    except billing.PriceNotFound:  # enabled without a price (admin refuses that; a price row removed since)
        log.error("model %s has no price in force: refusing its requests", model.name)
        return _overloaded(f"{model.name} cannot be billed right now (it has no price); retry later.", 60)
    request.phases.mark("hold")

    message = protocol.JobMessage(
        job_id=job_id, model=model.name, prompt_ids=prompt_ids, user=str(key.user_id), hold_id=str(hold.id),
        deadline=deadline, pickup_deadline=pickup, constraint=work.constraint, logprobs=work.logprobs,
        reader=jobs.reader_id(),  # this process follows it: if it dies, the worker stops the job
        sampling=protocol.Sampling(max_tokens=max_tokens, stop=chat.stop, seed=chat.seed, **work.sampling))
    try:
        await jobs.enqueue(message, model.queue_name)
    except Exception:  # the broker refused: nothing was started, so nothing is charged
        log.exception("enqueue failed for job %s", job_id)
        await db(billing.release_hold)(hold.id, reason="enqueue failed")
        return _overloaded("The service is temporarily unavailable; retry shortly.", 5)
    request.phases.mark("enqueue")

    stream = (formatter or _Completion)(job_id=job_id, model=model, hold_id=hold.id, prompt_tokens=len(prompt_ids),
                                        max_tokens=max_tokens, account=str(key.user_id),
                                        include_usage=chat.include_usage, admission=admission, work=work,
                                        logprobs=chat.logprobs)
    if chat.stream:
        response = StreamingHttpResponse(stream.sse(), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    return await stream.whole()


class _Completion:
    """Formats one job's typed events (levee.api.reader) as the API's response, and closes the job's
    hold the moment the job ends (levee.api.settling): from the worker's signed settlement, else for
    what the client was sent. Subclasses (the legacy completions, the Anthropic message) format the
    same events from `follow()`, which applies those money rules for all of them."""

    def __init__(self, *, job_id: str, model: LlmModel, hold_id: Any, prompt_tokens: int, max_tokens: int,
                 account: str, include_usage: bool, admission: Any, work: plan.Plan,
                 logprobs: bool = False) -> None:
        self.job_id, self.model, self.hold_id, self.admission = job_id, model, hold_id, admission
        self.prompt_tokens, self.max_tokens, self.account = prompt_tokens, max_tokens, account
        self.include_usage, self.logprobs, self.thinking = include_usage, logprobs, work.thinking
        self.id = f"chatcmpl-{job_id}"
        self.created = int(time.time())
        self.reader = JobReader(job_id, prompt_tokens=prompt_tokens, reasoner=work.thinking,
                                thinking_opened=work.thinking_opened, tool_parser=work.tool_parser(job_id))
        self.usage = protocol.usage_dict(0, 0, 0)  # what the client has been sent: nothing yet
        self.closed = False
        self.started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self._first_token_at: float | None = None

    def _observe(self, event: reader.Event) -> None:
        """Feed the time-to-first-token and tokens/s histograms (levee.core.metrics)."""
        from levee.core import metrics

        now = time.monotonic()
        if isinstance(event, reader.Text) and self._first_token_at is None and event.raw:
            self._first_token_at = now
            metrics.observe_ttft(self.model.name, now - self._t0)
        elif isinstance(event, reader.Done) and self._first_token_at is not None:
            tokens = event.usage["completion_tokens"]
            if tokens > 1 and now > self._first_token_at:
                metrics.observe_tokens_per_second(self.model.name, (tokens - 1) / (now - self._first_token_at))

    def _chunk(self, delta: dict, finish_reason: str | None = None, logprobs: list | None = None) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model.name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None,
                             "finish_reason": finish_reason}]}
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def _text_chunks(self, reasoning: str, content: str, calls: Sequence[CallDelta] = (),
                     logprobs: list | None = None) -> Iterator[bytes]:
        if reasoning:
            yield self._chunk({"reasoning_content": reasoning})
        if content or (logprobs and self.logprobs):
            yield self._chunk({"content": content}, logprobs=logprobs if self.logprobs else None)
        if calls:
            yield self._chunk({"tool_calls": [c.as_openai() for c in calls]})

    def _usage_body(self) -> dict:
        usage: dict[str, Any] = dict(self.usage)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": usage["prompt_cache_hit_tokens"]}
        if self.thinking:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens()}
        return usage

    def reasoning_tokens(self) -> int:
        """Tokens of the reasoning (counted with the model's tokenizer: the worker counts tokens, not
        where the thought ended), never more than the completion."""
        from levee.api.tokens import tokenizer_for

        text = self.reader.reasoning_text
        if not text:
            return 0
        return min(len(tokenizer_for(self.model).encode(text)) + 1, self.usage["completion_tokens"])

    def _take_usage(self, usage: dict[str, int] | None) -> None:
        """The worker's count, held to this job's bounds (it feeds the limits and the client's usage)."""
        if isinstance(usage, dict):
            self.usage = protocol.clamp_usage(usage, prompt_tokens=self.prompt_tokens, max_tokens=self.max_tokens)

    async def _close_hold(self, final: dict | None) -> None:
        """Close the hold once: from the worker's signed settlement in `final` (the job's last
        event), else for what the client was sent (levee.api.settling); any end but the job's own
        also flags the job cancelled, so no worker starts or goes on with it."""
        if self.closed:
            return
        self.closed = True
        if final is None or final.get("synthetic"):
            try:
                await jobs.cancel(self.job_id)
            except RedisError:
                log.warning("could not flag job %s cancelled", self.job_id)
        from levee.api.settling import close_hold

        await close_hold(hold_id=str(self.hold_id), job_id=self.job_id, account=self.account,
                         final=None if final is None or final.get("synthetic") else final,
                         delivered=self.usage, started_at=self.started_at)

    async def follow(self, *, streamed: bool) -> AsyncGenerator[reader.Event, None]:
        """The job's typed events, with the money rules applied before a formatter sees the end:
        a streamed text counts as delivered once the formatter has sent it; the hold closes before
        the client hears "done" (from the worker's settlement); a failure charges what the client
        was sent (a whole reply: nothing, so the hold is released); Redis going away ends the
        stream in a synthetic failure; a reader closed early (the client left) cancels the job and
        charges what it was sent."""
        finished = False
        try:
            async with aclosing(self.reader.follow()) as events:  # closed early: the job is cancelled
                async for event in events:
                    self._observe(event)
                    if isinstance(event, reader.Done):
                        self._take_usage(event.usage)
                        finished = True
                        await self._close_hold(event.raw)  # durable before the client hears it is done
                    elif isinstance(event, reader.Failed):
                        finished = True
                        if streamed and not event.synthetic:
                            self._take_usage(event.usage)
                        await self._close_hold(event.raw if streamed else None)
                    yield event
                    if streamed and isinstance(event, reader.Text):
                        self._take_usage(event.usage)  # sent: now it is delivered
                        self.reader.lease.delivered = self.usage["completion_tokens"]  # what a worker may bill
        except RedisError:  # the job's stream is gone with Redis: end cleanly, charge what was sent
            log.warning("job %s: Redis went away while following it", self.job_id)
            finished = True
            await self._close_hold(None)
            yield reader.Failed(code="service_unavailable", synthetic=True, usage=self.usage,
                                message="The service is temporarily unavailable; retry shortly.")
        finally:
            if not finished:  # the client went away (or the formatter failed): stop the job, charge what was sent
                await self._close_hold(None)

    async def sse(self) -> AsyncIterator[bytes]:
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            async with aclosing(self.follow(streamed=True)) as events:
                async for event in events:
                    if isinstance(event, reader.Keepalive):
                        yield b": keep-alive\n\n"
                    elif isinstance(event, reader.Text):
                        for chunk in self._text_chunks(event.reasoning, event.content, event.tool_calls,
                                                       event.logprobs):
                            yield chunk
                    elif isinstance(event, reader.Done):
                        for chunk in self._text_chunks(event.reasoning, event.content, event.tool_calls):
                            yield chunk
                        yield self._chunk({}, finish_reason=_public_finish(event.finish_reason))
                        if self.include_usage:
                            body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                    "model": self.model.name, "choices": [], "usage": self._usage_body()}
                            yield b"data: " + json.dumps(body).encode() + b"\n\n"
                        yield b"data: [DONE]\n\n"
                    elif isinstance(event, reader.Failed):
                        status = 503 if event.code in {"worker_lost", "queue_timeout", "deadline",
                                                       "service_unavailable"} else 500
                        body = {"error": {"message": event.message or "generation failed",
                                          "type": "server_error", "param": None, "code": event.code}}
                        yield b"data: " + json.dumps(body).encode() + b"\n\n"
                        log.warning("job %s ended with %s (status %s)", self.job_id, event.code, status)
        finally:
            await self.admission.finish(self._total_tokens())

    def _total_tokens(self) -> int:
        return self.usage["prompt_tokens"] + self.usage["completion_tokens"]

    async def whole(self) -> HttpResponseBase:
        try:
            return await self._whole()
        finally:
            await self.admission.finish(self._total_tokens())

    async def _whole(self) -> HttpResponseBase:
        async with aclosing(self.follow(streamed=False)) as events:
            async for event in events:
                if isinstance(event, reader.Done):
                    message: dict[str, Any] = {"role": "assistant", "content": self.reader.text}
                    if self.thinking:
                        message["reasoning_content"] = self.reader.reasoning_text
                    if self.reader.tool_calls:
                        message["content"] = message["content"] or None
                        message["tool_calls"] = [c.as_openai() for c in self.reader.tool_calls]
                    logprobs = {"content": self.reader.logprobs} if self.logprobs else None
                    return JsonResponse({
                        "id": self.id, "object": "chat.completion", "created": self.created,
                        "model": self.model.name, "system_fingerprint": None,
                        "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                                     "finish_reason": _public_finish(event.finish_reason)}],
                        "usage": self._usage_body()})
                if isinstance(event, reader.Failed):
                    if event.synthetic:
                        return _overloaded(event.message, 5)
                    return error_response(500, event.message or None, code=event.code)
        return error_response(500, "the job ended without a result")


def _public_finish(reason: str) -> str:
    # "cancelled" only reaches a client that is still there when the operator cancels; report it as stop.
    return {"cancelled": "stop"}.get(reason, reason)
