"""Benchmarks of the API's own machinery (issue 5), on one machine, in one run:

1. Platform overhead on time to first token: HTTP → hold → Celery → worker → Redis Stream → SSE,
   minus the engine's own share (from the worker's `started` event to its first `delta`, both
   timestamped by the worker). 1 stream (probes back to back, and 100 ms apart), 32 concurrent
   streams (31 generating in the background while probes go one after another), and a burst of 32
   at once (admission throughput); p50 and p99,
   with the web process's own phases from its Server-Timing header.
2. Open streams one web process holds while /healthz stays fast: N streaming requests wait in the
   queue behind a busy single-slot worker (keep-alive comments flowing), and /healthz is timed.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/levee_bench_api REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python ops/bench/api.py [--streams 250,500,1000]

It creates (and migrates) the database named in DATABASE_URL, starts gunicorn with ONE uvicorn
worker, a Celery platform worker and an inference worker on the demo checkpoint, and stops them at
the end. Loopback only; bounded in requests and time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inference import protocol  # noqa: E402  (torch-free)
from ops.procs import stop_group  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = "deepseek-chat"
# TTFT rows: name -> (concurrent streams, burst?, pause between probes in ms)
ROWS = {"1": (1, False, 0), "1p": (1, False, 100), "32": (32, False, 0), "32b": (32, True, 0)}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    def __init__(self, env):
        self.env, self.procs = env, {}
        (ROOT / "var" / "bench-logs").mkdir(parents=True, exist_ok=True)

    def start(self, name, argv, **env):
        log = open(ROOT / "var" / "bench-logs" / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, env={**self.env, **env}, cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, name):
        stop_group(self.procs.pop(name), timeout=20)

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


def setup_database(env) -> str:
    import psycopg

    url = urlparse(env["DATABASE_URL"])
    name = url.path.lstrip("/")
    admin = url._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    script = (
        "from levee.accounts.models import User; from levee.keys.services import create_api_key;"
        "from levee.billing import services as b; from levee.api.models import LlmModel;"
        "from django.utils import timezone;"
        "u = User.objects.filter(email='bench@example.com').first() or "
        "User.objects.create_user('bench@example.com', 'bench pass 123456', email_verified_at=timezone.now());"
        "b.topup(b.wallet_for(u), 10**12, source='bench', external_id=f'bench-{timezone.now().timestamp()}');"
        "LlmModel.objects.filter(name='deepseek-chat').update(max_queue_depth=100000, default_max_tokens=8);"
        "u.api_keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now());"  # under the key cap
        "print(create_api_key(u, name='bench')[1])"
    )
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


async def one_stream(url, key, *, max_tokens):
    """One streaming completion, timed from just before its request is written to the moment its
    first content delta is read. A bare HTTP/1.1 exchange on its own connection rather than httpx:
    the probe measures the platform, and httpx's own Python costs about a
    millisecond a request on these machines. It hangs up after the first delta, as a client that
    has what it wanted would; the server cancels the rest."""
    host, port = urlparse(url).hostname, urlparse(url).port
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}],
                       "max_tokens": max_tokens, "stream": True, "temperature": 0}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    reader, writer = await asyncio.open_connection(host, port)
    try:
        t0 = time.time()
        writer.write(request)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        if status != 200:
            raise RuntimeError(f"{status}: {await reader.read(2000)}")
        phases = server_timing(headers.get("server-timing", ""))
        pending, job = b"", None
        while True:  # chunked transfer encoding: size line, payload, CRLF
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                raise RuntimeError("the stream ended before any content")
            pending += (await reader.readexactly(size + 2))[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: {"):
                    continue
                chunk = json.loads(event[6:])
                job = chunk["id"].removeprefix("chatcmpl-")
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    return t0, time.time(), job, phases
    finally:
        writer.close()


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system, every thread) used so far by each named group of processes."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, group in pids.items():
        total = 0
        for pid in group:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            total += int(fields[11]) + int(fields[12])
        used[name] = total / tick
    return used


def watched(procs: Procs) -> dict[str, list[int]]:
    """The processes whose CPU the TTFT rows report: ours (with their children: gunicorn's worker),
    the bench itself, Redis and PostgreSQL (every backend)."""
    table = {}  # pid -> (parent pid, command name)
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text() if d.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            table[int(d.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), stat[stat.index("(") + 1:stat.rindex(")")])

    def family(root: int) -> list[int]:
        pids = [root]
        for pid in pids:
            pids += [child for child, (parent, _) in table.items() if parent == pid]
        return pids

    groups = {name: family(proc.pid) for name, proc in procs.procs.items()}
    groups["bench client"] = [os.getpid()]
    for name, comm in (("redis", "redis-server"), ("postgresql", "postgres")):
        groups[name] = [pid for pid, (_, c) in table.items() if c == comm]
    return groups


def server_timing(header: str) -> dict[str, float]:
    """{phase: ms} from the API's Server-Timing header (levee.core.timing)."""
    phases = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        phases[name] = float(dur or 0)
    return phases


def job_times(r, job) -> tuple[float, float, int]:
    """The worker's wall-clock stamps of the job's `started` event and its first `delta`, and how long
    the job sat between the web's publish and the worker's start (ms)."""
    events = [protocol.decode_event(fields) for _, fields in r.xrange(protocol.stream_key(job))]
    started = next(e for e in events if e["type"] == "started")
    delta = next(e["t"] for e in events if e["type"] == "delta")
    return started["t"], delta, started.get("queued_ms", 0)


async def ttft(url, key, r, concurrency, total, *, burst=False, pause_ms=0, procs=None):
    """Streams of `concurrency` at once. Steady (the default): concurrency - 1 background streams
    keep generating (each reopened when it ends) while probe requests go one after another; the
    probes are measured. Burst: `concurrency` requests start together, the next when one ends
    (a closed loop), and all are measured: that is admission throughput, queueing included."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await one_stream(url, key, max_tokens=2)  # warm-up
        if burst:
            sem = asyncio.Semaphore(concurrency)

            async def run():
                async with sem:
                    return await one_stream(url, key, max_tokens=2)

            results, cpu = await asyncio.gather(*(run() for _ in range(total))), {}
        else:
            results, cpu = await _probe_beside(client, url, key, concurrency - 1, total, pause_ms, procs)
    client_ms, engine_ms, overhead_ms, before_ms, after_ms, queued_ms = [], [], [], [], [], []
    phase_ms: dict[str, list[float]] = {}
    for t0, first, job, phases in results:
        for name, ms in phases.items():
            phase_ms.setdefault(name, []).append(ms)
        started, delta, queued = job_times(r, job)
        queued_ms.append(queued)
        e = delta - started
        client_ms.append((first - t0) * 1000)
        engine_ms.append(e * 1000)
        overhead_ms.append((first - t0 - e) * 1000)
        before_ms.append((started - t0) * 1000)  # request in → worker starts the job
        after_ms.append((first - delta) * 1000)  # first delta written → client reads it
    return {"concurrency": concurrency, "mode": "burst" if burst else "steady", "pause_ms": pause_ms,
            "requests": total,
            "client_ttft_p50_ms": pct(client_ms, 50), "client_ttft_p99_ms": pct(client_ms, 99),
            "engine_p50_ms": pct(engine_ms, 50),
            "overhead_p50_ms": pct(overhead_ms, 50), "overhead_p99_ms": pct(overhead_ms, 99),
            "to_worker_start_p50_ms": pct(before_ms, 50), "of_which_broker_p50_ms": pct(queued_ms, 50),
            "delta_to_client_p50_ms": pct(after_ms, 50),
            # the web process's own phases before the response starts (Server-Timing), p50 each
            "web_phases_p50_ms": {name: round(pct(ms, 50), 2) for name, ms in phase_ms.items()},
            "web_total_p50_ms": round(pct([sum(p.values()) for *_, p in results], 50), 2),
            "cores_busy": cpu}


async def _probe_beside(client, url, key, background: int, total: int, pause_ms: int = 0, procs=None):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about Levee."}], "max_tokens": 1000,
            "stream": True, "temperature": 1.0}
    stop = asyncio.Event()
    opened = asyncio.Semaphore(0)

    async def keep_generating():
        first = True
        while not stop.is_set():
            async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as response:
                if first:
                    opened.release()
                    first = False
                async for _ in response.aiter_raw():
                    if stop.is_set():
                        return

    tasks = [asyncio.create_task(keep_generating()) for _ in range(background)]
    for _ in range(background):
        await opened.acquire()
    await asyncio.sleep(1)  # every background stream is generating
    try:
        results = []
        groups, cpu = (watched(procs) if procs else {}), {}
        before, t0 = cpu_seconds(groups), time.time()
        for _ in range(total):
            results.append(await one_stream(url, key, max_tokens=2))
            if pause_ms:  # think time: the previous request's settlement finishes before the next
                await asyncio.sleep(pause_ms / 1000)
        if groups:  # cores each process kept busy while the probes ran (2.0 = both of this box's)
            wall, after = time.time() - t0, cpu_seconds(groups)
            cpu = {name: round((after[name] - before[name]) / wall, 2) for name in groups}
        return results, cpu
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def open_streams(url, key, levels, probes=200):
    import httpx

    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 900,
            "stream": True, "temperature": 1.0}
    results = []
    limits = httpx.Limits(max_connections=max(levels) + 16)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=30), limits=limits) as client:
        opened = []
        ready = asyncio.Event()
        counter = {"open": 0}

        async def hold_open():
            async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as response:
                if response.status_code != 200:
                    counter.setdefault("refused", 0)
                    counter["refused"] += 1
                    return
                counter["open"] += 1
                async for _ in response.aiter_raw():
                    if ready.is_set():
                        return

        async with httpx.AsyncClient(timeout=10) as probe:
            for level in levels:
                while len(opened) < level:
                    opened.append(asyncio.create_task(hold_open()))
                    if len(opened) % 50 == 0:
                        await asyncio.sleep(0.05)
                deadline = time.time() + 60
                while counter["open"] < level - counter.get("refused", 0) and time.time() < deadline:
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1)
                times = []
                for _ in range(probes):
                    t = time.perf_counter()
                    resp = await probe.get(url + "/healthz")
                    assert resp.status_code == 200
                    times.append((time.perf_counter() - t) * 1000)
                    await asyncio.sleep(0.005)
                results.append({"open_streams": counter["open"], "refused": counter.get("refused", 0),
                                "healthz_p50_ms": pct(times, 50), "healthz_p99_ms": pct(times, 99)})
                print(json.dumps(results[-1]), flush=True)
        ready.set()
        for task in opened:
            task.cancel()
        await asyncio.gather(*opened, return_exceptions=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="250,500,1000")
    parser.add_argument("--ttft-requests", type=int, default=64)
    parser.add_argument("--rows", default=",".join(ROWS), help="TTFT rows to run, of: " + ", ".join(
        f"{name} ({'burst' if burst else 'steady'}, {n} streams, {pause} ms apart)"
        for name, (n, burst, pause) in ROWS.items()))
    parser.add_argument("--json")
    args = parser.parse_args()
    unknown = [row for row in filter(None, args.rows.split(",")) if row not in ROWS]
    if unknown:
        parser.error(f"unknown --rows {unknown}; choose from {', '.join(ROWS)}")
    levels = [int(x) for x in args.streams.split(",") if x]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}", "DJANGO_SETTINGS_MODULE": "levee.settings",
           "LEVEE_ENV": "test", "GUNICORN_ACCESSLOG": "", "LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1",
           # One key from one address opens a thousand streams: lift the shield's per-caller limits
           # (the limiter still runs on every request, so its cost stays in the numbers).
           **{name: "1000000" for name in (
               "SHIELD_KEY_RPM", "SHIELD_KEY_TPM", "SHIELD_KEY_JOBS", "SHIELD_ACCOUNT_RPM", "SHIELD_ACCOUNT_TPM",
               "SHIELD_ACCOUNT_JOBS", "SHIELD_API_ADDRESS_RPM", "SHIELD_API_ADDRESS_JOBS", "SHIELD_API_SUBNET_RPM")}}
    env.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/levee_bench_api")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")
    for host in (urlparse(env["DATABASE_URL"]).hostname, urlparse(env["REDIS_URL"]).hostname):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("this benchmark only runs against loopback services")
    import redis

    r = redis.Redis.from_url(env["REDIS_URL"])
    r.flushdb()
    key = setup_database(env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = Procs({**env, "LEVEE_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1"})
    report = {"ttft": [], "streams": []}
    try:
        procs.start("web", [str(BIN / "gunicorn"), "-c", "ops/gunicorn.conf.py", "levee.asgi:application"])
        procs.start("platform", [str(BIN / "celery"), "-A", "levee", "worker", "-Q", "platform", "-P", "threads",
                                 "-c", "8", "--without-gossip", "--without-mingle", "-n", f"bench-platform-{port}@%h"])
        inference = [str(BIN / "celery"), "-A", "inference.worker", "worker", "-Q", f"inference.{MODEL}", "-P",
                     "threads", "--without-gossip", "--without-mingle"]
        # The TTFT part serves small random weights (tests/e2e/checkpoint.py): they seldom pick the
        # end-of-sequence token, so background streams keep generating instead of ending after a
        # sentence, and a tiny engine leaves the CPU to the platform, as a GPU would.
        from tests.e2e.checkpoint import e2e_checkpoint

        checkpoint = e2e_checkpoint(Path(tempfile.mkdtemp(prefix="levee-bench-ckpt-")))
        procs.start("inference", [*inference, "-n", f"bench-inf-{port}@%h"],  # slots: batch 32 + 8
                    LEVEE_CHECKPOINT=str(checkpoint))
        deadline = time.time() + 120
        while not r.zcount(f"levee:workers:{MODEL}", time.time() - 10, "+inf") and time.time() < deadline:
            time.sleep(0.5)
        for row in filter(None, args.rows.split(",")):
            concurrency, burst, pause_ms = ROWS[row]
            report["ttft"].append(asyncio.run(ttft(url, key, r, concurrency, args.ttft_requests, burst=burst,
                                                   pause_ms=pause_ms, procs=procs)))
            print(json.dumps(report["ttft"][-1]), flush=True)
        if levels:
            # One slot, busy: every stream past the first waits in the queue with keep-alives flowing.
            procs.stop("inference")
            r.delete(f"levee:workers:{MODEL}")
            procs.start("inference", [*inference, "-c", "1", "-n", f"bench-inf1-{port}@%h"])
            deadline = time.time() + 120
            while not r.zcount(f"levee:workers:{MODEL}", time.time() - 10, "+inf") and time.time() < deadline:
                time.sleep(0.5)
            report["streams"] = asyncio.run(open_streams(url, key, levels))
    finally:
        procs.stop_all()
        r.flushdb()
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
