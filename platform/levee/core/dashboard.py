"""The operator's live dashboard in Django admin: the page to watch during an attack.

One JSON snapshot (`/admin/dashboard/data`) polled every 2 s by the page's script. Every section is
read independently, so a Redis outage shows as "Redis unavailable" in the sections that need it
while the database-backed ones still answer, and the other way round.
"""
from __future__ import annotations

import logging
import time

from django.contrib.auth.decorators import user_passes_test
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from levee.core import metrics, rates

log = logging.getLogger(__name__)
WINDOW_MINUTES = 15


def _section(fn):
    try:
        return fn()
    except Exception as exc:
        log.warning("dashboard: %s failed (%s)", fn.__name__, exc.__class__.__name__)
        return {"error": f"unavailable ({exc.__class__.__name__})"}


def _mode():
    mode = metrics.current_mode()
    if mode is None:
        return {"mode": None, "note": "The shield is not installed; the mode is always 'normal'."}
    return {key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in mode.items()}


def _rates():
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


def _models():
    state = metrics.model_state(metrics.enabled_models())
    now = time.time()
    return {name: {"depth": s["depth"], "wait_s": s["wait_s"], "live_workers": s["live_workers"],
                   "workers": {w: round(now - at, 1) for w, at in sorted(s["workers"].items())},
                   "engines": {w: _engine_row(e) for w, e in sorted(s["engines"].items())}}
            for name, s in state.items()}


def _engine_row(e: dict) -> dict:
    return {"running": int(e["running"]), "max_batch": int(e["max_batch"]), "waiting": int(e["waiting"]),
            "kv_free": None if e["kv_free"] is None else round(e["kv_free"], 3)}


def _open_holds():
    return {"open_holds": metrics.open_holds()}


def snapshot() -> dict:
    return {"at": time.time(), "mode": _section(_mode), "rates": _section(_rates), "models": _section(_models),
            "billing": _section(_open_holds)}


_staff = user_passes_test(lambda u: u.is_active and u.is_staff, login_url="admin:login")


@never_cache
@_staff
def dashboard_data(request):
    return JsonResponse(snapshot())


@never_cache
@_staff
def dashboard_page(request):
    from django.contrib import admin

    context = {**admin.site.each_context(request), "title": "Live dashboard", "window_minutes": WINDOW_MINUTES}
    return render(request, "admin/levee_dashboard.html", context)
