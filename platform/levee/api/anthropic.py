"""The Anthropic-compatible endpoint (DeepSeek's /anthropic base URL): POST /anthropic/v1/messages
and /anthropic/v1/messages/count_tokens.

A Messages request is translated into the chat request it means (system, text blocks, tool_use and
tool_result blocks, tools with input_schema, tool_choice, thinking, stop_sequences) and then runs the
same path as /chat/completions: plan, shed, limits, hold, enqueue, the job reader; only the
formatting differs. Keys come from `x-api-key` or a Bearer header. Errors leave in Anthropic's shape:
    {"type": "error", "error": {"type": "invalid_request_error", "message": "..."}}
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase

from levee.api import reader, schema
from levee.api import views as chat_api
from levee.api.tools import CallDelta
from levee.keys.authentication import bearer_token

log = logging.getLogger(__name__)

KNOWN_FIELDS = {"model", "max_tokens", "system", "messages", "stop_sequences", "stream", "temperature", "top_p",
                "top_k", "tools", "tool_choice", "thinking", "metadata", "service_tier"}

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
               500: "api_error", 503: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "cancelled": "end_turn",
                "insufficient_system_resource": "max_tokens"}


def api_key(request: HttpRequest) -> str | None:
    key = request.META.get("HTTP_X_API_KEY")
    return key.strip() if key else bearer_token(request)


def anthropic_errors(view: Callable[..., Any]) -> Callable[..., Any]:
    """Rewrite an error answer of the shared path ({"error": {...}}) into Anthropic's shape, keeping
    its status and headers (Retry-After, x-ratelimit-*)."""
    @functools.wraps(view)
    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = await view(request, *args, **kwargs)
        if response.status_code >= 400 and response.get("Content-Type", "").startswith("application/json"):
            try:
                error = json.loads(response.content)["error"]
            except (ValueError, KeyError, TypeError):
                return response
            body = {"type": "error", "error": {"type": ERROR_TYPES.get(response.status_code, "api_error"),
                                               "message": error.get("message", "")}}
            response.content = json.dumps(body).encode()
        return response
    return wrapped


class _Refused(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise _Refused(f"{where}[{j}] must be a text block", where)
            parts.append(block["text"])
        return "".join(parts)
    raise _Refused(f"{where} must be a string or a list of text blocks", where)


def _messages(body: dict) -> list[dict]:
    """Anthropic's system + messages → chat messages (tool_use → tool_calls, tool_result → tool)."""
    out: list[dict] = []
    system = body.get("system")
    if system is not None:
        out.append({"role": "system", "content": _text_of(system, "system")})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Refused("messages must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _Refused(f"{where}.role must be user or assistant", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise _Refused(f"{where}.content must be a string or a list of blocks", f"{where}.content")
        text, calls = [], []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            at = f"{where}.content[{j}]"
            if kind == "text" and isinstance(block.get("text"), str):
                text.append(block["text"])
            elif kind in ("thinking", "redacted_thinking") and message["role"] == "assistant":
                continue  # earlier reasoning is not fed back to the model
            elif kind == "tool_use" and message["role"] == "assistant":
                if not isinstance(block.get("name"), str) or not isinstance(block.get("id"), str):
                    raise _Refused(f"{at} needs an id and a name", at)
                calls.append({"id": block["id"], "type": "function",
                              "function": {"name": block["name"],
                                           "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
            elif kind == "tool_result" and message["role"] == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise _Refused(f"{at}.tool_use_id is required", at)
                result = block.get("content", "")
                out.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": _text_of(result, f"{at}.content") if result else ""})
            else:
                raise _Refused(f"{at}: blocks of type {str(kind)[:32]!r} are not supported here", at)
        if text or calls or message["role"] == "assistant":
            entry: dict = {"role": message["role"], "content": "".join(text)}
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
    return out


def to_chat_body(body: dict) -> dict:
    """The /chat/completions body an Anthropic Messages body means. Raises _Refused."""
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise _Refused(f"{unknown[0]}: Extra inputs are not permitted", unknown[0])
    if "max_tokens" not in body:
        raise _Refused("max_tokens: Field required", "max_tokens")
    chat: dict = {"model": body.get("model"), "messages": _messages(body), "max_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if isinstance(body.get("temperature"), (int, float)) and not isinstance(body["temperature"], bool) \
            and not 0 <= body["temperature"] <= 1:
        raise _Refused("temperature: must be between 0 and 1", "temperature")
    if body.get("stop_sequences") is not None:
        chat["stop"] = body["stop_sequences"]
    if body.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _Refused("tools must be a list", "tools")
        chat["tools"] = [{"type": "function", "function": {
            "name": t.get("name"), "description": t.get("description", ""),
            "parameters": t.get("input_schema")}} if isinstance(t, dict) else t for t in tools]
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "auto":
            chat["tool_choice"] = "auto"
        elif kind == "any":
            chat["tool_choice"] = "required"
        elif kind == "none":
            chat["tool_choice"] = "none"
        elif kind == "tool":
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        else:
            raise _Refused("tool_choice.type must be auto, any, tool or none", "tool_choice")
        if isinstance(choice, dict) and choice.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled"):
            raise _Refused("thinking.type must be enabled or disabled", "thinking")
        chat["thinking"] = {"type": kind}
    return chat


def _parse(request: HttpRequest) -> schema.ChatRequest:
    body = schema.parse_json(request.body)
    try:
        return schema.parse_chat_request(to_chat_body(body))
    except _Refused as exc:
        raise schema.RequestError(400, exc.message, param=exc.param) from None


@anthropic_errors
@chat_api.key_endpoint("POST", token=api_key)
async def messages(request: Any, key: Any) -> HttpResponseBase:
    try:
        chat = _parse(request)
        model, chars = await chat_api._served_model(chat)
        request.phases.mark("parse")
    except schema.RequestError as exc:
        return chat_api._api_error(exc)
    return await chat_api._run(request, key, model, chat, chars, lambda: chat_api.build_plan(model, chat, beta=False),
                               formatter=_Message)


@anthropic_errors
@chat_api.key_endpoint("POST", token=api_key)
async def count_tokens(request: HttpRequest, key: Any) -> HttpResponseBase:
    from asgiref.sync import sync_to_async

    from levee.shield import api as shield

    decision = await sync_to_async(shield.admit_plain_request, thread_sensitive=False)(request, key)
    if not decision.allowed:
        return decision.response()
    try:
        body = schema.parse_json(request.body)
        body.setdefault("max_tokens", 1)
        body.pop("stream", None)
        chat = schema.parse_chat_request(to_chat_body(body))
        _model, work = await chat_api.plan_request(chat, beta=False)
    except _Refused as exc:
        return chat_api._api_error(schema.RequestError(400, exc.message, param=exc.param))
    except schema.RequestError as exc:
        return chat_api._api_error(exc)
    return JsonResponse({"input_tokens": len(work.prompt_ids)})


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _Message(chat_api._Completion):
    """Formats the job's typed events as an Anthropic message (whole, or as its stream of events)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.id = f"msg_{self.job_id}"
        self._block: str | None = None  # the type of the content block open in the stream
        self._index = -1

    def _usage(self) -> dict:
        usage = self.usage
        return {"input_tokens": usage["prompt_cache_miss_tokens"], "output_tokens": usage["completion_tokens"],
                "cache_read_input_tokens": usage["prompt_cache_hit_tokens"], "cache_creation_input_tokens": 0}

    def _stop(self, done: reader.Done) -> dict:
        """stop_reason and stop_sequence: the stop sequence that ended the answer, the max_tokens
        limit, tool use, or the end of the turn."""
        if done.stop_sequence is not None:
            return {"stop_reason": "stop_sequence", "stop_sequence": done.stop_sequence}
        return {"stop_reason": STOP_REASONS.get(done.finish_reason, "end_turn"), "stop_sequence": None}

    def _content(self) -> list[dict]:
        blocks: list[dict] = []
        if self.thinking and self.reader.reasoning_text:
            blocks.append({"type": "thinking", "thinking": self.reader.reasoning_text, "signature": ""})
        if self.reader.text:
            blocks.append({"type": "text", "text": self.reader.text})
        for call in self.reader.tool_calls:
            try:
                arguments = json.loads(call.arguments or "{}")
            except ValueError:
                arguments = {"_raw": call.arguments}  # not JSON: kept, not lost
            blocks.append({"type": "tool_use", "id": call.id.replace("call_", "toolu_", 1), "name": call.name,
                           "input": arguments if isinstance(arguments, dict) else {"value": arguments}})
        return blocks

    async def _whole(self) -> HttpResponseBase:
        async with aclosing(self.follow(streamed=False)) as events:
            async for event in events:
                if isinstance(event, reader.Done):
                    return JsonResponse({"id": self.id, "type": "message", "role": "assistant",
                                         "model": self.model.name, "content": self._content(),
                                         **self._stop(event), "usage": self._usage()})
                if isinstance(event, reader.Failed):
                    if event.synthetic:
                        return _error(529 if event.code != "worker_lost" else 500, event.message or "overloaded")
                    return _error(500, event.message or "generation failed")
        return _error(500, "the job ended without a result")

    # --- streaming ---

    def _open(self, kind: str, **block: Any) -> list[bytes]:
        out = self._close()
        self._index += 1
        self._block = kind
        out.append(_event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                  "content_block": {"type": kind, **block}}))
        return out

    def _close(self) -> list[bytes]:
        if self._block is None:
            return []
        self._block = None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: dict) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})

    def _pieces(self, reasoning: str, content: str, calls: Sequence[CallDelta]) -> list[bytes]:
        out: list[bytes] = []
        if reasoning:
            if self._block != "thinking":
                out += self._open("thinking", thinking="", signature="")
            out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
        if content:
            if self._block != "text":
                out += self._open("text", text="")
            out.append(self._delta({"type": "text_delta", "text": content}))
        for call in calls:
            if call.id is not None:
                out += self._open("tool_use", id=call.id.replace("call_", "toolu_", 1), name=call.name, input={})
            if call.arguments:
                out.append(self._delta({"type": "input_json_delta", "partial_json": call.arguments}))
        return out

    async def sse(self) -> AsyncIterator[bytes]:
        try:
            yield _event("message_start", {"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model.name, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {**self._usage(), "output_tokens": 0}}})
            yield _event("ping", {"type": "ping"})
            async with aclosing(self.follow(streamed=True)) as events:
                async for event in events:
                    if isinstance(event, reader.Keepalive):
                        yield _event("ping", {"type": "ping"})
                    elif isinstance(event, reader.Text):
                        for piece in self._pieces(event.reasoning, event.content, event.tool_calls):
                            yield piece
                    elif isinstance(event, reader.Done):
                        for piece in self._pieces(event.reasoning, event.content, event.tool_calls) + self._close():
                            yield piece
                        yield _event("message_delta", {
                            "type": "message_delta",
                            "delta": self._stop(event),
                            "usage": self._usage()})
                        yield _event("message_stop", {"type": "message_stop"})
                    elif isinstance(event, reader.Failed):
                        kind = "overloaded_error" if event.code in {"queue_timeout", "deadline"} else "api_error"
                        yield _event("error", {"type": "error", "error": {"type": kind,
                                                                          "message": event.message or "failed"}})
        finally:
            await self.admission.finish(self._total_tokens())


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"type": "error", "error": {"type": ERROR_TYPES.get(status, "overloaded_error"),
                                                    "message": message}}, status=status)

