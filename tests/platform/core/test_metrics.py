"""/metrics: private, counts requests by route name, and reads queues and workers from Redis when scraped."""
import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference import protocol
from levee.billing import monitoring as billing_monitoring
from levee.core import metrics
from levee.shield import monitoring as shield_monitoring
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db


def scrape(client, **extra) -> dict:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.status_code
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_counters_move_with_requests_and_name_the_route_not_the_path(client, redis_client):
    before = scrape(client)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    client.get("/v1/no-such-thing")
    client.get("/accounts/verify/1:ada@example.com:secret-token/")  # a path that holds a token
    after = scrape(client)

    def delta(**labels):
        return value(after, "levee_http_requests_total", **labels) - value(before, "levee_http_requests_total", **labels)

    assert delta(route="healthz", method="GET", status="200") == 3
    assert delta(route="unmatched", method="GET", status="404") == 1
    assert delta(route="verify-email", method="GET", status="400") == 1
    assert delta(route="metrics", method="GET", status="200") == 1  # the first scrape, counted once answered
    assert not any("secret-token" in str(key) or "/v1/" in str(key) for key in after)
    assert value(after, "levee_http_request_duration_seconds_count", route="healthz") >= 3


def test_sign_ups_and_failed_logins_are_counted_by_outcome(client, redis_client):
    before = scrape(client)
    client.post("/accounts/signup/", {"email": "new@example.com", "password": PASSWORD})
    client.post("/accounts/signup/", {"email": "not-an-address", "password": PASSWORD})
    client.post("/accounts/login/", {"username": "nobody@example.com", "password": "wrong password"})
    after = scrape(client)
    assert value(after, "levee_signups_total", outcome="accepted") - value(before, "levee_signups_total", outcome="accepted") == 1
    assert value(after, "levee_signups_total", outcome="invalid") - value(before, "levee_signups_total", outcome="invalid") == 1
    assert value(after, "levee_login_failures_total") - value(before, "levee_login_failures_total") == 1


def test_the_hooks_for_the_api_and_the_shield_feed_their_metrics(client, redis_client):
    before = scrape(client)
    metrics.observe_ttft("deepseek-chat", 0.42)
    metrics.observe_tokens_per_second("deepseek-chat", 55.0)
    metrics.count_limiter_decision("signup-ip", "limited")
    metrics.count_limiter_decision("signup-ip", "allowed")
    after = scrape(client)
    assert value(after, "levee_time_to_first_token_seconds_count", model="deepseek-chat") - \
        value(before, "levee_time_to_first_token_seconds_count", model="deepseek-chat") == 1
    assert value(after, "levee_time_to_first_token_seconds_bucket", model="deepseek-chat", le="0.5") - \
        value(before, "levee_time_to_first_token_seconds_bucket", model="deepseek-chat", le="0.5") == 1
    assert value(after, "levee_tokens_per_second_sum", model="deepseek-chat") - \
        value(before, "levee_tokens_per_second_sum", model="deepseek-chat") == 55.0
    for outcome in ("limited", "allowed"):
        assert value(after, "levee_limiter_decisions_total", rule="signup-ip", outcome=outcome) - \
            value(before, "levee_limiter_decisions_total", rule="signup-ip", outcome=outcome) == 1


def test_queue_depth_wait_and_live_workers_are_read_from_redis_at_scrape_time(client, redis_client):
    samples = scrape(client)
    assert value(samples, "levee_redis_up") == 1
    assert value(samples, "levee_queue_depth", model="deepseek-chat") == 0
    assert value(samples, "levee_workers_live", model="deepseek-chat") == 0
    assert ("levee_queue_depth", (("model", "deepseek-reasoner"),)) not in samples  # disabled

    redis_client.rpush("inference.deepseek-chat", "job-1", "job-2")
    redis_client.set(protocol.wait_key("deepseek-chat"), 1500)
    now = time.time()
    redis_client.zadd(protocol.workers_key("deepseek-chat"), {"gpu-1:7": now, "gpu-2:8": now - 60})
    samples = scrape(client)
    assert value(samples, "levee_queue_depth", model="deepseek-chat") == 2
    assert value(samples, "levee_queue_wait_seconds", model="deepseek-chat") == 1.5
    assert value(samples, "levee_workers_live", model="deepseek-chat") == 1  # gpu-2 is stale
    assert value(samples, "levee_worker_last_heartbeat_timestamp_seconds", model="deepseek-chat",
                 worker="gpu-1:7") == pytest.approx(now)


