"""The admission layer: a pure-ASGI application in front of Django (`levee.asgi`) that decides the
requests a flood is made of before Django builds a request object for them.

It sees the method, the path, the headers and the peer address, and:

* enforces the body limit in `receive`: a declared Content-Length over LEVEE_MAX_BODY_BYTES is
  answered 413 before a byte of the body is read; a body without a length (chunked) is counted as
  it arrives and cut with 413 the moment it passes the limit — the client sees the answer while it
  is still sending, and the connection is closed;
* at the doors attackers hit — sign-up, log-in, password reset, the admin's log-in, and the
  key-authenticated API — decides with one Redis round trip (the limiter's door script,
  `limiter.acheck_door`): per-address and per-subnet limits, the site's per-second password-hashing
  budget (known devices, pass holders and, in calm times only, new browsers each have their own),
  and for the API whether the key exists at all (a Redis set of key digests: an unknown key is
  refused without a database query);
* answers refusals with small pre-built responses: 429/503 with Retry-After, the API's error format
  on API paths, a tiny HTML page elsewhere; a refusal that leaves a body unread closes the
  connection, except towards a configured proxy (TRUSTED_PROXY_CIDRS), which has buffered that body
  and would answer its client 502 for a connection closed while it sends (uvicorn discards the
  rest instead);
* under pressure (mode elevated or above, or the new-browser hashing budget spent) sends a browser
  with neither a known-device cookie nor a pass to a proof-of-work interstitial instead; solving it
  (`POST /shield/pass`, answered here too) sets the pass cookie (`levee.shield.passes`).

Redis unreachable, or a Redis Cluster: the doors pass through to Django, whose own gates decide
(they fail closed for sign-up and log-in). Everything else passes straight through.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.utils.translation import gettext_noop

from levee.core.errors import error_body
from levee.core.net import peer_is_proxy, resolve
from levee.keys.tags import fingerprint_of
from levee.shield import escalation, keyfilter, passes, pow, state, stats, store
from levee.shield.limiter import FixedSubject, Rule, Subject, acheck_door
from levee.shield.models import NORMAL, UNDER_ATTACK
from levee.shield.subjects import Address, SignupTrickle, Site, Subnet, subnet_of

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]  # what Django's ASGIHandler hands its send
App = Callable[[Scope, Receive, Send], Awaitable[None]]

PASS_PATH = "/shield/pass"
REFUSED_EVENT, CHALLENGED_EVENT = "refused", "challenged"
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_KEY_PATTERN = re.compile(rb"^sk-[A-Za-z0-9]{48}$")


# --- pre-built answers ---------------------------------------------------------------------------

# Pages are in the reader's language (the language cookie, else Accept-Language: what Django's
# LocaleMiddleware would choose, decided from the two headers alone and cached), built once per
# language and kept; API answers are English. Every text below is a msgid of the site's catalog.
_HTML = ("<!doctype html><html lang={lang}><meta charset=utf-8><meta name=viewport content='width=device-width'>"
         "<title>{title} · Levee</title><link rel=stylesheet href='/static/levee/site.css'>{banner}"
         "<main id=main><h1>{title}</h1><p>{message}</p>{extra}</main></html>")
# The site's banner (templates/base.html) in the modes that show one.
_BANNERS = {
    "under_attack": gettext_noop("We are under heavy load: registration may be busy, please retry later. Registered "
                                 "users can log in normally."),
    "elevated": gettext_noop("We are seeing unusual traffic: sign-up asks your browser to solve a short check, and "
                             "free chat allowances are smaller for now."),
}
_TITLES = {413: gettext_noop("Too large"), 429: gettext_noop("Slow down a little"), 503: gettext_noop("We are busy"),
           401: gettext_noop("Not allowed"), 400: gettext_noop("Bad request")}
# Words the layer's pages use that are given by the door code (marked here for the catalog).
_PAGE_WORDS = (gettext_noop("Sorry"), gettext_noop("Use POST."), gettext_noop("Invalid Content-Length header"),
               gettext_noop("Too many attempts. Please wait a little and try again."),
               gettext_noop("Request body is larger than %(limit)s bytes"),
               gettext_noop("That check did not complete; trying again."),
               gettext_noop("Your browser needs a quick check before this form can be sent; please send it again "
                            "afterwards."))
_TOO_LARGE = _PAGE_WORDS[4]


def _banner(mode: str) -> str:
    """In the active language (callers build pages under translation.override)."""
    from django.utils.html import escape
    from django.utils.translation import gettext

    text = _BANNERS.get(mode)
    return f"<div class='banner banner-{mode}' role=status>{escape(gettext(text))}</div>" if text else ""


@lru_cache(maxsize=256)
def _prebuilt(status: int, api: bool, message: str, code: str | None = None, title: str | None = None,
              mode: str = NORMAL, language: str = "en", params: tuple[tuple[str, object], ...] = ()
              ) -> tuple[bytes, bytes]:
    """(content type, body) of a refusal, built once per distinct answer and language. `message` and
    `title` are msgids, `params` what their %(name)s placeholders stand for."""
    values = dict(params)
    if api:
        text = message % values if values else message
        return b"application/json", json.dumps(error_body(status, text, code=code)).encode()
    from django.utils import translation
    from django.utils.html import escape

    with translation.override(language):
        text = translation.gettext(message)
        text = text % values if values else text
        heading = translation.gettext(title or _TITLES.get(status, "Sorry"))
        page = _HTML.format(lang=language, title=escape(heading), message=escape(text), extra="", banner=_banner(mode))
    return b"text/html; charset=utf-8", page.encode()


@lru_cache(maxsize=1)
def _language_cookie() -> re.Pattern[bytes]:
    return re.compile(rb"(?:^|;)\s*" + re.escape(settings.LANGUAGE_COOKIE_NAME.encode()) + rb'="?([A-Za-z0-9-]{1,16})')


@lru_cache(maxsize=512)
def _language_of(cookie: str, accept: str) -> str:
    """What translation.get_language_from_request decides, from the cookie's value and the
    Accept-Language header (no request object, no database)."""
    from django.utils.translation import trans_real

    if cookie:
        try:
            return trans_real.get_supported_language_variant(cookie)
        except LookupError:
            pass
    for code, _quality in trans_real.parse_accept_lang_header(accept):
        if code == "*":
            break
        if not trans_real.language_code_re.search(code):
            continue
        try:
            return trans_real.get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


def _page_language() -> str:
    """The language of a page answered for the request being admitted."""
    scope = _scope.get()
    if scope is None:
        return settings.LANGUAGE_CODE
    cookie, accept = b"", b""
    for name, value in scope["headers"]:
        if name == b"cookie":
            cookie += b";" + value
        elif name == b"accept-language":
            accept = value
    found = _language_cookie().search(cookie) if cookie else None
    return _language_of(found.group(1).decode() if found else "", accept[:256].decode("latin-1"))


_scope: contextvars.ContextVar[dict | None] = contextvars.ContextVar("levee_admission_scope", default=None)
access_log = logging.getLogger("levee.access")


def _account_for(scope: dict | None, status: int) -> str:
    """Count and log an answer the layer gave itself, as RequestLogMiddleware does for Django's:
    the route's name (never the raw path), a request id (returned, for the x-request-id header)."""
    from levee.core import logging as levee_logging
    from levee.core import metrics

    request_id = f"req_{secrets.token_hex(12)}"
    if scope is None:
        return request_id
    route = _routes().get(scope["path"], "unmatched")
    method = scope["method"]
    seconds = time.perf_counter() - scope.get("levee.admitted", time.perf_counter())
    try:
        metrics.count_request(route, method, status, seconds)
    except Exception:  # a metrics failure must never cost the client its answer
        access_log.exception("metrics: could not count a request")
    if not _log_budget.take():
        return request_id
    tokens = levee_logging.bind_request(request_id, route)
    try:
        access_log.info("%s %s %s", method, route, status,
                        extra={"method": method, "status": status, "duration_ms": round(seconds * 1000, 1),
                               "client_ip": scope.get("levee.client_ip"), "account_id": None, "admission": True})
    finally:
        levee_logging.unbind(tokens)
    return request_id


