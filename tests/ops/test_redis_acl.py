"""The Redis users of ops/redis/users.acl.in, on a real Redis 7 of the test's own (never the shared
one): an inference worker's credential consumes its model's queue, writes its heartbeat and appends
to job streams, and nothing else — it cannot settle, enqueue platform tasks or write the mode."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from celery import Celery

from inference import protocol

ROOT = Path(__file__).resolve().parents[2]
MODEL = "deepseek-chat"
PASSWORDS = {"REDIS_PASSWORD": "admin-pw", "REDIS_WEB_PASSWORD": "web-pw", "REDIS_PLATFORM_PASSWORD": "platform-pw",
             "REDIS_WORKER_PASSWORD": "worker-pw"}
WORKER = f"levee-worker-{MODEL}"


def _redis_7() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary on this machine")
    version = re.search(r"v=(\d+)", subprocess.run([binary, "--version"], capture_output=True, text=True).stdout)
    if not version or int(version.group(1)) < 7:
        pytest.skip("ACL selectors and read/write key permissions need Redis 7")
    return binary


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    """A redis-server of this module's own, loading the rendered ACL file."""
    binary = _redis_7()
    folder = tmp_path_factory.mktemp("acl")
    acl = folder / "users.acl"
    subprocess.run(["sh", str(ROOT / "ops/redis/render_acl.sh"), str(ROOT / "ops/redis/users.acl.in"), str(acl)],
                   env={**os.environ, **PASSWORDS, "LEVEE_MODEL_NAME": MODEL}, check=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder), "--aclfile", str(acl)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    admin = redis.Redis(port=port, username="default", password=PASSWORDS["REDIS_PASSWORD"])
    for _ in range(100):
        try:
            admin.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the test's redis-server did not start")
    yield port, admin
    proc.terminate()
    proc.wait(timeout=10)


def _as(port: int, user: str, password: str) -> redis.Redis:
    return redis.Redis(port=port, username=user, password=password)


def test_the_default_user_needs_its_password(acl_redis):
    port, _ = acl_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()


def test_a_worker_credential_does_its_job_and_nothing_else(acl_redis):
    port, admin = acl_redis
    worker = _as(port, WORKER, PASSWORDS["REDIS_WORKER_PASSWORD"])
    job = uuid.uuid4().hex
    # Its job: take from its queue, beat, announce and stream a job, read the job's cancel flag.
    admin.lpush(protocol.queue_name(MODEL), b"message")
    assert worker.brpop([protocol.queue_name(MODEL)], timeout=1) is not None
    worker.zadd(protocol.workers_key(MODEL), {"w": time.time()})
    worker.hset(protocol.worker_stats_key(MODEL), "w", "{}")
    assert worker.set(protocol.started_key(job), "w", nx=True, ex=60)
    worker.xadd(protocol.stream_key(job), protocol.encode_event(protocol.DELTA, text="hi", usage={}))
    worker.expire(protocol.stream_key(job), 60)
    assert worker.mget([protocol.cancel_key(job)]) == [None]
    admin.set(protocol.reader_key("web-1"), 1)
    assert worker.mget([protocol.cancel_key(job), protocol.reader_key("web-1")]) == [None, b"1"]  # the heartbeat's
    assert worker.exists(protocol.reader_key("web-1")) == 1
    # Nothing else.
    refused = [
        lambda: worker.lpush(protocol.PLATFORM_QUEUE, b"settle"),                  # enqueue a platform task
        lambda: worker.lpush(protocol.queue_name("another-model"), b"x"),          # another model's queue
        lambda: worker.set("levee:{shield-state}:mode", "normal"),                 # the mitigation mode
        lambda: worker.set("levee:{shield-state}:address-rules", "[]"),            # the address-rule mirror
        lambda: worker.xrange(protocol.stream_key(job)),                           # read a tenant's stream
        lambda: worker.xread({protocol.stream_key(job): "0"}),
        lambda: worker.set(protocol.stream_key(job), "x"),                         # overwrite a stream
        lambda: worker.set(protocol.cancel_key(job), 1),                           # cancel someone's job
        lambda: worker.set(protocol.reader_key("web-1"), 1),                       # keep a dead reader's jobs alive
        lambda: worker.set(protocol.sent_key(job), 10**6),                         # vouch for its own billing
        lambda: worker.get(protocol.sent_key(job)),
        lambda: worker.hset("unacked", "tag", "x"),                                # kombu's shared unacked hash
        lambda: worker.keys("*"),
        lambda: worker.flushdb(),
        lambda: worker.publish("celeryev", "x"),
    ]
    for attempt in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()


