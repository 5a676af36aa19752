"""The shield's gate at the front of every request, sync or async: address rules first, then
shedding of anonymous pages under load; on the way out, x-ratelimit-* headers of any limiter
decision taken for the request."""
from __future__ import annotations

from collections.abc import Awaitable
from functools import lru_cache
from typing import cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils.translation import gettext_noop

from levee.core.asyncdb import db
from levee.core.middleware import _Middleware
from levee.core.views import API_PREFIXES
from levee.shield import state
from levee.shield.responses import refuse
from levee.shield.shedding import shed
from levee.shield.subjects import ip_of

# Never shed these for anonymous visitors: logging in and the pages that have their own gates.
_NEVER_SHED = ("/accounts/", "/admin/", "/static/", "/healthz")


def _unlimited() -> frozenset[str]:
    return frozenset(getattr(settings, "LEVEE_UNLIMITED_PATHS", ["/healthz"]))


@lru_cache(maxsize=1)
def _paths() -> dict[str, str]:
    return {"signup": reverse("signup"), "login": reverse("login"), "admin_login": reverse("admin:login"),
            "reset": reverse("password_reset")}


_refresh_in_pool = db(state.refresh_if_due)


class ShieldMiddleware(_Middleware):
    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if state.due():  # the refresh may read the database: on the pool, not on the event loop
            await _refresh_in_pool()
        if self._gated(request):
            # Several Redis round trips (and, with Redis unreachable, their timeouts): in a worker
            # thread, so the event loop keeps serving streams, and not in the sync-view thread,
            # so refusals do not queue behind password hashing.
            response = await sync_to_async(self.before, thread_sensitive=False)(request)
            if response is None:
                response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
            return self.after(request, response)
        return await super()._acall(request)

    @staticmethod
    def _gated(request: HttpRequest) -> bool:
        paths = _paths()
        return request.path == paths["signup"] or (request.method == "POST" and request.path in (
            paths["login"], paths["admin_login"], paths["reset"]))

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        if request.path in _unlimited():  # probes and scrapes: never limited, gated or shed
            return None
        verdict = state.address_verdict(ip_of(request))
        if verdict == "deny":
            return refuse(request, 403, gettext_noop("Requests from your network are blocked."), code="address_denied")
        request.shield_allowlisted = verdict == "allow"  # type: ignore[attr-defined]  # the shield's own request attribute
        # Sign-up and login gates run here, not in their views: under a flood almost every attempt
        # is refused, and a refusal answered here never queues for the sync-view thread.
        if request.path == _paths()["signup"]:
            from levee.shield import signup

            gate = request.shield_signup_gate = signup.gate(request)  # type: ignore[attr-defined]  # the shield's own request attribute
            if gate.refusal is not None:
                return gate.refusal
        elif request.method == "POST" and request.path in (_paths()["login"], _paths()["admin_login"]):
            from levee.shield import login

            door = "login" if request.path == _paths()["login"] else "admin_login"
            guard, refusal = login.gate(request, door=door)
            request.shield_login_guard = guard  # type: ignore[attr-defined]  # the shield's own request attribute
            if refusal is not None:
                return refusal
        elif request.method == "POST" and request.path == _paths()["reset"]:
            from levee.shield import doors

            refusal = request.shield_reset_refusal = doors.reset_gate(request)  # type: ignore[attr-defined]  # the shield's own request attribute
            if refusal is not None:
                return refusal
        if self._anonymous_page(request):
            for model in settings.SHIELD_MODELS:
                retry_after = shed(model, "anon_page")
                if retry_after:
                    return refuse(request, 503, gettext_noop("We are serving a lot of people right now. Please retry in a "
                                                   "moment; registered users can log in normally."),
                                  retry_after=retry_after)
        return None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        decision = getattr(request, "shield_decision", None)
        if decision is not None:
            for name, value in decision.headers.items():
                if name not in response:
                    response[name] = value
        return response

    @staticmethod
    def _anonymous_page(request: HttpRequest) -> bool:
        return (request.method in ("GET", "HEAD") and not request.path.startswith(API_PREFIXES)
                and not request.path.startswith(_NEVER_SHED)
                and settings.SESSION_COOKIE_NAME not in request.COOKIES)
