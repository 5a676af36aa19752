"""Chaos run: a real stack under paid API traffic and web chats while its parts fail, then prove the money.

    .venv/bin/python ops/chaos.py --seconds 60 --clients 6

Everything is on loopback and private to the run: a PostgreSQL cluster of its own (initdb/pg_ctl
from Debian's binaries, as the postgres user, on a free port — never the machine's server), a
redis-server of its own (AOF, fsync every second), and the test stack (tests/e2e/stack.py:
gunicorn + uvicorn, a Celery platform worker, a Celery inference worker on the demo checkpoint).

Traffic: each client thread loops over streamed, non-streamed, cancelled (closed after the first
text) and disconnected (closed right after the response headers) chat completions, and web chat
messages (read to the end, or left after the first text) as the logged-in browser sends them.
Faults, spread over the run: SIGKILL the inference worker (and start a new one), SIGKILL a gunicorn
worker process mid-stream (its master starts another), SIGKILL the platform worker and start
another, SIGKILL Redis and restart it on its AOF, restart PostgreSQL, and replay duplicate settle
messages for holds already settled. Then the beat's sweeps run as if every deadline had passed,
and `check()` proves the money (below).

This module is also the chaos end-to-end test's (tests/e2e/test_chaos.py): the traffic, the faults
and the checks are these, on a shorter run against the test database.

Exit 0 when every check holds. Counts are printed as a table (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

MODEL = "deepseek-chat"
API_KINDS = ("stream", "stream", "whole", "cancel", "disconnect")
CHAT_KINDS = ("chat", "chat-leave")
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


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


# --- traffic ---------------------------------------------------------------------------------------

@dataclass
class Client:
    """One client of the run: an account's API key, and a logged-in browser session on the same
    account for the web chat (None: API calls only)."""
    key: str
    session: str | None = None


@dataclass
class Call:
    kind: str
    request_id: str | None = None
    outcome: str = ""  # completed | error | cancelled | disconnected | torn | unclean
    text_chunks: int = 0
    text: str = ""  # the answer text the client received
    usage: dict | None = None
    detail: str = ""


@dataclass
class Run:
    calls: list[Call] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    redis_down: list[tuple[float, float]] = field(default_factory=list)  # (killed, restarted) unix times


def api_call(client, base_url: str, key: str, kind: str, rng: random.Random) -> Call:
    """One chat completion of `kind` (API_KINDS) through the OpenAI SDK (httpx for the hang-up)."""
    import httpx
    import openai

    call = Call(kind)
    messages = [{"role": "user", "content": rng.choice(["Hello!", "What is a levee?", "Count to ten."])}]
    max_tokens = rng.randint(8, 60)
    try:
        if kind == "whole":
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages,
                                                                   max_tokens=max_tokens)
            call.request_id = raw.headers.get("x-request-id")
            reply = raw.parse()
            call.usage = reply.usage.model_dump()
            call.text = reply.choices[0].message.content or ""
            call.text_chunks = 1 if call.text else 0
            call.outcome = "completed"
        elif kind in ("stream", "cancel"):
            stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                    stream=True, stream_options={"include_usage": True})
            call.request_id = stream.response.headers.get("x-request-id")
            finished = False
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    call.text_chunks += 1
                    call.text += chunk.choices[0].delta.content
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
                    json={"model": MODEL, "messages": messages, "max_tokens": max_tokens,
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


def browser_session(user) -> str:
    """A logged-in browser's session for `user` (the session row Django's login writes): the web chat's
    log-in page and its proof of work have tests of their own; this run is about the reply's money."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


class Refused(Exception):
    """The chat page or the conversation's creation answered an error a browser shows (429, 503)."""

    def __init__(self, what: str, status: int):
        super().__init__(f"{status} {what}")
        self.status = status


