"""What makes two addresses the same person's, and which domains hand out throwaway inboxes."""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from levee.accounts.models import User

# Providers that ignore dots in the local part, and their aliases.
_DOTLESS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def canonical_email(email: str) -> str:
    """Fold what mail providers ignore: case everywhere; `+tags` everywhere (sub-addressing is how
    one inbox makes a thousand sign-ups); dots and the googlemail alias at Gmail. Used only to
    detect duplicates, never to send mail."""
    local, _, domain = (email or "").strip().lower().rpartition("@")
    domain = domain.rstrip(".")
    local = local.split("+", 1)[0]
    if domain in _DOTLESS:
        domain = _DOTLESS[domain]
        local = local.replace(".", "")
    return f"{local}@{domain}"


@lru_cache(maxsize=1)
def _blocklist() -> frozenset[str]:
    from disposable_email_domains import blocklist

    return frozenset(blocklist)


def is_disposable(email: str) -> bool:
    """True when the address's domain, or any parent of it, is a known disposable-mail domain, so
    `x@sub.mailinator.com` is caught by `mailinator.com` whatever the public suffix is."""
    domain = (email or "").rpartition("@")[2].strip().lower().rstrip(".")
    labels = domain.split(".")
    blocked = _blocklist()
    return any(".".join(labels[i:]) in blocked for i in range(len(labels) - 1))


def find_canonical_twin(email: str) -> User | None:
    """The account whose address folds to the same canonical form, if any."""
    from levee.shield.models import SignupIdentity

    twin = SignupIdentity.objects.filter(canonical_email=canonical_email(email)).select_related("user").first()
    return twin.user if twin else None


def record_canonical_email(user: User) -> bool:
    """Record (or, after an address change, move) `user`'s canonical form, and say whether the user
    holds it. A canonical form belongs to one account: when a look-alike already holds it (an
    operator may create one on purpose; a concurrent twin's sign-up may have committed first), the
    row is left alone and this returns False — how sign-up detects that race. Called by
    levee.accounts wherever an account is created or its address changed."""
    from django.db import IntegrityError, transaction

    from levee.shield.models import SignupIdentity

    canonical = canonical_email(user.email)
    try:
        with transaction.atomic():
            moved = SignupIdentity.objects.filter(user=user).update(canonical_email=canonical)
            if not moved:
                SignupIdentity.objects.bulk_create([SignupIdentity(user=user, canonical_email=canonical)],
                                                   ignore_conflicts=True)
    except IntegrityError:  # another account already holds the new form: keep the old one
        return False
    return holds_canonical_email(user)


def holds_canonical_email(user: User) -> bool:
    """Whether `user` holds the canonical form of its current address."""
    from levee.shield.models import SignupIdentity

    return SignupIdentity.objects.filter(user=user, canonical_email=canonical_email(user.email)).exists()
