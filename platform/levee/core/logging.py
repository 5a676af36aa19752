"""Structured logs: one JSON object a line, carrying who and which request, never a secret.

    {"ts": "...", "level": "INFO", "logger": "levee.access", "message": "...",
     "request_id": "req_…", "account_id": 42, "route": "api-whoami", "method": "GET",
     "status": 200, "duration_ms": 3.1}

The request id, account id and route live in context variables that RequestContextMiddleware
sets; contextvars follow a request across `await` and through asgiref's sync_to_async (which copies
the context into its thread and back), so concurrent requests in one ASGI process never see each
other's ids.

`RedactFilter` sits on the handlers, so every record that reaches an output passes it, whichever
logger wrote it: it masks `sk-…` API keys, Authorization header values and password fields in the
message, its arguments, extra fields and the formatted traceback. It is a safety net, not a licence
to log request bodies: prompt text is never logged by Levee's own code.

This module imports nothing from Django, so gunicorn's master can use it before Django starts.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.http import HttpRequest

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("levee_request_id", default=None)
account_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("levee_account_id", default=None)
route_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("levee_route", default=None)
# What `bind_request` hands back for `unbind`: each variable it set, with the token that restores it.
LogTokens = list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]]


def bind_account(account_id: int | str | None) -> None:
    """Say which account the current request acts for; later log lines of the request carry it."""
    account_id_var.set(None if account_id is None else str(account_id))


def bind_request(request_id: str | None, route: str | None = None) -> LogTokens:
    """Start a request's logging context; returns tokens for `unbind`."""
    return [(request_id_var, request_id_var.set(request_id)), (route_var, route_var.set(route)),
            (account_id_var, account_id_var.set(None))]


def unbind(tokens: LogTokens) -> None:
    for var, token in reversed(tokens):
        try:
            var.reset(token)
        except ValueError:  # set in another context (a thread hop); clearing is what matters
            var.set(None)


# --- redaction ------------------------------------------------------------------------------------

MASK = "[redacted]"
_PATTERNS: list[tuple[re.Pattern, str]] = [
    # API keys: Levee's are sk-<prefix>_<secret>; OpenAI-style and other sk- tokens alike.
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-" + MASK),
    # Authorization headers in any spelling: "Authorization: Bearer x", 'HTTP_AUTHORIZATION': 'x', authorization=x
    (re.compile(r"""(?i)((?:http_)?authorization['"]?\s*[:=]\s*['"]?)(?:(?:bearer|basic|token)\s+)?[^\s'",;}]+"""),
     r"\1" + MASK),
    # Bare bearer tokens, wherever they appear.
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]+"), r"\1" + MASK),
    # password=…, password: …, "password": "…", new_password1=…, passwd, secret, token fields.
    # ("tokens" is not "token": max_tokens=256 and prompt_tokens are counts, and stay.)
    (re.compile(r"""(?i)(\b[\w\-]*(?:password|passwd|secret|api_?key|token|sessionid)(?![a-z])[\w\-]*['"]?\s*[:=]\s*)(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s&,;}\]]+)"""),
     r"\1" + MASK),
]


def redact(text: str) -> str:
    if not text:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: (MASK if _sensitive_key(k) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


_SENSITIVE_NAME = re.compile(r"(?i)(password|passwd|secret|authorization|api_?key|cookie|token|sessionid)(?![a-z])")


def _sensitive_key(key: object) -> bool:
    return bool(_SENSITIVE_NAME.search(str(key)))


# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class RedactFilter(logging.Filter):
    """Masks secrets in a record before any formatter sees it. Attach it to handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_levee_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is rather than lose the line
            message = f"{record.msg!r} % {record.args!r}"
        request = getattr(record, "request", None)
        if request is not None:
            # Django's own records (django.request, django.security) carry the request and quote its
            # raw path, which can hold a verification or reset token: name the route instead.
            message = _without_path(message, request)
            vars(record).pop("request", None)
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRS and not name.startswith("_"):
                setattr(record, name, MASK if _sensitive_key(name) else _redact_value(value))
        record._levee_redacted = True
        return True


def _without_path(message: str, request: HttpRequest) -> str:
    try:
        from levee.core.routes import route_name

        route = f"<{route_name(request)}>"
    except Exception:
        route = "<path>"
    for path in sorted({getattr(request, "get_full_path", lambda: "")(), getattr(request, "path", "")}, key=len,
                       reverse=True):
        if path and path != "/":
            message = message.replace(path, route)
    return message


class ContextFilter(logging.Filter):
    """Copies the request's context (request id, account id, route) onto the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("request_id", request_id_var), ("account_id", account_id_var), ("route", route_var)):
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


# --- formatters -----------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line. Fields with no value are left out, so lines stay short."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "account_id", "route"):
            value = getattr(record, name, None)
            if value is None and name == "request_id":
                value = request_id_var.get()
            if value is not None:
                entry[name] = value
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and name not in entry and not name.startswith("_") and value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Human-readable, for a terminal: time, level, logger, request id, message, then key=value extras."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime  # times in UTC, as the trailing Z says

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = []
        for name in ("request_id", "account_id", "route"):
            value = getattr(record, name, None)
            if value is not None:
                extras.append(f"{name}={value}")
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and name not in {"request_id", "account_id", "route"} \
                    and not name.startswith("_") and value is not None:
                extras.append(f"{name}={value}")
        if extras:
            head, sep, tail = line.partition("\n")
            line = f"{head} [{' '.join(extras)}]{sep}{tail}"
        return line


def logging_config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """The dictConfig for Django's LOGGING (and gunicorn's logconfig_dict): one console handler,
    context and redaction filters on it, JSON or text."""
    if fmt not in {"json", "text"}:
        raise ValueError(f"LOG_FORMAT={fmt!r}: use json or text")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "levee.core.logging.ContextFilter"},
            "redact": {"()": "levee.core.logging.RedactFilter"},
        },
        "formatters": {
            "json": {"()": "levee.core.logging.JsonFormatter"},
            "text": {"()": "levee.core.logging.TextFormatter"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": fmt, "filters": ["context", "redact"]},
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django's default config gives "django" its own console handler (with DEBUG on), which
            # would print a second, unredacted copy of each line: everything goes through ours.
            "django": {"level": "INFO"},
            "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "django.request": {"level": "ERROR"},
            # The access line comes from levee.access; uvicorn's own would log raw paths (tokens in URLs).
            "uvicorn.access": {"level": "WARNING"},
            "gunicorn.access": {"level": "WARNING"},
        },
    }
