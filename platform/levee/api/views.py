"""The OpenAI-compatible API in DeepSeek's dialect: /models and /chat/completions (bare and /v1)."""
from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from contextlib import aclosing
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from inference import protocol
from levee.api import jobs, reader, schema
from levee.api.models import LlmModel, aenabled_model
from levee.api.reader import JobReader
from levee.api.tokens import opens_thinking
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
            key, failure = await _authenticate(request)
            if failure:
                return failure
            phases.mark("auth")
            return phases.apply(await view(request, key))

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
        if _prompt_chars(chat.messages) <= INLINE_ENCODE_CHARS:  # a thread hop costs more than this
            prompt_ids = _encode(model, chat.messages)
        else:  # long prompts are tokenized off the event loop, so other streams keep flowing
            prompt_ids = await sync_to_async(_encode, thread_sensitive=False)(model, chat.messages)
        max_tokens = _max_tokens(model, chat, len(prompt_ids))
        request.phases.mark("parse")
    except schema.RequestError as exc:
        return _api_error(exc)
    return await _run(request, key, model, chat, prompt_ids, max_tokens)


INLINE_ENCODE_CHARS = 2000


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

    async def finish(self, actual_tokens: int) -> None:
        if self._done:
            return
        self._done = True
        from levee.shield import api as shield

        await shield.asettle_tokens(self.key.pk, self.key.user_id, model=self.model, estimated=self.estimated,
                                    actual=actual_tokens)
        await shield.arelease_lease(self.lease)


