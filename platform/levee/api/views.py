"""The OpenAI-compatible API in DeepSeek's dialect: /models and /chat/completions (bare and /v1)."""
from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from inference import protocol
from levee.api import jobs, schema
from levee.api.models import LlmModel, aenabled_model
from levee.api.think import ThinkSplitter
from levee.core.asyncdb import db
from levee.core.errors import error_response
from levee.core.memo import Memo
from levee.core.middleware import sessionless
from levee.core.timing import Phases
from levee.keys.authentication import bearer_token, masked
from levee.keys.services import aauthenticate_key

log = logging.getLogger(__name__)


def _api_error(exc: schema.RequestError):
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code)


def key_endpoint(method: str):
    """An async API endpoint for one HTTP method, authenticated by an API key: the view is called
    as view(request, key) only when both hold; otherwise the error leaves in the API's format."""
    def wrap(view):
        @sessionless
        @csrf_exempt
        @functools.wraps(view)
        async def endpoint(request):
            if request.method != method:
                return error_response(405, f"{request.method} is not allowed here")
            request.phases = phases = Phases(request)
            phases.mark("edge")
            try:
                key, failure = await _authenticate(request)
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


async def _authenticate(request):
    token = bearer_token(request)
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
async def list_models(request, key):
    from levee.shield import api as shield

    decision = await sync_to_async(shield.admit_plain_request, thread_sensitive=False)(request, key)
    if not decision.allowed:
        return decision.response()
    models = await db(lambda: list(LlmModel.objects.filter(enabled=True)))()
    return JsonResponse({"object": "list", "data": [_model_row(m) for m in models]})


@key_endpoint("POST")
async def chat_completions(request, key):
    try:
        chat = schema.parse_chat_request(schema.parse_json(request.body))
        model = await aenabled_model(chat.model)
        if model is None:
            raise schema.RequestError(400, f"Model Not Exist: {chat.model}", param="model", code="model_not_found")
        chars = _prompt_chars(chat.messages)
        if chars > model.context_length * model.prompt_chars_per_token:  # cannot fit: refused untokenized
            raise schema.RequestError(400, f"This model's maximum context length is {model.context_length} tokens; "
                                           f"the messages have {chars} characters, more than any prompt that fits.",
                                      param="messages", code="context_length_exceeded")
        request.phases.mark("parse")
    except schema.RequestError as exc:
        return _api_error(exc)
    return await _run(request, key, model, chat, chars)


INLINE_ENCODE_CHARS = 2000


async def _tokenize(model: LlmModel, chat: schema.ChatRequest, chars: int) -> tuple[list[int], int]:
    """The prompt ids and the reply's max_tokens. A long prompt is tokenized in a worker thread, and
    `tokenizers` releases the GIL for the encoding itself (levee.api.tokens), so the event loop keeps
    serving other requests and streams meanwhile. Raises RequestError."""
    if chars <= INLINE_ENCODE_CHARS:  # a thread hop costs more than this
        prompt_ids = _encode(model, chat.messages)
    else:
        prompt_ids = await sync_to_async(_encode, thread_sensitive=False)(model, chat.messages)
    return prompt_ids, _max_tokens(model, chat, len(prompt_ids))


def _prompt_chars(messages) -> int:
    return sum(len(m.get("content") or "") for m in messages if isinstance(m, dict))


def _encode(model, messages):
    from levee.api.tokens import encode_prompt

    return encode_prompt(model, messages)


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


# The caller's shedding tier (paid API is shed last): memoized per account; a top-up moves an
# account to the paid tier within TIER_MEMO_SECONDS.
TIER_MEMO_SECONDS = 10
_tiers = Memo("api-tiers", TIER_MEMO_SECONDS)


def _overloaded(message: str, retry_after: int):
    return error_response(503, message, headers={"Retry-After": str(retry_after)})


class _Admission:
    """The shield's share of one request: its tokens-per-minute reservation and concurrency lease,
    corrected and given back exactly once however the request ends."""

    def __init__(self, key, model: str, estimated: int, lease):
        self.key, self.model, self.estimated, self.lease = key, model, estimated, lease
        self._done = False

    async def correct(self, estimate: int) -> None:
        """Replace the reservation's estimate by a better one (the prompt's real token count)."""
        from levee.shield import api as shield

        if estimate != self.estimated:
            await shield.acorrect_tokens(self.key, estimated=self.estimated, actual=estimate)
            self.estimated = estimate

    async def finish(self, actual_tokens: int) -> None:
        if self._done:
            return
        self._done = True
        from levee.shield import api as shield

        await shield.asettle_tokens(self.key.pk, self.key.user_id, model=self.model, estimated=self.estimated,
                                    actual=actual_tokens)
        await shield.arelease_lease(self.lease)


