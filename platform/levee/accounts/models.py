from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

EMAIL_MAX_LENGTH = 254


def normalize_email(email: str) -> str:
    """Trim and lower-case the domain; the local part keeps its case but uniqueness ignores it."""
    email = (email or "").strip()
    local, sep, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}" if sep else email


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def get_by_natural_key(self, email: str | None) -> User:
        return self.get(email__iexact=email)

    def create_user(self, email: str, password: str | None = None, *, password_hash: str | None = None,
                    **extra: object) -> User:
        """Every account is made here (sign-up, the operators' command, createsuperuser): saved, and
        its canonical email recorded for the sign-up defences (levee.shield.emails; a look-alike
        may already hold it: `holds_canonical_email` says). `password_hash`: already hashed (sign-up
        hashes before it knows which path it takes)."""
        from levee.shield.emails import record_canonical_email

        user = self.model(email=normalize_email(email), **extra)
        if password_hash is not None:
            user.password = password_hash
        else:
            user.set_password(password)
        user.save(using=self._db)
        record_canonical_email(user)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        extra.setdefault("email_verified_at", timezone.now())
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """An account. The email is the login and is unique regardless of case."""

    email = models.EmailField(max_length=EMAIL_MAX_LENGTH, verbose_name=_("email"))
    email_verified_at = models.DateTimeField(null=True, blank=True, verbose_name=_("email verified at"))
    is_active = models.BooleanField(default=True, verbose_name=_("is active"))
    is_staff = models.BooleanField(default=False, verbose_name=_("is staff"))
    date_joined = models.DateTimeField(default=timezone.now, verbose_name=_("date joined"))
    # The owner's page and email language ("" = follow the browser): set by the language switch and at
    # sign-up; copied into the language cookie at log-in, so it follows the account to a new device.
    language = models.CharField(max_length=16, blank=True, choices=settings.LANGUAGES,
                                verbose_name=_("language"))

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        verbose_name = _("user")
        verbose_name_plural = _("users")
        constraints = [models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique")]

    def __str__(self) -> str:
        return self.email

    @property
    def is_verified(self) -> bool:
        return self.email_verified_at is not None
