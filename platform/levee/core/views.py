from django.http import HttpResponse, JsonResponse
from django.shortcuts import render

from levee.core.errors import error_response

# "/chat/completions" is the bare API; the rest of /chat/ is the web chat, whose /chat/api/ is JSON.
API_PREFIXES = ("/v1/", "/api/", "/chat/completions", "/chat/api/", "/user/", "/models", "/beta/")


def healthz(request):
    """Liveness: the process answers. Touches neither the database nor Redis."""
    return HttpResponse("ok\n", content_type="text/plain")


def home(request):
    return render(request, "home.html")


def _wants_json(request) -> bool:
    return request.path.startswith(API_PREFIXES) or "application/json" in request.META.get("HTTP_ACCEPT", "")


def not_found(request, exception=None):
    if _wants_json(request):
        return error_response(404, f"No route for {request.method} {request.path}")
    return render(request, "404.html", status=404)


def server_error(request):
    if _wants_json(request):
        return error_response(500)
    return HttpResponse("<h1>Server error</h1><p>Something went wrong on our side.</p>", status=500)


def bad_request(request, exception=None):
    if _wants_json(request):
        return error_response(400, "Bad request")
    return HttpResponse("<h1>Bad request</h1>", status=400)


def json_ok(data, status=200):
    return JsonResponse(data, status=status)