class ChatTab:
    """The chat page open in a browser: its cookies, CSRF token and conversation."""

    def __init__(self, base_url: str, session: str):
        import httpx

        self.http = httpx.Client(base_url=base_url, timeout=45, cookies={"sessionid": session})
        self.csrf: str | None = None
        self.conversation: int | None = None

    def ready(self) -> dict:
        if self.csrf is None:
            page = self.http.get("/chat/")
            if page.status_code in (429, 503) and page.headers.get("retry-after"):
                raise Refused("the chat page", page.status_code)
            token = _CSRF.search(page.text) if page.status_code == 200 else None
            if token is None:
                raise RuntimeError(f"chat page answered {page.status_code} without a CSRF token")
            self.csrf = token.group(1)
        headers = {"X-CSRFToken": self.csrf, "Accept": "application/json"}
        if self.conversation is None:
            created = self.http.post("/chat/api/conversations", json={"model": MODEL}, headers=headers)
            if created.status_code in (429, 503) and "error" in created.json():
                raise Refused("creating a conversation", created.status_code)
            if created.status_code != 201:
                raise RuntimeError(f"creating a conversation answered {created.status_code}")
            self.conversation = created.json()["id"]
        return headers


def chat_call(tab: ChatTab, kind: str, rng: random.Random) -> Call:
    """One web chat message as chat.js sends it (JSON, CSRF header), its reply read as Server-Sent
    Events to `done`/`error` ("chat") or left after the first text ("chat-leave")."""
    import httpx

    call = Call(kind)
    try:
        headers = tab.ready()
        with tab.http.stream("POST", f"/chat/api/conversations/{tab.conversation}/messages",
                             json={"content": rng.choice(["Hi there", "Tell me a story.", "Why?"]), "model": MODEL},
                             headers={**headers, "Accept": "text/event-stream"}) as reply:
            call.request_id = reply.headers.get("x-request-id")
            if reply.status_code != 200:
                body = json.loads(reply.read() or b"{}")
                call.outcome = "error" if "error" in body else "unclean"
                call.detail = f"{reply.status_code} {body.get('error', {}).get('code')}"
                return call
            event = None
            for line in reply.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event == "delta":
                        call.text_chunks += 1
                        call.text += data.get("text", "")
                        if kind == "chat-leave":
                            call.outcome = "cancelled"
                            return call
                    elif event == "done":
                        call.usage, call.outcome = data.get("usage"), "completed"
                        return call
                    elif event == "error":
                        call.outcome, call.detail = "error", f"stream {data.get('code')}"
                        return call
            call.outcome, call.detail = "torn", "the reply ended without done or error"
    except Refused as exc:  # a clean refusal, as the browser shows it
        call.outcome, call.detail = "error", str(exc)
    except httpx.TimeoutException as exc:  # a hang: the one end no fault excuses
        call.outcome, call.detail = "unclean", f"{type(exc).__name__}: {str(exc)[:80]}"
    except httpx.TransportError as exc:  # the connection was torn: its web process was killed
        call.outcome, call.detail = "torn", f"{type(exc).__name__}: {str(exc)[:80]}"
    except (httpx.HTTPError, OSError, RuntimeError, ValueError) as exc:
        call.outcome, call.detail = "unclean", f"{type(exc).__name__}: {str(exc)[:80]}"
    return call


def client_loop(run: Run, stack, client: Client, until: float, seed: int) -> None:
    """Calls until `until`: the API mix, and web chats when the client has a session."""
    import openai

    rng = random.Random(seed)
    api = openai.OpenAI(api_key=client.key, base_url=stack.url + "/v1", max_retries=0, timeout=45)
    tab = ChatTab(stack.url, client.session) if client.session else None
    kinds = API_KINDS + (CHAT_KINDS if tab is not None else ())
    while time.time() < until:
        kind = rng.choice(kinds)
        call = chat_call(tab, kind, rng) if kind in CHAT_KINDS and tab else \
            api_call(api, stack.url, client.key, kind, rng)
        with run.lock:
            run.calls.append(call)
        if call.outcome in ("error", "unclean", "torn"):
            time.sleep(0.5)  # a real client backs off
            if tab is not None and call.kind in CHAT_KINDS:
                tab.csrf = None


# --- faults ----------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def kill_inference_worker(stack) -> None:
    """SIGKILL the inference worker (its jobs mid-generation) and start another."""
    stack.kill("inference")
    time.sleep(1.0)
    stack.start_inference_worker()


def kill_web_worker(stack) -> None:
    """SIGKILL a gunicorn worker process (its streams mid-reply); its master starts another."""
    workers = children(stack.procs["web"].pid)
    if not workers:
        raise RuntimeError("gunicorn has no worker process to kill")
    os.kill(workers[0], signal.SIGKILL)


def kill_platform_worker(stack) -> None:
    """SIGKILL the Celery platform worker (settle tasks in flight stay unacknowledged) and start another."""
    stack.kill("platform")
    time.sleep(0.5)
    stack.start_platform_worker()


