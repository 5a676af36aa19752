"""The browser pass: what a browser earns by solving the admission layer's proof of work, in the
spirit of Anubis. A signed, expiring cookie bound to the address that solved it (the address itself
for IPv4, its /64 for IPv6), so a pass solved once cannot be spread over a botnet's addresses.

    levee_pass = "<id>.<expires unix>.<hmac of id, expires and the bound address>"

Checking one is an HMAC in the process: no Redis, no database. The known-device cookie (set at a
successful log-in, levee.shield.login) is made and checked here too, for the same reason: the
admission layer reads it before Django builds a request, with the same signer the log-in used.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from functools import lru_cache

from django.conf import settings
from django.core import signing

PASS_COOKIE = "levee_pass"
_SALT = b"levee.shield.pass"


@lru_cache(maxsize=4)
def _key(secret: str) -> bytes:
    return hashlib.sha256(_SALT + secret.encode()).digest()


@lru_cache(maxsize=16384)
def bound_to(ip: str) -> str:
    """What a pass is bound to: the IPv4 address itself, the /64 of an IPv6 one."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def _sign(pass_id: str, expires: int, ip: str) -> str:
    message = f"{pass_id}.{expires}.{bound_to(ip)}".encode()
    return hmac.new(_key(settings.SECRET_KEY), message, hashlib.sha256).hexdigest()[:32]


def issue(ip: str, *, ttl: int | None = None, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + (ttl if ttl is not None else settings.SHIELD_PASS_TTL)
    pass_id = secrets.token_urlsafe(9)
    return f"{pass_id}.{expires}.{_sign(pass_id, expires, ip)}"


def valid(value: str | None, ip: str, *, now: float | None = None) -> str | None:
    """The pass's id if `value` is a pass for this address that has not expired, else None."""
    if not value or len(value) > 80:
        return None
    parts = value.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    pass_id, expires_raw, signature = parts
    expires = int(expires_raw)
    if expires <= (now if now is not None else time.time()):
        return None
    if not hmac.compare_digest(signature, _sign(pass_id, expires, ip)):
        return None
    return pass_id


KNOWN_DEVICE_COOKIE = "levee_kd"
_KD_SALT = "levee.shield.known-device"
_KD_SEPARATOR = "."  # cookie-safe (a comma would make the header quoted); account tags are hex


def _kd_signer() -> signing.TimestampSigner:
    # Signed here, not with Django's set_signed_cookie: the admission layer checks this cookie before
    # Django builds a request, so both sides must use one scheme (Django 5.2.19 changed the salt its
    # cookie signer derives, which silently turned every returning user "new" at the door).
    return signing.TimestampSigner(salt=_KD_SALT)


def known_device_cookie(accounts: list[str]) -> str:
    """The known-device cookie's value for these account tags (levee.shield.login)."""
    return _kd_signer().sign(_KD_SEPARATOR.join(accounts))


def known_accounts(value: str | None) -> list[str]:
    """The account tags of a genuine, unexpired known-device cookie; [] for anything else."""
    if not value or len(value) > 1000:
        return []
    try:
        accounts = _kd_signer().unsign(value, max_age=settings.SHIELD_KNOWN_DEVICE_MAX_AGE)
    except signing.BadSignature:
        return []
    return [a for a in accounts.split(_KD_SEPARATOR) if a]


def known_device(value: str | None) -> bool:
    """Whether `value` is a genuine, unexpired known-device cookie (any account)."""
    return bool(known_accounts(value))
