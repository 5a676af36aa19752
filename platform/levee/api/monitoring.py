"""The API's state in /metrics and on the admin dashboard: per served model, its queue, its live
inference workers and the engine numbers their heartbeats carry. Read from Redis at scrape time."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from inference import protocol
from levee.api.models import LlmModel
from levee.core.store import redis_client

log = logging.getLogger("levee.core.metrics")  # one logger for everything a scrape reports
ENGINE_FIELDS = ("running", "waiting", "max_batch", "free_blocks", "evictable_blocks", "num_blocks", "steps",
                 "generated_tokens")
SPEC_FIELDS = ("spec_drafted", "spec_accepted")  # MTP speculation; absent from engines that predate it


def enabled_models() -> list[tuple[str, str]]:
    """(name, queue) of every enabled model."""
    return [(m.name, m.queue_name) for m in LlmModel.objects.filter(enabled=True).only("name", "queue")]


def model_state(models: list[tuple[str, str]], *, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per model: queue depth, last queue wait, live workers, each worker's last heartbeat and its
    engine's numbers from that heartbeat, from Redis in one round trip. Raises RedisError."""
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


def _engine_stats(raw: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """worker id -> the engine numbers its heartbeat wrote, with `kv_free` (the share of KV blocks
    free or evictable; None without blocks) and `spec_acceptance` (MTP drafts kept / verified since
    the worker started; None before any draft or from an engine without the counts). Entries that
    do not parse are skipped."""
    engines = {}
    for worker, value in raw.items():
        try:
            stats = json.loads(value)
            e: dict[str, Any] = {key: float(stats[key]) for key in ENGINE_FIELDS}
            e.update({key: float(stats[key]) for key in SPEC_FIELDS if key in stats})
        except (ValueError, KeyError, TypeError):
            continue
        e["kv_free"] = (e["free_blocks"] + e["evictable_blocks"]) / e["num_blocks"] if e["num_blocks"] else None
        drafted = e.get("spec_drafted")
        e["spec_acceptance"] = e["spec_accepted"] / drafted if drafted and "spec_accepted" in e else None
        engines[worker.decode()] = e
    return engines


def _engine_families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
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
        "spec_drafted": CounterMetricFamily("levee_engine_spec_drafted_tokens", "MTP draft tokens the engine "
                                            "verified since the worker started.", labels=labels),
        "spec_accepted": CounterMetricFamily("levee_engine_spec_accepted_tokens", "MTP draft tokens kept (each "
                                             "one token more from its step) since the worker started.",
                                             labels=labels),
        "spec_acceptance": GaugeMetricFamily("levee_engine_spec_acceptance_ratio", "Share of the MTP drafts "
                                             "verified since the worker started that were kept.", labels=labels),
    }


def metric_families() -> Iterator[Metric]:
    """levee_redis_up, the queues, the live workers and their engines, for every enabled model."""
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
            for key in SPEC_FIELDS:
                if key in e:
                    engine[key].add_metric(labels, e[key])
            if e["spec_acceptance"] is not None:
                engine["spec_acceptance"].add_metric(labels, e["spec_acceptance"])
    yield from (redis_up, depth, wait, live, beat, *engine.values())


def readiness() -> dict[str, Any]:
    """Ready when every enabled model has a live worker."""
    live = {name: s["live_workers"] for name, s in model_state(enabled_models()).items()}
    return {"ok": all(live.values()), "models": live}


def dashboard_panel() -> dict[str, Any]:
    """The dashboard's "models" section: queue, workers (seconds since their heartbeat), engines."""
    state = model_state(enabled_models())
    now = time.time()
    return {name: {"depth": s["depth"], "wait_s": s["wait_s"], "live_workers": s["live_workers"],
                   "workers": {w: round(now - at, 1) for w, at in sorted(s["workers"].items())},
                   "engines": {w: _engine_row(e) for w, e in sorted(s["engines"].items())}}
            for name, s in state.items()}


def _engine_row(e: dict[str, Any]) -> dict[str, Any]:
    return {"running": int(e["running"]), "max_batch": int(e["max_batch"]), "waiting": int(e["waiting"]),
            "kv_free": None if e["kv_free"] is None else round(e["kv_free"], 3),
            "spec_acceptance": None if e["spec_acceptance"] is None else round(e["spec_acceptance"], 3)}
