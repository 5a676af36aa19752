"""The inference worker: a Celery app without Django, serving one model with one engine per process.

    celery -A inference.worker worker -P threads -Q inference.deepseek-chat \
        --without-mingle --without-gossip --without-heartbeat   # its Redis user may not publish

Environment: LEVEE_MODEL_NAME (the API's model name), LEVEE_CHECKPOINT (a Hugging Face-format
DeepSeek checkpoint directory; the demo checkpoint by default), REDIS_URL (broker and event streams;
in production the `worker` Redis user's credential, which can do nothing else: docs/operations.md),
LEVEE_WORKER_SECRET (signs each job's settlement; the web and platform verify it), LEVEE_DEVICE /
LEVEE_DTYPE, LEVEE_KV_BUDGET_MB, LEVEE_MAX_BATCH (the task slots follow it: leave -c out).

Each Celery task thread submits its job to the shared engine, which batches all of them
continuously, and sleeps until the job ends; one forwarder thread copies every job's events to its
Redis Stream (a step's writes for all jobs in one round trip); a job's last event carries its signed
settlement (the worker has no way to the billing itself). A heartbeat thread marks the worker live,
beats for every running job, forwards cancel flags and cancels jobs past their run deadline or
whose reader's lease lapsed (protocol.reader_key: the web process following the job died). A
job runs at most once once started: the first runner sets the job's started-marker, and a
redelivered copy that finds it stops.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery, signals

from inference import protocol, serving

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

    from inference.engine import Engine, Event, RequestHandle

log = logging.getLogger("inference.worker")

ROOT = Path(__file__).resolve().parent.parent
# One engine may serve several API names of the same checkpoint (deepseek-chat and deepseek-reasoner
# differ only in the chat template's thinking switch, which the web side renders): comma-separated,
# each with its own queue; the first is the default.
MODEL_NAMES = [name.strip() for name in os.environ.get("LEVEE_MODEL_NAME", "deepseek-chat").split(",") if name.strip()]
MODEL_NAME = MODEL_NAMES[0]
CHECKPOINT = os.environ.get("LEVEE_CHECKPOINT", str(ROOT / "inference" / "demo" / "checkpoint"))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0")
WORKER_SECRET = os.environ.get("LEVEE_WORKER_SECRET", "")
DELTA_FLUSH_S = 0.02  # coalesce tokens that arrive within this window into one stream entry

app = Celery("levee-inference", broker=os.environ.get("CELERY_BROKER_URL", REDIS_URL))
app.conf.update(
    task_ignore_result=True,
    task_acks_late=False,  # at most once: a job that started is never run again by the broker
    worker_prefetch_multiplier=1,
    task_default_queue=protocol.queue_name(MODEL_NAME),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Nothing but the model's queue: no remote control, events or result keys (the worker's Redis
    # user may touch only its queue, its heartbeat and job streams).
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    # kombu's unacknowledged-message keys of this queue only (by default one hash for every queue,
    # which would let a worker restore a message onto any queue).
    broker_transport_options={"unacked_key": f"unacked:{protocol.queue_name(MODEL_NAME)}",
                              "unacked_index_key": f"unacked:{protocol.queue_name(MODEL_NAME)}:index",
                              "unacked_mutex_key": f"unacked:{protocol.queue_name(MODEL_NAME)}:mutex"},
    # Task slots (when -c is not given): the engine's batch and a quarter more. A job holds its slot
    # until its last event is written and its settlement sent; with exactly max_batch slots, a full
    # worker made each new job wait for one of those tails (~half an engine step) before it could
    # even reach the engine. Jobs past the batch wait in the engine's own FIFO, with heartbeats.
    worker_concurrency=serving.max_batch() + max(2, serving.max_batch() // 4),
)


class Runtime:
    """Per-process state: the engine, the Redis client, the running jobs and the heartbeat thread."""

    def __init__(self) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.redis = redis.Redis.from_url(REDIS_URL, socket_timeout=10, health_check_interval=30)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.active: dict[str, RequestHandle] = {}  # job id -> engine handle
        self.deadlines: dict[str, float] = {}  # job id -> run deadline (unix time)
        self.forwarder = Forwarder(self.redis)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="levee-heartbeat", daemon=True)

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = serving.build_engine(CHECKPOINT)
            return self._engine

    def start(self) -> None:
        _ = self.engine  # load before taking jobs, so the first job does not pay for it
        self._beat.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            for name in MODEL_NAMES:
                self.redis.zrem(protocol.workers_key(name), self.worker_id)
                self.redis.hdel(protocol.worker_stats_key(name), self.worker_id)
        except redis.RedisError:
            pass
        if self._engine is not None:
            serving.shutdown(self._engine)  # running jobs end as cancelled: let the forwarder write that
        deadline = time.monotonic() + 5
        while self.forwarder.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        self.forwarder.stop()

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
        engine = getattr(self, "_engine", None)
        for name in MODEL_NAMES:
            pipe.zadd(protocol.workers_key(name), {self.worker_id: now})
            pipe.zremrangebyscore(protocol.workers_key(name), "-inf", now - 10 * protocol.WORKER_TTL_S)
            if engine is not None:  # what the web's /metrics and the admin dashboard show of this worker
                stats = {"t": now, **engine.stats(), "jobs": len(jobs)}
                pipe.hset(protocol.worker_stats_key(name), self.worker_id, json.dumps(stats))
                pipe.expire(protocol.worker_stats_key(name), 10 * int(protocol.WORKER_TTL_S))
        for job_id, _ in jobs:
            pipe.xadd(protocol.stream_key(job_id), protocol.encode_event(protocol.HEARTBEAT, t=now),
                      maxlen=protocol.STREAM_MAXLEN, approximate=True)
        # Each job's cancel flag, and the lease of each web process reading these jobs, in one MGET.
        reader_of = {job_id: job.message.reader for job_id, _ in jobs
                     if (job := self.forwarder.jobs.get(job_id)) is not None and job.message is not None
                     and job.message.reader}
        readers = sorted(set(reader_of.values()))
        if jobs:
            pipe.mget([protocol.cancel_key(job_id) for job_id, _ in jobs] + [protocol.reader_key(r) for r in readers])
        replies = pipe.execute()
        if jobs:
            flags, leases = replies[-1][:len(jobs)], replies[-1][len(jobs):]
            # the web process following these is gone: nobody reads them, and nobody is left to cancel them
            lapsed = {reader for reader, lease in zip(readers, leases, strict=True) if lease is None}
            gone = {job_id for job_id, reader in reader_of.items() if reader in lapsed}
            for (job_id, handle), flag in zip(jobs, flags, strict=True):
                if job_id in gone and not getattr(handle, "cancelled", False):
                    log.warning("job %s: its reader's lease lapsed; cancelling it", job_id)
                if flag or job_id in gone or now > self.deadlines.get(job_id, float("inf")):
                    handle.cancel()


runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global runtime
    if runtime is None:
        runtime = Runtime()
    return runtime


@signals.worker_ready.connect
def _on_ready(**_: object) -> None:
    if not WORKER_SECRET:  # every paid job's settlement would be unsigned, so refused: stop now
        raise SystemExit("LEVEE_WORKER_SECRET is not set: this worker could not sign any settlement")
    get_runtime().start()
    log.info("serving %s from %s as %s", ", ".join(MODEL_NAMES), CHECKPOINT, get_runtime().worker_id)


@signals.worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    if runtime is not None:
        runtime.stop()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def settlement(message: protocol.JobMessage, usage: dict[str, int], started: float,
               finished: float) -> dict[str, dict[str, Any]]:
    """The last event's `settlement` field: the usage, signed for the job's hold ({} without one:
    free web chat, which the web records itself)."""
    if not message.hold_id:
        return {}
    return {"settlement": protocol.sign_settlement(
        WORKER_SECRET, hold_id=message.hold_id, job_id=message.job_id, account=message.user, usage=usage,
        started_at=_iso(started), finished_at=_iso(finished))}


def _last_event(pipe: redis.client.Pipeline, key: str, fields: dict[FieldT, EncodableT]) -> None:
    """Queue a job's last event on `pipe`: readers get an hour from here (deltas leave the expiry
    set when the job started alone)."""
    pipe.xadd(key, fields, maxlen=protocol.STREAM_MAXLEN, approximate=True)
    pipe.expire(key, protocol.STREAM_TTL_S)


def run_job(rt: Runtime, data: dict[str, Any]) -> str:
    """Run one job to its end; returns how it ended (for logs and tests). The calling task thread
    sleeps while the job runs: the process's Forwarder copies the engine's output to the stream."""
    message = protocol.JobMessage.from_dict(data)
    key = protocol.stream_key(message.job_id)
    r = rt.redis

    def end(kind: str, **payload: Any) -> None:
        pipe = r.pipeline(transaction=False)
        _last_event(pipe, key, protocol.encode_event(kind, t=time.time(), **payload))
        pipe.execute()

    now = time.time()
    if not r.set(protocol.started_key(message.job_id), rt.worker_id, nx=True, ex=protocol.STREAM_TTL_S):
        log.warning("job %s was already started elsewhere; not running it again", message.job_id)
        return "duplicate"
    zero = protocol.usage_dict(0, 0, 0)  # a job that never reached the engine costs nothing
    if now > min(message.pickup_deadline, message.deadline):
        end(protocol.ERROR, code="deadline", message="The request expired before a worker could start it.", usage=zero,
            **settlement(message, zero, now, now))
        return "deadline"
    waited_ms = int((now - message.enqueued_at) * 1000)
    pipe = r.pipeline(transaction=False)  # one round trip: record the wait, say started, look for a cancel
    pipe.set(protocol.wait_key(message.model), waited_ms, ex=60)
    pipe.xadd(key, protocol.encode_event(protocol.STARTED, t=time.time(), worker=rt.worker_id, queued_ms=waited_ms),
              maxlen=protocol.STREAM_MAXLEN, approximate=True)
    pipe.expire(key, protocol.STREAM_TTL_S)  # until the last event refreshes it: deltas are one XADD each
    pipe.exists(protocol.cancel_key(message.job_id))
    if message.reader:
        pipe.exists(protocol.reader_key(message.reader))
    replies = pipe.execute()
    if message.reader and not replies[-1]:  # the web process that would read it is gone
        end(protocol.DONE, finish_reason="cancelled", usage=zero)  # nothing to settle: its hold is released
        return "reader_gone"
    if replies[3]:
        end(protocol.DONE, finish_reason="cancelled", usage=zero, **settlement(message, zero, now, time.time()))
        return "cancelled"

    job = rt.forwarder.track(message.job_id, key, message=message, started=now)
    try:
        job.engine = rt.engine
        job.handle = serving.submit(rt.engine, message, rt.forwarder.inbox)
    except ValueError as exc:  # the engine refuses what it can never run (e.g. more than its KV cache)
        rt.forwarder.drop(message.job_id)
        end(protocol.ERROR, code="engine_error", message=f"The request cannot be served: {exc}", usage=zero,
            **settlement(message, zero, now, time.time()))
        return "error"
    rt.deadlines[message.job_id] = message.deadline
    rt.active[message.job_id] = job.handle
    try:
        job.ended.wait()
    finally:
        rt.active.pop(message.job_id, None)
        rt.deadlines.pop(message.job_id, None)
    return job.outcome


class _Job:
    """What the Forwarder keeps of one running job."""

    def __init__(self, key: str, message: protocol.JobMessage | None = None, started: float = 0.0):
        self.key = key
        self.message, self.started = message, started
        self.handle: RequestHandle | None = None
        self.usage = protocol.usage_dict(0, 0, 0)
        self.pending = ""  # text not written yet
        self.logprobs: list[dict[str, Any]] = []  # logprobs of tokens not written yet (when the job asked)
        self.engine: Engine | None = None  # the engine running it (for its tokenizer)
        self.flushed_at: float | None = None  # monotonic time of the last delta; None: no text sent yet
        self.finish: str | None = None  # the engine's finish reason, once it came
        self.error: str | None = None
        self.stop_sequence: str | None = None  # the stop string that ended it, if one did
        self.outcome = ""
        self.ended_at = 0.0
        self.ended = threading.Event()


class Forwarder:
    """One thread per worker process copies every running job's engine output to its Redis stream.

    The engine puts each step's events on this thread's inbox; a pass drains all of them and writes
    every job's due delta in ONE pipelined round trip. (A thread per job, each woken by every token of
    its job, cost a GIL hand-off per token per job: with 31 streams generating, it held up the Celery
    consumer thread handing over the next job by ~8 ms.) A job's first text goes out at once, later
    text at most every DELTA_FLUSH_S, and the last event carries what is left. If Redis refuses a
    write, the jobs in it are cancelled and end as errors (their readers see the stream go silent)."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        # the engine's (handle, event) pairs; None: stop
        self.inbox: queue.SimpleQueue[tuple[RequestHandle, Event] | None] = queue.SimpleQueue()
        self.jobs: dict[str, _Job] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def track(self, job_id: str, key: str, *, message: protocol.JobMessage | None = None,
              started: float = 0.0) -> _Job:
        """Follow a job from now on (before it is submitted: its first event may come at once)."""
        job = self.jobs[job_id] = _Job(key, message, started)
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="levee-forwarder", daemon=True)
                self._thread.start()
        return job

    def drop(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def stop(self) -> None:
        self.inbox.put(None)

    def _run(self) -> None:
        while True:
            items: list[tuple[RequestHandle, Event] | None] = []
            try:
                items.append(self.inbox.get(timeout=self._due_in()))
                while True:
                    items.append(self.inbox.get_nowait())
            except queue.Empty:
                pass
            if None in items:
                return
            try:
                for handle, event in (item for item in items if item is not None):  # none is, here
                    self._take(handle.request_id, event)
                self._flush()
            except Exception:  # never let the one forwarder die: its jobs would hang
                log.exception("forwarder pass failed")

    def _due_in(self) -> float | None:
        """Seconds until the earliest coalesced text is due (None: nothing waits, sleep until news)."""
        now, due = time.monotonic(), None
        for job in list(self.jobs.values()):
            if job.pending:
                left = 0.0 if job.flushed_at is None else job.flushed_at + DELTA_FLUSH_S - now
                due = left if due is None else min(due, left)
        return None if due is None else max(due, 0.0)

    def _take(self, job_id: str, event: Event) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.finish is not None:  # dropped after a failed write: its tail is not wanted
            return
        ev = serving.job_event(event, job.engine)
        job.pending += ev.text
        job.logprobs += ev.logprobs
        job.usage = ev.usage
        if ev.finish_reason is not None:
            job.finish, job.error, job.stop_sequence = ev.finish_reason, ev.error, ev.stop_sequence

    def _flush(self) -> None:
        now = time.monotonic()
        pipe = self.redis.pipeline(transaction=False)
        written, ended = [], []
        for job_id, job in list(self.jobs.items()):
            if (job.pending or job.logprobs) and (job.finish or job.flushed_at is None or now - job.flushed_at >= DELTA_FLUSH_S):
                extra = {"logprobs": job.logprobs} if job.logprobs else {}
                pipe.xadd(job.key, protocol.encode_event(protocol.DELTA, t=time.time(), text=job.pending,
                                                         usage=job.usage, **extra),
                          maxlen=protocol.STREAM_MAXLEN, approximate=True)
                job.pending, job.flushed_at, job.logprobs = "", now, []
                written.append((job_id, job))
            if job.finish is not None:
                signed = settlement(job.message, job.usage, job.started, time.time()) if job.message else {}
                if job.finish == "error":
                    log.error("job %s failed in the engine: %s", job_id, job.error)
                    fields = protocol.encode_event(protocol.ERROR, t=time.time(), code="engine_error",
                                                   message="Generation failed.", usage=job.usage, **signed)
                    job.outcome = "error"
                else:
                    reason = job.finish
                    if reason == "cancelled" and job.error == "engine stopped":
                        # cut by the worker going away, not by the client: DeepSeek's name for it
                        reason = "insufficient_system_resource"
                    matched = {"stop_sequence": job.stop_sequence} if job.stop_sequence is not None else {}
                    fields = protocol.encode_event(protocol.DONE, t=time.time(), finish_reason=reason,
                                                   usage=job.usage, **matched, **signed)
                    job.outcome = job.finish
                _last_event(pipe, job.key, fields)
                if not written or written[-1][0] != job_id:
                    written.append((job_id, job))
                ended.append(job_id)
        if not written:
            return
        try:
            pipe.execute()
        except redis.RedisError:
            log.exception("writing %d job streams failed; cancelling those jobs", len(written))
            for job_id, job in written:
                if job.handle is not None:
                    job.handle.cancel()
                job.outcome = "error"
                ended.append(job_id)
        for job_id in dict.fromkeys(ended):
            job = self.jobs.pop(job_id)
            job.ended_at = time.time()
            job.ended.set()


@app.task(name=protocol.GENERATE_TASK, ignore_result=True)
def generate(message: dict[str, Any]) -> str:
    return run_job(get_runtime(), message)
