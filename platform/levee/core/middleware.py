"""Middleware that every request passes, sync or async (the streaming API views are async)."""
from __future__ import annotations

import re
import secrets

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings

from levee.core.errors import error_response

_INCOMING_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class _Middleware:
    """Runs `before(request)` (which may answer early) and `after(request, response)` around the
    next handler, in whichever mode the stack runs, so no thread is spent on async requests."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        response = self.before(request)
        if response is None:
            response = self.get_response(request)
        return self.after(request, response)

    async def _acall(self, request):
        response = self.before(request)
        if response is None:
            response = await self.get_response(request)
        return self.after(request, response)

    def before(self, request):
        return None

    def after(self, request, response):
        return response


class RequestIdMiddleware(_Middleware):
    """Every response carries x-request-id. A well-formed id from a trusted proxy is kept so logs join up."""

    def before(self, request):
        from levee.core.net import client_ip

        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request.client_ip = client_ip(request)
        trusted_peer = request.client_ip != request.META.get("REMOTE_ADDR")
        request.request_id = incoming if (trusted_peer and _INCOMING_ID.match(incoming)) else f"req_{secrets.token_hex(12)}"
        return None

    def after(self, request, response):
        response["x-request-id"] = request.request_id
        return response


class BodySizeLimitMiddleware(_Middleware):
    """Refuse a declared body above the limit before anything reads it."""

    def before(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response(400, "Invalid Content-Length header", code="invalid_format")
        if length > settings.LEVEE_MAX_BODY_BYTES:
            return error_response(413, f"Request body is larger than {settings.LEVEE_MAX_BODY_BYTES} bytes")
        return None
