"""Caps on the mail a stranger can make Levee send: per recipient and per recipient domain, per day
(SHIELD_LIMITS "mail.recipient" and "mail.domain"). Sign-up asks before it writes an account;
the password-reset task asks before it sends."""
from __future__ import annotations

from levee.shield import limiter
from levee.shield.subjects import MailDomain, Recipient


def may_mail(email: str) -> bool:
    """Spend one of the day's mails to `email` if both caps allow it. Raises store.ShieldRedisDown."""
    return limiter.check([Recipient(email), MailDomain(email)], {"requests": 1}).allowed
