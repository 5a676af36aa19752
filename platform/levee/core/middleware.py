"""Middleware that every request passes, sync or async (the streaming API views are async)."""
from __future__ import annotations

import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from csp import middleware as csp_middleware
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as message_middleware
from django.contrib.sessions import middleware as session_middleware
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.utils import translation
from django.utils.cache import patch_vary_headers

from levee.core.errors import error_response
from levee.core.routes import route_name

# Paths that answer JSON (the API, the web chat's endpoints): errors in the API's format, in English.
API_PREFIXES = ("/v1/", "/api/", "/chat/completions", "/chat/api/", "/user/", "/models", "/beta/", "/anthropic/")
_INCOMING_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

# The next handler of a middleware: a response in a sync stack, an awaitable of one in an async stack.
GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]
_View = TypeVar("_View", bound=Callable[..., Any])


class _Middleware:
    """Runs `before(request)` (which may answer early) and `after(request, response)` around the
    next handler, in whichever mode the stack runs, so no thread is spent on async requests."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        is_async = iscoroutinefunction(self)  # (in a variable: as a condition it would narrow `self`)
        if is_async:
            return self._acall(request)
        response = self.before(request)
        if response is None:
            response = cast(HttpResponseBase, self.get_response(request))  # a sync stack: the response itself
        return self.after(request, response)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        response = self.before(request)
        if response is None:
            response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
        return self.after(request, response)

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return response


class DatabaseUnavailableMiddleware(_Middleware):
    """Innermost: a view that meets the database away (DatabaseError: a PostgreSQL restart or
    failover) answers 503 with Retry-After, in the API's format on JSON paths — the key-authenticated
    API does the same in its endpoint wrapper; this covers every other view (the web chat, pages).
    Costs nothing until a view raises."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        from django.db import DatabaseError

        if not isinstance(exception, DatabaseError):
            return None
        from levee.core.views import database_unavailable

        logging.getLogger(__name__).warning("database unavailable for %s: %r", request.path, exception)
        return database_unavailable(request)


class RequestIdMiddleware(_Middleware):
    """Every response carries x-request-id. A well-formed id from a trusted proxy is kept so logs join up.

    Levee's own request attributes (client_ip, request_id, the request log's start time) are set on
    Django's request object; its stubs cannot declare them, hence the attr-defined ignores."""

    def before(self, request: HttpRequest) -> None:
        from levee.core.net import client_ip, from_trusted_proxy

        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request.client_ip = client_ip(request)  # type: ignore[attr-defined]  # Levee's own request attribute
        trusted_peer = from_trusted_proxy(request)
        if not trusted_peer:  # only a configured proxy may say the client spoke HTTPS (SECURE_PROXY_SSL_HEADER)
            request.META.pop("HTTP_X_FORWARDED_PROTO", None)
        request_id = incoming if (trusted_peer and _INCOMING_ID.match(incoming)) else f"req_{secrets.token_hex(12)}"
        request.request_id = request_id  # type: ignore[attr-defined]  # Levee's own request attribute
        return None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        response["x-request-id"] = request.request_id  # type: ignore[attr-defined]  # Levee's own request attribute
        return response


class BodySizeLimitMiddleware(_Middleware):
    """Refuse a declared body above the limit before anything reads it."""

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response(400, "Invalid Content-Length header", code="invalid_format")
        if length > settings.LEVEE_MAX_BODY_BYTES:
            return error_response(413, f"Request body is larger than {settings.LEVEE_MAX_BODY_BYTES} bytes")
        return None


_QUIET_ROUTES = {"healthz", "readyz", "metrics"}  # probed every few seconds: counted, logged at DEBUG


class RequestLogMiddleware(_Middleware):
    """The logging context of a request (request id, account, route), its metrics and its access line.

    Sits right after RequestIdMiddleware so it sees every answer, including those that later
    middleware (the shield) gives without reaching a view. The route is the URL pattern's name,
    never the raw path: paths carry tokens (email verification, password reset) and would let a
    client mint unbounded metric series.
    """

    def before(self, request: HttpRequest) -> None:
        from levee.core import logging as levee_logging

        request._levee_started = time.perf_counter()  # type: ignore[attr-defined]  # Levee's own request attribute
        request._levee_log_tokens = levee_logging.bind_request(getattr(request, "request_id", None))  # type: ignore[attr-defined]  # Levee's own request attribute
        return None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        from levee.core import logging as levee_logging
        from levee.core import metrics

        seconds = time.perf_counter() - getattr(request, "_levee_started", time.perf_counter())
        route = route_name(request)
        levee_logging.route_var.set(route)
        account = levee_logging.account_id_var.get() or _account_id(request)
        try:
            metrics.count_request(route, request.method, response.status_code, seconds)
        except Exception:  # a metrics failure must never cost the client its answer
            access_log.exception("metrics: could not count a request")
        access_log.log(logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
                       "%s %s %s", request.method, route, response.status_code,
                       extra={"method": request.method, "status": response.status_code,
                              "duration_ms": round(seconds * 1000, 1), "client_ip": getattr(request, "client_ip", None),
                              "account_id": account})
        if not response.streaming:
            # A stream's body is produced after this returns, in the same task (ASGI) or thread
            # (WSGI): its log lines keep the request id. The next request binds its own.
            levee_logging.unbind(getattr(request, "_levee_log_tokens", []))
        return response


access_log = logging.getLogger("levee.access")


