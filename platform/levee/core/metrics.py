"""Prometheus metrics: the counters code increments, and the state read from Redis at scrape time.

Two kinds of metric live here:

* **Events** (requests, sign-ups, limiter decisions, time to first token, tokens/s) are
  prometheus-client counters and histograms that request code moves through the functions below.
  gunicorn runs several worker processes, so with PROMETHEUS_MULTIPROC_DIR set (ops/gunicorn.conf.py
  and ops/run.py set it) each process writes its values to a memory-mapped file there and a scrape
  sums them all: the counters are whole whichever process answers the scrape.
* **State** (queue depth, last queue wait, live workers, the mitigation mode, open holds) is read
  when Prometheus scrapes, from Redis and the database, so it is never stale and never depends on
  which process last saw a change.

Hooks for other subsystems (call these; do not touch the metric objects directly):

    observe_ttft(model, seconds)              the API, when a job's first token reaches the client
    observe_tokens_per_second(model, value)   the API, when a job finishes
    count_limiter_decision(rule, outcome)     the shield, for each rule it decides
    count_signup(outcome)                     the sign-up view (and the shield when it refuses one)

and the two functions under "filled in at merge" are where the shield and billing plug in.
"""
from __future__ import annotations

import json
import logging
import os
import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Any process with the variable set (web, platform worker) writes its values there; the folder
    # may be a fresh tmpfs in a container, so make sure it exists before the first value is written.
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# Label values come from small fixed sets (URL pattern names, status codes, rule names, model names);
# never from a raw path or user input, which would let a client mint unbounded time series.
REQUESTS = Counter("levee_http_requests", "HTTP requests answered, by URL pattern name, method and status.",
                   ["route", "method", "status"])
REQUEST_SECONDS = Histogram("levee_http_request_duration_seconds",
                            "Time to the response headers, by URL pattern name (a stream's body is not included).",
                            ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SIGNUPS = Counter("levee_signups", "Sign-up attempts by outcome (accepted, invalid, and the shield's refusals).",
                  ["outcome"])
LOGIN_FAILURES = Counter("levee_login_failures", "Failed logins (Django's user_login_failed signal).")
LIMITER_DECISIONS = Counter("levee_limiter_decisions", "Rate-limit and shield decisions by rule and outcome.",
                            ["rule", "outcome"])
TTFT = Histogram("levee_time_to_first_token_seconds", "From request arrival to the first token sent, by model.",
                 ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120))
TOKENS_PER_SECOND = Histogram("levee_tokens_per_second", "Decode speed of a finished job (completion tokens / "
                              "seconds after the first token), by model.", ["model"],
                              buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000))

KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
MODES = ("normal", "elevated", "under_attack")


def count_request(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method if method in KNOWN_METHODS else "other", str(status)).inc()
    REQUEST_SECONDS.labels(route).observe(seconds)


def count_signup(outcome: str) -> None:
    from levee.core import rates

    SIGNUPS.labels(outcome).inc()
    rates.record(f"signup:{outcome}")


def count_login_failure() -> None:
    from levee.core import rates

    LOGIN_FAILURES.inc()
    rates.record("login_failed")


_limiter_children: dict = {}


def count_limiter_decision(rule: str, outcome: str) -> None:
    """outcome: "allowed", or what happened instead: "limited" (429), "blocked" (an IP rule),
    "shed" (dropped under load), "challenged" (proof-of-work asked). Refusals are also counted per
    minute in Redis for the admin dashboard; admissions are not (that would be a write per request)."""
    child = _limiter_children.get((rule, outcome))
    if child is None:  # labels() takes a lock and builds the series' key: once per label pair, not per decision
        child = _limiter_children[(rule, outcome)] = LIMITER_DECISIONS.labels(rule, outcome)
    child.inc()
    if outcome != "allowed":
        from levee.core import rates

        rates.record(f"limiter:{outcome}")


def observe_ttft(model: str, seconds: float) -> None:
    TTFT.labels(model).observe(max(0.0, seconds))


def observe_tokens_per_second(model: str, value: float) -> None:
    TOKENS_PER_SECOND.labels(model).observe(max(0.0, value))


# --- state owned by other apps ---------------------------------------------------------------------
# None means "unknown" (the app is absent), and the metrics/dashboard omit it.

def open_holds() -> int | None:
    """Billing holds not yet settled or released."""
    from levee.billing.models import Hold, HoldStatus

    return Hold.objects.filter(status=HoldStatus.OPEN).count()


def current_mode() -> dict | None:
    """The shield's mitigation mode: {"mode": "normal"|"elevated"|"under_attack", "set_by": str | None,
    "set_at": datetime | None, "reason": str, "pinned": bool}."""
    from levee.shield.services import mode_details

    return mode_details()


# --- scrape-time state ----------------------------------------------------------------------------

def enabled_models() -> list[tuple[str, str]]:
    """(name, queue) of every enabled model."""
    from levee.api.models import LlmModel

    return [(m.name, m.queue_name) for m in LlmModel.objects.filter(enabled=True).only("name", "queue")]


def model_state(models: list[tuple[str, str]], *, now: float | None = None) -> dict[str, dict]:
    """Per model: queue depth, last queue wait, live workers, each worker's last heartbeat and its
    engine's numbers from that heartbeat, from Redis in one round trip. Raises RedisError."""
    from inference import protocol
    from levee.core.store import redis_client

    now = now or time.time()
    pipe = redis_client().pipeline(transaction=False)
    for name, queue in models:
        pipe.llen(queue)
        pipe.get(protocol.wait_key(name))
        pipe.zrangebyscore(protocol.workers_key(name), now - protocol.WORKER_TTL_S, "+inf", withscores=True)
        pipe.hgetall(protocol.worker_stats_key(name))
    replies = pipe.execute()
    state = {}
    for i, (name, queue) in enumerate(models):
        depth, wait_ms, workers, stats = replies[4 * i: 4 * i + 4]
        live = {w.decode(): float(t) for w, t in workers}
        state[name] = {"queue": queue, "depth": int(depth), "wait_s": int(wait_ms) / 1000 if wait_ms else None,
                       "live_workers": len(live), "workers": live,
                       "engines": {w: e for w, e in _engine_stats(stats).items() if w in live}}
    return state


