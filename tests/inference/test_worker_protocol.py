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
    runtime.deadlines = {}
    runtime.forwarder = worker.Forwarder(r)
    yield runtime
    runtime.forwarder.stop()
    r.flushdb()


def _message(**changes):
    base = protocol.JobMessage(job_id="job1", model="deepseek-chat", prompt_ids=[1, 2, 3], user="7", hold_id=None,
                               deadline=time.time() + 60, pickup_deadline=time.time() + 60, sampling=protocol.Sampling(max_tokens=4))
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


class ScriptedEngine:
    """Stands in for the engine's scheduler only: submit() returns a real RequestHandle bound to the
    worker's sink, and a thread emits the script [(seconds to wait, text, finish reason)] through it,
    with running usage, as the scheduler thread would."""

    def __init__(self, script, error=None, stop_sequence=None):
        self.script, self.error, self.stop_sequence = script, error, stop_sequence
        self.handles = []

    def submit(self, request, sink=None):
        import threading

        from inference.engine import Event, RequestHandle, Usage

        handle = RequestHandle(request, sink)
        self.handles.append(handle)

        def play():
            for n, (wait, text, reason) in enumerate(self.script, 1):
                time.sleep(wait)
                if handle.cancelled:
                    reason = "cancelled"
                handle._emit(Event([n], text, reason, Usage(3, 1, 2, n), error=self.error if reason else None,
                                   stop_sequence=self.stop_sequence if reason else None))
                if reason:
                    return

        threading.Thread(target=play, daemon=True).start()
        return handle


def test_the_heartbeat_publishes_the_engines_numbers_for_monitoring(rt):
    import json

    class Engine:
        def stats(self):
            return {"running": 3, "waiting": 1, "max_batch": 32, "free_blocks": 10, "evictable_blocks": 2,
                    "num_blocks": 16, "cached_prefix_units": 0, "steps": 700, "generated_tokens": 2100}

    rt._engine = Engine()
    rt.beat_once()
    stats = json.loads(rt.redis.hget(protocol.worker_stats_key(worker.MODEL_NAME), "test-worker"))
    assert stats["running"] == 3 and stats["generated_tokens"] == 2100 and stats["jobs"] == 0
    assert stats["t"] == pytest.approx(time.time(), abs=5)
    assert 0 < rt.redis.ttl(protocol.worker_stats_key(worker.MODEL_NAME)) <= 10 * protocol.WORKER_TTL_S


def test_the_engine_counts_its_steps_and_tokens():
    from inference import serving
    from inference.engine import Request, SamplingParams

    engine = serving.build_engine(str(worker.ROOT / "inference" / "demo" / "checkpoint"))
    try:
        before = engine.stats()
        done = engine.submit(Request([1, 20, 30], SamplingParams(max_tokens=5, temperature=0))).result(60)
        after = engine.stats()
    finally:
        engine.stop()
    assert after["generated_tokens"] - before["generated_tokens"] == done.usage.completion_tokens
    # one request: the prefill gives a token, each later step one more and another per kept MTP draft
    assert engine.speculative  # the demo checkpoint ships its MTP head (mtp.safetensors)
    accepted = after["spec_accepted"] - before["spec_accepted"]
    assert after["steps"] - before["steps"] == done.usage.completion_tokens - accepted
    assert after["max_batch"] == serving.max_batch() and after["num_blocks"] >= after["free_blocks"] > 0


def test_the_first_text_goes_out_at_once_and_later_tokens_are_coalesced(rt, monkeypatch):
    script = [(0, "t0 ", None)] + [(0.001, f"t{n} ", None) for n in range(1, 5)] + [(0.001, "t5 ", "length")]
    monkeypatch.setattr(worker.Runtime, "engine", ScriptedEngine(script), raising=False)
    assert worker.run_job(rt, _message()) == "length"
    events = _events(rt.redis)
    deltas = [e["text"] for e in events if e["type"] == "delta"]
    assert deltas[0] == "t0 "  # not held back for the window
    assert "".join(deltas) == "t0 t1 t2 t3 t4 t5 " and len(deltas) < 6  # the rest travel together
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "length"
    assert events[-1]["usage"] == protocol.usage_dict(1, 2, 6)
    assert rt.redis.ttl(protocol.stream_key("job1")) > protocol.STREAM_TTL_S - 60  # an hour from the last event
    assert not rt.forwarder.jobs and not rt.active


