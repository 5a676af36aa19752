"""Receivers that feed observability from Django's auth signals."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest


@receiver(user_login_failed, dispatch_uid="levee.core.count_login_failure")
def _count_login_failure(sender: str, credentials: dict[str, Any] | None = None, request: HttpRequest | None = None,
                         **kwargs: Any) -> None:
    # `credentials` is deliberately unused: Django masks the password in it, but the attempted
    # email is personal data and an attack's list of targets; the count is what the operator needs.
    from levee.core.metrics import count_login_failure

    count_login_failure()


@receiver(user_logged_in, dispatch_uid="levee.core.bind_logged_in_account")
def _bind_logged_in_account(sender: type[AbstractBaseUser], user: AbstractBaseUser | None = None, **kwargs: Any) -> None:
    from levee.core.logging import bind_account

    if user is not None:
        bind_account(user.pk)
