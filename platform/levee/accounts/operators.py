"""Who an admin request acts as, typed: Django admin only lets active staff in, so request.user is a
User there (never AnonymousUser); services that write audit rows take that User."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from levee.accounts.models import User


def operator(request: HttpRequest) -> User:
    user = request.user
    if not isinstance(user, User) or not user.is_staff:
        raise PermissionDenied("Operator actions need a staff account.")
    return user


def signed_in(request: HttpRequest) -> User:
    """The account of a view that only signed-in owners reach (login_required, or DRF's
    IsAuthenticated default), typed as a User."""
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied("Sign in first.")
    return user
