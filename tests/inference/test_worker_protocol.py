"""The inference worker's job rules, against the real Redis: at most once, deadlines, cancellation."""
import time

import pytest
import redis

from inference import protocol, worker


@pytest.fixture
def rt(settings):
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.flushdb()
    runtime = worker.Runtime.__new__(worker.Runtime)
    runtime.worker_id = "test-worker"
    runtime.redis = r
    runtime.active = {}
    yield runtime
    r.flushdb()


def _message(**changes):
    base = protocol.JobMessage(job_id="job1", model="deepseek-chat", prompt_ids=[1, 2, 3], user="7", hold_id=None,
                               deadline=time.time() + 60, sampling=protocol.Sampling(max_tokens=4))
    for k, v in changes.items():
        setattr(base, k, v)
    return base.to_dict()


def _events(r, job_id="job1"):
    return [protocol.decode_event(fields) for _, fields in r.xrange(protocol.stream_key(job_id))]


def test_a_redelivered_job_that_already_started_does_not_run_again(rt):
    rt.redis.set(protocol.started_key("job1"), "another-worker")
    assert worker.run_job(rt, _message()) == "duplicate"
    assert _events(rt.redis) == []


def test_a_job_past_its_deadline_is_dropped_with_an_error_event(rt):
    assert worker.run_job(rt, _message(deadline=time.time() - 1)) == "deadline"
    events = _events(rt.redis)
    assert [e["type"] for e in events] == ["error"] and events[0]["code"] == "deadline"
    assert events[0]["usage"]["completion_tokens"] == 0


def test_a_job_cancelled_before_it_starts_costs_nothing(rt):
    rt.redis.set(protocol.cancel_key("job1"), 1)
    assert worker.run_job(rt, _message()) == "cancelled"
    kinds = [e["type"] for e in _events(rt.redis)]
    assert kinds == ["started", "done"]
    assert _events(rt.redis)[-1]["usage"]["prompt_tokens"] == 0


def test_an_unknown_message_version_is_refused(rt):
    with pytest.raises(protocol.ProtocolError):
        worker.run_job(rt, {**_message(), "version": 99})


def test_the_heartbeat_marks_the_worker_live_and_forwards_cancel_flags(rt):
    class Handle:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    handle = Handle()
    rt.active["job1"] = handle
    rt.redis.set(protocol.cancel_key("job1"), 1)
    rt.beat_once()
    assert handle.cancelled
    assert rt.redis.zscore(protocol.workers_key(worker.MODEL_NAME), "test-worker") is not None
    assert [e["type"] for e in _events(rt.redis)] == ["heartbeat"]


def test_the_first_text_goes_out_at_once_and_later_tokens_are_coalesced(rt, monkeypatch):
    from inference import serving

    def fake_submit(engine, message):  # six tokens, all well inside one coalescing window
        for n in range(6):
            yield serving.JobEvent(text=f"t{n} ", usage=protocol.usage_dict(3, 0, n + 1),
                                   finish_reason="length" if n == 5 else None)

    monkeypatch.setattr(serving, "submit", fake_submit)
    monkeypatch.setattr(worker.Runtime, "engine", None, raising=False)
    assert worker.run_job(rt, _message()) == "length"
    deltas = [e["text"] for e in _events(rt.redis) if e["type"] == "delta"]
    assert deltas[0] == "t0 "  # not held back for the window
    assert "".join(deltas) == "t0 t1 t2 t3 t4 t5 " and len(deltas) < 6  # the rest travel together
