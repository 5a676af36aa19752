"""gunicorn for Levee: ASGI through uvicorn workers, so one process holds many open streams."""
import multiprocessing
import os

bind = os.environ.get("LEVEE_BIND", "127.0.0.1:8000")
worker_class = "uvicorn.workers.UvicornWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
# Streams last as long as a generation; the worker heartbeat is separate from request time.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 100
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None  # empty: no access log
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
pythonpath = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform")
