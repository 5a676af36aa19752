"""POST /beta/completions: fill in the middle (prompt + suffix) with the checkpoint's FIM tokens, or a
plain continuation of `prompt` without a suffix, answered as a legacy completion (`choices[].text`).

The same path as chat (limits, hold, enqueue, the job reader); the suffix is part of the prompt, so
it is counted and billed as prompt tokens.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from django.http import JsonResponse
from django.http.response import HttpResponseBase

from levee.api import plan, reader, schema
from levee.api import views as chat_api
from levee.api.models import LlmModel
from levee.api.tokens import tokenizer_for

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
MAX_FIM_TOKENS = 4096
MAX_PROMPT_CHARS = 1_000_000
KNOWN_FIELDS = {"model", "prompt", "suffix", "max_tokens", "echo", "stop", "stream", "stream_options", "logprobs",
                "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "user", "n", "best_of"}


def _text_field(body: dict, name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise schema.RequestError(400, f"{name} is required", param=name, code="invalid_request_error")
        return None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # the SDK allows a one-prompt list
    if not isinstance(value, str):
        raise schema.RequestError(400, f"{name} must be a string", param=name, code="invalid_request_error")
    if len(value) > MAX_PROMPT_CHARS:
        raise schema.RequestError(422, f"{name} is too long", param=name, code="invalid_parameter")
    return value


def parse(body: dict) -> tuple[schema.ChatRequest, str, str | None, bool]:
    """(the sampling part as a ChatRequest, prompt, suffix, echo). Raises RequestError."""
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise schema.RequestError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                                  code="invalid_request_error")
    prompt = _text_field(body, "prompt", required=True) or ""
    suffix = _text_field(body, "suffix", required=False)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise schema.RequestError(400, "echo must be true or false", param="echo", code="invalid_request_error")
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise schema.RequestError(422, f"only {name}=1 is supported", param=name, code="invalid_parameter")
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= schema.MAX_TOP_LOGPROBS):
        raise schema.RequestError(422, f"logprobs must be an integer from 0 to {schema.MAX_TOP_LOGPROBS}",
                                  param="logprobs", code="invalid_parameter")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > MAX_FIM_TOKENS:
        raise schema.RequestError(422, f"max_tokens must be at most {MAX_FIM_TOKENS}", param="max_tokens",
                                  code="invalid_parameter")
    chat_body = {k: v for k, v in body.items() if k in schema.KNOWN_FIELDS and k not in ("logprobs", "n")}
    chat_body["messages"] = [{"role": "user", "content": ""}]
    chat = schema.parse_chat_request(chat_body)
    chat.logprobs, chat.top_logprobs = logprobs is not None, logprobs or 0
    return chat, prompt, suffix, echo


def prompt_ids(model: LlmModel, prompt: str, suffix: str | None) -> list[int]:
    tokenizer = tokenizer_for(model)
    bos = tokenizer.bos_token or ""
    if suffix is None:
        return tokenizer.encode(bos + prompt)
    if any(tokenizer.token_to_id(t) is None for t in (FIM_BEGIN, FIM_HOLE, FIM_END)):
        raise schema.RequestError(422, f"{model.name} has no fill-in-the-middle tokens: send no suffix",
                                  param="suffix", code="invalid_parameter")
    return tokenizer.encode(f"{bos}{FIM_BEGIN}{prompt}{FIM_HOLE}{suffix}{FIM_END}")


@chat_api.key_endpoint("POST")
async def beta_completions(request: Any, key: Any) -> HttpResponseBase:
    """The chat door's path (levee.api.views): the model and the characters untokenized, then shed
    and limits, then the prompt tokenized (off the event loop when long)."""
    try:
        chat, prompt, suffix, echo = parse(schema.parse_json(request.body))
        model, chars = await chat_api._served_model(chat, len(prompt) + len(suffix or ""), param="prompt",
                                                    what="prompt and suffix")
        if model.reasoner:
            raise schema.RequestError(422, f"{model.name} does not support FIM completion", param="model",
                                      code="invalid_parameter")
        request.phases.mark("parse")
    except schema.RequestError as exc:
        return chat_api._api_error(exc)

    def formatter(**kwargs: Any) -> _TextCompletion:
        return _TextCompletion(echo=prompt if echo else "", **kwargs)

    def build() -> tuple[plan.Plan, int]:
        ids = prompt_ids(model, prompt, suffix)
        work = plan.Plan(prompt_ids=ids, thinking=False, thinking_opened=False,
                         sampling={"temperature": chat.temperature, "top_p": chat.top_p,
                                   "presence_penalty": chat.presence_penalty,
                                   "frequency_penalty": chat.frequency_penalty},
                         logprobs=chat.top_logprobs if chat.logprobs else None)
        return work, chat_api._max_tokens(model, chat, len(ids))

    return await chat_api._run(request, key, model, chat, chars, lambda: chat_api.off_loop(chars, build),
                               formatter=formatter)


def _legacy_logprobs(entries: list[dict], offset: int) -> dict:
    """OpenAI's legacy logprobs: parallel lists, and the top ones as {token: logprob} maps."""
    tokens, lps, tops, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry["token"])
        lps.append(entry["logprob"])
        tops.append({t["token"]: t["logprob"] for t in entry.get("top_logprobs", [])})
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


class _TextCompletion(chat_api._Completion):
    def __init__(self, *, echo: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.id = f"cmpl-{self.job_id}"
        self.echo = echo
        self._offset = len(echo)

    def _body(self, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model.name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}

    async def _whole(self) -> HttpResponseBase:
        async with aclosing(self.follow(streamed=False)) as events:
            async for event in events:
                if isinstance(event, reader.Done):
                    logprobs = _legacy_logprobs(self.reader.logprobs, len(self.echo)) if self.logprobs else None
                    body = self._body(self.echo + self.reader.text, chat_api._public_finish(event.finish_reason),
                                      logprobs)
                    body["usage"] = self._usage_body()
                    return JsonResponse(body)
                if isinstance(event, reader.Failed):
                    if event.synthetic:
                        return chat_api._overloaded(event.message, 5)
                    return chat_api.error_response(500, event.message or None, code=event.code)
        return chat_api.error_response(500, "the job ended without a result")

    def _data(self, body: dict) -> bytes:
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def _piece(self, text: str, logprobs: list | None, finish_reason: str | None = None) -> bytes:
        lp = None
        if self.logprobs and logprobs:
            lp = _legacy_logprobs(logprobs, self._offset)
        self._offset += len(text)
        return self._data(self._body(text, finish_reason, lp))

    async def sse(self) -> AsyncIterator[bytes]:
        try:
            if self.echo:
                yield self._data(self._body(self.echo, None, None))
            async with aclosing(self.follow(streamed=True)) as events:
                async for event in events:
                    if isinstance(event, reader.Keepalive):
                        yield b": keep-alive\n\n"
                    elif isinstance(event, reader.Text):
                        if event.content or event.logprobs:
                            yield self._piece(event.content, event.logprobs)
                    elif isinstance(event, reader.Done):
                        yield self._piece(event.content, None, chat_api._public_finish(event.finish_reason))
                        if self.include_usage:
                            body = self._body("", None, None)
                            body["choices"], body["usage"] = [], self._usage_body()
                            yield self._data(body)
                        yield b"data: [DONE]\n\n"
                    elif isinstance(event, reader.Failed):
                        yield self._data({"error": {"message": event.message or "generation failed",
                                                    "type": "server_error", "param": None, "code": event.code}})
        finally:
            await self.admission.finish(self._total_tokens())
