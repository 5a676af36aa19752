"""A real Levee stack for end-to-end tests: gunicorn with a uvicorn worker, a Celery platform worker and
a Celery inference worker serving the demo checkpoint, all against the test PostgreSQL database and a
Redis database of their own. Nothing here is faked; the test talks to it over HTTP."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = "deepseek-chat"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    auth = user + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def stack_redis_url(offset: int = 1) -> str:
    """The test Redis database number minus `offset`: other tests flush theirs, which would drop
    Celery's queue bindings under a running worker; and two stacks must not share queues."""
    parsed = urlparse(settings.REDIS_URL)
    db = int((parsed.path or "/0").lstrip("/") or 0)
    return urlunparse(parsed._replace(path=f"/{(db - offset) % 16}"))


LIVE: list = []  # stacks started and not yet stopped


class Stack:
    def __init__(self, *, heartbeat_timeout: int = 4, extra_env: dict | None = None, redis_offset: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis_url = stack_redis_url(redis_offset)
        self.redis = redis.Redis.from_url(self.redis_url)
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": self.redis_url,
            "LEVEE_ENV": "test",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
            "DJANGO_SETTINGS_MODULE": "levee.settings",
            "LEVEE_JOB_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
            "LEVEE_MODEL_NAME": MODEL,
            "LEVEE_MAX_BATCH": "16",  # the inference worker's task slots follow (20)
            "LEVEE_BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": "1",
            "GUNICORN_ACCESSLOG": "",
            "PYTHONUNBUFFERED": "1",
            # Tests change models and prices under the live server and expect the next request to
            # see it: no per-process memos here (their own behaviour is tested in tests/platform).
            "LEVEE_MEMO_SECONDS": "0",
            # The test process, the web, the platform and the inference worker agree on one secret.
            "LEVEE_WORKER_SECRET": settings.LEVEE_WORKER_SECRET,
            # The stacks share the test database: their web processes must not move its mode on
            # their own (the escalation loop is tested in tests/platform/shield/test_escalation.py).
            "SHIELD_ESCALATION_IN_WEB": "0",
            # The browsers of these tests solve the admission layer's check in milliseconds, not the
            # seconds 16-18 bits take headless on a loaded box (the difficulty has tests of its own).
            "SHIELD_PASS_BITS_ELEVATED": "10", "SHIELD_PASS_BITS_UNDER_ATTACK": "10",
            **(extra_env or {}),
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = ROOT / "var" / "e2e-logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_web(self):
        return self._spawn("web", [str(BIN / "gunicorn"), "-c", str(ROOT / "ops" / "gunicorn.conf.py"),
                                   "levee.asgi:application"])

    def start_platform_worker(self):
        return self._spawn("platform", [str(BIN / "celery"), "-A", "levee", "worker", "-Q", "platform", "-P", "threads",
                                        "-c", "4", "-n", f"platform-{self.port}@%h", "--without-gossip",
                                        "--without-mingle", "--loglevel", "INFO"])

    def start_inference_worker(self):
        queues = ",".join(f"inference.{name}" for name in self.env["LEVEE_MODEL_NAME"].split(","))
        return self._spawn("inference", [str(BIN / "celery"), "-A", "inference.worker", "worker", "-Q",
                                         queues, "-P", "threads",
                                         "-n", f"inference-{self.port}-{time.time_ns()}@%h", "--without-gossip",
                                         "--without-mingle", "--loglevel", "INFO"])

    def set_mode(self, settings, mode: str, *, reason: str = "e2e drill") -> None:
        """Set the shield's mode as the admin does (the database row, mirrored to this stack's Redis).
        `settings`: pytest-django's fixture (the shield's Redis URL is pointed here meanwhile)."""
        from levee.shield import services

        previous = settings.SHIELD_REDIS_URL
        settings.SHIELD_REDIS_URL = self.redis_url
        try:
            services.set_mode(mode, reason=reason, pinned=True)
        finally:
            settings.SHIELD_REDIS_URL = previous

    def live_workers(self) -> int:
        return self.redis.zcount(f"levee:workers:{MODEL}", time.time() - 10, "+inf")

    def wait_until(self, predicate, what: str, timeout: float = 90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None and name != "inference":
                    raise RuntimeError(f"{name} exited: see {self.logs / (name + '.log')}")
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s; logs in {self.logs}")

    def _web_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self):
        self.redis.flushdb()
        LIVE.append(self)
        self.start_web()
        self.start_platform_worker()
        self.start_inference_worker()
        self.wait_until(self._web_up, "web server")
        self.wait_until(lambda: self.live_workers() > 0, "inference worker")
        return self

    def kill(self, name: str, sig=signal.SIGKILL):
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self):
        if self in LIVE:
            LIVE.remove(self)
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        self.redis.flushdb()
