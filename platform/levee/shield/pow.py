"""Proof of work for sign-up: the server issues a signed, expiring challenge; the browser finds a
nonce such that SHA-256("<challenge>:<nonce>") starts with `bits` zero bits (≈ 2^bits hashes); the
server checks it with one hash and spends the challenge id in Redis so it cannot be replayed.

    challenge = "<id>.<bits>.<expires unix>.<hmac>"
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from django.conf import settings

from levee.shield import store

_SALT = b"levee.shield.pow"


def _sign(payload: str) -> str:
    key = hashlib.sha256(_SALT + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()[:32]


def issue(bits: int, *, ttl: int | None = None) -> str:
    expires = int(time.time()) + (ttl if ttl is not None else settings.SHIELD_POW_TTL)
    payload = f"{secrets.token_urlsafe(12)}.{int(bits)}.{expires}"
    return f"{payload}.{_sign(payload)}"


def leading_zero_bits(digest: bytes) -> int:
    return len(digest) * 8 - int.from_bytes(digest, "big").bit_length()


def solve(challenge: str) -> str:
    """The browser's job, in Python, for the tests (the flood simulator, a client without Django,
    has its own: ops/flood.py)."""
    bits = int(challenge.split(".")[1])
    nonce = 0
    while leading_zero_bits(hashlib.sha256(f"{challenge}:{nonce}".encode()).digest()) < bits:
        nonce += 1
    return str(nonce)


class PowRefused(Exception):
    pass


def verify(challenge: str, nonce: str, *, required_bits: int) -> None:
    """Accept once, or raise PowRefused (forged, expired, too easy, wrong, replayed).
    Raises store.ShieldRedisDown if the spent-list cannot be reached (callers fail closed)."""
    challenge_id, ttl = _checked(challenge, nonce, required_bits)
    if not store.client().set(f"levee:shield:pow-spent:{challenge_id}", 1, nx=True, ex=ttl):
        raise PowRefused("replayed")


async def averify(challenge: str, nonce: str, *, required_bits: int) -> None:
    """`verify` on the event loop (redis.asyncio), for the admission layer."""
    challenge_id, ttl = _checked(challenge, nonce, required_bits)
    if not await store.aclient().set(f"levee:shield:pow-spent:{challenge_id}", 1, nx=True, ex=ttl):
        raise PowRefused("replayed")


def _checked(challenge: str, nonce: str, required_bits: int) -> tuple[str, int]:
    """Everything but the replay check: (challenge id, seconds it stays spendable) or PowRefused."""
    parts = (challenge or "").split(".")
    if len(parts) != 4 or not nonce or len(nonce) > 64:
        raise PowRefused("malformed")
    challenge_id, bits_raw, expires_raw, signature = parts
    if not (bits_raw.isdigit() and expires_raw.isdigit()):
        raise PowRefused("malformed")
    if not hmac.compare_digest(signature, _sign(f"{challenge_id}.{bits_raw}.{expires_raw}")):
        raise PowRefused("forged")
    bits, expires = int(bits_raw), int(expires_raw)
    now = int(time.time())
    if expires <= now:
        raise PowRefused("expired")
    if bits < required_bits:
        raise PowRefused("too easy")
    if leading_zero_bits(hashlib.sha256(f"{challenge}:{nonce}".encode()).digest()) < bits:
        raise PowRefused("wrong")
    return challenge_id, expires - now + 1
