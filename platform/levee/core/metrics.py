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

and `register_state(name, source)` is how an app adds the state it owns to every scrape.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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


_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def count_request(route: str, method: str | None, status: int, seconds: float) -> None:
    key = (route, method if method in KNOWN_METHODS else "other", status)  # a client's method names are not keys
    children = _request_children.get(key)
    if children is None:  # labels() takes a lock and builds the series' key: once per label set
        children = _request_children[key] = (REQUESTS.labels(key[0], key[1], str(status)),
                                              REQUEST_SECONDS.labels(route))
    children[0].inc()
    children[1].observe(seconds)


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


# --- state owned by the apps ----------------------------------------------------------------------
# core knows no app: each app registers, in its AppConfig.ready(), a function that yields the metric
# families of its own state at scrape time (levee.api.monitoring, levee.shield.monitoring,
# levee.billing.monitoring). A source that raises is logged and left out of that scrape; the others stay.

StateSource = Callable[[], Iterable[Metric]]
_state_sources: dict[str, StateSource] = {}


def register_state(name: str, source: StateSource) -> None:
    """Adds (or replaces, by name) a source of scrape-time metric families."""
    _state_sources[name] = source


class StateCollector(Collector):
    """Reads the live state at each scrape; registered only in the per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        for name, source in list(_state_sources.items()):
            try:
                families = list(source())
            except Exception as exc:
                log.warning("metrics: %s failed (%s)", name, exc.__class__.__name__)
                continue
            yield from families


def safely(fn: Callable[[], Any]) -> Any:
    """fn(), or None (logged) when it raises: for state that may be unreadable during an outage."""
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
