"""A mode flipped in admin changes what ANOTHER server process does within a second: a real
gunicorn + uvicorn worker on a free loopback port, on the same test database and Redis."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests.personas import root

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def second_server(settings):
    port = free_port()
    db = connection.settings_dict
    env = {**os.environ,
           "LEVEE_ENV": "test", "LEVEE_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1",
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "REDIS_URL": settings.REDIS_URL, "SHIELD_SIGNUP_TRICKLE_PER_MINUTE": "0",
           "GUNICORN_ACCESSLOG": "/dev/null"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "ops/gunicorn.conf.py",
                             "levee.asgi:application"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"second server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    try:
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def seconds_until(url: str, status: int, limit: float = 3.0) -> float:
    start = time.monotonic()
    with httpx.Client(timeout=1) as http:
        while time.monotonic() - start < limit:
            if http.get(url).status_code == status:
                return time.monotonic() - start
            time.sleep(0.02)
    return float("inf")


def test_flipping_the_mode_in_admin_changes_a_second_process_within_a_second(client, second_server):
    client.force_login(root())
    signup_url = f"{second_server}/accounts/signup/"
    assert httpx.get(signup_url).status_code == 200

    response = client.post("/admin/shield/mitigationstate/1/change/",
                           {"mode": "under_attack", "change_reason": "drill: flood from AS64500"})
    assert response.status_code == 302
    took = seconds_until(signup_url, 503)
    assert took < 1.0, took
    page = httpx.get(signup_url)
    assert "Registration is busy" in page.text and page.headers["retry-after"]

    client.post("/admin/shield/mitigationstate/1/change/", {"mode": "normal", "change_reason": "drill over"})
    took = seconds_until(signup_url, 200)
    assert took < 1.0, took
