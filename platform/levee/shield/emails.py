"""What makes two addresses the same person's, and which domains hand out throwaway inboxes."""
from __future__ import annotations

from functools import lru_cache

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


def find_canonical_twin(email: str):
    """The account whose address folds to the same canonical form, if any."""
    from levee.shield.models import SignupIdentity

    twin = SignupIdentity.objects.filter(canonical_email=canonical_email(email)).select_related("user").first()
    return twin.user if twin else None


def holds_canonical_email(user) -> bool:
    """Whether `user` got its canonical form (recorded on save; a concurrent twin's committed row
    makes that insert a no-op, which is how a race between two look-alike sign-ups is detected)."""
    from levee.shield.models import SignupIdentity

    return SignupIdentity.objects.filter(user=user).exists()
