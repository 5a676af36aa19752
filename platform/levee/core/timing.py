"""Where an API request's time went before its response started, sent back as a Server-Timing
header (https://www.w3.org/TR/server-timing/): `django` (from the ASGI application's first sight of
the request to the first middleware: the request object, request_started), `edge` (the middleware
in front of the view), then each phase the view marks. Operators read it in browser tools or with curl -i; the API benchmark
(ops/bench/api.py) splits the platform's share of time-to-first-token with it."""
from __future__ import annotations

import time

from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase


class Phases:
    def __init__(self, request: HttpRequest) -> None:
        self.parts: list[tuple[str, float]] = []
        self.last = getattr(request, "_levee_started", None) or time.perf_counter()
        received = getattr(request, "scope", {}).get("levee.received")
        if received is not None:
            self.parts.append(("django", self.last - received))

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.parts.append((name, now - self.last))
        self.last = now

    def apply(self, response: HttpResponseBase) -> HttpResponseBase:
        if settings.LEVEE_SERVER_TIMING and self.parts:
            response["Server-Timing"] = ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in self.parts)
        return response
