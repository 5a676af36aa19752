"""The one JSON parser for request bodies (the API, the web chat, every DRF endpoint).

`json.loads` alone lets an attacker turn a small body into a 500: nesting a few thousand levels
deep raises RecursionError (and a depth just under the interpreter's limit passes, to blow up
whatever walks the value later), an integer of 4,301 digits or more raises a bare ValueError
(Python's guard against quadratic int parsing), and a `\\ud800` escape yields a string that cannot be
encoded as UTF-8 when it reaches the database, the tokenizer or a log line. Here each of those is a
`BadJSON` with a message fit for the client, which every caller answers with 400 in its own error
format.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser as BaseJSONParser

# Deeper than any body Levee accepts (a chat request is five levels: body, messages, message,
# content parts, part) by a wide margin; shallow enough that nothing that walks a value recurses far.
MAX_DEPTH = 32
# Wider than any integer a parameter can hold (a 64-bit seed is 20 characters with its sign).
MAX_INT_DIGITS = 40
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadJSON(ValueError):
    """The body is not JSON Levee will read; `str(exc)` says why, for the client."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise BadJSON(f"a number has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_constant(name: str) -> float:
    raise BadJSON(f"{name} is not a JSON value")


def _check(value: Any, max_depth: int) -> None:
    """Depth and surrogates, without recursion (the value may be ~1000 levels deep)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise BadJSON("a string holds a lone surrogate (\\ud800-\\udfff), which is not text")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            raise BadJSON(f"the body nests deeper than {max_depth} levels")
        if isinstance(item, dict):
            for key, inner in item.items():
                stack.append((key, depth))
                stack.append((inner, depth + 1))
        else:
            stack.extend((inner, depth + 1) for inner in item)


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a request body, or raise BadJSON (never another exception)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError:
        raise BadJSON("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except BadJSON:
        raise
    except RecursionError:
        raise BadJSON(f"the body nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing a long literal in a float's place
        raise BadJSON(f"the body is not valid JSON ({exc.__class__.__name__})") from None
    _check(value, max_depth)
    return value


class JSONParser(BaseJSONParser):
    """DRF's JSON parser with the same guards (settings.REST_FRAMEWORK's only parser)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            return loads(raw)
        except BadJSON as exc:
            raise ParseError(str(exc)) from None
