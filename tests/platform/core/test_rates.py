"""The dashboard's per-minute counts (levee.core.rates): kept in the process, filed in batches."""
import logging

from levee.core import rates


def _filed(client, event: str) -> int:
    return sum(int(client.hget(key, event) or 0) for key in client.keys("levee:ops:rate:*"))


def test_a_count_is_filed_with_the_next_one_a_second_later_not_one_round_trip_each(redis_client, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(rates.time, "monotonic", lambda: now[0])
    rates.flush()  # filed "now": the next records are not due
    for _ in range(5):
        rates.record("limiter:limited")
    assert _filed(redis_client, "limiter:limited") == 0
    now[0] += rates.FILE_EVERY_S
    rates.record("limiter:limited")  # due: files all six in one pipeline
    assert _filed(redis_client, "limiter:limited") == 6
    assert redis_client.ttl(redis_client.keys("levee:ops:rate:*")[0]) > 3600


def test_the_dashboards_series_includes_this_processs_unfiled_counts(redis_client, monkeypatch):
    monkeypatch.setattr(rates.time, "monotonic", lambda: 5000.0)
    rates.flush()
    rates.record("login_failed", 3)
    _, events = rates.series(15)
    assert events["login_failed"][-1] == 3


def test_without_redis_counts_are_lost_with_a_warning_and_nothing_raises(settings, caplog, monkeypatch):
    from levee.core import store

    monkeypatch.setattr(rates, "redis_client", lambda: store.redis_client("redis://127.0.0.1:1/0", timeout=0.2))
    rates.record("signup:accepted")
    with caplog.at_level(logging.WARNING, logger="levee.core.rates"):
        rates.flush()
    assert "1 rate counts not recorded" in caplog.text
    rates.flush()  # nothing left to file: no second warning
    assert caplog.text.count("not recorded") == 1