async def _run(request, key, model, chat, prompt_ids, max_tokens):
    from levee.shield import api as shield
    from levee.shield.tiers import api_tier

    job_id = uuid.uuid4().hex
    # Shedding by priority first (paid API last), then the caller's own limits, then capacity and money.
    retry_after = await shield.ashed(model.name, await _tiers.aget(key.user_id, lambda: api_tier(key.user, key)))
    if retry_after:
        return _overloaded(f"{model.name} is shedding load; retry shortly.", retry_after)
    request.phases.mark("shed")
    estimated = len(prompt_ids) + max_tokens
    decision = await shield.aadmit_api_request(request, key, model=model.name, estimated_tokens=estimated)
    if not decision.allowed:
        return decision.response()
    request.phases.mark("limits")
    admission = _Admission(key, model.name, estimated, decision.lease)
    try:
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

    deadline = time.time() + settings.LEVEE_JOB_QUEUE_TIMEOUT + settings.LEVEE_JOB_MAX_RUNTIME
    try:
        hold = await db(billing.place_hold)(
            user=key.user, api_key=key, model=model.name, prompt_tokens=len(prompt_ids), max_tokens=max_tokens,
            request_id=request.request_id, deadline=datetime.fromtimestamp(deadline, tz=UTC))
    except billing.InsufficientBalance:
        return error_response(402, "Insufficient Balance")
    except billing.SpendCapReached as exc:
        return error_response(402, str(exc), code=exc.code, param=exc.param)
    request.phases.mark("hold")

    message = protocol.JobMessage(
        job_id=job_id, model=model.name, prompt_ids=prompt_ids, user=str(key.user_id), hold_id=str(hold.id),
        deadline=deadline,
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
                         include_usage=chat.include_usage, admission=admission,
                         thinking_opened=model.reasoner and opens_thinking(model, prompt_ids))
    if chat.stream:
        response = StreamingHttpResponse(stream.sse(), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    return await stream.whole()


class _Completion:
    """Formats one job's typed events (levee.api.reader) as the API's response, and settles what the
    worker could not."""

    def __init__(self, *, job_id, model, hold_id, prompt_tokens, include_usage, admission,
                 thinking_opened=False):
        self.job_id, self.model, self.hold_id, self.admission = job_id, model, hold_id, admission
        self.include_usage = include_usage
        self.id = f"chatcmpl-{job_id}"
        self.created = int(time.time())
        self.reader = JobReader(job_id, prompt_tokens=prompt_tokens, reasoner=model.reasoner,
                                thinking_opened=thinking_opened)
        self.started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self._first_token_at: float | None = None

    @property
    def usage(self) -> dict:
        return self.reader.usage

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

    def _chunk(self, delta: dict, finish_reason=None) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model.name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def _text_chunks(self, reasoning: str, content: str):
        if reasoning:
            yield self._chunk({"reasoning_content": reasoning})
        if content:
            yield self._chunk({"content": content})

    def _usage_body(self) -> dict:
        usage = dict(self.usage)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": usage["prompt_cache_hit_tokens"]}
        return usage

    async def _settle_delivered(self):
        """The worker is gone: charge what the client received, once (settle is idempotent on the hold)."""
        from levee.billing import services as billing

        try:
            await db(billing.settle_hold)(
                self.hold_id, prompt_cache_hit_tokens=self.usage["prompt_cache_hit_tokens"],
                prompt_cache_miss_tokens=self.usage["prompt_cache_miss_tokens"],
                completion_tokens=self.usage["completion_tokens"], started_at=self.started_at,
                finished_at=datetime.now(UTC))
        except Exception:
            log.exception("settling hold %s after a lost worker failed; the sweep will release it", self.hold_id)

    async def sse(self):
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            async with aclosing(self.reader.follow()) as events:  # closed early: the job is cancelled
                async for event in events:
                    self._observe(event)
                    if isinstance(event, reader.Keepalive):
                        yield b": keep-alive\n\n"
                    elif isinstance(event, reader.Text):
                        for chunk in self._text_chunks(event.reasoning, event.content):
                            yield chunk
                    elif isinstance(event, reader.Done):
                        for chunk in self._text_chunks(event.reasoning, event.content):
                            yield chunk
                        yield self._chunk({}, finish_reason=_public_finish(event.finish_reason))
                        if self.include_usage:
                            body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                    "model": self.model.name, "choices": [], "usage": self._usage_body()}
                            yield b"data: " + json.dumps(body).encode() + b"\n\n"
                        yield b"data: [DONE]\n\n"
                    elif isinstance(event, reader.Failed):
                        if event.synthetic:
                            await self._settle_delivered()
                        status = 503 if event.code in {"worker_lost", "queue_timeout", "deadline"} else 500
                        body = {"error": {"message": event.message or "generation failed",
                                          "type": "server_error", "param": None, "code": event.code}}
                        yield b"data: " + json.dumps(body).encode() + b"\n\n"
                        log.warning("job %s ended with %s (status %s)", self.job_id, event.code, status)
        finally:
            await self.admission.finish(self._total_tokens())

    def _total_tokens(self) -> int:
        return self.usage["prompt_tokens"] + self.usage["completion_tokens"]

    async def whole(self):
        try:
            return await self._whole()
        finally:
            await self.admission.finish(self._total_tokens())

    async def _whole(self):
        async with aclosing(self.reader.follow()) as events:  # closed early: the job is cancelled
            async for event in events:
                self._observe(event)
                if isinstance(event, reader.Done):
                    message = {"role": "assistant", "content": self.reader.text}
                    if self.model.reasoner:
                        message["reasoning_content"] = self.reader.reasoning_text
                    return JsonResponse({
                        "id": self.id, "object": "chat.completion", "created": self.created,
                        "model": self.model.name, "system_fingerprint": None,
                        "choices": [{"index": 0, "message": message, "logprobs": None,
                                     "finish_reason": _public_finish(event.finish_reason)}],
                        "usage": self._usage_body()})
                if isinstance(event, reader.Failed):
                    if event.synthetic:
                        await self._settle_delivered()
                        return _overloaded(event.message, 5)
                    return error_response(500, event.message or None, code=event.code)
        return error_response(500, "the job ended without a result")


def _public_finish(reason: str) -> str:
    # "cancelled" only reaches a client that is still there when the operator cancels; report it as stop.
    return {"cancelled": "stop"}.get(reason, reason)
