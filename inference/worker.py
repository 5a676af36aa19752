"""The inference worker: a Celery app without Django, serving one model with one engine per process.

    celery -A inference.worker worker -P threads -c 32 -Q inference.deepseek-chat

Environment: LEVEE_MODEL_NAME (the API's model name), LEVEE_CHECKPOINT (a Hugging Face-format
DeepSeek checkpoint directory; the demo checkpoint by default), REDIS_URL (broker and event streams),
LEVEE_DEVICE / LEVEE_DTYPE, LEVEE_KV_BUDGET_MB.

Each Celery task thread submits its job to the shared engine, which batches all of them
continuously, and copies the engine's events to the job's Redis Stream. A heartbeat thread marks
the worker live, beats for every running job and forwards cancel flags. A job is at most once once
started: the first runner sets the job's started-marker, and a redelivered copy that finds it stops.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from celery import Celery, signals

from inference import protocol

log = logging.getLogger("inference.worker")

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = os.environ.get("LEVEE_MODEL_NAME", "deepseek-chat")
CHECKPOINT = os.environ.get("LEVEE_CHECKPOINT", str(ROOT / "inference" / "demo" / "checkpoint"))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0")
DELTA_FLUSH_S = 0.02  # coalesce tokens that arrive within this window into one stream entry

app = Celery("levee-inference", broker=os.environ.get("CELERY_BROKER_URL", REDIS_URL))
app.conf.update(
    task_ignore_result=True,
    task_acks_late=False,  # at most once: a job that started is never run again by the broker
    worker_prefetch_multiplier=1,
    task_default_queue=protocol.queue_name(MODEL_NAME),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


class Runtime:
    """Per-process state: the engine, the Redis client, the running jobs and the heartbeat thread."""

    def __init__(self) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.redis = redis.Redis.from_url(REDIS_URL, socket_timeout=10, health_check_interval=30)
        self._engine = None
        self._lock = threading.Lock()
        self.active: dict[str, object] = {}  # job id -> engine handle
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="levee-heartbeat", daemon=True)

    @property
    def engine(self):
        with self._lock:
            if self._engine is None:
                from inference.serving import build_engine

                self._engine = build_engine(CHECKPOINT)
            return self._engine

    def start(self) -> None:
        _ = self.engine  # load before taking jobs, so the first job does not pay for it
        self._beat.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.redis.zrem(protocol.workers_key(MODEL_NAME), self.worker_id)
        except redis.RedisError:
            pass
        if self._engine is not None:
            self._engine.stop()

    def _heartbeat(self) -> None:
        while not self._stop.wait(protocol.HEARTBEAT_INTERVAL_S):
            try:
                self.beat_once()
            except redis.RedisError:
                log.warning("heartbeat: Redis unavailable", exc_info=True)

    def beat_once(self) -> None:
        now = time.time()
        jobs = list(self.active.items())
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(protocol.workers_key(MODEL_NAME), {self.worker_id: now})
        pipe.zremrangebyscore(protocol.workers_key(MODEL_NAME), "-inf", now - 10 * protocol.WORKER_TTL_S)
        for job_id, _ in jobs:
            pipe.xadd(protocol.stream_key(job_id), protocol.encode_event(protocol.HEARTBEAT, t=now),
                      maxlen=protocol.STREAM_MAXLEN, approximate=True)
        if jobs:
            pipe.mget([protocol.cancel_key(job_id) for job_id, _ in jobs])
        replies = pipe.execute()
        if jobs:
            for (_job_id, handle), flag in zip(jobs, replies[-1], strict=True):
                if flag:
                    handle.cancel()


runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global runtime
    if runtime is None:
        runtime = Runtime()
    return runtime


@signals.worker_ready.connect
def _on_ready(**_):
    get_runtime().start()
    log.info("serving %s from %s as %s", MODEL_NAME, CHECKPOINT, get_runtime().worker_id)


@signals.worker_shutdown.connect
def _on_shutdown(**_):
    if runtime is not None:
        runtime.stop()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def settle(message: protocol.JobMessage, usage: dict, started: float, finished: float) -> None:
    if not message.hold_id:
        return
    app.send_task(protocol.SETTLE_TASK, queue=protocol.PLATFORM_QUEUE, args=[message.hold_id, {
        "prompt_cache_hit_tokens": usage["prompt_cache_hit_tokens"],
        "prompt_cache_miss_tokens": usage["prompt_cache_miss_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "started_at": _iso(started), "finished_at": _iso(finished)}])


def run_job(rt: Runtime, data: dict) -> str:
    """Run one job to its end; returns how it ended (for logs and tests)."""
    message = protocol.JobMessage.from_dict(data)
    key = protocol.stream_key(message.job_id)
    r = rt.redis

    def emit(kind: str, **payload) -> None:
        fields = protocol.encode_event(kind, t=time.time(), **payload)
        if kind == protocol.DELTA:  # the stream's expiry was set when the job started, well past its
            r.xadd(key, fields, maxlen=protocol.STREAM_MAXLEN, approximate=True)  # deadline: one command
            return
        pipe = r.pipeline(transaction=False)  # the last event: readers get an hour from here
        pipe.xadd(key, fields, maxlen=protocol.STREAM_MAXLEN, approximate=True)
        pipe.expire(key, protocol.STREAM_TTL_S)
        pipe.execute()

    now = time.time()
    if not r.set(protocol.started_key(message.job_id), rt.worker_id, nx=True, ex=protocol.STREAM_TTL_S):
        log.warning("job %s was already started elsewhere; not running it again", message.job_id)
        return "duplicate"
    zero = protocol.usage_dict(0, 0, 0)  # a job that never reached the engine costs nothing
    if now > message.deadline:
        emit(protocol.ERROR, code="deadline", message="The request expired before a worker could start it.",
             usage=zero)
        settle(message, zero, now, now)
        return "deadline"
    waited_ms = int((now - message.enqueued_at) * 1000)
    pipe = r.pipeline(transaction=False)  # one round trip: record the wait, say started, look for a cancel
    pipe.set(protocol.wait_key(message.model), waited_ms, ex=60)
    pipe.xadd(key, protocol.encode_event(protocol.STARTED, t=time.time(), worker=rt.worker_id, queued_ms=waited_ms),
              maxlen=protocol.STREAM_MAXLEN, approximate=True)
    pipe.expire(key, protocol.STREAM_TTL_S)
    pipe.exists(protocol.cancel_key(message.job_id))
    if pipe.execute()[-1]:
        emit(protocol.DONE, finish_reason="cancelled", usage=zero)
        settle(message, zero, now, time.time())
        return "cancelled"

    from inference.serving import submit

    handle = submit(rt.engine, message)
    rt.active[message.job_id] = handle
    usage = zero
    pending = ""
    last_flush = None  # the first text goes out at once: coalescing is for the tokens after it
    try:
        for event in handle:
            usage = event.usage
            pending += event.text
            done = event.finish_reason is not None
            if pending and (done or last_flush is None or time.monotonic() - last_flush >= DELTA_FLUSH_S):
                emit(protocol.DELTA, text=pending, usage=usage)
                pending, last_flush = "", time.monotonic()
            if done:
                emit(protocol.DONE, finish_reason=event.finish_reason, usage=usage)
                settle(message, usage, now, time.time())
                return event.finish_reason
        raise RuntimeError("the engine ended the job without a finish reason")
    except Exception as exc:
        log.exception("job %s failed", message.job_id)
        emit(protocol.ERROR, code="engine_error", message=f"Generation failed: {exc.__class__.__name__}", usage=usage)
        settle(message, usage, now, time.time())
        return "error"
    finally:
        rt.active.pop(message.job_id, None)


@app.task(name=protocol.GENERATE_TASK, ignore_result=True)
def generate(message: dict) -> str:
    return run_job(get_runtime(), message)
