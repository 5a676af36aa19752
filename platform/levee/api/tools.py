"""Function calling: the tools a request offers, the grammar that forces a call, and the parser that
reads calls out of the model's text while it streams.

A checkpoint's chat template decides how a call is written. Two families are known, DeepSeek's:

    deepseek_v31  <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>
    deepseek_v3   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>…

(`family_of` tells them apart by the template's text.) The parser is incremental: fed the output in
arbitrary pieces, it returns the plain text now certain and the calls' deltas (a call's name once
its separator arrived, then its arguments in fragments). A block that turns out not to be a call
(an unknown function, a broken layout) goes back out as text, as the model wrote it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"

MAX_TOOLS = 128
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
V31, V3 = "deepseek_v31", "deepseek_v3"


class ToolError(ValueError):
    """A tool definition or tool choice the request cannot have; `param` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param, self.message = param, message


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool = False

    def as_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def parse_tools(raw: Any, *, param: str = "tools") -> list[Tool]:
    """OpenAI's `tools` list → Tools. Raises ToolError."""
    if not isinstance(raw, list):
        raise ToolError(param, f"{param} must be a list of function tools")
    if len(raw) > MAX_TOOLS:
        raise ToolError(param, f"at most {MAX_TOOLS} tools")
    tools, names = [], set()
    for i, entry in enumerate(raw):
        where = f"{param}[{i}]"
        if not isinstance(entry, dict) or entry.get("type", "function") != "function" \
                or not isinstance(entry.get("function"), dict):
            raise ToolError(where, f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}")
        fn = entry["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ToolError(f"{where}.function.name", "a function name is 1 to 64 letters, digits, _ or -")
        if name in names:
            raise ToolError(f"{where}.function.name", f"function {name!r} is defined twice")
        names.add(name)
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise ToolError(f"{where}.function.description", "description must be a string")
        parameters = fn.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise ToolError(f"{where}.function.parameters", "parameters must be a JSON schema object")
        strict = fn.get("strict", False)
        if not isinstance(strict, bool):
            raise ToolError(f"{where}.function.strict", "strict must be true or false")
        tools.append(Tool(name, description, parameters, strict))
    return tools


def parse_tool_choice(raw: Any, tools: list[Tool]) -> str:
    """"none" | "auto" | "required" | the name of the one function the model must call."""
    if raw is None:
        return "auto" if tools else "none"
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise ToolError("tool_choice", "tool_choice must be none, auto, required or a named function")
        if raw == "required" and not tools:
            raise ToolError("tool_choice", "tool_choice 'required' needs tools")
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("function"), dict):
        name = raw["function"].get("name")
        if not isinstance(name, str) or name not in {t.name for t in tools}:
            raise ToolError("tool_choice", f"tool_choice names a function that is not in tools: {str(name)[:64]}")
        return name
    raise ToolError("tool_choice", "tool_choice must be none, auto, required or {\"type\": \"function\", ...}")


def family_of(chat_template: str | None) -> str | None:
    """The call layout a chat template writes, or None if it writes no tool calls."""
    if not chat_template or CALL_BEGIN not in chat_template:
        return None
    return V3 if "```json" in chat_template else V31


# --- the grammar of a forced call ------------------------------------------------------------------


def _lark_string(text: str) -> str:
    return json.dumps(text)


def _json_rule(schema: dict[str, Any]) -> str:
    # Compact JSON: a flexible-whitespace grammar lets a small model pad with spaces until max_tokens.
    options = {**schema.get("x-guidance", {}), "whitespace_flexible": False} if isinstance(
        schema.get("x-guidance"), dict) else {"whitespace_flexible": False}
    return "%json " + json.dumps({**schema, "x-guidance": options})


def call_grammar(tools: list[Tool], *, family: str, token_ids: dict[str, int], parallel: bool = True,
                 after_begin: bool = False) -> str:
    """A Lark grammar (llguidance's dialect) for one or more calls of `tools` in `family`'s layout,
    each call's arguments held to its function's JSON schema. `after_begin`: the calls-begin token
    was already written (the grammar starts after it)."""
    def tok(text: str) -> str:
        return f"<[{token_ids[text]}]>"

    rules = []
    alternatives = []
    for i, tool in enumerate(tools):
        schema = tool.parameters if tool.parameters else {"type": "object"}
        if family == V3:
            body = f'"function" {tok(SEP)} {_lark_string(tool.name)} "\\n```json\\n" args_{i} "\\n```"'
        else:
            body = f"{_lark_string(tool.name)} {tok(SEP)} args_{i}"
        rules.append(f"call_{i}: {tok(CALL_BEGIN)} {body} {tok(CALL_END)}")
        rules.append(f"args_{i}: {_json_rule(schema)}")
        alternatives.append(f"call_{i}")
    repeat = "+" if parallel else ""
    head = "" if after_begin else tok(CALLS_BEGIN) + " "
    return "\n".join([f"start: {head}call{repeat} {tok(CALLS_END)}", "call: " + " | ".join(alternatives), *rules])


def json_object_grammar() -> str:
    return "start: obj\nobj: " + _json_rule({"type": "object"})


# --- the incremental parser ------------------------------------------------------------------------


