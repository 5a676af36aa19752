from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader

from levee.core.errors import error_response

# "/chat/completions" is the bare API; the rest of /chat/ is the web chat, whose /chat/api/ is JSON.
from levee.core.middleware import API_PREFIXES, sessionless  # noqa: F401 (API_PREFIXES: imported from here too)


@sessionless
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. Touches neither the database nor Redis."""
    return HttpResponse("ok\n", content_type="text/plain")


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES) or "application/json" in request.META.get("HTTP_ACCEPT", "")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return error_response(404, f"No route for {request.method} {request.path}")
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return error_response(500)
    try:  # without the request: its session or user may be what failed
        return HttpResponse(loader.get_template("500.html").render({}), status=500)
    except Exception:
        return HttpResponse("<h1>Server error</h1><p>Something went wrong on our side.</p>", status=500)


def database_unavailable(request: HttpRequest) -> HttpResponse:
    """PostgreSQL is away (a restart, a failover) mid-request: a 503 with Retry-After, never a 500
    (levee.core.middleware.DatabaseUnavailableMiddleware). The page is rendered without the request:
    its session or user would ask the database again."""
    message = "The service is temporarily unavailable; retry shortly."
    if _wants_json(request):
        return error_response(503, message, headers={"Retry-After": "5"})
    try:
        body = loader.get_template("503.html").render({"message": message, "retry_after": 5})
    except Exception:
        body = f"<h1>Service unavailable</h1><p>{message}</p>"
    response = HttpResponse(body, status=503)
    response["Retry-After"] = "5"
    return response


def friendly_error(request: HttpRequest, status: int, message: str | None = None, *, retry_after: int | None = None,
                   title: str | None = None) -> HttpResponse:
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


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return error_response(400, "Bad request")
    return HttpResponse("<h1>Bad request</h1>", status=400)


def json_ok(data: Any, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status)


@sessionless
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database, Redis and a live worker per enabled model. 200 or 503, JSON."""
    from levee.core.health import readiness

    result = readiness()
    response = JsonResponse(result, status=200 if result["status"] == "ok" else 503)
    response["Cache-Control"] = "no-store"
    # A red probe is the answer, not a server error: without this Django logs every 503 at ERROR,
    # once per probe per balancer, through the whole outage.
    response._has_been_logged = True  # type: ignore[attr-defined]  # Django's own flag (django.utils.log), not in the stubs
    return response


@sessionless
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, for the allowed networks or the bearer token only; 404 for everyone
    else, so the endpoint does not even admit to existing."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from levee.core.metrics import exposition

    if not metrics_allowed(request):
        return not_found(request)
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def metrics_allowed(request: HttpRequest) -> bool:
    import hmac
    import ipaddress

    from django.conf import settings

    token = settings.LEVEE_METRICS_TOKEN
    if token:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    try:
        # client_ip is the peer, or the client a trusted proxy vouches for: a public request relayed
        # by a local reverse proxy is judged by the public address, not the proxy's loopback one.
        addr = ipaddress.ip_address(getattr(request, "client_ip", None) or request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(addr in net for net in settings.LEVEE_METRICS_CIDRS)