async def _run(request: Any, key: Any, model: LlmModel, chat: schema.ChatRequest, chars: int) -> HttpResponseBase:
    from levee.shield import api as shield
    from levee.shield.tiers import api_tier

    job_id = uuid.uuid4().hex
    # Shedding by priority first (paid API last), then the caller's own limits, then tokenizing,
    # capacity and money: a caller over its limits costs no tokenizer time.
    retry_after = await shield.ashed(model.name, await _tiers.aget(key.user_id, lambda: api_tier(key.user, key)))
    if retry_after:
        return _overloaded(f"{model.name} is shedding load; retry shortly.", retry_after)
    request.phases.mark("shed")
    # Before tokenizing, the prompt's tokens are bounded by its characters (and the context): that
    # much is reserved, and corrected to the real count the moment it is known.
    guess = min(chars, model.context_length) + (chat.max_tokens or min(model.default_max_tokens, model.max_output))
    decision = await shield.aadmit_api_request(request, key, model=model.name, estimated_tokens=guess)
    if not decision.allowed:
        return decision.response()
    request.phases.mark("limits")
    admission = _Admission(key, model.name, guess, decision.lease)
    try:
        try:
            prompt_ids, max_tokens = await _tokenize(model, chat, chars)
        except schema.RequestError as exc:
            await admission.finish(0)
            return _api_error(exc)
        request.phases.mark("tokenize")
        await admission.correct(len(prompt_ids) + max_tokens)
        response = await _start(request, key, model, chat, prompt_ids, max_tokens, job_id, admission)
    except BaseException:
        await admission.finish(0)
        raise
    if response.status_code != 200:
        await admission.finish(0)
    return response