def replay_duplicates(run: Run, stack) -> None:
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


def inject(run: Run, plan: list[tuple[float, str, Callable[[], None]]]) -> None:
    """Run each fault of `plan` ((seconds from now, name, action)) at its time; a fault that could not
    be injected is counted as such, not fatal."""
    began = time.time()
    for at, name, action in plan:
        time.sleep(max(0.0, began + at - time.time()))
        try:
            action()
            run.faults[name] += 1
        except Exception as exc:
            run.faults[f"{name} (failed: {type(exc).__name__})"] += 1


def traffic(run: Run, stack, clients: list[Client], seconds: float,
            plan: list[tuple[float, str, Callable[[], None]]]) -> None:
    """Every client's loop and the faults, for `seconds`; returns when all of them are done."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    until = time.time() + seconds
    threads = [threading.Thread(target=client_loop, args=(run, stack, client, until, i))
               for i, client in enumerate(clients)]
    threads.append(threading.Thread(target=inject, args=(run, plan)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- the money -------------------------------------------------------------------------------------

def wait_settled(seconds: float) -> None:
    """Let queued settlements drain (holds of jobs still ending close through the web or the task)."""
    from levee.billing.models import Hold

    deadline = time.time() + seconds
    while Hold.objects.filter(status="open").exists() and time.time() < deadline:
        time.sleep(0.3)


def sweep(redis_url: str) -> dict[str, int]:
    """The beat's sweeps, as if every deadline had passed: holds (settled from the job's stream when
    it holds a settlement, else released) and chat replies left streaming by a dead web process."""
    from django.conf import settings
    from django.utils import timezone

    from levee.billing import services, tasks
    from levee.chat import services as chat

    previous, settings.REDIS_URL = settings.REDIS_URL, redis_url  # the sweeps read the stack's streams
    try:
        far = timezone.now() + timedelta(days=1)
        return {"holds": services.sweep_holds(now=far, settlement_of=tasks.settlement_in_stream,
                                                      sent_of=tasks.sent_to_client),
                "replies": chat.sweep_stale_replies(now=far)}
    finally:
        settings.REDIS_URL = previous


def _received_tokens(redis, job_id: str, text: str) -> int | None:
    """Completion tokens of the job's deltas that make up `text` (what its client received): the usage
    of the last delta whose text, with the ones before it, is still a prefix of `text`."""
    from inference import protocol

    got, tokens = "", 0
    for _id, fields in redis.xrange(protocol.stream_key(job_id)):
        event = protocol.decode_event(fields)
        if event["type"] != protocol.DELTA:
            continue
        if not text.startswith(got + event.get("text", "")):
            break
        got += event.get("text", "")
        tokens = event.get("usage", {}).get("completion_tokens", tokens)
    return tokens if got == text else None


def check(run: Run, funded: dict, redis) -> tuple[list[str], Counter]:
    """The money after the run (after `sweep`). `funded`: user id → what the run paid into the
    account. Returns the problems found and counts for the report:

    - reconcile() finds nothing, and no hold is open;
    - every hold is settled exactly once (one usage record, one charge) or released (neither);
    - money is conserved: each account's balance plus what its usage records cost is what was paid in;
    - no usage record goes past its hold: prompt tokens, max_tokens, the held amount;
    - a job that never started (no started marker in Redis) is not charged;
    - every completed API reply has exactly one usage record, with exactly the client's usage; a call
      whose client received no text is not charged for text; a call torn by its web process's death
      is charged no more than its client received; no 500, no hang, no unclean end;
    - web chats cost nothing, and no reply is left streaming after the sweep."""
    from django.db.models import Count, Sum

    from inference import protocol
    from levee.billing import services
    from levee.billing.models import Hold, LedgerEntry, UsageRecord, Wallet
    from levee.chat.models import Message, Status

    problems = [f"reconcile: {d}" for d in services.reconcile()]
    counts: Counter = Counter()
    holds = {h.pk: h for h in Hold.objects.all()}
    records = list(UsageRecord.objects.select_related("hold"))
    charges = Counter(LedgerEntry.objects.filter(kind="charge").values_list("hold_id", flat=True))
    per_hold = Counter(r.hold_id for r in records if r.hold_id)
    for hold in holds.values():
        if hold.status == "open":
            problems.append(f"hold {hold.pk} still open")
        elif hold.status == "settled" and (per_hold[hold.pk], charges[hold.pk]) != (1, 1):
            problems.append(f"settled hold {hold.pk}: {per_hold[hold.pk]} usage records, {charges[hold.pk]} charges")
        elif hold.status == "released" and (per_hold[hold.pk] or charges[hold.pk]):
            problems.append(f"released hold {hold.pk} has a usage record or a charge")
    counts["holds placed"] = len(holds)
    counts["holds settled"] = sum(h.status == "settled" for h in holds.values())
    counts["holds released"] = sum(h.status == "released" for h in holds.values())

    spent = dict(UsageRecord.objects.values("user").annotate(total=Sum("cost_nano")).values_list("user", "total"))
    for wallet in Wallet.objects.filter(user_id__in=funded):
        have = wallet.granted_nano + wallet.topped_up_nano + (spent.get(wallet.user_id) or 0)
        if have != funded[wallet.user_id] or wallet.held_nano:
            problems.append(f"account {wallet.user_id}: balance + charges = {have}, paid in {funded[wallet.user_id]} "
                            f"(held {wallet.held_nano})")

    for record in records:
        hold = record.hold
        if hold is None:
            if record.cost_nano:
                problems.append(f"usage record {record.pk} without a hold cost {record.cost_nano}")
            continue
        if record.prompt_cache_hit_tokens + record.prompt_cache_miss_tokens > hold.prompt_tokens \
                or record.completion_tokens > hold.max_tokens or record.cost_nano > hold.amount_nano:
            problems.append(f"usage record {record.pk} goes past its hold {hold.pk}")
        if record.cost_nano and not redis.exists(protocol.started_key(hold.job_id)):
            lost = any(down - 2 <= hold.created_at.timestamp() <= up for down, up in run.redis_down)
            if lost:  # its marker may be among the last second of writes the AOF had not synced
                counts["charged jobs whose start marker died with Redis"] += 1
            else:
                problems.append(f"hold {hold.pk}: job {hold.job_id} never started but was charged {record.cost_nano}")

    by_request = {r.request_id: r for r in records if r.hold_id}
    many = Counter(r.request_id for r in records if r.hold_id)
    for call in run.calls:
        record = by_request.get(call.request_id or "")
        if call.kind in CHAT_KINDS:
            pass
        elif call.outcome == "completed":
            if many[call.request_id] != 1:
                problems.append(f"{call.kind} {call.request_id}: {many[call.request_id]} usage records")
            elif call.usage and (record.completion_tokens, record.prompt_cache_hit_tokens
                                 + record.prompt_cache_miss_tokens) != (call.usage["completion_tokens"],
                                                                        call.usage["prompt_tokens"]):
                problems.append(f"{call.kind} {call.request_id}: billed {record.completion_tokens} completion "
                                f"tokens, the client got {call.usage['completion_tokens']}")
        elif call.outcome == "torn" and record is not None and record.completion_tokens:
            counts["torn calls charged"] += 1
            received = _received_tokens(redis, record.hold.job_id, call.text)
            if received is None:
                counts["torn calls whose stream could not be matched"] += 1
            elif record.completion_tokens > received:
                problems.append(f"{call.kind} {call.request_id} (torn): billed {record.completion_tokens} "
                                f"completion tokens, the client received {received}")
        elif call.text_chunks == 0 and record is not None and record.completion_tokens and \
                call.kind != "disconnect":
            problems.append(f"{call.kind} {call.request_id} ({call.outcome}): no text reached the client "
                            f"but {record.completion_tokens} completion tokens were billed")
        if call.kind == "disconnect" and record is not None and record.completion_tokens:
            counts["disconnected calls charged for text the web had sent"] += 1
        if call.outcome == "unclean":
            problems.append(f"{call.kind} {call.request_id}: unclean end: {call.detail}")
        if call.outcome == "error" and call.detail.startswith("500"):
            problems.append(f"{call.kind} {call.request_id}: a 500: {call.detail}")

    streaming = Message.objects.filter(status=Status.STREAMING).count()
    if streaming:
        problems.append(f"{streaming} chat repl(ies) still streaming after the sweep")
    replies = Message.objects.filter(role="assistant").aggregate(n=Count("id"), tokens=Sum("completion_tokens"))
    counts["chat replies saved"], counts["chat reply tokens (free)"] = replies["n"], replies["tokens"] or 0
    counts["usage records"] = len(records)
    return problems, counts


def report(run: Run, counts: Counter, problems: list[str], title: str) -> None:
    print(title)
    print("| what | count |")
    print("|---|---|")
    for name, count in sorted(Counter(c.kind for c in run.calls).items()):
        print(f"| calls: {name} | {count} |")
    for name, count in sorted(Counter(c.outcome for c in run.calls).items()):
        print(f"| outcome: {name} | {count} |")
    errors = Counter(c.detail.split(" ")[0].rstrip(":") for c in run.calls if c.outcome == "error")
    for name, count in sorted(errors.items()):
        print(f"| error: {name} | {count} |")
    for name, count in sorted(run.faults.items()):
        print(f"| fault: {name} | {count} |")
    for name, count in counts.items():
        print(f"| {name} | {count} |")
    print(f"| problems | {len(problems)} |")
    for problem in problems[:40]:
        print("  -", problem)


def fund(n: int, prefix: str, *, chat: bool = True) -> tuple[list[Client], dict]:
    """`n` verified accounts, each paid 1,000 currency units, with an API key and (`chat`) a browser
    session. Returns the clients and user id → amount paid in."""
    from django.utils import timezone

    from levee.accounts.models import User
    from levee.billing import services
    from levee.keys.services import create_api_key

    clients, funded = [], {}
    for i in range(n):
        user = User.objects.create_user(f"{prefix}-{i}@example.com", "a long chaos passphrase 1",
                                        email_verified_at=timezone.now())
        services.topup(services.wallet_for(user), 10**12, source="chaos", external_id=f"{prefix}-{i}")
        funded[user.pk] = 10**12
        clients.append(Client(create_api_key(user, name="chaos")[1], browser_session(user) if chat else None))
    return clients, funded


# Per-key limits out of the way (the run is about faults, not the shield's 429s); the reader's lease
# short, so the workers stop the jobs of a killed web process within the run.
STACK_ENV = {"LEVEE_HOLD_SWEEP_GRACE_SECONDS": "0", "LEVEE_JOB_QUEUE_TIMEOUT": "15", "LEVEE_READER_LEASE_SECONDS": "2",
             "SHIELD_KEY_RPM": "100000", "SHIELD_ACCOUNT_RPM": "100000", "SHIELD_API_ADDRESS_RPM": "100000",
             "SHIELD_API_SUBNET_RPM": "100000"}


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
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from tests.e2e.stack import Stack

        clients, funded = fund(args.clients, "chaos")
        stack = Stack(heartbeat_timeout=3, extra_env=STACK_ENV)
        stack.start()
        run = Run()

        def kill_redis() -> None:
            down = time.time()
            rds.kill()
            time.sleep(1.5)
            rds.start()
            run.redis_down.append((down, time.time()))

        s = args.seconds
        plan = [(0.12 * s, "kill inference worker", lambda: kill_inference_worker(stack)),
                (0.28 * s, "kill a web worker", lambda: kill_web_worker(stack)),
                (0.38 * s, "kill the platform worker", lambda: kill_platform_worker(stack)),
                (0.45 * s, "kill redis", kill_redis),
                (0.62 * s, "restart postgresql", pg.restart),
                (0.70 * s, "kill a web worker", lambda: kill_web_worker(stack)),
                (0.78 * s, "replay duplicate settles", lambda: replay_duplicates(run, stack)),
                (0.88 * s, "kill inference worker", lambda: kill_inference_worker(stack))]
        traffic(run, stack, clients, s, plan)
        from django.db import connections

        connections.close_all()  # PostgreSQL restarted under this process too
        time.sleep(max(0, int(STACK_ENV["LEVEE_READER_LEASE_SECONDS"])) + 2)  # leased jobs of dead webs end
        wait_settled(8)
        swept = sweep(stack.redis_url)
        problems, counts = check(run, funded, stack.redis)
        counts["holds closed by the final sweep"] = swept["holds"]
        counts["chat replies closed by the final sweep"] = swept["replies"]
        report(run, counts, problems, f"chaos run: {args.clients} clients, {args.seconds:.0f} s, private "
                                      f"PostgreSQL :{pg.port}, private Redis :{rds.port}")
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
