from django.http import HttpRequest
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from levee.accounts.models import User
from levee.keys.models import ApiKey
from levee.keys.services import authenticate_key


def bearer_token(request: HttpRequest) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None when there is no such header."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def masked(token: str) -> str:
    tail = token[-4:] if len(token) >= 8 and token[-4:].isalnum() else ""
    return f"****{tail}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer sk-…`. Unknown, malformed, revoked and expired keys all get the same 401."""

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        token = bearer_token(request._request)
        if token is None:
            if request._request.META.get("HTTP_AUTHORIZATION"):
                raise exceptions.AuthenticationFailed("Authentication Fails (the Authorization header must be 'Bearer <key>')")
            return None
        key = authenticate_key(token)
        if key is None:
            raise exceptions.AuthenticationFailed(f"Authentication Fails, Your api key: {masked(token)} is invalid")
        request._request.api_key = key  # type: ignore[attr-defined]  # Levee's own request attribute, read by the views
        return key.user, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
