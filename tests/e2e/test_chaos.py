"""Money under faults, end to end (ops/chaos.py's traffic, faults and checks on a short run).

A real stack of its own (gunicorn, a Celery platform worker, a Celery inference worker on the small
checkpoint) takes API calls and web chats while its processes are SIGKILLed; then the ledger is
checked in the database: every hold settled once or released, money conserved, no usage past its
hold, nothing charged for a job that never started, nothing charged past what a client received."""
import os
import signal
import time

import httpx
import openai
import pytest

from inference import protocol
from levee.api.models import MODEL_MEMO_SECONDS, LlmModel
from levee.billing.models import Hold, UsageRecord
from ops import chaos
from tests.e2e.stack import MODEL, Stack

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LEASE_S = int(chaos.STACK_ENV["LEVEE_READER_LEASE_SECONDS"])
# A reply too long to finish before its reader's lease lapses: nearly the test checkpoint's whole
# context (4,096 positions). At the catalogue's cap of 1,024 a fast box generated all of it within the
# kill, the lease and a heartbeat (about 3.5 s), and the job ended "length", not "cancelled".
LONG_REPLY = 4000


@pytest.fixture(scope="module")
def chaos_stack(django_db_setup, django_db_blocker, stack):
    # Its own stack: these tests kill its processes, which the shared one must keep.
    running = Stack(heartbeat_timeout=3, redis_offset=3,
                    extra_env={**chaos.STACK_ENV, "LEVEE_CHECKPOINT": str(stack.checkpoint)})
    running.start()
    yield running
    running.stop()


def _events(stack, job_id):
    return [protocol.decode_event(f) for _, f in stack.redis.xrange(protocol.stream_key(job_id))]


def _web_worker(stack) -> int:
    pids = chaos.children(stack.procs["web"].pid)
    assert len(pids) == 1, pids  # WEB_CONCURRENCY=1: the one process serving every request
    return pids[0]


def test_a_killed_web_process_mid_stream_stops_its_job_and_bills_no_more_than_the_client_received(
        chaos_stack, seeded_catalogue, capsys):
    """SIGKILL the web process holding a stream: nobody is left to cancel the job, but its reader's
    lease lapses, so the worker cancels it within the lease and signs only what the lease last said
    the client was sent; the sweep settles that."""
    (client,), funded = chaos.fund(1, "killed-web", chat=False)
    LlmModel.objects.filter(name=MODEL).update(context_length=4096, max_output=LONG_REPLY)
    time.sleep(MODEL_MEMO_SECONDS + 0.5)  # the stack's web process reads the row again
    api = openai.OpenAI(api_key=client.key, base_url=chaos_stack.url + "/v1", max_retries=0, timeout=60)
    stream = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=LONG_REPLY, stream=True, seed=3)
    request_id = stream.response.headers["x-request-id"]
    text, began, killed_at = "", time.monotonic(), None
    with pytest.raises((openai.APIError, httpx.HTTPError)):  # torn: nobody is left to answer
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            # long enough for a few of the lease's refreshes to carry what was sent
            if killed_at is None and text and time.monotonic() - began > 1.2:
                os.kill(_web_worker(chaos_stack), signal.SIGKILL)
                killed_at = time.monotonic()
        pytest.fail("the stream ended cleanly although its web process was killed")
    assert killed_at is not None and text
    hold = Hold.objects.get(request_id=request_id)
    assert hold.status == "open"  # nobody settled it: its web process is gone
    deadline = time.time() + LEASE_S + 10
    events = _events(chaos_stack, hold.job_id)
    while events[-1]["type"] not in (protocol.DONE, protocol.ERROR):
        assert time.time() < deadline, "the job did not end after its reader's lease lapsed"
        time.sleep(0.2)
        events = _events(chaos_stack, hold.job_id)
    last = events[-1]
    assert last["type"] == protocol.DONE and last["finish_reason"] == "cancelled"
    generated = last["usage"]["completion_tokens"]
    assert generated < LONG_REPLY  # stopped, not run to its end
    assert chaos.sweep(chaos_stack.redis_url)["holds"] == 1
    record = UsageRecord.objects.get(hold=hold)
    received = chaos._received_tokens(chaos_stack.redis, hold.job_id, text)
    assert received is not None, "the client's text is not the start of the job's stream"
    with capsys.disabled():
        print(f"\nkilled web: generated {generated}, client received {received}, billed {record.completion_tokens}")
    assert 0 < record.completion_tokens <= received < generated
    run = chaos.Run(calls=[chaos.Call("stream", request_id=request_id, outcome="torn", text=text,
                                      text_chunks=1)])
    problems, _ = chaos.check(run, funded, chaos_stack.redis)
    assert problems == []


def test_api_calls_and_web_chats_under_killed_and_restarted_workers_keep_the_money(chaos_stack, seeded_catalogue,
                                                                                    capsys):
    """Four clients, each an account with a key and a logged-in browser, for 20 s of streamed,
    whole, cancelled and disconnected API calls and web chats (read to the end or left); meanwhile
    the inference worker is SIGKILLed mid-job (and replaced), the platform worker too, and the web
    process mid-stream. Then the sweeps, and ops/chaos.py's checks of the ledger."""
    clients, funded = chaos.fund(4, "chaos-e2e")
    run = chaos.Run()
    plan = [(4, "kill inference worker", lambda: chaos.kill_inference_worker(chaos_stack)),
            (9, "kill the platform worker", lambda: chaos.kill_platform_worker(chaos_stack)),
            (13, "kill a web worker", lambda: chaos.kill_web_worker(chaos_stack)),
            (16, "replay duplicate settles", lambda: chaos.replay_duplicates(run, chaos_stack))]
    chaos.traffic(run, chaos_stack, clients, 20, plan)
    time.sleep(LEASE_S + 2)  # jobs whose reader died end within the lease
    chaos.wait_settled(15)
    swept = chaos.sweep(chaos_stack.redis_url)
    problems, counts = chaos.check(run, funded, chaos_stack.redis)
    with capsys.disabled():
        chaos.report(run, counts, problems, f"\nchaos e2e: swept {swept}")
    assert all(run.faults[name] == 1 for _, name, _ in plan), run.faults
    outcomes = {c.outcome for c in run.calls}
    kinds = {c.kind for c in run.calls if c.outcome == "completed"}
    assert "completed" in outcomes and {"chat", "stream"} <= kinds, run.calls
    assert problems == []
