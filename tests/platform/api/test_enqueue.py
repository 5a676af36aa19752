"""The job's Celery message, pushed from the event loop (levee.api.jobs.enqueue): the same message
Celery's own publish writes, and a real Celery worker runs it."""
import asyncio
import base64
import json
import threading
import uuid

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from inference import protocol
from levee.api import jobs


def _decoded(raw: bytes) -> dict:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_the_pushed_message_is_the_one_celery_writes(settings):
    """Field for field against Celery's send_task on the same broker (ids, origin and the
    human-readable argsrepr aside)."""
    from levee.celery import app

    client = redis.Redis.from_url(settings.REDIS_URL)
    queue = f"inference.envelope-{uuid.uuid4().hex[:8]}"
    args = [{"job_id": "j1", "prompt_ids": [1, 2, 3]}]
    app.conf.broker_url = settings.REDIS_URL
    try:
        with app.connection_for_write() as conn:
            app.send_task(protocol.GENERATE_TASK, args=args, queue=queue, task_id="j1", retry=False, connection=conn)
        theirs = _decoded(client.rpop(queue))
        ours = _decoded(protocol.celery_redis_message(protocol.GENERATE_TASK, args, task_id="j1", queue=queue,
                                                      origin="test"))
    finally:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    assert ours["body"] == theirs["body"]
    assert {k: v for k, v in ours.items() if k not in ("headers", "properties", "body")} == \
        {k: v for k, v in theirs.items() if k not in ("headers", "properties", "body")}
    assert ours["headers"].keys() == theirs["headers"].keys()
    differ = {"origin", "argsrepr", "ignore_result"}
    assert {k: v for k, v in ours["headers"].items() if k not in differ} == \
        {k: v for k, v in theirs["headers"].items() if k not in differ}
    assert ours["properties"].keys() == theirs["properties"].keys()
    differ = {"reply_to", "delivery_tag"}
    assert {k: v for k, v in ours["properties"].items() if k not in differ} == \
        {k: v for k, v in theirs["properties"].items() if k not in differ}


def test_a_real_celery_worker_runs_the_pushed_message(settings):
    """enqueue() on the event loop; a Celery worker (in a thread of this process, consuming the real
    Redis broker) receives it and runs the task with the job message."""
    queue = f"inference.enqueue-{uuid.uuid4().hex[:8]}"
    worker_app = Celery("enqueue-test", broker=settings.REDIS_URL)
    worker_app.conf.update(task_default_queue=queue, worker_hijack_root_logger=False, task_ignore_result=True)
    received, ran = [], threading.Event()

    worker_app.finalize()  # shared tasks join now: the inference worker's own, if imported, goes
    worker_app.tasks.pop(protocol.GENERATE_TASK, None)

    @worker_app.task(name=protocol.GENERATE_TASK, shared=False)
    def generate(message):
        received.append(message)
        ran.set()

    assert worker_app.tasks[protocol.GENERATE_TASK] is generate

    message = protocol.JobMessage(job_id=uuid.uuid4().hex, model="m", prompt_ids=[5, 6], user="1", hold_id="h",
                                  deadline=0.0, pickup_deadline=0.0, sampling=protocol.Sampling(max_tokens=3))
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    with start_worker(worker_app, pool="solo", perform_ping_check=False, loglevel="WARNING", queues=[queue]):
        asyncio.run(jobs.enqueue(message, queue))
        assert ran.wait(20), "the worker never ran the task"
    assert received == [message.to_dict()]
    redis.Redis.from_url(settings.REDIS_URL).delete(queue, f"_kombu.binding.{queue}")


def test_with_another_broker_celery_publishes_in_a_thread(settings, monkeypatch):
    calls = []
    monkeypatch.setattr(jobs, "_publish", lambda message, queue: calls.append((message["job_id"], queue)))
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
    message = protocol.JobMessage(job_id="j2", model="m", prompt_ids=[1], user="1", hold_id=None, deadline=0.0,
                                  pickup_deadline=0.0, sampling=protocol.Sampling(max_tokens=1))
    asyncio.run(jobs.enqueue(message, "inference.m"))
    assert calls == [("j2", "inference.m")]


@pytest.mark.parametrize("name,value", [("broker_transport_options", {"global_keyprefix": "x:"}),
                                        ("broker_transport_options", {"priority_steps": [0, 5]}),
                                        ("broker_use_ssl", {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"})])
def test_celery_broker_settings_our_client_would_not_follow_send_through_celery(settings, name, value):
    from levee.celery import app

    settings.CELERY_BROKER_URL = settings.REDIS_URL
    assert jobs._redis_broker() == settings.REDIS_URL
    previous = app.conf[name]
    app.conf[name] = value
    try:
        assert jobs._redis_broker() is None
    finally:
        app.conf[name] = previous
