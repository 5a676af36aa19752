"""A request's URL pattern name: the label metrics, access logs and redacted messages use instead of
a raw path (a path can carry tokens and would mint unbounded label values). Imported by both
levee.core.middleware and levee.core.logging, which therefore need not import each other."""
from __future__ import annotations

from typing import Any


def route_name(request: Any) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        from django.urls import Resolver404, resolve

        try:
            match = resolve(request.path_info)
        except Resolver404:
            return "unmatched"
    return match.view_name or "unnamed"
