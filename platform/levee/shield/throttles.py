"""Every key-authenticated DRF endpoint is counted against the key's, account's and address's
requests per minute. Views that call `admit_api_request` themselves set `shield_managed = True`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from levee.core.errors import ApiError

if TYPE_CHECKING:  # rest_framework.views imports this module (DEFAULT_THROTTLE_CLASSES)
    from rest_framework.views import APIView


class ApiKeyThrottle(BaseThrottle):
    def allow_request(self, request: Request, view: APIView) -> bool:
        from levee.keys.models import ApiKey
        from levee.shield.api import admit_plain_request

        if not isinstance(request.auth, ApiKey) or getattr(view, "shield_managed", False):
            return True
        decision = admit_plain_request(request, request.auth)
        if not decision.allowed:
            raise ApiError(decision.status, decision.message, headers=decision.headers,
                           code="rate_limit_exceeded" if decision.status == 429 else "server_overloaded")
        return True
