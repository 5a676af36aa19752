"""Benchmark: hold → settle pairs per second on PostgreSQL with concurrent clients.

Each client is a separate process with its own database connection, looping place_hold then
settle_hold (the two writes every API request makes) for --seconds. Two scenarios:
  - "own":    every client bills its own account (wallet rows do not contend);
  - "shared": every client bills one account (all writers queue on one wallet row — the worst case,
              e.g. one customer's batch job running 8 requests in parallel).
Afterwards it runs `reconcile` and fails if any wallet disagrees with its ledger.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/levee_bench .venv/bin/python ops/bench/billing.py

`--hold-forms` instead times place_hold alone in one process, alternating rounds of its two forms
on the same database: the one statement (data-modifying WITH, PostgreSQL) and the transaction of
three writes (what SQLite gets), then releases every hold.

It migrates the database it is given and adds bench accounts to it: never point it at production.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levee.settings")
os.environ.setdefault("LEVEE_ENV", "test")

MODEL = "bench-model"


def _setup():
    import django

    django.setup()


def _client(user_id: int, seconds: float, start_at: float, out: mp.Queue) -> None:
    _setup()
    from django.db import connection

    from levee.accounts.models import User
    from levee.billing.services import place_hold, settle_hold

    user = User.objects.get(pk=user_id)
    latencies = []
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        t0 = time.perf_counter()
        now = datetime.now(UTC)
        hold = place_hold(user=user, model=MODEL, prompt_tokens=1200, max_tokens=800, request_id=f"bench-{n}",
                          deadline=now + timedelta(minutes=5))
        settle_hold(hold.pk, prompt_cache_hit_tokens=640, prompt_cache_miss_tokens=560, completion_tokens=350,
                    started_at=now, finished_at=datetime.now(UTC))
        latencies.append(time.perf_counter() - t0)
        n += 1
    connection.close()
    out.put(latencies)


def _scenario(name: str, user_ids: list[int], seconds: float) -> dict:
    ctx = mp.get_context("spawn")  # a clean interpreter per client: no connection inherited by fork
    out: mp.Queue = ctx.Queue()
    start_at = time.time() + 3.0  # let every process finish django.setup() first
    procs = [ctx.Process(target=_client, args=(uid, seconds, start_at, out)) for uid in user_ids]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    latencies = sorted(x for r in results for x in r)
    pairs = len(latencies)
    return {"scenario": name, "clients": len(user_ids), "seconds": seconds, "pairs": pairs,
            "pairs_per_s": pairs / seconds,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(pairs - 1, int(pairs * 0.99))]}


def _hold_forms(user_id: int, rounds: int = 40, per_round: int = 25) -> None:
    """Milliseconds per place_hold of each form, interleaved so both see the same machine load."""
    from levee.accounts.models import User
    from levee.billing import services

    user = User.objects.get(pk=user_id)
    times: dict[str, list[float]] = {"one statement": [], "transaction": []}
    for _ in range(rounds):
        for form in times:
            services._WRITABLE_WITH = {"postgresql"} if form == "one statement" else set()
            t0 = time.perf_counter()
            holds = [services.place_hold(user=user, model=MODEL, prompt_tokens=1200, max_tokens=800,
                                         request_id="bench-form", deadline=datetime.now(UTC) + timedelta(minutes=5))
                     for _ in range(per_round)]
            times[form].append(1000 * (time.perf_counter() - t0) / per_round)
            for hold in holds:
                services.release_hold(hold.pk, reason="bench")
    services._WRITABLE_WITH = {"postgresql"}
    base = statistics.median(times["transaction"])
    print("| place_hold form | median ms | best ms | vs transaction |")
    print("|---|---|---|---|")
    for form, values in times.items():
        print(f"| {form} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{statistics.median(values) / base:.2f} |")


def _create_database(url: str) -> None:
    """Create the bench database if it is missing (connecting to the server's `postgres` database)."""
    import dj_database_url
    import psycopg

    conf = dj_database_url.parse(url)
    with psycopg.connect(host=conf["HOST"], port=conf["PORT"] or 5432, user=conf["USER"], password=conf["PASSWORD"],
                         dbname="postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [conf["NAME"]]).fetchone():
            conn.execute(f'CREATE DATABASE "{conf["NAME"]}"')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--hold-forms", action="store_true", help="time place_hold's two forms instead")
    args = parser.parse_args()
    if not (os.environ.get("DATABASE_URL") or "").startswith("postgres"):
        print("Set DATABASE_URL to a PostgreSQL database made for benchmarking.", file=sys.stderr)
        return 2
    _create_database(os.environ["DATABASE_URL"])
    _setup()
    from django.core.management import call_command
    from django.db import connection

    from levee.accounts.models import User
    from levee.billing.models import Price, TokenClass
    from levee.billing.pricing import currency
    from levee.billing.services import adjust, reconcile, wallet_for

    call_command("migrate", verbosity=0)
    for cls, nano in ((TokenClass.INPUT_CACHE_HIT, 28), (TokenClass.INPUT_CACHE_MISS, 280), (TokenClass.OUTPUT, 420)):
        Price.objects.get_or_create(model=MODEL, token_class=cls, currency=currency(),
                                    effective_from=datetime(2020, 1, 1, tzinfo=UTC), defaults={"nano_per_token": nano})
    users = []
    for i in range(args.clients):
        user, _ = User.objects.get_or_create(email=f"bench-{i}@example.com")
        adjust(wallet_for(user), 10**15, actor=None, reason="benchmark funds", source="bench")
        users.append(user.pk)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        print(f"PostgreSQL {cursor.fetchone()[0]}, {args.clients} client processes, {os.cpu_count()} CPUs")
    if args.hold_forms:
        _hold_forms(users[0])
        problems = reconcile()
        print(f"reconcile: {'OK' if not problems else problems[:5]}")
        return 1 if problems else 0
    connection.close()
    rows = [_scenario("own accounts", users, args.seconds), _scenario("one shared account", [users[0]] * args.clients,
                                                                       args.seconds)]
    print("| scenario | clients | hold+settle pairs/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['clients']} | {r['pairs_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    problems = reconcile()
    print(f"reconcile: {'OK' if not problems else problems[:5]}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