def test_text_is_written_at_least_every_flush_window_while_a_job_runs(rt, monkeypatch):
    script = [(0, "a", None)] + [(0.01, "b", None)] * 20 + [(0, "", "stop")]  # ~200 ms of tokens
    monkeypatch.setattr(worker.Runtime, "engine", ScriptedEngine(script), raising=False)
    assert worker.run_job(rt, _message()) == "stop"
    stamps = [e["t"] for e in _events(rt.redis) if e["type"] == "delta"]
    assert len(stamps) >= 4  # not all at the end
    assert max(b - a for a, b in zip(stamps, stamps[1:], strict=False)) < 0.1


def test_the_done_event_names_the_stop_string_that_ended_the_job(rt, monkeypatch):
    monkeypatch.setattr(worker.Runtime, "engine", ScriptedEngine([(0, "a", None), (0, "b", "stop")],
                                                                 stop_sequence="END"), raising=False)
    assert worker.run_job(rt, _message()) == "stop"
    assert _events(rt.redis)[-1]["stop_sequence"] == "END"
    monkeypatch.setattr(worker.Runtime, "engine", ScriptedEngine([(0, "a", "stop")]), raising=False)
    assert worker.run_job(rt, _message(job_id="job2")) == "stop"
    assert "stop_sequence" not in _events(rt.redis, "job2")[-1]  # the model's own end: nothing named


def test_an_engine_error_ends_the_job_with_an_error_event_and_its_usage(rt, monkeypatch):
    script = [(0, "par", None), (0.001, "", "error")]
    monkeypatch.setattr(worker.Runtime, "engine", ScriptedEngine(script, error="RuntimeError: boom"), raising=False)
    assert worker.run_job(rt, _message()) == "error"
    events = _events(rt.redis)
    assert [e["type"] for e in events] == ["started", "delta", "error"]
    assert events[-1]["code"] == "engine_error" and "boom" not in events[-1]["message"]  # internals stay inside
    assert events[-1]["usage"]["completion_tokens"] == 2


def test_a_request_the_engine_refuses_ends_at_once_with_an_error_and_costs_nothing(rt, monkeypatch):
    class Refusing:
        def submit(self, request, sink=None):
            raise ValueError("prompt of 3 tokens + max_tokens 4 cannot fit the KV cache")

    monkeypatch.setattr(worker.Runtime, "engine", Refusing(), raising=False)
    assert worker.run_job(rt, _message()) == "error"
    events = _events(rt.redis)
    assert [e["type"] for e in events] == ["started", "error"]
    assert "cannot fit" in events[-1]["message"] and events[-1]["usage"]["prompt_tokens"] == 0
    assert not rt.forwarder.jobs


def test_when_redis_refuses_the_streams_the_jobs_are_cancelled_and_end(rt, monkeypatch):
    engine = ScriptedEngine([(0, "x", None)] + [(0.01, "y", None)] * 500 + [(0, "", "length")])
    monkeypatch.setattr(worker.Runtime, "engine", engine, raising=False)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    refusing = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))  # nobody listens
    rt.forwarder = worker.Forwarder(refusing)
    started = time.monotonic()
    assert worker.run_job(rt, _message()) == "error"
    assert time.monotonic() - started < 2  # not the 5 s the script would take
    assert engine.handles[0].cancelled