def _engine_stats(raw: dict) -> dict[str, dict]:
    """worker id -> the engine numbers its heartbeat wrote, with `kv_free` (the share of KV blocks
    free or evictable; None without blocks). Entries that do not parse are skipped."""
    engines = {}
    for worker, value in raw.items():
        try:
            stats = json.loads(value)
            e = {key: float(stats[key]) for key in ENGINE_FIELDS}
        except (ValueError, KeyError, TypeError):
            continue
        e["kv_free"] = (e["free_blocks"] + e["evictable_blocks"]) / e["num_blocks"] if e["num_blocks"] else None
        engines[worker.decode()] = e
    return engines


ENGINE_FIELDS = ("running", "waiting", "max_batch", "free_blocks", "evictable_blocks", "num_blocks", "steps",
                 "generated_tokens")


def _engine_families() -> dict:
    labels = ["model", "worker"]
    return {
        "running": GaugeMetricFamily("levee_engine_running_sequences", "Sequences in the worker's batch at its last "
                                     "heartbeat.", labels=labels),
        "waiting": GaugeMetricFamily("levee_engine_waiting_sequences", "Jobs the worker holds that wait for a place "
                                     "in its batch or for KV memory.", labels=labels),
        "max_batch": GaugeMetricFamily("levee_engine_max_batch", "The most sequences the worker's engine runs at "
                                       "once.", labels=labels),
        "kv_free": GaugeMetricFamily("levee_engine_kv_cache_free_ratio", "Share of the KV cache's blocks free or "
                                     "held only by the prefix cache (evictable).", labels=labels),
        "steps": CounterMetricFamily("levee_engine_steps", "Batched forward steps since the worker started.",
                                     labels=labels),
        "tokens": CounterMetricFamily("levee_engine_generated_tokens", "Tokens sampled since the worker started, "
                                      "all jobs.", labels=labels),
    }


class StateCollector:
    """Reads the live state at each scrape; registered only in the per-scrape registry."""

    def collect(self):
        redis_up = GaugeMetricFamily("levee_redis_up", "1 when the scrape could read Redis.")
        depth = GaugeMetricFamily("levee_queue_depth", "Jobs waiting in the model's Celery queue.", labels=["model"])
        wait = GaugeMetricFamily("levee_queue_wait_seconds", "How long the most recently started job of the model "
                                 "waited in the queue.", labels=["model"])
        live = GaugeMetricFamily("levee_workers_live", "Inference workers whose heartbeat is fresh, by model.",
                                 labels=["model"])
        beat = GaugeMetricFamily("levee_worker_last_heartbeat_timestamp_seconds",
                                 "Unix time of each live worker's last heartbeat.", labels=["model", "worker"])
        try:
            models = enabled_models()
        except Exception as exc:  # the database is down: say so by omission, keep the rest of the scrape
            log.warning("metrics: cannot list models (%s)", exc.__class__.__name__)
            models = []
        try:
            state = model_state(models)
        except Exception as exc:
            log.warning("metrics: cannot read Redis (%s)", exc.__class__.__name__)
            redis_up.add_metric([], 0)
            state = {}
        else:
            redis_up.add_metric([], 1)
        engine = _engine_families()
        for name, s in state.items():
            depth.add_metric([name], s["depth"])
            if s["wait_s"] is not None:
                wait.add_metric([name], s["wait_s"])
            live.add_metric([name], s["live_workers"])
            for worker, at in s["workers"].items():
                beat.add_metric([name, worker], at)
            for worker, e in s["engines"].items():
                labels = [name, worker]
                engine["running"].add_metric(labels, e["running"])
                engine["waiting"].add_metric(labels, e["waiting"])
                engine["max_batch"].add_metric(labels, e["max_batch"])
                if e["kv_free"] is not None:
                    engine["kv_free"].add_metric(labels, e["kv_free"])
                engine["steps"].add_metric(labels, e["steps"])
                engine["tokens"].add_metric(labels, e["generated_tokens"])
        yield from (redis_up, depth, wait, live, beat, *engine.values())

        mode = _safely(current_mode)
        if mode is not None:
            gauge = GaugeMetricFamily("levee_mitigation_mode", "1 for the mitigation mode in force, 0 for the others.",
                                      labels=["mode"])
            for name in MODES:
                gauge.add_metric([name], 1 if mode.get("mode") == name else 0)
            yield gauge
        holds = _safely(open_holds)
        if holds is not None:
            yield GaugeMetricFamily("levee_open_holds", "Billing holds placed and not yet settled or released.",
                                    value=holds)


def _safely(fn):
    try:
        return fn()
    except Exception as exc:
        log.warning("metrics: %s failed (%s)", fn.__name__, exc.__class__.__name__)
        return None


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def exposition() -> bytes:
    """The text a scrape returns: every process's events (or this process's, without multiprocess
    mode), then the state read now."""
    if multiprocess_dir():
        events = CollectorRegistry()
        multiprocess.MultiProcessCollector(events)
    else:
        events = REGISTRY
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector())
    return generate_latest(events) + generate_latest(state)
