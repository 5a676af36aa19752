"""Typed readers of the environment for settings. A bad value fails loudly at start-up."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import overload

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: None = None) -> str | None: ...
def env_str(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below its minimum {minimum}")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str, default: str | None = None) -> str | None:
    """Read NAME, or the contents of the file named by NAME_FILE (Docker/K8s secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from None
    return os.environ.get(name, default)


def env_cidrs(name: str, default: list[str] | None = None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for item in env_list(name, default):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name} holds {item!r}, which is not an IP network (CIDR)") from None
    return networks


def local_secret_key(data_dir: Path) -> str:
    """A secret kept in the local data folder, generated on first use (development only).

    Several processes may boot at once (gunicorn's workers): each writes a candidate to a private
    temporary file and links it into place; the first link wins and everyone reads that file, which
    never exists half-written. (Creating it with O_EXCL and writing after made a second worker crash
    with FileExistsError, or read an empty key.)"""
    import tempfile

    from django.core.management.utils import get_random_secret_key

    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, candidate = tempfile.mkstemp(dir=data_dir, prefix=".secret_key.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(get_random_secret_key())
            try:
                os.link(candidate, path)
            except FileExistsError:  # another process was first: its key is the key
                pass
        finally:
            os.unlink(candidate)
    return path.read_text().strip()