def test_a_worker_credential_cannot_settle_through_the_platform_queue(acl_redis):
    port, admin = acl_redis
    app = Celery("as-a-worker", broker=f"redis://{WORKER}:{PASSWORDS['REDIS_WORKER_PASSWORD']}@127.0.0.1:{port}/0")
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    with pytest.raises(Exception) as info:
        app.send_task(protocol.SETTLE_TASK, args=["hold", {}], queue=protocol.PLATFORM_QUEUE, retry=False)
    assert "permission" in str(info.value).lower()
    assert admin.llen(protocol.PLATFORM_QUEUE) == 0


def test_the_web_and_platform_credentials_get_what_they_need(acl_redis):
    port, admin = acl_redis
    for user, password in (("levee-web", PASSWORDS["REDIS_WEB_PASSWORD"]),
                           ("levee-platform", PASSWORDS["REDIS_PLATFORM_PASSWORD"])):
        client = _as(port, user, password)
        job = uuid.uuid4().hex
        client.lpush(protocol.queue_name(MODEL), b"job")
        client.lpush(protocol.PLATFORM_QUEUE, b"task")
        client.xadd(protocol.stream_key(job), {"e": "x"})
        assert client.xrange(protocol.stream_key(job))
        client.set(protocol.cancel_key(job), 1)
        client.set("levee:{shield-state}:mode", "normal")
        client.incr("levee:rl:test")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
    admin.flushdb()


@pytest.mark.slow
def test_a_real_inference_worker_serves_a_job_with_only_the_worker_credential(acl_redis, tmp_path):
    """The Celery inference worker (demo checkpoint) under the worker user: it consumes the job,
    beats and streams it to its signed end, and Redis logs no refused command on the way."""
    port, admin = acl_redis
    admin.execute_command("ACL", "LOG", "RESET")
    env = {**os.environ, "REDIS_URL": f"redis://{WORKER}:{PASSWORDS['REDIS_WORKER_PASSWORD']}@127.0.0.1:{port}/0",
           "LEVEE_MODEL_NAME": MODEL, "LEVEE_WORKER_SECRET": "acl-test", "LEVEE_MAX_BATCH": "2",
           "PYTHONPATH": str(ROOT)}
    env.pop("CELERY_BROKER_URL", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the inference worker knows no Django
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "celery"), "-A", "inference.worker", "worker", "-P",
                             "threads", "-Q", protocol.queue_name(MODEL), "-n", f"acl-{port}@%h", "--without-mingle",
                             "--without-gossip", "--without-heartbeat", "--loglevel", "INFO"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not admin.zcard(protocol.workers_key(MODEL)):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        job = uuid.uuid4().hex
        message = protocol.JobMessage(job_id=job, model=MODEL, prompt_ids=[1, 2, 3], user="7", hold_id="h-1",
                                      deadline=time.time() + 60, pickup_deadline=time.time() + 60,
                                      sampling=protocol.Sampling(max_tokens=4, seed=1), reader="web-1")
        admin.set(protocol.reader_key("web-1"), 1, ex=60)  # as the web does: the worker reads the lease
        admin.lpush(protocol.queue_name(MODEL), protocol.celery_redis_message(
            protocol.GENERATE_TASK, [message.to_dict()], task_id=job, queue=protocol.queue_name(MODEL), origin="t"))
        while True:
            events = [protocol.decode_event(f) for _, f in admin.xrange(protocol.stream_key(job))]
            if events and events[-1]["type"] in (protocol.DONE, protocol.ERROR):
                break
            assert time.time() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        assert events[-1]["type"] == protocol.DONE
        assert protocol.settlement_signed("acl-test", events[-1]["settlement"])
        assert admin.execute_command("ACL", "LOG") == []  # nothing it tried was refused
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
