#!/usr/bin/env python3
"""The admission benchmark: `make run`'s stack (ops/run.py: gunicorn + uvicorn workers, the Celery
platform worker and beat, the inference worker on the demo checkpoint) on its own Redis, database,
data folder and port, then the open-loop attack of `ops/flood.py attack` against it from real
loopback source addresses, in a process of its own. Prints the attack's JSON report; stops
everything it started.

    .venv/bin/python ops/bench/admission_flood.py --port 6412 --redis-port 6411 \\
        --database postgres://postgres@127.0.0.1:5432/levee_flood -- --rate 80 --seconds 40 --quiet 20

With `--proxy` the attack meets production's edge first: nginx with ops/nginx/'s configuration
in front of gunicorn, the bots' and users' addresses reaching Levee in X-Forwarded-For; nginx's
CPU is reported beside the web workers'.

Arguments after `--` go to `ops/flood.py attack` (see its --help); --target, --legit, --server-pid,
--proxy-pid, --redis-pid and --database-url are filled in here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ops.edge import running as running_edge  # noqa: E402
from ops.procs import stop_group  # noqa: E402

PASSWORD = "correct horse battery staple"

_SEED = """
from levee.accounts.models import User
from levee.billing import services as billing
from levee.keys.services import create_api_key
from django.utils import timezone
out = []
for n in range({users}):
    email = f"person{{n}}@example.com"
    user = User.objects.filter(email=email).first() or User.objects.create_user(
        email, {password!r}, email_verified_at=timezone.now())
    billing.topup(billing.wallet_for(user), 10**10, source="bench", external_id=f"flood-{{n}}-{{timezone.now().timestamp()}}")
    _, raw = create_api_key(user, name="flood")
    out.append(f"{{email}}:{password}:{{raw}}")
print("SEEDED " + "|".join(out))
"""


def stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=6412)
    parser.add_argument("--redis-port", type=int, default=6411)
    parser.add_argument("--database", default="postgres://postgres@127.0.0.1:5432/levee_flood")
    parser.add_argument("--data-dir", default="/tmp/levee-flood-var")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--trickle", type=int, default=5, help="SHIELD_SIGNUP_TRICKLE_PER_MINUTE")
    parser.add_argument("--proxy", action="store_true",
                        help="production's edge in front: nginx (Debian's, ops/nginx/ via ops.edge) on --port, "
                             "gunicorn behind it on --port + 1, TRUSTED_PROXY_CIDRS naming it")
    parser.add_argument("--shield-unix-socket", action="store_true",
                        help="the shield's Redis (SHIELD_REDIS_URL) through the same server's Unix socket, "
                             "as a single-host deployment can (the rest keeps TCP)")


@dataclass
class Running:
    base: str
    env: dict
    web_pids: list[int]
    redis_pid: int
    legit: list[str]  # "email:password:key"
    proxy_pids: list[int]  # nginx's master and workers (--proxy), else empty


@contextmanager
def running_stack(args: argparse.Namespace) -> Iterator[Running]:
    """`make run`'s stack on a fresh database, Redis and data folder of its own, the users seeded;
    everything it started is stopped on the way out."""
    db_name = args.database.rsplit("/", 1)[1]
    # A fresh database each run: the mode, its audit rows and the bot accounts start from nothing.
    subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", db_name], capture_output=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", db_name], capture_output=True, check=True)
    data = Path(args.data_dir)
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    socket = data / "redis.sock"
    redis = subprocess.Popen(["redis-server", "--port", str(args.redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(data), "--logfile", str(data / "redis.log"),
                              "--unixsocket", str(socket), "--unixsocketperm", "700"])
    web_port = args.port + 1 if args.proxy else args.port
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0", "DATABASE_URL": args.database,
           "LEVEE_DATA_DIR": str(data), "LEVEE_BIND": f"127.0.0.1:{web_port}", "DEBUG": "0",
           "LEVEE_ENV": "development", "SHIELD_SIGNUP_TRICKLE_PER_MINUTE": str(args.trickle),
           "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}"}
    if args.shield_unix_socket:
        env["SHIELD_REDIS_URL"] = f"unix://{socket}?db=0"
    if args.proxy:
        env["TRUSTED_PROXY_CIDRS"] = "127.0.0.1/32"  # nginx reaches gunicorn from loopback's first address
    log = open(data / "stack.log", "wb")
    stack = subprocess.Popen([sys.executable, str(ROOT / "ops" / "run.py")], env=env, cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}"
    edge = ExitStack()
    try:
        if args.proxy:
            proxy = edge.enter_context(running_edge(data / "nginx", upstream=f"127.0.0.1:{web_port}", listen=args.port))
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if stack.poll() is not None or time.monotonic() > deadline:
                print((data / "stack.log").read_text(errors="replace")[-3000:], file=sys.stderr)
                raise SystemExit(1)
            time.sleep(0.5)
        seeded = subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c",
                                 _SEED.format(users=args.users, password=PASSWORD)],
                                env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        legit = next(line for line in seeded.stdout.splitlines() if line.startswith("SEEDED "))[len("SEEDED "):].split("|")
        import psutil

        gunicorn = [p.pid for p in psutil.Process(stack.pid).children() if "gunicorn" in " ".join(p.cmdline())]
        time.sleep(5)  # the workers settle (the inference worker loads its checkpoint)
        proxy_pids = [proxy.pid, *(c.pid for c in psutil.Process(proxy.pid).children())] if args.proxy else []
        yield Running(base, env, gunicorn, redis.pid, legit, proxy_pids)
    finally:
        edge.close()
        stop_group(stack, timeout=20)
        redis.terminate()
        redis.wait(timeout=10)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    stack_arguments(parser)
    parser.add_argument("attack", nargs=argparse.REMAINDER, help="-- then ops/flood.py attack arguments")
    args = parser.parse_args()
    extra = args.attack[1:] if args.attack[:1] == ["--"] else args.attack
    with running_stack(args) as stack:
        cmd = [sys.executable, str(ROOT / "ops" / "flood.py"), "attack", "--target", stack.base,
               "--database-url", args.database, "--redis-pid", str(stack.redis_pid),
               *[f"--server-pid={pid}" for pid in stack.web_pids], *[f"--proxy-pid={pid}" for pid in stack.proxy_pids],
               *[f"--legit={item}" for item in stack.legit],
               *extra]
        started = time.time()
        load_before = os.getloadavg()
        result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return result.returncode
        report = json.loads(result.stdout)
        report["load_average_before"] = load_before
        report["wall_s"] = round(time.time() - started, 1)
        print(json.dumps(report, indent=2))
        return 0


if __name__ == "__main__":
    sys.exit(main())
