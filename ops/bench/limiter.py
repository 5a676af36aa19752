#!/usr/bin/env python3
"""Limiter benchmark: decisions per second from one process against a local Redis, for the
shield's limiter beside DRF's SimpleRateThrottle (through Django's Redis cache) and
django-ratelimit on the same Redis; and the exactness harness (64 threads against one limit of 100)
for each.

    REDIS_URL=redis://127.0.0.1:6379/12 python ops/bench/limiter.py [--decisions 20000] [--threads 1] [--rounds 5]

Throughput is measured in interleaved rounds (each round runs every limiter for decisions/rounds
decisions, the order rotating), so a load spike from elsewhere on a shared machine hits all of them
alike; it reports each one's median and best round, and the shield/DRF ratio of the medians and of
each round. Beside them, two floors: a trivial one-key script through redis-py's client (`evalsha`
and `execute_command("EVALSHA", ...)`), i.e. one round trip with nothing to decide.

It writes only keys under its own run prefix and deletes them afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
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

# Not limiters: one round trip of a trivial one-key script through redis-py's client, the floor
# under any Redis-backed decision.
FLOORS = {
    "floor: redis-py evalsha, trivial script": "evalsha",
    "floor: redis-py execute_command EVALSHA": "execute_command",
}


def _deciders(make) -> list:
    """1000 subjects' decision functions (floors: one client and one script load for all)."""
    if make in FLOORS.values():
        import redis

        client = redis.Redis.from_url(settings.SHIELD_REDIS_URL)
        sha = client.script_load("return 1")
        keys = [f"bench:{RUN}:floor:t{i}" for i in range(1000)]
        if make == "evalsha":
            return [lambda k=k: client.evalsha(sha, 1, k, "1") == 1 for k in keys]
        return [lambda k=k: client.execute_command("EVALSHA", sha, 1, k, "1") == 1 for k in keys]
    return [make(f"t{i}", 600, 60) for i in range(1000)]


def _run(deciders, decisions: int, threads: int, offset: int) -> float:
    per_thread = decisions // threads
    subjects = len(deciders)

    def work(start):
        for n in range(per_thread):
            deciders[(start + n) % subjects]()

    pool = [threading.Thread(target=work, args=(offset + i * 7,)) for i in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return per_thread * threads / (time.perf_counter() - start)


def throughput(makers: dict, decisions: int, threads: int, rounds: int) -> dict[str, list[float]]:
    """Decisions per second per round, for each of `makers`, round-robin over 1000 subjects each
    allowed 600 a minute (an API key's usual limit), so every decision is an admission and DRF's
    history lists stay realistic. Rounds interleave the makers, in an order that rotates."""
    deciders = {name: _deciders(make) for name, make in makers.items()}
    for ds in deciders.values():
        for d in ds[:50]:  # warm up connections and script caches
            d()
    names = list(deciders)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(_run(deciders[name], max(threads, decisions // rounds), threads, offset=r * 997))
    return rates


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
    parser.add_argument("--decisions", type=int, default=20_000, help="per limiter, over all rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--exactness-runs", type=int, default=3)
    parser.add_argument("--attempts-each", type=int, default=8, help="exactness: attempts per thread (64 threads)")
    args = parser.parse_args(argv)
    print(f"redis {settings.SHIELD_REDIS_URL} (cache {settings.CACHES['default']['LOCATION']}), "
          f"{args.decisions} decisions in {args.rounds} rounds, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    results = {}
    try:
        rates = throughput({**LIMITERS, **FLOORS}, args.decisions, args.threads, args.rounds)
        for name, per_round in rates.items():
            entry = {"decisions_per_second": round(statistics.median(per_round)), "best_round": round(max(per_round)),
                     "rounds": [round(r) for r in per_round]}
            line = f"{name:45s} {entry['decisions_per_second']:10,} decisions/s (median; best {entry['best_round']:,})"
            if name in LIMITERS:
                make = LIMITERS[name]
                admitted = [exactness(make, attempts_each=args.attempts_each) for _ in range(args.exactness_runs)]
                entry["exactness_admitted_of_100"] = admitted
                line += f"   64x{args.attempts_each} attempts vs limit 100 admitted: {admitted}"
            results[name] = entry
            print(line, file=sys.stderr)
        for api_shape in (False, True):
            name = f"shield async, 64 in flight ({'API shape' if api_shape else '1 subject'})"
            per_round = [async_throughput(max(64, args.decisions // args.rounds), api_shape=api_shape)
                         for _ in range(args.rounds)]
            results[name] = {"decisions_per_second": round(statistics.median(per_round)),
                             "best_round": round(max(per_round))}
            print(f"{name:45s} {results[name]['decisions_per_second']:10,} decisions/s (median; best "
                  f"{results[name]['best_round']:,})", file=sys.stderr)
    finally:
        cleanup()
        cache.close()
    drf = results["drf SimpleRateThrottle"]
    shield = results["shield (1 subject)"]
    results["shield_vs_drf"] = round(shield["decisions_per_second"] / drf["decisions_per_second"], 2)
    results["shield_vs_drf_best"] = round(shield["best_round"] / drf["best_round"], 2)
    results["shield_vs_drf_per_round"] = [round(a / b, 2) for a, b in zip(shield["rounds"], drf["rounds"], strict=True)]
    results["shield_async_vs_drf"] = round(
        results["shield async, 64 in flight (1 subject)"]["decisions_per_second"] / drf["decisions_per_second"], 2)
    results["threads"], results["load_average"] = args.threads, os.getloadavg()
    print(f"shield/DRF: {results['shield_vs_drf']}x (medians), {results['shield_vs_drf_best']}x (best rounds), "
          f"per round {results['shield_vs_drf_per_round']}; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
