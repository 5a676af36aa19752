"""The tag every minted API key ends with: its last TAG_LENGTH characters are a MAC of the rest of the
key under a secret derived from SECRET_KEY, so whether a string is a key this deployment minted is
told with one HMAC, without Redis or the database (ADR 0015). The tag is a filter, not a credential:
a key that carries a valid one is still looked up and authenticated like any other.

Keys minted before tags existed, or under a SECRET_KEY since rotated away (not kept in
SECRET_KEY_FALLBACKS), carry no tag this process can verify; each key row records the fingerprint of
the secret it was tagged under (`ApiKey.tag_fp`, "" for none), and the shield refuses untagged
strings outright only while every active key's fingerprint is one it can verify
(levee.shield.keyfilter)."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from functools import lru_cache

from django.conf import settings

TAG_LENGTH = 8  # base62: ~47 bits; a made-up key passes with a chance of 1 in 2e14
ALPHABET = string.ascii_letters + string.digits
_ALPHABET_BYTES = ALPHABET.encode()
_SALT = b"levee.keys.tag"


@lru_cache(maxsize=8)
def _derived(secret_keys: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    """(fingerprint, MAC secret) per Django secret, the current one first."""
    out = []
    for secret_key in secret_keys:
        secret = hmac.new(secret_key.encode(), _SALT, hashlib.sha256).digest()
        out.append((hashlib.sha256(b"fingerprint:" + secret).hexdigest()[:8], secret))
    return tuple(out)


def _secrets() -> tuple[tuple[str, bytes], ...]:
    return _derived((settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())))


def current_fingerprint() -> str:
    """The fingerprint new keys are tagged under (of the current SECRET_KEY)."""
    return _secrets()[0][0]


def own_fingerprints() -> frozenset[str]:
    """The fingerprints this process can verify: the current SECRET_KEY's and its fallbacks'
    (the same object while the settings stay)."""
    return _own(_secrets())


@lru_cache(maxsize=8)
def _own(derived: tuple[tuple[str, bytes], ...]) -> frozenset[str]:
    return frozenset(fp for fp, _ in derived)


def _tag(head: bytes, secret: bytes) -> bytes:
    n = int.from_bytes(hmac.new(secret, head, hashlib.sha256).digest()[:8], "big")
    out = bytearray(TAG_LENGTH)
    for i in range(TAG_LENGTH):
        n, r = divmod(n, 62)
        out[i] = _ALPHABET_BYTES[r]
    return bytes(out)


def mint(body_length: int) -> tuple[str, str]:
    """A new key: "sk-", `body_length` - TAG_LENGTH random base62 characters, then the tag.
    Returns (the key, the fingerprint it is tagged under)."""
    fingerprint, secret = _secrets()[0]
    head = "sk-" + "".join(secrets.choice(ALPHABET) for _ in range(body_length - TAG_LENGTH))
    return head + _tag(head.encode(), secret).decode(), fingerprint


def fingerprint_of(raw: bytes | str) -> str | None:
    """The fingerprint of the secret `raw`'s tag verifies under, or None (not minted under any of
    this process's secrets). Constant-time per comparison."""
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) <= TAG_LENGTH + 3:
        return None
    head, tag = raw[:-TAG_LENGTH], raw[-TAG_LENGTH:]
    for fingerprint, secret in _secrets():
        if hmac.compare_digest(_tag(head, secret), tag):
            return fingerprint
    return None
