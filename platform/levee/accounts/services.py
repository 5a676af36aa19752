"""Account verbs. Views, admin and commands call these; each is one transaction."""
from __future__ import annotations

import logging
import unicodedata

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from levee.accounts.models import EMAIL_MAX_LENGTH, User, normalize_email
from levee.accounts.signals import user_verified

log = logging.getLogger(__name__)
_VERIFY_SALT = "levee.accounts.verify-email"
_validate_email = EmailValidator(message=gettext_lazy("Enter a valid email address."))


def clean_email(raw: str) -> str:
    """Normalise and validate an address; refuse control and format characters (header injection,
    zero-width look-alikes) outright rather than trying to repair them."""
    email = normalize_email(raw)
    if not email or len(email) > EMAIL_MAX_LENGTH:
        raise ValidationError(_validate_email.message, code="invalid")
    if any(unicodedata.category(ch).startswith(("C", "Z")) and ch != " " for ch in email) or " " in email:
        raise ValidationError(_validate_email.message, code="invalid")
    _validate_email(email)
    return email


def find_user(email: str) -> User | None:
    return User.objects.filter(email__iexact=normalize_email(email)).first()


def verification_token(user: User) -> str:
    return signing.TimestampSigner(salt=_VERIFY_SALT).sign(f"{user.pk}:{user.email.lower()}")


def verification_url(user: User) -> str:
    return settings.SITE_URL + reverse("verify-email", args=[verification_token(user)])


class MailCapped(Exception):
    """The address (or its domain) has had all the mail Levee sends it in a day (levee.shield.mail)."""


def _send(to: str, subject: str, body: str) -> None:
    """Queue a mail for the platform worker once the transaction commits."""
    from levee.accounts.tasks import send_account_mail

    transaction.on_commit(lambda: send_account_mail.delay(to, subject, body))


def sign_up(email: str, password: str, *, language: str = "") -> None:
    """Create an unverified account and mail its verification link.

    Returns nothing, on purpose: whether the address already had an account must not show in the
    response, its status or its timing. An existing owner gets a mail saying someone tried.
    Raises MailCapped, before anything is written, when the address has had its day's mail: both
    paths send one, so the cap says nothing about whether an account exists.
    Raises levee.shield.store.ShieldRedisDown when the cap cannot be checked.
    """
    from levee.shield.emails import find_canonical_twin, holds_canonical_email
    from levee.shield.mail import may_mail

    email = clean_email(email)
    if not may_mail(email):
        raise MailCapped(email)
    hashed = make_password(password)  # hashed on both paths so timing does not tell them apart
    existing = find_user(email) or find_canonical_twin(email)  # a.da+x@googlemail.com is ada@gmail.com
    if existing is None:
        try:
            with transaction.atomic():
                user = User.objects.create_user(email, password_hash=hashed,
                                                language=language if language in dict(settings.LANGUAGES) else "")
                if not holds_canonical_email(user):  # a concurrent twin (a.da@ vs ad.a@) got there first
                    raise IntegrityError("canonical email taken")
        except IntegrityError:  # a concurrent sign-up with the same address won the race
            existing = find_user(email) or find_canonical_twin(email)
        else:
            with translation.override(user.language or language or None):
                _send(user.email, _("Verify your Levee account"),
                      _("Welcome to Levee.\n\nConfirm your address by opening this link:\n\n%(link)s\n\n"
                        "The link expires in %(hours)d hours.\n")
                      % {"link": verification_url(user), "hours": settings.EMAIL_VERIFICATION_MAX_AGE // 3600})
            return
    if existing is not None:
        with translation.override(existing.language or language or None):  # in the owner's language
            _send(existing.email, _("Someone tried to sign up with your address"),
                  _("Someone (maybe you) tried to create a Levee account with this address, which already has "
                    "one.\nIf you forgot your password, reset it here: %(link)s\n")
                  % {"link": settings.SITE_URL + reverse("password_reset")})


def mail_password_reset(email: str, *, domain: str, use_https: bool) -> int:
    """Mail a reset link to each active account of `email` that may receive mail today; how many
    were sent. Runs in the platform worker (levee.accounts.tasks.send_password_reset)."""
    from levee.accounts.forms import PasswordResetForm  # mails each account in its own language
    from levee.shield.mail import may_mail

    sent = 0

    class _Capped(PasswordResetForm):
        def send_mail(self, subject_template_name: str, email_template_name: str, context: dict, from_email: str | None,
                      to_email: str, html_email_template_name: str | None = None) -> None:
            nonlocal sent
            if may_mail(to_email):
                super().send_mail(subject_template_name, email_template_name, context, from_email, to_email,
                                  html_email_template_name)
                sent += 1

    form = _Capped({"email": email})
    if form.is_valid():
        form.save(domain_override=domain, use_https=use_https)
    return sent


def after_password_reset(user: User) -> int:
    """What a password reset ends besides the old password. Sessions: each holds a hash of the
    password it logged in with, which Django's AuthenticationMiddleware checks on every request, so
    setting the password has already logged every browser out. API keys: all revoked here, since a
    reset usually follows a lost or stolen password and a key made with it would outlive the reset.
    Returns how many keys were revoked, which the completion page reports."""
    from levee.keys.services import active_keys, revoke_api_key

    return sum(revoke_api_key(key, by=None) for key in active_keys(user))


def check_verification_token(token: str) -> User | None:
    """The account a genuine, unexpired token names, if it still has that address; changes nothing."""
    try:
        value = signing.TimestampSigner(salt=_VERIFY_SALT).unsign(token, max_age=settings.EMAIL_VERIFICATION_MAX_AGE)
        pk, email = value.split(":", 1)
        user = User.objects.get(pk=int(pk))
    except (signing.BadSignature, ValueError, User.DoesNotExist):
        return None
    return user if user.email.lower() == email and user.is_active else None


def verify_email(token: str) -> User | None:
    """Mark the account verified if the token is genuine, unexpired and for its current address."""
    user = check_verification_token(token)
    if user is None:
        return None
    with transaction.atomic():
        changed = User.objects.filter(pk=user.pk, email_verified_at__isnull=True).update(email_verified_at=timezone.now())
        user.refresh_from_db(fields=["email_verified_at"])
        if changed:
            user_verified.send(sender=User, user=user)
    return user


def create_user(email: str, password: str | None, *, verified: bool = False, staff: bool = False) -> User:
    """Operator path: create an account directly (the password is validated like a user's)."""
    from django.contrib.auth.password_validation import validate_password

    email = clean_email(email)
    if find_user(email):
        raise ValidationError(f"An account with the address {email} already exists.", code="exists")
    if password is not None:
        validate_password(password, User(email=email, is_staff=staff, is_superuser=staff))
    with transaction.atomic():
        user = User.objects.create_user(email, password, is_staff=staff, is_superuser=staff)
        if verified:
            User.objects.filter(pk=user.pk).update(email_verified_at=timezone.now())
            user.refresh_from_db()
            user_verified.send(sender=User, user=user)
    return user
