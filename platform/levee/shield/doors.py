"""Gates of the smaller doors: the password-reset form (per address and subnet, before any mail is
queued). The reset mail itself is capped per recipient in the worker (levee.shield.mail)."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from levee.shield import limiter, store
from levee.shield.responses import refuse
from levee.shield.subjects import Address, Subnet, counted_address, ip_of


def reset_gate(request: HttpRequest) -> HttpResponse | None:
    """None to go ahead, or the refusal (429 over the limits; 503 with Redis unreachable: closed)."""
    ip = ip_of(request)
    subjects = [] if getattr(request, "shield_allowlisted", False) else [Address("reset", counted_address(ip)),
                                                                        Subnet("reset", ip)]
    try:
        decision = limiter.check(subjects, {"requests": 1})
    except store.ShieldRedisDown:
        return refuse(request, 503, "Password reset is briefly unavailable; please retry in a moment.",
                      retry_after=15)
    if decision.allowed:
        return None
    return refuse(request, 429, "Too many password reset requests from your network. Please wait and try again.",
                  retry_after=decision.retry_after, title="Too many attempts")