async def _start(request, key, model, chat, prompt_ids, max_tokens, job_id, admission):
    from levee.billing import services as billing

    try:
        await jobs.check_capacity(model)
    except jobs.Overloaded as exc:
        return _overloaded(exc.message, exc.retry_after)
    except RedisError:
        log.exception("redis unavailable before enqueue")
        return _overloaded("The service is temporarily unavailable; retry shortly.", 5)
    request.phases.mark("capacity")

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
        deadline=deadline, pickup_deadline=pickup,
        sampling=protocol.Sampling(max_tokens=max_tokens, temperature=chat.temperature, top_p=chat.top_p,
                                   stop=chat.stop, presence_penalty=chat.presence_penalty,
                                   frequency_penalty=chat.frequency_penalty, seed=chat.seed))
    try:
        await jobs.enqueue(message, model.queue_name)
    except Exception:  # the broker refused: nothing was started, so nothing is charged
        log.exception("enqueue failed for job %s", job_id)
        await db(billing.release_hold)(hold.id, reason="enqueue failed")
        return _overloaded("The service is temporarily unavailable; retry shortly.", 5)
    request.phases.mark("enqueue")

    stream = _Completion(job_id=job_id, model=model, hold_id=hold.id, prompt_tokens=len(prompt_ids),
                         max_tokens=max_tokens, account=str(key.user_id), include_usage=chat.include_usage,
                         admission=admission)
    if chat.stream:
        response = StreamingHttpResponse(stream.sse(), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    return await stream.whole()


class _Completion:
    """Turns one job's events into the API's response, and settles what the worker could not."""

    def __init__(self, *, job_id, model, hold_id, prompt_tokens, max_tokens, account, include_usage, admission):
        self.job_id, self.model, self.hold_id, self.admission = job_id, model, hold_id, admission
        self.prompt_tokens, self.max_tokens, self.account = prompt_tokens, max_tokens, account
        self.include_usage = include_usage
        self.id = f"chatcmpl-{job_id}"
        self.created = int(time.time())
        self.splitter = ThinkSplitter() if model.reasoner else None
        self.usage = protocol.usage_dict(0, 0, 0)  # what the client has been sent: nothing yet
        self.closed = False
        self.started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self._first_token_at: float | None = None

    def _observe(self, event: dict) -> None:
        """Feed the time-to-first-token and tokens/s histograms (levee.core.metrics)."""
        from levee.core import metrics

        now = time.monotonic()
        if event["type"] == protocol.DELTA and self._first_token_at is None and event.get("text"):
            self._first_token_at = now
            metrics.observe_ttft(self.model.name, now - self._t0)
        elif event["type"] == protocol.DONE and self._first_token_at is not None:
            tokens = event["usage"]["completion_tokens"]
            if tokens > 1 and now > self._first_token_at:
                metrics.observe_tokens_per_second(self.model.name, (tokens - 1) / (now - self._first_token_at))

    def _events(self):
        return jobs.events(self.job_id, queue_timeout=settings.LEVEE_JOB_QUEUE_TIMEOUT,
                           heartbeat_timeout=settings.LEVEE_JOB_HEARTBEAT_TIMEOUT)

    def _split(self, text: str, final: bool = False) -> tuple[str, str]:
        if self.splitter is None:
            return "", text
        reasoning, content = self.splitter.push(text)
        if final:
            r2, c2 = self.splitter.flush()
            reasoning, content = reasoning + r2, content + c2
        return reasoning, content

    def _chunk(self, delta: dict, finish_reason=None) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model.name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def _usage_body(self) -> dict:
        usage = dict(self.usage)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": usage["prompt_cache_hit_tokens"]}
        return usage

    def _take_usage(self, event: dict) -> None:
        """The worker's count, held to this job's bounds (it feeds the limits and the client's usage)."""
        if isinstance(event.get("usage"), dict):
            self.usage = protocol.clamp_usage(event["usage"], prompt_tokens=self.prompt_tokens,
                                              max_tokens=self.max_tokens)

    async def _close(self, final: dict | None) -> None:
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

    async def sse(self):
        finished = False
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            async for event in self._events():
                kind = event["type"]
                self._observe(event)
                if event is jobs.KEEPALIVE:
                    yield b": keep-alive\n\n"
                elif kind == protocol.DELTA:
                    reasoning, content = self._split(event.get("text", ""))
                    if reasoning:
                        yield self._chunk({"reasoning_content": reasoning})
                    if content:
                        yield self._chunk({"content": content})
                    self._take_usage(event)  # sent: now it is delivered
                elif kind == protocol.DONE:
                    self._take_usage(event)
                    await self._close(event)  # durable before the client hears it is done
                    reasoning, content = self._split("", final=True)
                    if reasoning or content:
                        yield self._chunk({"reasoning_content": reasoning} if reasoning else {"content": content})
                    yield self._chunk({}, finish_reason=_public_finish(event["finish_reason"]))
                    if self.include_usage:
                        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model.name, "choices": [], "usage": self._usage_body()}
                        yield b"data: " + json.dumps(body).encode() + b"\n\n"
                    yield b"data: [DONE]\n\n"
                    finished = True
                    return
                elif kind == protocol.ERROR:
                    finished = True
                    if not event.get("synthetic"):
                        self._take_usage(event)
                    await self._close(event)
                    status = 503 if event.get("code") in {"worker_lost", "queue_timeout", "deadline"} else 500
                    body = {"error": {"message": event.get("message", "generation failed"),
                                      "type": "server_error", "param": None, "code": event.get("code")}}
                    yield b"data: " + json.dumps(body).encode() + b"\n\n"
                    log.warning("job %s ended with %s (status %s)", self.job_id, event.get("code"), status)
                    return
        except RedisError:  # the job's stream is gone with Redis: end the client's stream cleanly
            log.warning("job %s: Redis went away mid-stream", self.job_id)
            finished = True
            await self._close(None)  # charge what the client was sent
            body = {"error": {"message": "The service is temporarily unavailable; retry shortly.",
                              "type": "server_error", "param": None, "code": "service_unavailable"}}
            yield b"data: " + json.dumps(body).encode() + b"\n\n"
        finally:
            if not finished:  # the client went away: stop the job, charge what it was sent
                await self._close(None)
            await self.admission.finish(self._total_tokens())

    def _total_tokens(self) -> int:
        return self.usage["prompt_tokens"] + self.usage["completion_tokens"]

    async def whole(self):
        try:
            return await self._whole()
        finally:
            await self.admission.finish(self._total_tokens())

    async def _whole(self):
        content: list[str] = []
        reasoning: list[str] = []
        try:
            async for event in self._events():
                kind = event["type"]
                self._observe(event)
                if kind == protocol.DELTA:
                    r, c = self._split(event.get("text", ""))
                    reasoning.append(r)
                    content.append(c)
                elif kind == protocol.DONE:
                    self._take_usage(event)
                    await self._close(event)
                    r, c = self._split("", final=True)
                    reasoning.append(r)
                    content.append(c)
                    message = {"role": "assistant", "content": "".join(content)}
                    if self.model.reasoner:
                        message["reasoning_content"] = "".join(reasoning)
                    return JsonResponse({
                        "id": self.id, "object": "chat.completion", "created": self.created,
                        "model": self.model.name, "system_fingerprint": None,
                        "choices": [{"index": 0, "message": message, "logprobs": None,
                                     "finish_reason": _public_finish(event["finish_reason"])}],
                        "usage": self._usage_body()})
                elif kind == protocol.ERROR:
                    # Nothing of a non-streamed reply reached the client: nothing is charged.
                    await self._close(None)
                    if event.get("synthetic"):
                        return _overloaded(event["message"], 5)
                    return error_response(500, event.get("message"), code=event.get("code"))
        except RedisError:  # the job's stream is gone with Redis: nothing reached the client
            log.warning("job %s: Redis went away while waiting for it", self.job_id)
            await self._close(None)
            return _overloaded("The service is temporarily unavailable; retry shortly.", 5)
        except BaseException:
            await self._close(None)
            raise
        await self._close(None)
        return error_response(500, "the job ended without a result")


def _public_finish(reason: str) -> str:
    # "cancelled" only reaches a client that is still there when the operator cancels; report it as stop.
    return {"cancelled": "stop"}.get(reason, reason)