def test_each_live_workers_engine_numbers_are_read_at_scrape_time(client, redis_client):
    now = time.time()
    redis_client.zadd(protocol.workers_key("deepseek-chat"), {"gpu-1:7": now, "gpu-2:8": now - 60})
    engine = {"t": now, "running": 12, "waiting": 2, "max_batch": 32, "free_blocks": 600, "evictable_blocks": 200,
              "num_blocks": 1000, "steps": 4000, "generated_tokens": 90000}
    redis_client.hset(protocol.worker_stats_key("deepseek-chat"), mapping={
        "gpu-1:7": json.dumps(engine), "gpu-2:8": json.dumps(engine), "gpu-3:9": "not json"})
    samples = scrape(client)
    labels = {"model": "deepseek-chat", "worker": "gpu-1:7"}
    assert value(samples, "levee_engine_running_sequences", **labels) == 12
    assert value(samples, "levee_engine_waiting_sequences", **labels) == 2
    assert value(samples, "levee_engine_max_batch", **labels) == 32
    assert value(samples, "levee_engine_kv_cache_free_ratio", **labels) == pytest.approx(0.8)
    assert value(samples, "levee_engine_steps_total", **labels) == 4000
    assert value(samples, "levee_engine_generated_tokens_total", **labels) == 90000
    engines = {dict(lab).get("worker") for name, lab in samples if name == "levee_engine_running_sequences"}
    assert engines == {"gpu-1:7"}  # gpu-2's heartbeat is stale; gpu-3 wrote nothing readable
    key = tuple(sorted(labels.items()))
    assert ("levee_engine_spec_drafted_tokens_total", key) not in samples  # an engine without MTP counts
    assert ("levee_engine_spec_acceptance_ratio", key) not in samples


def test_mtp_speculation_counts_and_acceptance_are_exported(client, redis_client):
    now = time.time()
    redis_client.zadd(protocol.workers_key("deepseek-chat"), {"gpu-1:7": now, "gpu-2:8": now})
    engine = {"t": now, "running": 1, "waiting": 0, "max_batch": 32, "free_blocks": 600, "evictable_blocks": 0,
              "num_blocks": 1000, "steps": 40, "generated_tokens": 70, "spec_drafted": 40, "spec_accepted": 30}
    redis_client.hset(protocol.worker_stats_key("deepseek-chat"), mapping={
        "gpu-1:7": json.dumps(engine), "gpu-2:8": json.dumps({**engine, "spec_drafted": 0, "spec_accepted": 0})})
    samples = scrape(client)
    labels = {"model": "deepseek-chat", "worker": "gpu-1:7"}
    assert value(samples, "levee_engine_spec_drafted_tokens_total", **labels) == 40
    assert value(samples, "levee_engine_spec_accepted_tokens_total", **labels) == 30
    assert value(samples, "levee_engine_spec_acceptance_ratio", **labels) == pytest.approx(0.75)
    idle = tuple(sorted({"model": "deepseek-chat", "worker": "gpu-2:8"}.items()))
    assert samples[("levee_engine_spec_drafted_tokens_total", idle)] == 0
    assert ("levee_engine_spec_acceptance_ratio", idle) not in samples  # no draft yet: no ratio


def test_a_scrape_survives_redis_being_down(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    samples = scrape(client)
    assert value(samples, "levee_redis_up") == 0
    assert not any(name == "levee_queue_depth" for name, _ in samples)


def test_mode_and_open_holds_appear_once_their_subsystems_answer(client, redis_client, monkeypatch):
    monkeypatch.setattr(shield_monitoring, "current_mode", lambda: None)
    monkeypatch.setattr(billing_monitoring, "open_holds", lambda: None)
    samples = scrape(client)
    assert not any(name in {"levee_mitigation_mode", "levee_open_holds"} for name, _ in samples)
    monkeypatch.setattr(shield_monitoring, "current_mode", lambda: {"mode": "under_attack", "set_by": "ops@example.com"})
    monkeypatch.setattr(billing_monitoring, "open_holds", lambda: 7)
    samples = scrape(client)
    assert value(samples, "levee_mitigation_mode", mode="under_attack") == 1
    assert value(samples, "levee_mitigation_mode", mode="normal") == 0
    assert value(samples, "levee_open_holds") == 7


def test_it_is_not_public(client, settings):
    settings.LEVEE_METRICS_TOKEN = "scrape-token-0123456789"
    outside = {"REMOTE_ADDR": "203.0.113.9"}
    response = client.get("/metrics", **outside)
    assert response.status_code == 404 and b"levee_" not in response.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong", **outside).status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789", **outside).status_code == 200
    assert client.get("/metrics").status_code == 200  # loopback, the default allowed network


def test_a_forwarded_header_does_not_open_it_from_outside(client, settings):
    settings.LEVEE_METRICS_TOKEN = ""
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert response.status_code == 404


def test_an_empty_token_setting_never_matches_an_empty_bearer(client, settings):
    settings.LEVEE_METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer ").status_code == 404
