"""A real server process for tests that need one: gunicorn with uvicorn workers (ops/gunicorn.conf.py)
on a free loopback port, on the test database and Redis of this test run."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from ops.procs import stop_group

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(*, workers: int = 1, **env_extra):
    port = free_port()
    db = connection.settings_dict
    env = {**os.environ,
           "LEVEE_ENV": "test", "LEVEE_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers),
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "REDIS_URL": settings.REDIS_URL, "GUNICORN_ACCESSLOG": "/dev/null",
           "SHIELD_ESCALATION_IN_WEB": "0",  # it would move the test database's mode on its own
           **{k: str(v) for k, v in env_extra.items()}}
    # The server's log goes to a file: a pipe nobody reads fills up and blocks the server mid-request.
    log_path = Path(REPO) / "var" / f"shield-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "ops/gunicorn.conf.py",
                             "levee.asgi:application"], cwd=REPO, env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"server did not start: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    try:
        yield base
    finally:
        stop_group(proc, timeout=15)
        log.close()