class _LogBudget:
    """At most SHIELD_ADMISSION_LOG_PER_SECOND access-log lines a second for the layer's own answers
    (one event loop per process: no lock). What a second did not log is said in one line the next."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.second, self.used, self.skipped = 0, 0, 0

    def take(self) -> bool:
        second = int(self.clock())
        if second != self.second:
            if self.skipped:
                access_log.info("admission: %d answers of one second not logged (over %d lines/s; all are "
                                "counted in /metrics)", self.skipped, settings.SHIELD_ADMISSION_LOG_PER_SECOND,
                                extra={"admission": True, "unlogged": self.skipped})
            self.second, self.used, self.skipped = second, 0, 0
        if self.used < settings.SHIELD_ADMISSION_LOG_PER_SECOND:
            self.used += 1
            return True
        self.skipped += 1
        return False


_log_budget = _LogBudget()


async def _answer(send: Send, status: int, content_type: bytes, body: bytes, *, retry_after: int | None = None,
                  close: bool = False, extra: list | None = None) -> None:
    scope = _scope.get()
    request_id = _account_for(scope, status)
    if scope is not None and scope.get("levee.body_unread"):
        close = True  # refused before its body was read: do not spend the server on reading it
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)),
               (b"cache-control", b"no-store"), (b"x-request-id", request_id.encode())]
    if retry_after:
        headers.append((b"retry-after", b"%d" % retry_after))
    if close:
        headers.append((b"connection", b"close"))
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, status: int, message: str, *, api: bool, retry_after: int | None = None,
                  code: str | None = None, close: bool = False, title: str | None = None,
                  params: tuple[tuple[str, object], ...] = ()) -> None:
    if api:
        content_type, body = _prebuilt(status, True, message, code, title, NORMAL, "en", params)
    else:
        content_type, body = _prebuilt(status, False, message, code, title, state.cached_mode(), _page_language(),
                                       params)
    await _answer(send, status, content_type, body, retry_after=retry_after, close=close)


# --- where the doors are -------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _doors() -> dict[str, str]:
    """path -> door: the browser doors by their URL names, the key-authenticated API by its routes."""
    from django.urls import reverse

    from levee.urls import api_patterns

    doors = {reverse("login"): "login", reverse("signup"): "signup", reverse("password_reset"): "reset",
             reverse("admin:login"): "admin"}
    for pattern in api_patterns:
        route = str(pattern.pattern)
        doors[f"/{route}"] = doors[f"/v1/{route}"] = "api"
    return doors


@lru_cache(maxsize=1)
def _routes() -> dict[str, str]:
    """The URL names of the paths the layer answers for (its doors and the pass), for logs and metrics."""
    from django.urls import resolve

    routes = {PASS_PATH: "shield-pass"}
    for path in _doors():
        routes[path] = resolve(path).view_name or "unnamed"
    return routes


def _is_api(path: str) -> bool:
    from levee.core.views import API_PREFIXES

    return path.startswith(API_PREFIXES)


# --- the body limit ------------------------------------------------------------------------------

class _BodyLimit:
    """`receive` and `send` for a request whose body has no declared length: counts what arrives and,
    past `limit`, answers 413 itself (unless the application has already started its answer), tells
    the application the client went away, and drops whatever the application still sends."""

    def __init__(self, receive: Receive, send: Send, limit: int, api: bool) -> None:
        self._receive, self._send, self.limit, self.api = receive, send, limit, api
        self.seen = 0
        self.cut = False
        self.started = False

    async def receive(self) -> dict:
        if self.cut:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.cut = True
                if not self.started:
                    self.started = True
                    await _refuse(self._send, 413, _TOO_LARGE, api=self.api, close=True,
                                  params=(("limit", self.limit),))
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Mapping[str, Any]) -> None:
        if self.cut:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


# --- the layer -----------------------------------------------------------------------------------

class Admission:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await self._lifespan(receive, send)
        if kind != "http":
            return await self.app(scope, receive, send)
        escalation.ensure_running()
        scope["levee.admitted"] = time.perf_counter()
        _scope.set(scope)
        path, method = scope["path"], scope["method"]
        length = None
        auth = cookie = forwarded = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                auth = value
            elif name == b"cookie":
                cookie = value if cookie is None else cookie + b"; " + value
            elif name == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b", " + value
        limit = settings.LEVEE_MAX_BODY_BYTES
        client = scope.get("client")
        peer = client[0] if client else ""
        # Whether an answer given here leaves a body unread (then the connection is closed after it).
        scope["levee.body_unread"] = method not in _BODYLESS
        if length is not None:
            try:
                declared = int(length)
                if declared < 0:
                    raise ValueError
            except ValueError:
                return await _refuse(send, 400, "Invalid Content-Length header", api=_is_api(path),
                                     code="invalid_format", close=True)
            # From a configured proxy the body is one it has buffered and is sending in full: closing
            # on it would turn this layer's answer into the proxy's 502 ("broken pipe while sending
            # to upstream"). The connection stays open and uvicorn discards the rest as it arrives.
            scope["levee.body_unread"] = declared > 0 and not peer_is_proxy(peer)
            if declared > limit:  # refused unread: receive() is never called
                return await _refuse(send, 413, _TOO_LARGE, api=_is_api(path), close=True,
                                     params=(("limit", limit),))
        door = _doors().get(path)
        if door is not None or path == PASS_PATH:
            ip = resolve(peer, forwarded.decode("latin-1") if forwarded else "")
            scope["levee.client_ip"] = ip
            try:
                if path == PASS_PATH:
                    return await self._pass(scope, receive, send, ip)
                if state.due():
                    await _refresh_state()
                if state.address_verdict(ip) is None and not settings.SHIELD_REDIS_CLUSTER:
                    if door == "api":
                        answered = await _api_door(send, path, auth, ip)
                    else:
                        answered = await _browser_door(send, door or "", method, path, cookie, ip)
                    if answered:
                        return None
            except store.ShieldRedisDown:
                pass  # Django's own gates decide (sign-up and log-in fail closed there)
        if length is None and method not in _BODYLESS:
            guard = _BodyLimit(receive, send, limit, _is_api(path))
            return await self.app(scope, guard.receive, guard.send)
        return await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Django speaks no lifespan; the layer does, to start (and stop) the escalation loop."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                escalation.ensure_running()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await escalation.stop()
                await stats.aflush_due(all_pending=True)  # a restart mid-flood keeps its last second's counts
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _pass(self, scope: Scope, receive: Receive, send: Send, ip: str) -> None:
        """POST /shield/pass: challenge + nonce (a form, a few hundred bytes) -> the pass cookie and a
        redirect back to where the browser was going."""
        if scope["method"] != "POST":
            return await _refuse(send, 405, "Use POST.", api=False)
        body = b""
        scope["levee.body_unread"] = False
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            if len(body) > 4096:
                return await _refuse(send, 413, _TOO_LARGE, api=False, close=True, params=(("limit", 4096),))
            if not message.get("more_body"):
                break
        form = parse_qs(body.decode("latin-1"), max_num_fields=8)
        challenge, nonce = form.get("pow_challenge", [""])[0], form.get("pow_nonce", [""])[0]
        target = form.get("next", ["/"])[0]
        if not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 500:
            target = "/"
        try:
            # The challenge carries its bits (signed); any the layer may have asked in some mode will do.
            await pow.averify(challenge, nonce, required_bits=min(settings.SHIELD_PASS_BITS.values()))
        except pow.PowRefused:
            return await _interstitial(send, target, ip, status=403, note="That check did not complete; trying again.")
        value = passes.issue(ip)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = (f"{passes.PASS_COOKIE}={value}; Path=/; Max-Age={settings.SHIELD_PASS_TTL}; HttpOnly; "
                  f"SameSite=Lax{secure}").encode()
        await _answer(send, 303, b"text/plain", b"", extra=[(b"location", target.encode()), (b"set-cookie", cookie)])
        return None


async def _refresh_state() -> None:
    """The mode and address rules, re-read at most every 0.5 s per process; the refresh may read the
    database (a lost mirror), so it runs in a worker thread, not on the event loop."""
    from asgiref.sync import sync_to_async

    await sync_to_async(state.refresh_if_due, thread_sensitive=False)()


def _cookies(raw: bytes | None) -> dict[str, str]:
    if not raw:
        return {}
    jar = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except Exception:  # a malformed Cookie header: as if there were none
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _windows() -> tuple[str, str]:
    """The escalation windows a door's decision counts in: refusals (evidence of an attack) and
    challenges (a budget spent, or an interstitial instead of the door: pressure)."""
    return stats.prefix(REFUSED_EVENT), stats.prefix(CHALLENGED_EVENT)


# --- the API's door ------------------------------------------------------------------------------

def _masked(token: bytes) -> str:
    tail = token[-4:].decode("latin-1") if len(token) >= 8 and token[-4:].isalnum() else ""
    return f"****{tail}"


async def _invalid_key(send: Send, token: bytes) -> None:
    await _refuse(send, 401, f"Authentication Fails, Your api key: {_masked(token)} is invalid", api=True)


async def _api_door(send: Send, path: str, auth: bytes | None, ip: str) -> bool:
    """Refuse what cannot be a valid key without Django, and what is not a key in the filter without
    the database; per-address limits first. True when answered here."""
    if auth is None:
        await _refuse(send, 401, "Authentication Fails (no api key provided)", api=True)
        return True
    scheme, _, token = auth.partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer":
        return False  # Django words this one per endpoint
    if not _KEY_PATTERN.match(token):
        await _invalid_key(send, token)
        return True
    if keyfilter.refuses_untagged() and fingerprint_of(token) is None:
        # Not a key this deployment minted, and no active key lacks a tag it can verify: refused
        # with one HMAC, no round trip; counted as the set's "unknown" would be, in a batch (ADR 0015).
        await _invalid_key(send, token)
        await _unknown_keys.add()
        return True
    digest = keyfilter.member(token)
    decision, known = await acheck_door([Address("apikey", ip), Subnet("apikey", ip)], {"requests": 1},
                                        member=digest, member_set=keyfilter.SET_KEY, ready_key=keyfilter.READY_KEY,
                                        refused=_windows()[0], challenged=_windows()[1])
    if not decision.allowed:
        await _refuse(send, 429, f"Rate limit reached for requests from your address. Please retry after "
                      f"{decision.retry_after}s.", api=True, retry_after=decision.retry_after)
        return True
    if known == 0:
        await _invalid_key(send, token)
        return True
    if known == 3:
        keyfilter.rebuild_soon()
    return False


# --- the browser doors ---------------------------------------------------------------------------

def _credential(cookies: dict[str, str], ip: str) -> tuple[str, str | None]:
    """("known", None), ("pass", pass id) or ("new", None)."""
    if passes.known_device(cookies.get(passes.KNOWN_DEVICE_COOKIE)):
        return "known", None
    pass_id = passes.valid(cookies.get(passes.PASS_COOKIE), ip)
    if pass_id:
        return "pass", pass_id
    return "new", None


def _difficulty(mode: str, subnet_remaining: int | None, subnet_limit: int) -> int:
    """Leading zero bits asked of a browser: by the mode, plus more while its subnet is busy."""
    bits = settings.SHIELD_PASS_BITS.get(mode, settings.SHIELD_PASS_BITS[NORMAL])
    if subnet_remaining is not None and subnet_limit:
        used = 1 - subnet_remaining / subnet_limit
        bits += sum(extra for share, extra in settings.SHIELD_PASS_SUBNET_BITS if used >= share)
    return min(bits, 26)


_HASHING_DOORS = {"login", "signup", "admin"}  # each admitted attempt hashes a password


class _SubnetLoad:
    """Door POSTs per subnet this process answered without Redis in the current minute: the load
    that raises a bare browser's difficulty under pressure. Each process sees its own share of a
    subnet's traffic, so the extra bits come later than the shared count would give them; bounded
    (forgotten whole past 50 000 subnets, and every minute)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.minute = -1
        self.counts: dict[str, int] = {}

    def add(self, ip: str) -> int:
        minute = int(self.clock() // 60)
        if minute != self.minute or len(self.counts) > 50_000:
            self.minute, self.counts = minute, {}
        key = subnet_of(ip)
        n = self.counts[key] = self.counts.get(key, 0) + 1
        return n


def _subnet_door_limit() -> int:
    rules = Subnet("door", "0.0.0.0").rules()
    return rules[0].limit if rules else 0


_subnet_load = _SubnetLoad()
_challenges = stats.Batched(CHALLENGED_EVENT)
_unknown_keys = stats.Batched(REFUSED_EVENT)


async def _browser_door(send: Send, door: str, method: str, path: str, cookie: bytes | None, ip: str) -> bool:
    subjects: list[Subject]
    mode = state.cached_mode()  # refreshed by the caller when due
    if door == "signup" and mode == UNDER_ATTACK and settings.SHIELD_SIGNUP_TRICKLE_PER_MINUTE == 0:
        await _busy(send)
        return True
    cookies = _cookies(cookie)
    credential, pass_id = _credential(cookies, ip)
    if method in ("GET", "HEAD"):
        if credential != "new" or not settings.SHIELD_BROWSER_PASS:
            return False
        if mode == NORMAL:
            # Calm: a bare browser's door page is Django's to render (a template, a CSRF token, ~15 ms
            # of a core), within the site's per-second budget of such pages. Past it — a flood's
            # first seconds, before the mode rises: every bot from a fresh address fetches the form
            # first — the page is the interstitial, and the spent budget counts as pressure.
            decision, _ = await acheck_door([Site("page.new")], {"requests": 1}, soft_from=0,
                                            refused=_windows()[0], challenged=_windows()[1])
            if decision.allowed:
                return False
            await _interstitial(send, path, ip, bits=_difficulty(mode, None, 0))
            return True
        # Under pressure a new browser first earns a pass; how hard depends on its subnet's load.
        # Under attack, sign-up is busy once the trickle is spent: no point in a pass then.
        subjects = [Subnet("door", ip)]
        if door == "signup" and mode == UNDER_ATTACK:
            subjects.append(SignupTrickle())
        refused, challenged = _windows()
        decision, _ = await acheck_door(subjects, {"requests": 1}, peek=True, refused=refused, challenged=challenged)
        if not decision.allowed and door == "signup":
            await _busy(send)
            return True
        outcome = decision.outcomes[0] if decision.outcomes else None
        await _interstitial(send, path, ip, bits=_difficulty(mode, outcome.remaining if outcome else None,
                                                             outcome.rule.limit if outcome else 0))
        return True
    if method != "POST":
        return False
    under_pressure = mode != NORMAL and settings.SHIELD_BROWSER_PASS
    if credential == "new" and under_pressure:
        # The answer is the interstitial whatever Redis would say (an address over its door limit would
        # only get a 429 in its place), so it is given without the round trip: the subnet's load for
        # the difficulty is this process's count, the challenge is filed in a batch (ADR 0014).
        limit = _subnet_door_limit()
        await _interstitial(send, path, ip, status=429, retry_after=1,
                            bits=_difficulty(mode, max(0, limit - _subnet_load.add(ip)), limit),
                            note="Your browser needs a quick check before this form can be sent; "
                                 "please send it again afterwards.")
        await _challenges.add()
        return True
    subjects = [Address(f"door.{door}", ip), Subnet("door", ip)]
    if pass_id:
        subjects.append(FixedSubject(f"door.pass:{pass_id}", [Rule("requests", settings.SHIELD_PASS_USES,
                                                                   float(settings.SHIELD_PASS_TTL))]))
    soft_from = None  # a spent hashing budget is pressure, not evidence of an attack: counted apart
    # Under attack a sign-up hashes only within the site's trickle (a few a minute, decided by
    # Django's gate), so it does not spend the hashing budget the returning users' log-ins need.
    if door in _HASHING_DOORS and not (door == "signup" and mode == UNDER_ATTACK):
        # (a bare browser gets here only in calm times or with the pass off: else it got the interstitial)
        soft_from = len(subjects)
        subjects.append(Site({"known": "hash.known", "pass": "hash.pass"}.get(credential, "hash.new")))
    challenge_instead = False
    decision, _ = await acheck_door(subjects, {"requests": 1}, soft_from=soft_from,
                                    refused=_windows()[0], challenged=_windows()[1])
    if not decision.allowed:
        worst = max((o for o in decision.outcomes if not o.allowed), key=lambda o: o.retry_after)
        if worst.subject.key() == "hash.new.global" and settings.SHIELD_BROWSER_PASS:  # pressure: earn a pass first
            challenge_instead = True
        elif door == "signup" and mode == UNDER_ATTACK:
            await _busy(send)
            return True
        else:
            await _refuse(send, 429, "Too many attempts. Please wait a little and try again.", api=False,
                          retry_after=decision.retry_after)
            return True
    if challenge_instead:
        subnet = next((o for o in decision.outcomes if o.subject.key().startswith("door.subnet")), None)
        await _interstitial(send, path, ip, status=429, retry_after=1,
                            bits=_difficulty(mode, subnet.remaining if subnet else None,
                                             subnet.rule.limit if subnet else 0),
                            note="Your browser needs a quick check before this form can be sent; "
                                 "please send it again afterwards.")
        return True
    return False


async def _busy(send: Send) -> None:
    from levee.shield.signup import BUSY

    await _refuse(send, 503, BUSY, api=False, retry_after=settings.SHIELD_SIGNUP_BUSY_RETRY_AFTER,
                  title=gettext_noop("Registration is busy"))


# The form's words travel in data attributes too: pow.js shows them (the page has no JavaScript catalog).
_INTERSTITIAL_FORM = (
    "<form method=post action='{action}' data-pow-bits='{bits}' data-pow-auto data-pow-working='{working}' "
    "data-pow-ready='{ready}'>"
    "<input type=hidden name=pow_challenge value='{challenge}'><input type=hidden name=pow_nonce value=''>"
    "<input type=hidden name=next value='{next}'>"
    "<p class=pow-status aria-live=polite>{working}</p>"
    "<noscript><p>{noscript}</p></noscript>"
    "<button type=submit>{button}</button></form><script src='/static/levee/pow.js' defer></script>")
_INTERSTITIAL_WORDS = {"title": gettext_noop("Checking your browser"), "working": gettext_noop("Checking your browser…"),
                       "ready": gettext_noop("Ready."), "noscript": gettext_noop("This check needs JavaScript."),
                       "button": gettext_noop("Continue"),
                       "message": gettext_noop("A quick check that you are a browser, not a bot: it takes a moment "
                                               "and happens once per visit.")}


@lru_cache(maxsize=64)
def _interstitial_page(language: str, mode: str, note: str) -> str:
    """The interstitial in `language`, with {action}, {bits}, {challenge} and {next} left to fill in."""
    from django.utils import translation
    from django.utils.html import escape

    with translation.override(language):
        words = {name: str(escape(translation.gettext(text))) for name, text in _INTERSTITIAL_WORDS.items()}
        message: str = words["message"]
        if note:
            message = f"{escape(translation.gettext(note))} {message}"
        form = _INTERSTITIAL_FORM.replace("{working}", words["working"]).replace("{ready}", words["ready"]) \
            .replace("{noscript}", words["noscript"]).replace("{button}", words["button"])
        page = _HTML.format(lang=language, title=words["title"], message=message, extra="{extra}", banner=_banner(mode))
    return page.replace("{", "{{").replace("}", "}}").replace("{{extra}}", form)


async def _interstitial(send: Send, target: str, ip: str, *, bits: int | None = None, status: int = 200,
                        retry_after: int | None = None, note: str = "") -> None:
    """The proof-of-work page: a signed challenge, the solver (static/levee/pow.js), and a form that
    posts the answer to /shield/pass, which sets the pass and sends the browser back to `target`."""
    from html import escape

    if bits is None:
        bits = _difficulty(state.cached_mode(), None, 0)
    challenge = pow.issue(bits)
    page = _interstitial_page(_page_language(), state.cached_mode(), note)
    body = page.format(action=PASS_PATH, bits=bits, challenge=challenge, next=escape(target, quote=True)).encode()
    await _answer(send, status, b"text/html; charset=utf-8", body, retry_after=retry_after)


def challenge_in(page: str) -> str | None:
    """The challenge of an interstitial page (tests, the flood simulator)."""
    found = re.search(r"name=pow_challenge value='([^']+)'", page)
    return found.group(1) if found else None

