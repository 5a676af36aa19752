#!/usr/bin/env python3
"""Limiter benchmark: decisions per second from one process against a local Redis, for the
shield's limiter beside DRF's SimpleRateThrottle (through Django's Redis cache) and
django-ratelimit on the same Redis; and the exactness harness (64 threads against one limit of 100)
for each.

    REDIS_URL=redis://127.0.0.1:6379/12 python ops/bench/limiter.py [--decisions 20000] [--threads 1]

It writes only keys under its own run prefix and deletes them afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levee.settings")
os.environ.setdefault("LEVEE_ENV", "test")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django_ratelimit.core import is_ratelimited  # noqa: E402
from rest_framework.throttling import SimpleRateThrottle  # noqa: E402

from levee.shield import limiter, store  # noqa: E402
from levee.shield.limiter import FixedSubject, Rule  # noqa: E402
from ops.bench.harness import concurrent_admissions  # noqa: E402

RUN = secrets.token_hex(4)
_request = RequestFactory().get("/v1/me", REMOTE_ADDR="198.51.100.1")


class _Throttle(SimpleRateThrottle):
    """DRF's throttle as an API would configure it, keyed by the subject we hand it."""

    rate = "600/min"

    def __init__(self, ident: str, rate: str):
        self.rate = rate
        self.ident = ident
        super().__init__()

    def get_cache_key(self, request, view):
        return f"bench:{RUN}:drf:{self.ident}"


def shield_decide(ident: str, limit: int, period: int):
    subject = FixedSubject(f"bench:{RUN}:{ident}", [Rule("requests", limit, period)])
    return lambda: limiter.check([subject], {"requests": 1}).allowed


def shield_decide_api(ident: str, limit: int, period: int):
    """The API's real shape: key, account, address and subnet, requests and tokens, in one trip."""
    subjects = [FixedSubject(f"bench:{RUN}:{ident}:{kind}", [Rule("requests", limit, period), Rule("tokens", 10**6, 60)])
                for kind in ("key", "account", "address", "subnet")]
    return lambda: limiter.check(subjects, {"requests": 1, "tokens": 100}).allowed


def drf_decide(ident: str, limit: int, period: int):
    unit = {60: "min", 3600: "hour"}[period]
    throttle = _Throttle(ident, f"{limit}/{unit}")
    return lambda: throttle.allow_request(_request, None)


def ratelimit_decide(ident: str, limit: int, period: int):
    unit = {60: "m", 3600: "h"}[period]
    return lambda: not is_ratelimited(_request, group=f"bench:{RUN}:rl:{ident}", key=lambda g, r: ident,
                                      rate=f"{limit}/{unit}", increment=True)


LIMITERS = {
    "shield (1 subject)": shield_decide,
    "shield (API: 4 subjects x requests+tokens)": shield_decide_api,
    "drf SimpleRateThrottle": drf_decide,
    "django-ratelimit": ratelimit_decide,
}


def throughput(make, decisions: int, threads: int, subjects: int = 1000) -> float:
    """Decisions per second, round-robin over `subjects` keys each allowed 600 a minute (an API
    key's usual limit), so every decision is an admission and DRF's history lists stay realistic."""
    deciders = [make(f"t{i}", 600, 60) for i in range(subjects)]
    per_thread = decisions // threads

    def work(offset):
        for n in range(per_thread):
            deciders[(offset + n) % subjects]()

    for d in deciders[:50]:  # warm up connections and script caches
        d()
    pool = [threading.Thread(target=work, args=(i * 7,)) for i in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return per_thread * threads / (time.perf_counter() - start)


def async_throughput(decisions: int, in_flight: int = 64, subjects: int = 1000, api_shape: bool = False) -> float:
    """The shield's async path (what the streaming API views use): one event loop, `in_flight`
    decisions outstanding at a time, over redis.asyncio."""
    import asyncio

    kinds = ("key", "account", "address", "subnet") if api_shape else ("one",)
    rules = [Rule("requests", 600, 60)] + ([Rule("tokens", 10**6, 60)] if api_shape else [])
    costs = {"requests": 1, "tokens": 100} if api_shape else {"requests": 1}
    groups = [[FixedSubject(f"bench:{RUN}:async{api_shape}:{i}:{k}", rules) for k in kinds] for i in range(subjects)]

    errors = []

    async def worker(offset, count):
        for n in range(count):
            try:
                await limiter.acheck(groups[(offset + n) % subjects], costs)
            except store.ShieldRedisDown as exc:  # a 0.25 s timeout on a loaded box
                errors.append(exc)

    async def main():
        await worker(0, 50)
        start = time.perf_counter()
        await asyncio.gather(*(worker(i * 7, decisions // in_flight) for i in range(in_flight)))
        return (decisions // in_flight) * in_flight / (time.perf_counter() - start)

    rate = asyncio.run(main())
    if errors:
        print(f"  ({len(errors)} decisions timed out)", file=sys.stderr)
    return rate


def exactness(make, *, threads: int = 64, attempts_each: int = 8, limit: int = 100) -> int:
    decide = make(f"exact-{secrets.token_hex(2)}", limit, 3600)
    return concurrent_admissions(decide, threads=threads, attempts_each=attempts_each)


def cleanup() -> None:
    client = store.client()
    for pattern in (f"*bench:{RUN}*",):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i:i + 500])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--exactness-runs", type=int, default=3)
    parser.add_argument("--attempts-each", type=int, default=8, help="exactness: attempts per thread (64 threads)")
    args = parser.parse_args(argv)
    print(f"redis {settings.SHIELD_REDIS_URL} (cache {settings.CACHES['default']['LOCATION']}), "
          f"{args.decisions} decisions, {args.threads} thread(s)", file=sys.stderr)
    results = {}
    try:
        for name, make in LIMITERS.items():
            rate = throughput(make, args.decisions, args.threads)
            admitted = [exactness(make, attempts_each=args.attempts_each) for _ in range(args.exactness_runs)]
            results[name] = {"decisions_per_second": round(rate), "exactness_admitted_of_100": admitted}
            print(f"{name:45s} {rate:10,.0f} decisions/s   64x{args.attempts_each} attempts vs limit 100 admitted: {admitted}",
                  file=sys.stderr)
        for api_shape in (False, True):
            name = f"shield async, 64 in flight ({'API shape' if api_shape else '1 subject'})"
            rate = async_throughput(args.decisions, api_shape=api_shape)
            results[name] = {"decisions_per_second": round(rate)}
            print(f"{name:45s} {rate:10,.0f} decisions/s", file=sys.stderr)
    finally:
        cleanup()
        cache.close()
    drf = results["drf SimpleRateThrottle"]["decisions_per_second"]
    results["shield_vs_drf"] = round(results["shield (1 subject)"]["decisions_per_second"] / drf, 2)
    results["shield_async_vs_drf"] = round(
        results["shield async, 64 in flight (1 subject)"]["decisions_per_second"] / drf, 2)
    results["threads"], results["load_average"] = args.threads, os.getloadavg()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
