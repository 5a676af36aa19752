#!/usr/bin/env python3
"""Server CPU per refused request, as a distribution: `make run`'s stack (the same one the admission
benchmark starts, ops/bench/admission_flood.py), pinned to under_attack, then one kind of doomed
request at a time, sent strictly one after another from fresh loopback source addresses, in batches.
Each batch's cost is the web workers' CPU (user + system, psutil) over the batch, less the idle
background measured just before, divided by the batch's requests; the report gives the median and
spread of those per-request costs per kind.

Each kind is first sent one unmeasured batch: a worker's first answers of a kind build its caches
(the routes, the translated page), a cost paid once per process, not per request.

Sequential sending is what makes a per-request figure honest: nothing else runs in the workers
while a batch is measured, so their CPU is that batch's. Batches (not single requests) because the
kernel's CPU accounting ticks in milliseconds.

    .venv/bin/python ops/bench/admission_cpu.py --port 6422 --redis-port 6421 \\
        --database postgres://postgres@127.0.0.1:5432/levee_admission_cpu --batches 15 --per-batch 100

With `--proxy` nginx stands in front (ops/bench/admission_flood.py's option): each kind's report
gains the proxy's own CPU per request ("proxy"), measured the same way over nginx's processes;
the web workers' figure is then what reaches Levee through kept-alive upstream connections.

Kinds: the doors' refusals (sign-up and log-in posts without a pass, an unknown API key, a declared
64 MiB body) and, as the baseline of the same run, two requests that Django answers (a rendered
page, and the API's 401 for an authorization scheme the layer leaves to Django).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ops.bench.admission_flood import running_stack, stack_arguments  # noqa: E402
from ops.flood_attack import Raw, _cpu_of  # noqa: E402

_PIN = """
from levee.shield.services import set_mode
set_mode("under_attack", reason="admission CPU benchmark", pinned=True)
"""


def _address(rng: random.Random) -> str:
    n = rng.randrange(1, 1 << 20)
    return f"127.{16 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def _kinds(victim: str, rng: random.Random) -> dict:
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def key() -> str:
        return "sk-" + "".join(rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789") for _ in range(48))

    chat = json.dumps({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
    return {
        # refused by the admission layer
        "signup_without_pass": ("POST", "/accounts/signup/", form,
                                b"email=bot%40flood.example&password=flood-password-1234"),
        "login_spray_without_pass": ("POST", "/accounts/login/", form,
                                     f"username={victim}&password=guess".encode()),
        "unknown_api_key": ("POST", "/v1/chat/completions",
                            lambda: {"Authorization": f"Bearer {key()}", "Content-Type": "application/json"}, chat),
        "declared_64mib_body": ("PUT", "/v1/chat/completions", {"Content-Length": str(64 << 20)}, b""),
        # answered by Django (the baseline)
        "django_page": ("GET", "/pricing", {}, b""),
        "django_api_401": ("POST", "/v1/chat/completions",
                           {"Authorization": "Basic Ym90OmJvdA==", "Content-Type": "application/json"}, chat),
    }


def _per_request(spent: list[float]) -> dict:
    return {"median_cpu_ms": round(statistics.median(spent), 3), "min_cpu_ms": round(min(spent), 3),
            "max_cpu_ms": round(max(spent), 3)}


async def _probe(base: str, pids: list[int], victim: str, *, batches: int, per_batch: int,
                 proxy_pids: list[int]) -> dict:
    host, port = base.removeprefix("http://").split(":")
    raw = Raw(host, int(port), "real")
    rng = random.Random(7)
    report: dict = {}
    for kind, (method, path, headers, body) in _kinds(victim, rng).items():
        costs, proxy_costs, statuses, wall = [], [], Counter(), []
        for _ in range(per_batch):  # unmeasured: each worker's first answers of a kind build its caches
            await raw.request(_address(rng), method, path, body=body,
                              headers=headers() if callable(headers) else headers)
        for _ in range(batches):
            idle0, proxy_idle0, t0 = _cpu_of(pids), _cpu_of(proxy_pids), time.monotonic()
            await asyncio.sleep(0.5)
            idle_rate = (_cpu_of(pids) - idle0) / (time.monotonic() - t0)
            proxy_idle_rate = (_cpu_of(proxy_pids) - proxy_idle0) / (time.monotonic() - t0)
            cpu0, proxy0, t1 = _cpu_of(pids), _cpu_of(proxy_pids), time.monotonic()
            for _ in range(per_batch):
                status, _, _ = await raw.request(_address(rng), method, path, body=body,
                                                 headers=headers() if callable(headers) else headers)
                statuses[status] += 1
            seconds = time.monotonic() - t1
            spent = _cpu_of(pids) - cpu0 - idle_rate * seconds
            costs.append(max(0.0, spent) * 1000 / per_batch)
            proxy_costs.append(max(0.0, _cpu_of(proxy_pids) - proxy0 - proxy_idle_rate * seconds) * 1000 / per_batch)
            wall.append(seconds * 1000 / per_batch)
        report[kind] = {**_per_request(costs), "median_wall_ms": round(statistics.median(wall), 2),
                        "statuses": dict(statuses)}
        if proxy_pids:
            report[kind]["proxy"] = _per_request(proxy_costs)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    stack_arguments(parser)
    parser.set_defaults(port=6422, redis_port=6421, database="postgres://postgres@127.0.0.1:5432/levee_admission_cpu",
                        data_dir="/tmp/levee-admission-cpu-var", users=1)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--per-batch", type=int, default=100)
    args = parser.parse_args()
    with running_stack(args) as stack:
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", _PIN], env=stack.env, cwd=ROOT,
                       capture_output=True, check=True)
        time.sleep(1.5)  # every web process re-reads the mode within a second
        started, load = time.time(), os.getloadavg()
        victim = stack.legit[0].split(":", 1)[0]
        report = asyncio.run(_probe(stack.base, stack.web_pids, victim, batches=args.batches,
                                    per_batch=args.per_batch, proxy_pids=stack.proxy_pids))
        baseline = report["django_api_401"]["median_cpu_ms"]
        for kind in report:
            report[kind]["vs_django_api_401"] = round(report[kind]["median_cpu_ms"] / baseline, 3) if baseline else None
        print(json.dumps({"load_average_before": load, "wall_s": round(time.time() - started, 1), "proxy": args.proxy,
                          "batches": args.batches, "per_batch": args.per_batch, "kinds": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
