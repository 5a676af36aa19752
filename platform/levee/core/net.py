"""Who is the client? The peer address, or the X-Forwarded-For hop a trusted proxy vouches for."""
from __future__ import annotations

import ipaddress
import socket

from django.conf import settings
from django.http import HttpRequest


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a peer or a forwarded hop, IPv4-mapped IPv6 (::ffff:a.b.c.d, what a dual-stack
    socket reports for an IPv4 client) unmapped, so every rule and limit sees one client one way."""
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:  # the common case, checked in C (inet_pton takes canonical dotted quads only, as ipaddress does)
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, value))
    except OSError:
        pass
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_ip(value: str) -> str | None:
    """The canonical text of an address (`[v6]:port`, `v4:port` and IPv4-mapped forms accepted), or None."""
    addr = _parse(value or "")
    return None if addr is None else str(addr)


def _trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(addr in net for net in settings.TRUSTED_PROXY_CIDRS)


def from_trusted_proxy(request: HttpRequest) -> bool:
    """Whether the peer itself is a configured proxy (TRUSTED_PROXY_CIDRS)."""
    return peer_is_proxy(request.META.get("REMOTE_ADDR", "") or "")


def peer_is_proxy(remote_addr: str) -> bool:
    """`from_trusted_proxy` from the peer address alone (the ASGI admission layer's view)."""
    peer = _parse(remote_addr) if settings.TRUSTED_PROXY_CIDRS else None
    return peer is not None and _trusted(peer)


def client_ip(request: HttpRequest) -> str:
    """The client's address. X-Forwarded-For is read right to left and only through trusted proxies,
    so a client cannot choose its own address by sending the header itself."""
    return resolve(request.META.get("REMOTE_ADDR", "") or "", request.META.get("HTTP_X_FORWARDED_FOR", ""))


def resolve(remote_addr: str, forwarded_for: str) -> str:
    """`client_ip` from the peer address and the X-Forwarded-For value alone (the ASGI admission layer
    has no request object yet)."""
    peer = _parse(remote_addr)
    if peer is None:
        return "0.0.0.0"
    if not _trusted(peer):
        return str(peer)
    hops = [h for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = _parse(hop)
        if addr is None:
            break
        if not _trusted(addr):
            return str(addr)
        peer = addr
    return str(peer)
