"""Chaos run: a real stack under paid API traffic while its parts fail, then prove the money.

    .venv/bin/python ops/chaos.py --seconds 60 --clients 6

Everything is on loopback and private to the run: a PostgreSQL cluster of its own (initdb/pg_ctl
from Debian's binaries, as the postgres user, on a free port — never the machine's server), a
redis-server of its own (AOF, fsync every second), and the test stack (tests/e2e/stack.py:
gunicorn + uvicorn, a Celery platform worker, a Celery inference worker on the demo checkpoint).

Traffic: each client thread loops over streamed, non-streamed, cancelled (closed after the first
text) and disconnected (closed right after the response headers) chat completions. Faults, spread
over the run: SIGKILL the inference worker (and start a new one), SIGKILL a gunicorn worker process
mid-stream (its master starts another), SIGKILL Redis and restart it on its AOF, restart PostgreSQL,
and replay duplicate settle messages for holds already settled. Then the beat's sweep runs as if
every deadline had passed, and the run checks:

  reconcile() finds nothing; no hold is open; every completed reply has exactly one usage record,
  with the client's usage; no hold has more than one charge; a call whose client received no text
  was not charged for text; every client ended cleanly (a reply, or an error in the API's format —
  no hang, no connection torn without an answer unless the client itself hung up).

Exit 0 when every check holds. Counts are printed as a table (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise SystemExit("chaos: no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
    return found[-1].parent


class PrivatePostgres:
    """A throwaway cluster: initdb as the postgres user, trust auth, loopback only."""

    def __init__(self, folder: Path):
        self.bin, self.port = _pg_bin(), _free_port()
        self.data, self.log = folder / "pg", folder / "pg.log"
        folder.chmod(0o777)

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        if not self.data.exists():
            self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                          f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c max_connections=80 "
                          "-c fsync=on", "start")

    def restart(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


class PrivateRedis:
    def __init__(self, folder: Path):
        self.port, self.folder = _free_port(), folder
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--maxmemory", "256mb", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        for _ in range(100):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise SystemExit("chaos: private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@dataclass
class Call:
    kind: str
    request_id: str | None = None
    outcome: str = ""  # completed | error | cancelled | disconnected | unclean
    text_chunks: int = 0
    usage: dict | None = None
    detail: str = ""


@dataclass
class Run:
    calls: list[Call] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _one_call(client, base_url: str, key: str, kind: str, rng: random.Random) -> Call:
    import httpx
    import openai

    call = Call(kind)
    messages = [{"role": "user", "content": rng.choice(["Hello!", "What is a levee?", "Count to ten."])}]
    max_tokens = rng.randint(8, 60)
    try:
        if kind == "whole":
            raw = client.chat.completions.with_raw_response.create(model="deepseek-chat", messages=messages,
                                                                   max_tokens=max_tokens)
            call.request_id = raw.headers.get("x-request-id")
            reply = raw.parse()
            call.usage = reply.usage.model_dump()
            call.text_chunks = 1 if reply.choices[0].message.content else 0
            call.outcome = "completed"
        elif kind in ("stream", "cancel"):
            stream = client.chat.completions.create(model="deepseek-chat", messages=messages, max_tokens=max_tokens,
                                                    stream=True, stream_options={"include_usage": True})
            call.request_id = stream.response.headers.get("x-request-id")
            finished = False
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    call.text_chunks += 1
                    if kind == "cancel":
                        stream.close()
                        call.outcome = "cancelled"
                        return call
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = True
                if chunk.usage is not None:
                    call.usage = chunk.usage.model_dump()
            call.outcome = "completed" if finished and call.usage else "unclean"
            if call.outcome == "unclean":
                call.detail = "stream ended without a finish reason"
        else:  # disconnect: hang up as soon as the headers are in
            with httpx.Client(timeout=30) as http, http.stream(
                    "POST", f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                    json={"model": "deepseek-chat", "messages": messages, "max_tokens": max_tokens,
                          "stream": True}) as response:
                call.request_id = response.headers.get("x-request-id")
            call.outcome = "disconnected"
    except openai.APIStatusError as exc:  # an answer in the API's error format
        body = exc.body if isinstance(exc.body, dict) else {}
        call.outcome = "error" if "message" in body or "error" in body else "unclean"
        call.request_id = call.request_id or exc.response.headers.get("x-request-id")
        call.detail = f"{exc.status_code} {str(exc)[:80]}"
    except openai.APITimeoutError as exc:  # a hang: the one end no fault excuses
        call.outcome = "unclean"
        call.detail = f"{type(exc).__name__}: {str(exc)[:80]}"
    except openai.APIConnectionError as exc:  # the connection was torn (its web process was killed)
        call.outcome = "torn"
        call.detail = f"{type(exc).__name__}: {str(exc)[:80]}"
    except openai.APIError as exc:  # an error event inside the stream: the API's format too
        call.outcome = "error"
        call.detail = f"{type(exc).__name__}: {str(exc)[:80]}"
    except httpx.RemoteProtocolError as exc:  # torn mid-stream (the SDK lets this through)
        call.outcome = "torn"
        call.detail = f"{type(exc).__name__}: {str(exc)[:80]}"
    except (httpx.HTTPError, OSError) as exc:
        call.outcome = "unclean"
        call.detail = f"{type(exc).__name__}: {str(exc)[:80]}"
    return call


def _client_loop(run: Run, stack, key: str, until: float, seed: int) -> None:
    import openai

    rng = random.Random(seed)
    client = openai.OpenAI(api_key=key, base_url=stack.url + "/v1", max_retries=0, timeout=45)
    while time.time() < until:
        kind = rng.choice(["stream", "stream", "whole", "cancel", "disconnect"])
        call = _one_call(client, stack.url, key, kind, rng)
        with run.lock:
            run.calls.append(call)
        if call.outcome in ("error", "unclean"):
            time.sleep(0.5)  # a real client backs off


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _replay_duplicates(run: Run, stack) -> None:
    """Send `levee.billing.settle` again, twice, for holds already settled, from their streams."""
    from celery import Celery

    from inference import protocol
    from levee.billing.models import Hold

    app = Celery("chaos", broker=stack.redis_url)
    for hold in Hold.objects.filter(status="settled").exclude(job_id="").order_by("?")[:10]:
        entries = stack.redis.xrevrange(protocol.stream_key(hold.job_id), count=1)
        for _id, fields in entries:
            event = protocol.decode_event(fields)
            if isinstance(event.get("settlement"), dict):
                for _ in range(2):
                    app.send_task(protocol.SETTLE_TASK, args=[str(hold.pk), event["settlement"]],
                                  queue=protocol.PLATFORM_QUEUE)
                    run.faults["duplicate settle messages sent"] += 1


def _faults(run: Run, stack, pg: PrivatePostgres, rds: PrivateRedis, seconds: float) -> None:
    plan = [(0.12, "kill inference worker"), (0.28, "kill a web worker"), (0.45, "kill redis"),
            (0.62, "restart postgresql"), (0.78, "replay duplicate settles"), (0.88, "kill inference worker")]
    began = time.time()
    for at, fault in plan:
        time.sleep(max(0.0, began + at * seconds - time.time()))
        try:
            if fault == "kill inference worker":
                stack.kill("inference")
                time.sleep(1.5)
                stack.start_inference_worker()
            elif fault == "kill a web worker":
                workers = _children(stack.procs["web"].pid)
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
            elif fault == "kill redis":
                rds.kill()
                time.sleep(1.5)
                rds.start()
            elif fault == "restart postgresql":
                pg.restart()
            else:
                _replay_duplicates(run, stack)
            run.faults[fault] += 1
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            run.faults[f"{fault} (failed: {type(exc).__name__})"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="leave the private folder (logs, data) behind")
    args = parser.parse_args()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)

    folder = Path(tempfile.mkdtemp(prefix="levee-chaos-"))
    pg, rds = PrivatePostgres(folder), PrivateRedis(folder)
    pg.start()
    rds.start()
    stack = None
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE levee_chaos")
        os.environ.update({"DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg.port}/levee_chaos",
                           "REDIS_URL": f"redis://127.0.0.1:{rds.port}/1", "LEVEE_ENV": "test",
                           "DJANGO_SETTINGS_MODULE": "levee.settings", "LEVEE_DATA_DIR": str(folder / "var")})
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.utils import timezone

        call_command("migrate", verbosity=0)
        from levee.accounts.models import User
        from levee.billing import services, tasks
        from levee.billing.models import Hold, LedgerEntry, UsageRecord
        from levee.keys.services import create_api_key
        from tests.e2e.stack import Stack

        keys = []
        for i in range(args.clients):
            user = User.objects.create_user(f"chaos-{i}@example.com", "a long chaos passphrase 1",
                                            email_verified_at=timezone.now())
            services.topup(services.wallet_for(user), 10**12, source="chaos", external_id=f"fund-{i}")
            keys.append(create_api_key(user, name="chaos")[1])
        # Per-key limits out of the way: the run is about faults, not the shield's 429s.
        stack = Stack(heartbeat_timeout=3, extra_env={"LEVEE_HOLD_SWEEP_GRACE_SECONDS": "0",
                                                      "LEVEE_JOB_QUEUE_TIMEOUT": "15", "SHIELD_KEY_RPM": "100000",
                                                      "SHIELD_ACCOUNT_RPM": "100000", "SHIELD_API_ADDRESS_RPM": "100000",
                                                      "SHIELD_API_SUBNET_RPM": "100000"})
        settings.REDIS_URL = stack.redis_url  # the sweep below reads the stack's job streams
        stack.start()
        run = Run()
        until = time.time() + args.seconds
        threads = [threading.Thread(target=_client_loop, args=(run, stack, key, until, i)) for i, key in
                   enumerate(keys)]
        faults = threading.Thread(target=_faults, args=(run, stack, pg, rds, args.seconds))
        for t in [*threads, faults]:
            t.start()
        for t in [*threads, faults]:
            t.join()
        time.sleep(8)  # let queued settlements drain
        from django.db import connections

        connections.close_all()  # PostgreSQL restarted under this process too
        far = timezone.now() + timedelta(days=1)
        swept = services.sweep_holds(now=far, settlement_of=tasks.settlement_in_stream)

        outcomes = Counter(c.outcome for c in run.calls)
        errors = Counter(c.detail.split(" ")[0].rstrip(":") for c in run.calls if c.outcome == "error")
        kinds = Counter(c.kind for c in run.calls)
        problems = [f"reconcile: {d}" for d in services.reconcile()]
        if Hold.objects.filter(status="open").exists():
            problems.append(f"{Hold.objects.filter(status='open').count()} hold(s) still open")
        records = {r.request_id: r for r in UsageRecord.objects.all()}
        by_request = Counter(UsageRecord.objects.values_list("request_id", flat=True))
        for call in run.calls:
            record = records.get(call.request_id or "")
            if call.outcome == "completed":
                if by_request[call.request_id] != 1:
                    problems.append(f"{call.kind} {call.request_id}: {by_request[call.request_id]} usage records")
                elif call.usage and (record.completion_tokens, record.prompt_cache_hit_tokens
                                     + record.prompt_cache_miss_tokens) != (call.usage["completion_tokens"],
                                                                            call.usage["prompt_tokens"]):
                    problems.append(f"{call.kind} {call.request_id}: billed {record.completion_tokens} "
                                    f"completion tokens, the client got {call.usage['completion_tokens']}")
            elif call.text_chunks == 0 and record is not None and record.completion_tokens and \
                    call.kind != "disconnect" and call.outcome != "torn":
                problems.append(f"{call.kind} {call.request_id} ({call.outcome}): no text reached the client "
                                f"but {record.completion_tokens} completion tokens were billed")
            if call.outcome == "unclean":
                problems.append(f"{call.kind} {call.request_id}: unclean end: {call.detail}")
            if call.outcome == "error" and call.detail.startswith("500"):
                problems.append(f"{call.kind} {call.request_id}: a 500: {call.detail}")
        charges = Counter(LedgerEntry.objects.filter(kind="charge").values_list("hold_id", flat=True))
        doubled = [h for h, n in charges.items() if n > 1]
        if doubled:
            problems.append(f"{len(doubled)} hold(s) charged more than once")
        disconnected_billed = sum(1 for c in run.calls if c.kind == "disconnect" and records.get(c.request_id or ""))
        torn_billed = sum(1 for c in run.calls if c.outcome == "torn" and records.get(c.request_id or ""))

        print(f"chaos run: {args.clients} clients, {args.seconds:.0f} s, private PostgreSQL :{pg.port}, "
              f"private Redis :{rds.port}")
        print("| what | count |")
        print("|---|---|")
        for name, count in sorted(kinds.items()):
            print(f"| calls: {name} | {count} |")
        for name, count in sorted(outcomes.items()):
            print(f"| outcome: {name} | {count} |")
        for name, count in sorted(errors.items()):
            print(f"| error: {name} | {count} |")
        for name, count in sorted(run.faults.items()):
            print(f"| fault: {name} | {count} |")
        print(f"| holds placed | {Hold.objects.count()} |")
        print(f"| holds settled / released | {Hold.objects.filter(status='settled').count()} / "
              f"{Hold.objects.filter(status='released').count()} |")
        print(f"| closed by the final sweep | {swept} |")
        print(f"| usage records | {UsageRecord.objects.count()} |")
        print(f"| disconnected calls billed for what the web had sent | {disconnected_billed} |")
        print(f"| torn calls billed from the job's stream (their web process died) | {torn_billed} |")
        print(f"| problems | {len(problems)} |")
        for problem in problems[:40]:
            print("  -", problem)
        if args.keep:
            print(f"kept: {folder}")
        return 1 if problems else 0
    finally:
        if stack is not None:
            stack.stop()
        rds.kill()
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