@dataclass
class CallDelta:
    """One piece of a call, in OpenAI's streaming shape: the first of a call has id and name."""
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out |= {"id": self.id, "type": "function"}
        function: dict[str, Any] = {}
        if self.name is not None:
            function["name"] = self.name
        function["arguments"] = self.arguments
        out["function"] = function
        return out


@dataclass
class Call:
    id: str
    name: str
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _partial(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


@dataclass
class ToolCallParser:
    """Feed the model's answer text as it streams; get back (text, call deltas) now certain."""

    family: str
    names: frozenset[str]
    id_prefix: str = "call"
    calls: list[Call] = field(default_factory=list)
    _buf: str = ""
    _state: str = "text"  # text → block (between calls) → name → args → block … → after
    _block_raw: str = ""  # the raw text of the current block, given back if it is not a call
    _block_calls: int = 0

    def push(self, text: str) -> tuple[str, list[CallDelta]]:
        self._buf += text
        out_text, deltas = "", list[CallDelta]()
        while True:
            if self._state == "text":
                at = self._buf.find(CALLS_BEGIN)
                if at < 0:
                    keep = _partial(self._buf, CALLS_BEGIN)
                    out_text += self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep:]
                    return out_text, deltas
                out_text += self._buf[:at]
                self._buf = self._buf[at + len(CALLS_BEGIN):]
                self._state, self._block_raw, self._block_calls = "block", CALLS_BEGIN, 0
                continue
            if self._state == "block":
                stripped = self._buf.lstrip()
                if stripped.startswith(CALL_BEGIN):
                    self._block_raw += self._buf[: len(self._buf) - len(stripped) + len(CALL_BEGIN)]
                    self._buf = stripped[len(CALL_BEGIN):]
                    self._state = "name"
                    continue
                if stripped.startswith(CALLS_END):
                    self._buf = stripped[len(CALLS_END):]
                    self._state = "text"  # several blocks are allowed; text after one stays text
                    continue
                if CALL_BEGIN.startswith(stripped) or CALLS_END.startswith(stripped):
                    return out_text, deltas  # could still be either
                return out_text + self._give_back(), deltas
            if self._state == "name":
                at = self._buf.find(SEP)
                if at < 0:
                    if len(self._buf) > 200:  # no name is that long: not a call
                        return out_text + self._give_back(), deltas
                    return out_text, deltas
                head = self._buf[:at]
                name = head.strip()
                if self.family == V3:
                    # "function<sep>NAME\n```json\n": the name follows the separator
                    rest = self._buf[at + len(SEP):]
                    fence = rest.find("```json")
                    if fence < 0:
                        if len(rest) > 200:
                            return out_text + self._give_back(), deltas
                        return out_text, deltas
                    name = rest[:fence].strip()
                    consumed = at + len(SEP) + fence + len("```json")
                else:
                    consumed = at + len(SEP)
                if name not in self.names:
                    return out_text + self._give_back(), deltas
                self._block_raw += self._buf[:consumed]
                self._buf = self._buf[consumed:]
                call = Call(id=f"{self.id_prefix}_{len(self.calls)}", name=name)
                self.calls.append(call)
                self._block_calls += 1
                deltas.append(CallDelta(index=len(self.calls) - 1, id=call.id, name=name))
                self._state = "args"
                continue
            if self._state == "args":
                end_tag = CALL_END
                at = self._buf.find(end_tag)
                if at < 0:
                    keep = _partial(self._buf, end_tag)
                    if self.family == V3:  # the closing fence may follow: hold back newlines and backticks
                        body = self._buf[: len(self._buf) - keep]
                        keep += len(body) - len(body.rstrip("\n`"))
                    piece = self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep:]
                else:
                    piece, self._buf = self._buf[:at], self._buf[at + len(end_tag):]
                    if self.family == V3:
                        piece = piece.rstrip().removesuffix("```").rstrip("\n")
                if self.family == V3 and not self.calls[-1].arguments:
                    piece = piece.lstrip("\n")
                if piece:
                    self.calls[-1].arguments += piece
                    if deltas and deltas[-1].index == len(self.calls) - 1:
                        deltas[-1].arguments += piece
                    else:
                        deltas.append(CallDelta(index=len(self.calls) - 1, arguments=piece))
                if at < 0:
                    return out_text, deltas
                self._block_raw = ""  # a complete call: this block is calls from now on
                self._state = "block"
                continue
            return out_text, deltas

    def _give_back(self) -> str:
        """The current block is not a call: its raw text (and what follows) is plain text again."""
        raw = self._block_raw + self._buf
        self._buf, self._block_raw, self._state = "", "", "text"
        return raw

    def flush(self) -> tuple[str, list[CallDelta]]:
        """The end of the output: whatever is held back. An unfinished call keeps what it had."""
        if self._state in ("text",):
            rest, self._buf = self._buf, ""
            return rest, []
        if self._state == "args":
            rest, self._buf = self._buf, ""
            if rest:
                self.calls[-1].arguments += rest
                return "", [CallDelta(index=len(self.calls) - 1, arguments=rest)]
            return "", []
        if self._state == "block" and self._block_raw == "":
            self._buf = ""
            return "", []
        rest = self._give_back()
        return rest, []


def valid_arguments(call: Call) -> bool:
    try:
        return isinstance(json.loads(call.arguments or "{}"), dict)
    except ValueError:
        return False
