"""Container health checks, one per kind of process: `python ops/healthcheck.py web|celery|beat|inference`.

Exit 0 when healthy, 1 otherwise, with one line on stdout saying why (`docker inspect` shows it).
Standard library plus redis-py only, so it starts fast and works in the web and inference images alike.

    web        GET /healthz on this container answers 200 (liveness; readiness is /readyz, for the balancer)
    celery     this container's platform worker answers a Celery ping
    beat       the beat process (PID 1) is alive and Redis, its broker, answers
    inference  this container's inference worker wrote a heartbeat within WORKER_TTL_S
"""
from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]


def _secret(name: str, default: str | None = None) -> str | None:
    path = os.environ.get(f"{name}_FILE")
    return Path(path).read_text().strip() if path else os.environ.get(name, default)


def _redis():
    import redis

    url = _secret("REDIS_URL", "redis://127.0.0.1:6379/0")
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)


def web() -> str:
    bind = os.environ.get("LEVEE_BIND", "127.0.0.1:8000")
    port = bind.rsplit(":", 1)[-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
        if response.status != 200:
            raise RuntimeError(f"/healthz answered {response.status}")
    return "web answers /healthz"


def celery() -> str:
    from celery import Celery

    node = os.environ.get("LEVEE_CELERY_NODE", f"platform@{socket.gethostname()}")
    app = Celery(broker=_secret("CELERY_BROKER_URL") or _secret("REDIS_URL", "redis://127.0.0.1:6379/0"))
    replies = app.control.ping(destination=[node], timeout=5) or []
    if not any(node in reply for reply in replies):
        raise RuntimeError(f"{node} did not answer a ping")
    return f"{node} answers"


def beat() -> str:
    cmdline = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "beat" not in cmdline:
        raise RuntimeError(f"PID 1 is not celery beat: {cmdline[:80]}")
    _redis().ping()
    return "beat is running and Redis answers"


def inference() -> str:
    from inference import protocol

    model = os.environ.get("LEVEE_MODEL_NAME", "deepseek-chat")
    prefix = f"{socket.gethostname()}:"
    fresh = _redis().zrangebyscore(protocol.workers_key(model), time.time() - protocol.WORKER_TTL_S, "+inf")
    mine = [w.decode() for w in fresh if w.decode().startswith(prefix)]
    if not mine:
        raise RuntimeError(f"no fresh heartbeat from {prefix}* for {model}")
    return f"{', '.join(mine)} serving {model}"


CHECKS = {"web": web, "celery": celery, "beat": beat, "inference": inference}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in CHECKS:
        print(f"usage: healthcheck.py {'|'.join(CHECKS)}")
        return 2
    try:
        print(CHECKS[argv[1]]())
        return 0
    except Exception as exc:
        print(f"unhealthy: {exc.__class__.__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
