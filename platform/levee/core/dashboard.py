"""The operator's live dashboard in Django admin: the page to watch during an attack.

One JSON snapshot (`/admin/dashboard/data`) polled every 2 s by the page's script. Every section is
read independently, so a Redis outage shows as "Redis unavailable" in the sections that need it
while the database-backed ones still answer, and the other way round.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import user_passes_test
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from levee.core import rates

log = logging.getLogger(__name__)
WINDOW_MINUTES = 15


def _section(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        log.warning("dashboard: %s failed (%s)", name, exc.__class__.__name__)
        return {"error": f"unavailable ({exc.__class__.__name__})"}


def _rates() -> dict[str, Any]:
    starts, events = rates.series(WINDOW_MINUTES)
    zeros = [0] * len(starts)

    def pick(prefix: str) -> dict[str, list[int]]:
        return {name[len(prefix):]: counts for name, counts in sorted(events.items()) if name.startswith(prefix)}

    signups = pick("signup:")
    refusals = pick("limiter:")
    return {
        "minutes": starts,
        "signups": signups,
        "signups_total": [sum(col) for col in zip(*signups.values(), strict=True)] if signups else zeros,
        "login_failed": events.get("login_failed", zeros),
        "limiter": refusals,
        "blocked": refusals.get("blocked", zeros),
        "shed": refusals.get("shed", zeros),
    }


# core knows no app: each app registers its own sections in its AppConfig.ready() (the shield "mode",
# the API "models", billing "billing"); each is read on its own, so one failing leaves the rest.
Panel = Callable[[], Any]
_panels: dict[str, Panel] = {}


def register_panel(name: str, read: Panel) -> None:
    """Adds (or replaces, by name) a section of the snapshot; `read` returns its JSON-able value."""
    _panels[name] = read


def snapshot() -> dict[str, Any]:
    sections = {name: _section(name, read) for name, read in list(_panels.items())}
    return {"at": time.time(), "rates": _section("rates", _rates), **sections}


_staff = user_passes_test(lambda u: u.is_active and u.is_staff, login_url="admin:login")


@never_cache
@_staff
def dashboard_data(request: HttpRequest) -> HttpResponse:
    return JsonResponse(snapshot())


@never_cache
@_staff
def dashboard_page(request: HttpRequest) -> HttpResponse:
    from django.contrib import admin

    context = {**admin.site.each_context(request), "title": "Live dashboard", "window_minutes": WINDOW_MINUTES}
    return render(request, "admin/levee_dashboard.html", context)
