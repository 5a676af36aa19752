"""How the shield says no: the API's error format for API clients, a friendly page for browsers."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from levee.core.errors import error_response
from levee.core.views import _wants_json


def refuse(request: HttpRequest, status: int, message: str, *, retry_after: int | None = None, title: str | None = None,
           code: str | None = None, template: str = "shield/refused.html") -> HttpResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if _wants_json(request):
        return error_response(status, message, code=code, headers=headers)
    title = title or {429: gettext_noop("Slow down a little"), 503: gettext_noop("We are busy"), 403: gettext_noop("Access blocked")}.get(status, gettext_noop("Sorry"))
    # The API keeps the English; a page shows the text in the reader's language (sources mark it N_).
    response = render(request, template, {"title": _(title), "message": _(message), "retry_after": retry_after},
                      status=status)
    for name, value in headers.items():
        response[name] = value
    return response
