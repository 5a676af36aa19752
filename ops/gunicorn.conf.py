"""gunicorn for Levee: ASGI through uvicorn workers, so one process holds many open streams.

Metrics: several worker processes serve requests, so prometheus-client runs in multiprocess mode.
PROMETHEUS_MULTIPROC_DIR must be in the environment before any worker imports prometheus_client
(it picks its value store at import), so it is set here, in the master, before the workers fork.
The folder is emptied when gunicorn starts (values of a previous run would otherwise be summed in)
and a dead worker's live-gauge files are dropped in `child_exit`; its counters stay, as they must
for counters to stay monotonic.

Logs: gunicorn's own lines go through the same JSON formatter and redaction as Django's (LOG_FORMAT).
The access line comes from Django (levee.access: route name, status, duration, request id), so
gunicorn/uvicorn access logs are off unless GUNICORN_ACCESSLOG names a file: they would carry raw
paths, and paths carry tokens (email verification, password reset).
"""
import multiprocessing
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT / "platform"), str(ROOT)) if p not in sys.path]

bind = os.environ.get("LEVEE_BIND", "127.0.0.1:8000")
worker_class = "ops.web_worker.LeveeWorker"  # uvicorn's, without its proxy-header rewrite (see there)
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
# Streams last as long as a generation; the worker heartbeat is separate from request time.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 100
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
pythonpath = str(ROOT / "platform")

# --- metrics: prometheus-client multiprocess mode -------------------------------------------------
METRICS_DIR = Path(os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    str(Path(os.environ.get("LEVEE_DATA_DIR") or ROOT / "var") / "prometheus")))


def on_starting(server):
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    if os.environ.get("LEVEE_METRICS_DIR_RESET") == "0":  # ops/run.py emptied it before starting others
        return
    for stale in METRICS_DIR.glob("*.db"):  # only the value files: the folder may be shared or mounted
        stale.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(METRICS_DIR))


# --- logs: the platform's formatter and redaction for gunicorn's own lines ------------------------
def _logconfig() -> dict:
    from levee.core.logging import logging_config

    fmt = os.environ.get("LOG_FORMAT") or ("json" if os.environ.get("LEVEE_ENV") == "production" else "text")
    config = logging_config(fmt, os.environ.get("LOG_LEVEL", "INFO"))
    config["loggers"].update({
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["console"], "level": "INFO" if accesslog else "WARNING", "propagate": False},
    })
    return config


logconfig_dict = _logconfig()
