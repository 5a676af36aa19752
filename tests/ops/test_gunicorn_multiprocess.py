"""The real web tier: gunicorn with two uvicorn workers and ops/gunicorn.conf.py.

Requests land on whichever worker accepts them; a scrape answered by either must count them all
(prometheus-client multiprocess mode), also after a worker dies and is replaced. And the processes
log JSON lines through Levee's formatter.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _healthz_count(base: str) -> float:
    status, body = _get(base + "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "levee_http_requests_total" and sample.labels == {
                    "route": "healthz", "method": "GET", "status": "200"}:
                return sample.value
    return 0.0


def _workers(master: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture
def web(tmp_path, settings):
    from django.db import connection

    db = connection.settings_dict
    port = _free_port()
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "LEVEE_ENV": "test", "LOG_FORMAT": "json",
        "LEVEE_DATA_DIR": str(tmp_path / "data"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "DATABASE_URL": f"postgres://{quote(db['USER'])}{':' + quote(db['PASSWORD']) if db['PASSWORD'] else ''}"
                        f"@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL, "LEVEE_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2",
        "DJANGO_SETTINGS_MODULE": "levee.settings", "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
        "SHIELD_ESCALATION_IN_WEB": "0",  # the test database's mode is not this server's to move
    }
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_999999.db").write_bytes(b"")  # a previous run's leftovers
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "ops" / "gunicorn.conf.py"),
                             "levee.asgi:application"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while len(_workers(proc.pid)) < 2 or _get_quietly(base) != 200:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.time() < deadline, "gunicorn did not come up"
            time.sleep(0.2)
        yield proc, base, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _get_quietly(base: str) -> int | None:
    try:
        return _get(base + "/metrics")[0]  # not /healthz: the count under test starts clean
    except OSError:
        return None


def test_counters_are_whole_across_worker_processes_and_survive_a_worker_restart(web):
    proc, base, tmp = web
    assert not (tmp / "metrics" / "counter_999999.db").exists()  # emptied at start
    assert _healthz_count(base) == 0
    for _ in range(40):
        assert _get(base + "/healthz")[0] == 200  # a new connection each: both workers take some
    assert _healthz_count(base) == 40
    writers = {p.name for p in (tmp / "metrics").glob("counter_*.db")}
    assert len(writers) >= 2, f"only {writers} counted: requests did not spread over the workers"

    victim = _workers(proc.pid)[0]
    os.kill(victim, signal.SIGTERM)
    deadline = time.time() + 30
    while victim in _workers(proc.pid) or len(_workers(proc.pid)) < 2:
        assert time.time() < deadline, "gunicorn did not replace the worker"
        time.sleep(0.2)
    for _ in range(10):
        assert _get(base + "/healthz")[0] == 200
    assert _healthz_count(base) == 50  # the dead worker's counts are still in the sum


def test_the_processes_log_json_with_the_request_id(web):
    proc, base, tmp = web
    request = urllib.request.Request(base + "/v1/models")
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
        request_id = exc.headers["x-request-id"]
    time.sleep(0.3)
    lines = [json.loads(line) for line in (tmp / "gunicorn.log").read_text().splitlines() if line.startswith("{")]
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own lines are JSON too
    access = [line for line in lines if line["logger"] == "levee.access" and line.get("request_id") == request_id]
    assert len(access) == 1
    assert access[0]["route"] == "api-models" and access[0]["status"] == 401 and "duration_ms" in access[0]
