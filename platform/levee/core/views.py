from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader

from levee.core.errors import error_response

# "/chat/completions" is the bare API; the rest of /chat/ is the web chat, whose /chat/api/ is JSON.
API_PREFIXES = ("/v1/", "/api/", "/chat/completions", "/chat/api/", "/user/", "/models", "/beta/")


def healthz(request):
    """Liveness: the process answers. Touches neither the database nor Redis."""
    return HttpResponse("ok\n", content_type="text/plain")


def home(request):
    from levee.billing.pages import price_table
    from levee.chat.services import daily_quota

    return render(request, "home.html", {**price_table(), "chat_quota": daily_quota()})


def _wants_json(request) -> bool:
    return request.path.startswith(API_PREFIXES) or "application/json" in request.META.get("HTTP_ACCEPT", "")


def not_found(request, exception=None):
    if _wants_json(request):
        return error_response(404, f"No route for {request.method} {request.path}")
    return render(request, "404.html", status=404)


def server_error(request):
    if _wants_json(request):
        return error_response(500)
    try:  # without the request: its session or user may be what failed
        return HttpResponse(loader.get_template("500.html").render({}), status=500)
    except Exception:
        return HttpResponse("<h1>Server error</h1><p>Something went wrong on our side.</p>", status=500)


def friendly_error(request, status: int, message: str | None = None, *, retry_after: int | None = None,
                   title: str | None = None):
    """A 429 or 503 as the caller expects it: the API's error body for API paths and JSON clients,
    a page (429.html / 503.html) with the same Retry-After for browsers."""
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if _wants_json(request):
        return error_response(status, message, headers=headers)
    response = render(request, f"{status}.html" if status in (429, 503) else "500.html",
                      {"title": title, "message": message, "retry_after": retry_after}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def bad_request(request, exception=None):
    if _wants_json(request):
        return error_response(400, "Bad request")
    return HttpResponse("<h1>Bad request</h1>", status=400)


def json_ok(data, status=200):
    return JsonResponse(data, status=status)