def test_one_forwarder_streams_many_jobs_of_a_real_engine(rt, monkeypatch):
    """Eight jobs at once on the demo checkpoint: each stream carries exactly the text and usage the
    engine produces for that prompt alone."""
    import threading

    from inference import serving
    from inference.engine import Request, SamplingParams

    engine = serving.build_engine(str(worker.ROOT / "inference" / "demo" / "checkpoint"))
    try:
        monkeypatch.setattr(worker.Runtime, "engine", engine, raising=False)
        prompts = [[1, 20 + n, 30 + n, 40] for n in range(8)]
        outcomes = {}

        def job(n):
            outcomes[n] = worker.run_job(rt, _message(job_id=f"job{n}", prompt_ids=prompts[n],
                                                      sampling=protocol.Sampling(max_tokens=12, temperature=0)))

        threads = [threading.Thread(target=job, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for n in range(8):
            alone = engine.submit(Request(prompts[n], SamplingParams(max_tokens=12, temperature=0))).result(60)
            events = _events(rt.redis, f"job{n}")
            assert "".join(e["text"] for e in events if e["type"] == "delta") == alone.text
            assert events[-1]["type"] == "done" and outcomes[n] == events[-1]["finish_reason"] == alone.finish_reason
            assert events[-1]["usage"]["completion_tokens"] == alone.usage.completion_tokens
    finally:
        engine.stop()


def test_the_worker_has_more_task_slots_than_the_engine_has_batch_places():
    """A finishing job keeps its slot while it writes its last event and settles: slots equal to the
    batch would make every new job on a full worker wait for such a tail."""
    from inference import serving

    assert worker.app.conf.worker_concurrency >= serving.max_batch() + 2


def test_a_leased_job_whose_reader_is_gone_before_it_starts_does_not_start_and_settles_nothing(rt):
    """Its web process died while it queued: nothing reads it and nobody would cancel it."""
    assert worker.run_job(rt, _message(reader="web-1", hold_id="h1")) == "reader_gone"
    events = _events(rt.redis)
    assert [e["type"] for e in events] == ["started", "done"]
    assert events[-1]["finish_reason"] == "cancelled" and "settlement" not in events[-1]  # its hold is released


def test_a_leased_job_with_its_reader_alive_runs(rt, monkeypatch):
    monkeypatch.setattr(worker, "WORKER_SECRET", "s")
    rt.redis.set(protocol.reader_key("web-1"), 0, px=5000)
    monkeypatch.setattr(worker.Runtime, "engine", ScriptedEngine([(0, "a", None), (0, "b", "stop")]), raising=False)
    assert worker.run_job(rt, _message(reader="web-1", hold_id="h1")) == "stop"
    assert _events(rt.redis)[-1]["settlement"]["completion_tokens"] == 2


def test_the_heartbeat_cancels_a_job_whose_readers_lease_lapsed(rt, monkeypatch):
    """The web process following it was SIGKILLed: nobody is left to set its cancel flag, but its
    lease lapses. The job ends cancelled, signed for what it made (the platform's sweep charges no
    more than the web had sent: levee.billing.tasks.sent_to_client)."""
    import threading

    monkeypatch.setattr(worker, "WORKER_SECRET", "s")
    rt.redis.set(protocol.reader_key("web-1"), 1, px=60_000)
    engine = ScriptedEngine([(0.05, "x", None)] * 400 + [(0, "", "stop")])
    monkeypatch.setattr(worker.Runtime, "engine", engine, raising=False)
    outcome = []
    runner = threading.Thread(target=lambda: outcome.append(worker.run_job(rt, _message(reader="web-1",
                                                                                      hold_id="h1"))))
    runner.start()
    time.sleep(0.3)
    rt.beat_once()
    assert not engine.handles[0].cancelled  # the reader is alive
    rt.redis.delete(protocol.reader_key("web-1"))  # the lease lapses
    rt.beat_once()
    runner.join(timeout=10)
    assert outcome == ["cancelled"]
    last = _events(rt.redis)[-1]
    assert last["type"] == "done" and last["finish_reason"] == "cancelled"
    assert 0 < last["usage"]["completion_tokens"] < 400
    assert last["settlement"]["completion_tokens"] == last["usage"]["completion_tokens"]
    assert protocol.settlement_signed("s", last["settlement"])


def test_the_heartbeat_leaves_jobs_without_a_lease_alone(rt, monkeypatch):
    """A job whose message asks for no lease (an older web, a tool) is never cancelled for lacking one."""
    import threading

    engine = ScriptedEngine([(0.05, "x", None)] * 6 + [(0, "", "stop")])
    monkeypatch.setattr(worker.Runtime, "engine", engine, raising=False)
    runner = threading.Thread(target=worker.run_job, args=(rt, _message()))
    runner.start()
    time.sleep(0.1)
    rt.beat_once()
    runner.join(timeout=10)
    assert not engine.handles[0].cancelled
    assert _events(rt.redis)[-1]["finish_reason"] == "stop"
