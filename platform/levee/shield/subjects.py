"""The limited subjects of Levee. Each says its key and its rules; the limiter does the rest."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from django.conf import settings
from django.http import HttpRequest

from levee.shield import state
from levee.shield.limiter import CONCURRENT, RATE, Rule, Subject
from levee.shield.models import NORMAL, LimitOverride


def _rules_from(spec: dict[str, Any]) -> list[Rule]:
    rules = []
    for name, value in spec.items():
        if name == "jobs":
            rules.append(Rule("jobs", int(value), kind=CONCURRENT))
        else:
            limit, period = value
            rules.append(Rule(name, int(limit), float(period), RATE))
    return rules


def _is_ipv4(ip: str) -> bool:
    """A canonical dotted quad (checked in C: parsing with ipaddress costs more than the rest of a
    door's decision, and a flood's addresses are mostly new to the caches below)."""
    try:
        socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        return False
    return True


@lru_cache(maxsize=16384)  # parsing an address costs more than the rest of a decision's Python
def subnet_of(ip: str) -> str:
    """The /24 of an IPv4 address, the /64 of an IPv6 one (what one customer usually holds)."""
    if _is_ipv4(ip):
        return ip.rsplit(".", 1)[0] + ".0/24"
    addr = ipaddress.ip_address(ip)
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@lru_cache(maxsize=16384)
def counted_address(ip: str) -> str:
    """What counts as one address: an IPv4 address itself, the /64 of an IPv6 one (a single host is
    routinely handed a whole /64, so counting per /128 would give one attacker 2**64 allowances)."""
    if _is_ipv4(ip):
        return ip
    addr = ipaddress.ip_address(ip)
    return ip if addr.version == 4 else str(ipaddress.ip_network(f"{addr}/64", strict=False))


@dataclass(frozen=True)
class Address(Subject):
    action: str
    ip: str

    def key(self) -> str:
        return f"{self.action}.address:{self.ip}"

    def rules(self) -> list[Rule]:
        return _rules_from(_spec_or_none(f"{self.action}.address"))


@dataclass(frozen=True)
class Subnet(Subject):
    action: str
    ip: str
    mode: str = NORMAL

    def key(self) -> str:
        return f"{self.action}.subnet:{subnet_of(self.ip)}"

    def rules(self) -> list[Rule]:
        rules = _rules_from(_spec_or_none(f"{self.action}.subnet"))
        if self.action == "signup" and self.mode != NORMAL:
            div = settings.SHIELD_ELEVATED_SUBNET_DIVISOR
            rules = [Rule(r.name, max(1, r.limit // div), r.period, r.kind) for r in rules]
        return rules


@dataclass(frozen=True)
class Site(Subject):
    """The whole site, for one action (e.g. all sign-ups)."""

    action: str

    def key(self) -> str:
        return f"{self.action}.global"

    def rules(self) -> list[Rule]:
        return _rules_from(_spec_or_none(f"{self.action}.global"))


@dataclass(frozen=True)
class SignupTrickle(Subject):
    """under_attack: the few sign-ups per minute the site still takes."""

    def key(self) -> str:
        return "signup.trickle"

    def rules(self) -> list[Rule]:
        return [Rule("requests", max(1, settings.SHIELD_SIGNUP_TRICKLE_PER_MINUTE), 60.0)]  # 0: see signup.gate


def _spec(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], settings.SHIELD_LIMITS[name])


def _spec_or_none(name: str) -> dict[str, Any]:
    """The rules of `name`, or none when SHIELD_LIMITS has no entry for it."""
    return cast(dict[str, Any], settings.SHIELD_LIMITS.get(name, {}))


@dataclass(frozen=True)
class ChatAccount(Subject):
    """The web chat's messages, per account."""

    user_id: int

    def key(self) -> str:
        return f"chat.account:{self.user_id}"

    def rules(self) -> list[Rule]:
        return _rules_from(_spec("chat.account"))


@dataclass(frozen=True)
class Recipient(Subject):
    """Mail to one inbox (its canonical form: `+tags` and Gmail dots fold together)."""

    email: str

    def key(self) -> str:
        from levee.shield.emails import canonical_email

        return f"mail.recipient:{canonical_email(self.email)}"

    def rules(self) -> list[Rule]:
        return _rules_from(_spec("mail.recipient"))


@dataclass(frozen=True)
class MailDomain(Subject):
    email: str

    def key(self) -> str:
        from levee.shield.emails import canonical_email

        return f"mail.domain:{canonical_email(self.email).rpartition('@')[2]}"

    def rules(self) -> list[Rule]:
        return _rules_from(_spec("mail.domain"))


def _apply_override(rules: list[Rule], override: LimitOverride | None) -> list[Rule]:
    if override is None:
        return rules
    fields = {"requests": override.requests_per_minute, "tokens": override.tokens_per_minute,
              "jobs": override.concurrent_jobs}
    return [Rule(r.name, fields.get(r.name) or r.limit, r.period, r.kind) for r in rules]


@dataclass(frozen=True)
class Account(Subject):
    user_id: int
    # Pre-resolved LimitOverride (async callers resolve it first); state.MISSING: look it up.
    override: object = field(default=state.MISSING, compare=False, repr=False)

    def key(self) -> str:
        return f"api.account:{self.user_id}"

    def rules(self) -> list[Rule]:
        override = (state.override_for("user", self.user_id) if self.override is state.MISSING
                    else cast("LimitOverride | None", self.override))
        return _apply_override(_rules_from(_spec("api.account")), override)


@dataclass(frozen=True)
class Key(Subject):
    key_id: int
    override: object = field(default=state.MISSING, compare=False, repr=False)

    def key(self) -> str:
        return f"api.key:{self.key_id}"

    def rules(self) -> list[Rule]:
        override = (state.override_for("api_key", self.key_id) if self.override is state.MISSING
                    else cast("LimitOverride | None", self.override))
        return _apply_override(_rules_from(_spec("api.key")), override)


def api_subjects(*, key_id: int, user_id: int, ip: str | None, allowlisted: bool = False,
                 key_override: object = state.MISSING, account_override: object = state.MISSING) -> list[Subject]:
    subjects: list[Subject] = [Key(key_id, key_override), Account(user_id, account_override)]
    if ip and not allowlisted:
        subjects += [Address("api", ip), Subnet("api", ip)]
    return subjects


def ip_of(request: HttpRequest) -> str:
    """The client address RequestIdMiddleware resolved, or resolve it (code paths without the middleware)."""
    ip = getattr(request, "client_ip", None)
    if ip is None:
        from levee.core.net import client_ip

        ip = request.client_ip = client_ip(request)  # type: ignore[attr-defined]  # as RequestIdMiddleware sets it
    return ip
