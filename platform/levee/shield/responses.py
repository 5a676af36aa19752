"""How the shield says no: the API's error format for API clients, a friendly page for browsers."""
from __future__ import annotations

from django.shortcuts import render

from levee.core.errors import error_response
from levee.core.views import _wants_json


def refuse(request, status: int, message: str, *, retry_after: int | None = None, title: str | None = None,
           code: str | None = None, template: str = "shield/refused.html"):
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if _wants_json(request):
        return error_response(status, message, code=code, headers=headers)
    title = title or {429: "Slow down a little", 503: "We are busy", 403: "Access blocked"}.get(status, "Sorry")
    response = render(request, template, {"title": title, "message": message, "retry_after": retry_after},
                      status=status)
    for name, value in headers.items():
        response[name] = value
    return response
