"""Validation of a chat-completion request, field by field, naming the offending parameter.

400 (Invalid Format) for a wrong shape or type, 422 (Invalid Parameters) for a value out of range or
a feature this deployment does not offer. Pure Python: called from the async view without a thread.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from levee.api.tools import Tool, ToolError, parse_tool_choice, parse_tools
from levee.core import jsonbody

ROLES = {"system", "user", "assistant", "tool"}
MAX_MESSAGES = 2048
MAX_STOP = 16
MAX_STOP_LENGTH = 256
MAX_USER_LENGTH = 256
SEED_RANGE = (-(2**63), 2**63 - 1)

KNOWN_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
    "stream_options", "presence_penalty", "frequency_penalty", "response_format", "logprobs",
    "top_logprobs", "seed", "user", "n", "tools", "tool_choice", "parallel_tool_calls", "thinking",
    "reasoning_effort",
}
MAX_TOP_LOGPROBS = 20
REASONING_EFFORTS = {"minimal", "low", "medium", "high", "max"}
MAX_TOOL_CALLS = 64


class RequestError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    user: str | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str = "none"  # none | auto | required | the name of the function to call
    parallel_tool_calls: bool = True
    response_format: str = "text"  # text | json_object
    logprobs: bool = False
    top_logprobs: int = 0
    thinking: bool | None = None  # None: the model's own default
    reasoning_effort: str | None = None
    prefix: bool = False  # the last message is an assistant prefix to continue (/beta)

    @property
    def strict(self) -> bool:
        return any(t.strict for t in self.tools)


def _shape(param: str, message: str) -> RequestError:
    return RequestError(400, message, param=param, code="invalid_request_error")


def _range(param: str, message: str) -> RequestError:
    return RequestError(422, message, param=param, code="invalid_parameter")


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _shape(name, f"{name} must be a number")
    if value != value or not (low <= value <= high):  # NaN fails the first test
        raise _range(name, f"{name} must be between {low} and {high}, got {value}")
    return float(value)


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _shape(name, f"{name} must be true or false")
    return value


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    param = f"messages[{index}].content"
    if content is None:
        if message.get("role") == "assistant":
            return ""
        raise _shape(param, f"{param} is required")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI's content parts: only text is understood here
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _range(f"{param}[{j}]", "only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise _shape(param, f"{param} must be a string or a list of text parts")


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = jsonbody.loads(raw)
    except jsonbody.BadJSON as exc:
        raise RequestError(400, f"Invalid Format: {exc}", code="invalid_format") from None
    if not isinstance(body, dict):
        raise RequestError(400, "Invalid Format: the body must be a JSON object", code="invalid_format")
    return body


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise _shape(unknown[0], f"Unrecognized request argument supplied: {unknown[0]}")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _shape("model", "model is required and must be a string")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _shape("messages", "messages must be a non-empty list")
    if len(messages) > MAX_MESSAGES:
        raise _range("messages", f"at most {MAX_MESSAGES} messages")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _shape(f"messages[{i}]", f"messages[{i}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object here is not hashable
            raise _shape(f"messages[{i}].role", f"messages[{i}].role must be one of {sorted(ROLES)}")
        clean.append(_message(message, role, i, last=i == len(messages) - 1))
    if clean[-1]["role"] == "assistant" and not clean[-1]["content"] and not clean[-1].get("tool_calls"):
        raise _range("messages", "the last message must not be an empty assistant message")
    prefix = bool(clean[-1].get("prefix"))

    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    max_name = "max_tokens" if "max_tokens" in body else "max_completion_tokens"
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise _shape(max_name, f"{max_name} must be an integer")
        if max_tokens < 1:
            raise _range(max_name, f"{max_name} must be at least 1")

    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise _shape("stop", "stop must be a string or a list of strings")
    if len(stops) > MAX_STOP:
        raise _range("stop", f"at most {MAX_STOP} stop sequences")
    if any(not s or len(s) > MAX_STOP_LENGTH for s in stops):
        raise _range("stop", f"each stop sequence must have 1 to {MAX_STOP_LENGTH} characters")

    stream = _bool(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _shape("stream_options", "stream_options must be an object with include_usage")
        if not stream:
            raise _range("stream_options", "stream_options is only allowed when stream is true")
        include_usage = _bool(options, "include_usage")

    response_format = body.get("response_format")
    format_type = "text"
    if response_format is not None:
        if not isinstance(response_format, dict) or response_format.get("type") not in {"text", "json_object"}:
            raise _shape("response_format", "response_format.type must be 'text' or 'json_object'")
        format_type = response_format["type"]

    logprobs = _bool(body, "logprobs")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None:
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int):
            raise _shape("top_logprobs", "top_logprobs must be an integer")
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise _range("top_logprobs", f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        if not logprobs:
            raise _range("top_logprobs", "top_logprobs requires logprobs: true")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise _range("n", "only n=1 is supported")
    try:
        tools = parse_tools(body["tools"]) if body.get("tools") is not None else []
        tool_choice = parse_tool_choice(body.get("tool_choice"), tools)
    except ToolError as exc:
        raise _range("tools" if exc.param.startswith("tools") else exc.param, exc.message) from None
    parallel = _bool(body, "parallel_tool_calls", True)
    if format_type == "json_object" and tool_choice not in ("none", "auto"):
        raise _range("response_format", "json_object output and a forced tool call exclude each other")

    thinking = body.get("thinking")
    thinking_on: bool | None = None
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise _shape("thinking", "thinking must be {\"type\": \"enabled\"} or {\"type\": \"disabled\"}")
        thinking_on = thinking["type"] == "enabled"
    effort = body.get("reasoning_effort")
    if effort is not None and (not isinstance(effort, str) or effort not in REASONING_EFFORTS):
        raise _shape("reasoning_effort", f"reasoning_effort must be one of {sorted(REASONING_EFFORTS)}")

    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _shape("seed", "seed must be an integer")
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise _range("seed", "seed must fit in 64 bits")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_LENGTH):
        raise _shape("user", f"user must be a string of at most {MAX_USER_LENGTH} characters")

    return ChatRequest(
        model=model, messages=clean, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=stops, stream=stream, include_usage=include_usage,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        seed=seed, user=user, tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel,
        response_format=format_type, logprobs=logprobs, top_logprobs=top_logprobs or 0, thinking=thinking_on,
        reasoning_effort=effort, prefix=prefix,
    )


def _tool_calls(message: dict, index: int) -> list[dict]:
    raw = message.get("tool_calls")
    param = f"messages[{index}].tool_calls"
    if not isinstance(raw, list) or len(raw) > MAX_TOOL_CALLS:
        raise _shape(param, f"{param} must be a list of at most {MAX_TOOL_CALLS} calls")
    calls = []
    for j, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"] \
                or call.get("type", "function") != "function":
            raise _shape(f"{param}[{j}]", f"{param}[{j}] must be {{id, type: function, function: {{name, arguments}}}}")
        arguments = fn.get("arguments", "")
        if isinstance(arguments, dict):  # some clients send the object itself
            arguments = json.dumps(arguments, ensure_ascii=False)
        if not isinstance(arguments, str):
            raise _shape(f"{param}[{j}].function.arguments", "arguments must be a JSON string")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise _shape(f"{param}[{j}].id", "a tool call id must be a string")
        calls.append({"id": call_id or f"call_{j}", "type": "function",
                      "function": {"name": fn["name"][:256], "arguments": arguments}})
    return calls


def _message(message: dict, role: str, index: int, *, last: bool) -> dict:
    """One message as the template sees it: role and content, an assistant's tool calls, a tool
    result's call id, and `prefix` on a last assistant message (continued, not closed)."""
    out: dict[str, Any] = {"role": role, "content": _content(message, index)}
    if role == "assistant":
        if message.get("tool_calls") is not None:
            out["tool_calls"] = _tool_calls(message, index)
        prefix = message.get("prefix")
        if prefix is not None:
            if not isinstance(prefix, bool):
                raise _shape(f"messages[{index}].prefix", "prefix must be true or false")
            if prefix and not last:
                raise _range(f"messages[{index}].prefix", "only the last message may be a prefix")
            if prefix:
                out["prefix"] = True
    elif role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise _shape(f"messages[{index}].tool_call_id", f"messages[{index}].tool_call_id is required")
        out["tool_call_id"] = call_id
    name = message.get("name")
    if name is not None:
        if not isinstance(name, str) or len(name) > 64:
            raise _shape(f"messages[{index}].name", "name must be a string of at most 64 characters")
    return out
