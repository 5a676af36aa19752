"""The sign-up gate: what the mode asks of a sign-up before the form is even looked at.

    normal        a light proof of work, then per-address, per-subnet and site-wide limits
    elevated      the same with a harder proof of work and a quarter of the subnet allowance
    under_attack  "registration is busy" (503) except a site-wide trickle, each with a hard proof of work

Nothing is written and no mail queued until the proof of work and the limits pass. Only attempts
that passed the proof of work are counted for automatic mitigation (stats "signup"): a flood of
unsolved posts costs one hash each and cannot by itself push the mode around.

Redis unreachable: refused with 503 (fail closed; docs/adr/0005).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_noop

from levee.shield import limiter, pow, state, stats, store, telemetry
from levee.shield.models import UNDER_ATTACK
from levee.shield.responses import refuse
from levee.shield.subjects import Address, SignupTrickle, Site, Subject, Subnet, ip_of

BUSY = gettext_noop("Registration is busy, please retry later. Registered users can log in normally.")
UNAVAILABLE = gettext_noop("Registration is temporarily unavailable, please retry later.")
HONEYPOT_FIELD = "website"


@dataclass
class Gate:
    """One sign-up request's passage. `refusal` is a response to send instead of the page, or None."""

    request: HttpRequest
    mode: str = ""
    pow_bits: int = 0
    pow_error: str | None = None
    refusal: HttpResponse | None = None
    honeypot_tripped: bool = False

    def challenge(self) -> str:
        return pow.issue(self.pow_bits) if self.pow_bits else ""


def _subjects(request: HttpRequest, mode: str) -> list[Subject]:
    ip = ip_of(request)
    subjects: list[Subject] = [Site("signup")]
    if not getattr(request, "shield_allowlisted", False):
        subjects += [Address("signup", ip), Subnet("signup", ip, mode)]
    if mode == UNDER_ATTACK:
        subjects.append(SignupTrickle())
    return subjects


def gate(request: HttpRequest) -> Gate:
    """Decide a GET (is the form on offer?) or a POST (may this attempt proceed to the form?)."""
    try:
        return _gate(request)
    except store.ShieldRedisDown:
        telemetry.signup_refused("unavailable")
        return Gate(request, refusal=refuse(request, 503, UNAVAILABLE, retry_after=30))


def _busy(request: HttpRequest) -> HttpResponse:
    """Registration is busy: 503, retry after SHIELD_SIGNUP_BUSY_RETRY_AFTER."""
    return refuse(request, 503, BUSY, retry_after=settings.SHIELD_SIGNUP_BUSY_RETRY_AFTER,
                  title=gettext_noop("Registration is busy"))


def _gate(request: HttpRequest) -> Gate:
    if not state.redis_reachable():
        store.client().ping()  # raises if it is still down; recovers the moment it is back
    mode = state.current_mode()
    g = Gate(request, mode=mode, pow_bits=settings.SHIELD_POW_BITS.get(mode, 0))
    no_trickle = mode == UNDER_ATTACK and settings.SHIELD_SIGNUP_TRICKLE_PER_MINUTE == 0
    if request.method != "POST":
        if no_trickle or (mode == UNDER_ATTACK and not limiter.check([SignupTrickle()], {"requests": 1}, peek=True).allowed):
            g.refusal = _busy(request)
        return g

    if no_trickle:
        telemetry.signup_refused("busy")
        g.refusal = _busy(request)
        return g
    if g.pow_bits:
        try:
            pow.verify(request.POST.get("pow_challenge", ""), request.POST.get("pow_nonce", ""),
                       required_bits=g.pow_bits)
        except pow.PowRefused as exc:
            telemetry.signup_refused("proof_of_work")
            g.pow_error = str(exc)
            if mode == UNDER_ATTACK:
                g.refusal = _busy(request)
            return g  # the form is shown again with a fresh challenge
    stats.count("signup")  # the escalation's signal: attempts that paid for their proof of work
    decision = limiter.check(_subjects(request, mode), {"requests": 1})
    if not decision.allowed:
        telemetry.signup_refused("busy" if mode == UNDER_ATTACK else "rate_limited")
        if mode == UNDER_ATTACK:
            g.refusal = _busy(request)
        else:
            g.refusal = refuse(request, 429, gettext_noop("Too many sign-ups from your network. Please wait and try again."),
                               retry_after=decision.retry_after)
        return g
    g.honeypot_tripped = bool(request.POST.get(HONEYPOT_FIELD))
    if g.honeypot_tripped:
        telemetry.signup_refused("honeypot")
    return g
