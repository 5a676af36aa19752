"""The API's error format, DeepSeek's dialect of OpenAI's:

    {"error": {"message": "...", "type": "...", "param": null | "<name>", "code": "..."}}

Everything that answers an API client with an error goes through `error_response` or raises
`ApiError`, so the shape is defined once.
"""
from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

# status -> (DeepSeek's name, OpenAI-style type, default code)
STATUS_KINDS: dict[int, tuple[str, str, str]] = {
    400: ("Invalid Format", "invalid_request_error", "invalid_request_error"),
    401: ("Authentication Fails", "authentication_error", "invalid_api_key"),
    402: ("Insufficient Balance", "insufficient_balance_error", "insufficient_balance"),
    403: ("Permission Denied", "permission_error", "permission_denied"),
    404: ("Not Found", "invalid_request_error", "not_found"),
    405: ("Method Not Allowed", "invalid_request_error", "method_not_allowed"),
    413: ("Request Too Large", "invalid_request_error", "request_too_large"),
    415: ("Unsupported Media Type", "invalid_request_error", "unsupported_media_type"),
    422: ("Invalid Parameters", "invalid_request_error", "invalid_parameter"),
    429: ("Rate Limit Reached", "rate_limit_error", "rate_limit_exceeded"),
    500: ("Server Error", "server_error", "server_error"),
    503: ("Server Overloaded", "server_error", "server_overloaded"),
}


def error_body(status: int, message: str | None = None, *, type: str | None = None,
               code: str | None = None, param: str | None = None) -> dict:
    name, default_type, default_code = STATUS_KINDS.get(status, ("Error", "invalid_request_error", "error"))
    return {"error": {"message": message or name, "type": type or default_type,
                      "param": param, "code": code or default_code}}


def error_response(status: int, message: str | None = None, *, headers: dict | None = None,
                   **kwargs: str | None) -> JsonResponse:
    response = JsonResponse(error_body(status, message, **kwargs), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class ApiError(drf.APIException):
    """Raise from any DRF view to answer in the API's error format."""

    def __init__(self, status: int, message: str | None = None, *, type: str | None = None,
                 code: str | None = None, param: str | None = None, headers: dict | None = None):
        self.status_code = status
        self.body = error_body(status, message, type=type, code=code, param=param)
        self.headers = headers or {}
        super().__init__(detail=self.body["error"]["message"])


# DRF validation codes that mean "well-formed but out of range" (422) rather than "wrong shape" (400).
_RANGE_CODES = {"max_value", "min_value", "max_length", "min_length", "invalid_choice", "max_digits",
                "max_decimal_places", "max_whole_digits", "empty", "out_of_range"}


def _first_validation_error(detail: object, path: str = "") -> tuple[str | None, str, str]:
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            return _first_validation_error(value, f"{path}.{name}" if path and name else (name or path))
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], path)
    code = getattr(detail, "code", "invalid")
    return (path or None), str(detail), code


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's exception handler, speaking the API's error format for every DRF view."""
    if isinstance(exc, ApiError):
        return Response(exc.body, status=exc.status_code, headers=exc.headers)
    if isinstance(exc, drf.ValidationError):
        param, message, code = _first_validation_error(exc.detail)
        status = 422 if code in _RANGE_CODES else 400
        label = f"{param}: {message}" if param else message
        return Response(error_body(status, label, param=param, code=code), status=status)
    if isinstance(exc, drf.ParseError):
        return Response(error_body(400, f"Invalid Format: {exc.detail}", code="invalid_format"), status=400)
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
        message = "Authentication Fails (no credentials provided)" if isinstance(exc, drf.NotAuthenticated) else str(exc.detail)
        return Response(error_body(401, message), status=401,
                        headers={"WWW-Authenticate": 'Bearer realm="api"'})
    if isinstance(exc, drf.Throttled):
        # DRF sets `wait` in Throttled.__init__; its stubs leave the attribute out.
        headers = {"Retry-After": str(int(getattr(exc, "wait", None) or 1))}
        return Response(error_body(429), status=429, headers=headers)
    if isinstance(exc, drf.APIException):
        return Response(error_body(exc.status_code, str(exc.detail)), status=exc.status_code)
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    if isinstance(exc, Http404):
        return Response(error_body(404), status=404)
    if isinstance(exc, PermissionDenied):
        return Response(error_body(403), status=403)
    return None