def _account_id(request: HttpRequest) -> str | None:
    """The account a finished request acted for, if anything already looked it up (no query here)."""
    key = getattr(request, "api_key", None)
    if key is not None:
        return str(key.user_id)
    user = getattr(request, "_cached_user", None) or getattr(request, "_acached_user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return str(user.pk)
    return None


# --- Django's own middleware, placed so that async API requests spend no thread on it -------------
#
# Django runs a MiddlewareMixin in an async stack by hopping to a thread for each of its hooks
# (sync_to_async, thread-sensitive): seven such middleware cost the streaming API about a dozen
# thread hops per request before the view starts. Those whose hooks only compute run inline here;
# those that serve browsers (sessions, CSRF, login, messages, static files) are skipped on routes
# whose views are marked @sessionless (key-authenticated API endpoints and probes).

def sessionless(view: _View) -> _View:
    """Mark a view that never uses the browser session: the session, CSRF, authentication and
    messages middleware (levee.core.middleware.SiteOnly) pass its requests straight through."""
    view.sessionless = True  # type: ignore[attr-defined]  # a mark on the function, read back by getattr
    return view


@functools.lru_cache(maxsize=512)
def _sessionless_path(path_info: str) -> bool:
    from django.urls import Resolver404, resolve

    try:
        return getattr(resolve(path_info).func, "sessionless", False)
    except Resolver404:
        return False


def is_sessionless(request: HttpRequest) -> bool:
    return _sessionless_path(request.path_info)


class Inline(_Middleware):
    """A Django middleware whose process_request/process_response only compute (no I/O), run in the
    calling thread or on the event loop instead of a thread hop each."""

    inner_class: type

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        inner = self.inner_class(get_response)
        self._request_hook: Callable[[HttpRequest], HttpResponseBase | None] | None = getattr(
            inner, "process_request", None)
        self._response_hook: Callable[[HttpRequest, HttpResponseBase], HttpResponseBase] | None = getattr(
            inner, "process_response", None)

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        return self._request_hook(request) if self._request_hook else None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return self._response_hook(request, response) if self._response_hook else response


class SiteOnly:
    """A browser middleware that @sessionless routes skip; on other routes it runs as Django runs it."""

    sync_capable = True
    async_capable = True
    inner_class: type

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.inner = self.inner_class(get_response)
        for hook in ("process_exception", "process_template_response"):
            if hasattr(self.inner, hook):
                raise ImproperlyConfigured(f"SiteOnly cannot wrap {self.inner_class.__name__}.{hook}")
        if hasattr(self.inner, "process_view"):
            self.process_view = self._aprocess_view if self.is_async else self._process_view

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        return self.get_response(request) if is_sessionless(request) else self.inner(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if is_sessionless(request):
            return await cast(Awaitable[HttpResponseBase], self.get_response(request))
        return await self.inner(request)

    def _process_view(self, request: HttpRequest, view: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> HttpResponseBase | None:
        return None if is_sessionless(request) else self.inner.process_view(request, view, args, kwargs)

    async def _aprocess_view(self, request: HttpRequest, view: Callable[..., Any], args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> HttpResponseBase | None:
        if is_sessionless(request):
            return None
        return await sync_to_async(self.inner.process_view, thread_sensitive=True)(request, view, args, kwargs)


def _wrap(base: type, inner_class: type) -> type:
    # A subclass of the original too, so checks that look for it (admin's E408-E410) still find it.
    return type(inner_class.__name__, (base, inner_class), {"inner_class": inner_class, "__module__": __name__,
                                                "__doc__": f"{inner_class.__module__}.{inner_class.__name__}, "
                                                           f"{'inline' if base is Inline else 'skipped on @sessionless routes'}."})


SecurityMiddleware = _wrap(Inline, security.SecurityMiddleware)
CSPMiddleware = _wrap(Inline, csp_middleware.CSPMiddleware)
CommonMiddleware = _wrap(Inline, common.CommonMiddleware)
XFrameOptionsMiddleware = _wrap(Inline, clickjacking.XFrameOptionsMiddleware)
SessionMiddleware = _wrap(SiteOnly, session_middleware.SessionMiddleware)
CsrfViewMiddleware = _wrap(SiteOnly, csrf.CsrfViewMiddleware)
AuthenticationMiddleware = _wrap(SiteOnly, auth_middleware.AuthenticationMiddleware)
MessageMiddleware = _wrap(SiteOnly, message_middleware.MessageMiddleware)


class LocaleMiddleware(_Middleware):
    """The language of the page: the language cookie (set by the switch, or from the account's
    preference at log-in), else the browser's Accept-Language, else English. Cookies and headers
    only, so no database work runs on the event loop. The API (@sessionless routes and the JSON
    paths) always answers in English, as DeepSeek's does."""

    def before(self, request: HttpRequest) -> None:
        if request.path.startswith(API_PREFIXES) or is_sessionless(request):
            language = settings.LANGUAGE_CODE
        else:
            language = translation.get_language_from_request(request)
        translation.activate(language)
        request.LANGUAGE_CODE = translation.get_language()
        return None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if not (request.path.startswith(API_PREFIXES) or is_sessionless(request)):
            patch_vary_headers(response, ("Accept-Language", "Cookie"))
        response.headers.setdefault("Content-Language", getattr(request, "LANGUAGE_CODE", settings.LANGUAGE_CODE))
        return response


class StaticFilesMiddleware(_Middleware):
    """WhiteNoise, consulted only for paths under STATIC_URL (it is sync-only: elsewhere it would put
    every request of an async stack through a thread)."""

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        from whitenoise.middleware import WhiteNoiseMiddleware

        self.whitenoise = WhiteNoiseMiddleware(lambda request: None)
        self.prefix = settings.STATIC_URL if settings.STATIC_URL.startswith("/") else "/" + settings.STATIC_URL

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        return self.whitenoise(request) if request.path_info.startswith(self.prefix) else None

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(self.prefix):
            response = await sync_to_async(self.whitenoise, thread_sensitive=False)(request)
            if response is not None:
                return response
        return await cast(Awaitable[HttpResponseBase], self.get_response(request))
