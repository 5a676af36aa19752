"""Brute-force defence for login, without handing attackers a way to lock real users out.

Failures are counted three ways, each with tiered cool-offs (SHIELD_LOGIN_*_TIERS):

An "address" is an IPv4 address or an IPv6 /64 (levee.shield.subjects.counted_address).

* per (account, address): the tight one. Guessing ada's password from one address cools that
  address off for ada only; ada elsewhere is unaffected.
* per address, any account: credential stuffing from one address.
* per account from everywhere: a high ceiling against a distributed guess, and a browser that has
  logged in to that account before (a signed "known device" cookie) is exempt from it, so even a
  botnet cannot lock the owner out.

Attempts are also rate-limited per address, and attempts from browsers without a known-device
cookie share a site-wide budget per second: every attempt costs a deliberately slow password hash,
so a flood of guesses from spoofed addresses is a CPU flood that would otherwise starve everyone.

The account is named by what was typed, whether or not it exists, so nothing here tells an
attacker which addresses have accounts. Redis unreachable: login answers 503 (fail closed).
"""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.translation import gettext_noop

from levee.shield import limiter, passes, stats, store
from levee.shield.passes import KNOWN_DEVICE_COOKIE
from levee.shield.subjects import Address, Site, Subject, counted_address, ip_of

_KD_MAX_ACCOUNTS = 5

# KEYS: failures, lock. ARGV: window seconds, then threshold/cool-off pairs (ascending).
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
local lock = 0
for i = 2, #ARGV, 2 do
  if n >= tonumber(ARGV[i]) then lock = tonumber(ARGV[i + 1]) end
end
if lock > 0 then redis.call('SET', KEYS[2], n, 'EX', lock) end
return lock
"""


def _account_tag(email: str) -> str:
    return hashlib.sha256((email or "").strip().lower().encode()).hexdigest()[:24]


DOORS = ("login", "admin_login")


def _is_staff_account(email: str) -> bool:
    """Whether `email` names a staff account (one indexed query, made only for a failure)."""
    from levee.accounts.services import find_user

    user = find_user(email) if email else None
    return bool(user is not None and user.is_staff)


class LoginGuard:
    """One login attempt at a door: "login" (/accounts/login/) or "admin_login" (/admin/login/).
    Both doors count into the same failure counters (guessing at one door cools the other off too);
    the staff door, and a staff account at either door, read them against tighter tiers
    (SHIELD_ADMIN_LOGIN_*_TIERS); the staff door has its own, smaller attempt budgets (SHIELD_LIMITS
    "admin_login.*")."""

    def __init__(self, request: HttpRequest, email: str, *, door: str = "login") -> None:
        if door not in DOORS:
            raise ValueError(f"unknown login door {door!r}")
        self.request, self.door = request, door
        self.ip = counted_address(ip_of(request))  # an IPv6 client is counted by its /64
        self.account = _account_tag(email)
        self.email = email
        self.known_device = self.account in self._known_accounts()
        # (scope, window, the user door's tiers, the staff door's): the tiers only matter when a
        # failure is counted, so nothing is looked up for an attempt refused before its hash.
        self.scopes = [
            (f"login.pair:{self.account}:{self.ip}", settings.SHIELD_LOGIN_PAIR_WINDOW,
             settings.SHIELD_LOGIN_PAIR_TIERS, settings.SHIELD_ADMIN_LOGIN_PAIR_TIERS),
            (f"login.address:{self.ip}", settings.SHIELD_LOGIN_ADDRESS_WINDOW,
             settings.SHIELD_LOGIN_ADDRESS_TIERS, settings.SHIELD_ADMIN_LOGIN_ADDRESS_TIERS),
        ]
        if not self.known_device:
            self.scopes.append((f"login.account:{self.account}", settings.SHIELD_LOGIN_ACCOUNT_WINDOW,
                                settings.SHIELD_LOGIN_ACCOUNT_TIERS, settings.SHIELD_ADMIN_LOGIN_ACCOUNT_TIERS))

    @staticmethod
    def _keys(scope: str) -> tuple[str, str]:
        return f"levee:login:{{{scope}}}:fails", f"levee:login:{{{scope}}}:lock"

    def cool_off(self) -> int | None:
        """Seconds this attempt must wait, or None to go ahead. Raises ShieldRedisDown."""
        client = store.client()
        pipe = client.pipeline(transaction=False)
        for scope, *_ in self.scopes:
            pipe.ttl(self._keys(scope)[1])
        waits = [t for t in pipe.execute() if t and t > 0]
        if waits:
            return max(waits)
        subjects: list[Subject] = [] if getattr(self.request, "shield_allowlisted", False) else [Address(self.door, self.ip)]
        if not self.known_device:
            subjects.append(Site(self.door))  # the site-wide hashing budget of new browsers
        decision = limiter.check(subjects, {"requests": 1})
        return None if decision.allowed else decision.retry_after

    def failed(self) -> None:
        client = store.client()
        script = client.register_script(_FAIL)
        # A staff account is read against the staff door's tiers at either door: the user door's
        # session is as good as the admin's for an account that is staff.
        staff = self.door == "admin_login" or _is_staff_account(self.email)
        for scope, window, user_tiers, staff_tiers in self.scopes:
            tiers = staff_tiers if staff else user_tiers
            args = [window] + [x for tier in tiers for x in tier]
            script(keys=list(self._keys(scope)), args=args)
        stats.count("failed_login")

    def succeeded(self, response: HttpResponseBase) -> None:
        store.client().delete(*self._keys(self.scopes[0][0]))
        accounts = [a for a in self._known_accounts() if a != self.account][: _KD_MAX_ACCOUNTS - 1]
        response.set_cookie(KNOWN_DEVICE_COOKIE, passes.known_device_cookie([self.account, *accounts]),
                            max_age=settings.SHIELD_KNOWN_DEVICE_MAX_AGE, httponly=True, samesite="Lax",
                            secure=self.request.is_secure())

    def _known_accounts(self) -> list[str]:
        return passes.known_accounts(self.request.COOKIES.get(KNOWN_DEVICE_COOKIE))


def gate(request: HttpRequest, *, door: str = "login") -> tuple[LoginGuard | None, HttpResponse | None]:
    """Check a login POST before any password is hashed: (guard, None) to go ahead, or
    (guard or None, the refusal to send). Runs in the shield's middleware, so a refused attempt is
    answered on the event loop and never waits for (or occupies) the thread that runs sync views."""
    from levee.shield.responses import refuse

    try:
        guard = LoginGuard(request, request.POST.get("username", ""), door=door)
        wait = guard.cool_off()
    except store.ShieldRedisDown:
        return None, refuse(request, 503, gettext_noop("Log in is briefly unavailable; please retry in a moment."),
                            retry_after=15)
    if wait:
        # The page adds "try again in about N seconds" from retry_after, in the reader's language.
        return guard, refuse(request, 429, gettext_noop("Too many attempts. Please wait and try again."), retry_after=wait,
                             title=gettext_noop("Too many attempts"))
    return guard, None
