"""The open-loop attack of ops/flood.py (`python ops/flood.py attack ...`): bots at a fixed rate from
many real source addresses, registered users logging in from new browsers and calling the API, a
quiet baseline first, and a report per kind with the server's CPU per bot request.

Addresses: `--source real` binds each bot connection to one of `--addresses` random addresses in
127.16.0.0/12 (Linux routes all of 127/8 to loopback; no proxy header, the server sees the peer);
`--source xff` sends them in X-Forwarded-For instead (start the server with
TRUSTED_PROXY_CIDRS=127.0.0.1/32). Legitimate users have addresses of their own (127.200.0.n, or
192.0.2.n by header).

Open loop: every 1/rate seconds a bot action starts whether or not earlier ones finished (at most
`--max-in-flight`; a start that finds the cap reached is counted as `dropped`, never delayed).

Bot kinds (weights with --mix): `signup` (the form, no proof of work), `signup_pow` (solves the
interstitial and the form's proof of work, as a determined bot would), `spray` (wrong passwords at
a registered user's email), `badkey` (API calls with random keys), `hugebody` (a declared 64 MiB
body, and a chunked one streamed until the server answers), `hugeprompt` (a 3.9 MB prompt with a
random key).

Legitimate users alternate: `login` from a brand-new browser (no cookies: the interstitial when the
site asks for one — its solving time, the browser's CPU, is reported apart as `solve_ms` — then the
form and the POST; success = redirected away from the log-in page), and `api` (POST
/v1/chat/completions with their key, not streamed, or GET /v1/models with --legit-api models).

Measured per phase (quiet, flood): each kind's count, success rate, p50/p99; bot outcomes by
status; bot accounts created (counted in the database, --database-url); the mode changes and their
time from the flood's start (ModeChange rows); the server's CPU (user + system of --server-pid and
its children, and of --redis-pid) per bot request, net of the quiet phase's rate; this generator's
own CPU.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import re
import resource
import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

_SSL = None  # one TLS context for every client: making one per client costs milliseconds of CPU


def _tls():
    global _SSL
    if _SSL is None:
        import ssl

        _SSL = ssl.create_default_context()
    return _SSL


BOT_KINDS = ("signup", "signup_pow", "spray", "badkey", "hugebody", "hugeprompt")
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_CHALLENGE = re.compile(r'name="pow_challenge" value="([^"]*)"')


def _pct(values: list, p: float):
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1) if ordered else None


@dataclass
class Kind:
    attempts: int = 0
    ok: int = 0
    ms: list = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    solve_ms: list = field(default_factory=list)

    def add(self, good: bool, label, ms: float) -> None:
        self.attempts += 1
        self.ok += good
        self.ms.append(ms)
        self.statuses[str(label)] += 1

    def summary(self) -> dict:
        out = {"attempts": self.attempts, "success_rate": round(self.ok / self.attempts, 4) if self.attempts else None,
               "p50_ms": _pct(self.ms, 0.5), "p99_ms": _pct(self.ms, 0.99), "statuses": dict(self.statuses)}
        if self.solve_ms:
            out["solve_p50_ms"], out["solve_p99_ms"] = _pct(self.solve_ms, 0.5), _pct(self.solve_ms, 0.99)
        return out


def _cpu_of(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _solve(challenge: str) -> str:
    from ops.flood import solve

    return solve(challenge)


class Attack:
    def __init__(self, target: str, *, rate: float, seconds: float, quiet: float, mix: dict[str, float],
                 legit: list, legit_interval: float, source: str, addresses: int, max_in_flight: int,
                 server_pids: list[int], redis_pids: list[int], database_url: str | None, legit_api: str,
                 model: str, max_tokens: int, victim: str, seed: int = 1):
        from ops.flood import MAX_SECONDS, require_loopback

        require_loopback(target)
        self.target = target.rstrip("/")
        self.rate, self.seconds, self.quiet = rate, min(seconds, MAX_SECONDS), min(quiet, MAX_SECONDS)
        self.mix = {k: v for k, v in mix.items() if v > 0}
        self.legit, self.legit_interval, self.legit_api = legit, legit_interval, legit_api
        self.source, self.max_in_flight = source, max_in_flight
        self.server_pids, self.redis_pids, self.database_url = server_pids, redis_pids, database_url
        self.model, self.max_tokens, self.victim = model, max_tokens, victim
        self.rng = random.Random(seed)
        base = int(ipaddress.ip_address("127.16.0.0"))
        self.addresses = [str(ipaddress.ip_address(base + self.rng.randrange(1, 1 << 20))) for _ in range(addresses)]
        self.clients: OrderedDict[str, tuple[httpx.AsyncClient, str | None]] = OrderedDict()
        self.phase = "quiet"
        self.legit_stats = {phase: {"login": Kind(), "api": Kind()} for phase in ("quiet", "flood")}
        self.bot_stats = {k: Kind() for k in BOT_KINDS}
        self.in_flight = 0
        self.dropped = 0
        self.bot_requests = 0
        self.huge_prompt: bytes | None = None

    # --- connections -----------------------------------------------------------------------------
    def _client(self, addr: str, **kw) -> httpx.AsyncClient:
        if self.source == "real":
            transport = httpx.AsyncHTTPTransport(local_address=addr, retries=0, verify=_tls())
            return httpx.AsyncClient(base_url=self.target, transport=transport, timeout=15, verify=_tls(), **kw)
        return httpx.AsyncClient(base_url=self.target, timeout=15, verify=_tls(), headers={"X-Forwarded-For": addr}, **kw)

    async def _bot_client(self, addr: str) -> tuple[httpx.AsyncClient, dict]:
        entry = self.clients.get(addr)
        if entry is None:
            entry = (self._client(addr), {})
            self.clients[addr] = entry
            while len(self.clients) > 400:
                _, (old, _) = self.clients.popitem(last=False)
                asyncio.ensure_future(old.aclose())
        else:
            self.clients.move_to_end(addr)
        return entry

    async def _csrf(self, http: httpx.AsyncClient, memo: dict, path: str, *, solve: bool) -> str:
        if path in memo:
            return memo[path]
        from ops.flood import _PASS_FORM, earn_pass

        page = await http.get(path)
        self.bot_requests += 1
        if solve and _PASS_FORM.search(page.text):
            await earn_pass(http, page.text, path)
            page = await http.get(path)
            self.bot_requests += 2
        found = _CSRF.search(page.text)
        memo[path] = found.group(1) if found else ""
        challenge = _CHALLENGE.search(page.text)
        memo[path + "#pow"] = challenge.group(1) if challenge and "/shield/pass" not in page.text else ""
        return memo[path]

    # --- bots --------------------------------------------------------------------------------------
    async def bot(self, kind: str) -> None:
        addr = self.rng.choice(self.addresses)
        start = time.perf_counter()
        label, good = "?", False
        try:
            label = await getattr(self, f"bot_{kind}")(addr)
            good = label in (302, 303, "created")
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            label = type(exc).__name__
        finally:
            self.in_flight -= 1
        self.bot_stats[kind].add(good, label, (time.perf_counter() - start) * 1000)

    async def bot_signup(self, addr: str, *, solve: bool = False):
        http, memo = await self._bot_client(addr)
        token = await self._csrf(http, memo, "/accounts/signup/", solve=solve)
        nonce, challenge = "0", memo.get("/accounts/signup/#pow", "")
        if solve and challenge:
            nonce = await asyncio.to_thread(_solve, challenge)
            memo.pop("/accounts/signup/", None)  # single-use: the next attempt fetches a fresh one
        self.bot_requests += 1
        r = await http.post("/accounts/signup/", data={
            "csrfmiddlewaretoken": token, "email": f"bot{secrets.token_hex(5)}@flood.example",
            "password": "flood-password-1234", "pow_challenge": challenge, "pow_nonce": nonce})
        return r.status_code

    async def bot_signup_pow(self, addr: str):
        return await self.bot_signup(addr, solve=True)

    async def bot_spray(self, addr: str):
        http, memo = await self._bot_client(addr)
        token = await self._csrf(http, memo, "/accounts/login/", solve=False)
        self.bot_requests += 1
        r = await http.post("/accounts/login/", data={"csrfmiddlewaretoken": token, "username": self.victim,
                                                      "password": f"guess-{secrets.token_hex(4)}"})
        return r.status_code

    async def bot_badkey(self, addr: str):
        http, _ = await self._bot_client(addr)
        self.bot_requests += 1
        key = "sk-" + "".join(self.rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789") for _ in range(48))
        r = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": self.model, "messages": [{"role": "user", "content": "hi"}]})
        return r.status_code

    async def bot_hugeprompt(self, addr: str):
        http, _ = await self._bot_client(addr)
        self.bot_requests += 1
        key = "sk-" + secrets.token_hex(24)
        if self.huge_prompt is None:
            self.huge_prompt = json.dumps({"model": self.model, "messages": [
                {"role": "user", "content": "a " * 1_950_000}]}).encode()
        r = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}",
                                                             "Content-Type": "application/json"}, content=self.huge_prompt)
        return r.status_code

    async def bot_hugebody(self, addr: str):
        """A raw socket: a declared 64 MiB body (headers only), or a chunked one streamed until answered."""
        self.bot_requests += 1
        host, port = self.target.split("//", 1)[1].split(":")
        local = (addr, 0) if self.source == "real" else None
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), local_addr=local), 10)
        xff = b"" if self.source == "real" else b"X-Forwarded-For: " + addr.encode() + b"\r\n"
        try:
            if self.rng.random() < 0.5:
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + xff +
                             b"Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n")
                await writer.drain()
            else:
                writer.write(b"POST /accounts/signup/ HTTP/1.1\r\nHost: x\r\n" + xff +
                             b"Transfer-Encoding: chunked\r\n\r\n")
                chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
                for _ in range(1024):  # up to 64 MiB, stopping when the server has answered
                    writer.write(chunk)
                    await writer.drain()
                    try:
                        line = await asyncio.wait_for(reader.readline(), 0.001)
                        return int(line.split()[1]) if line else "closed"
                    except TimeoutError:
                        continue
            line = await asyncio.wait_for(reader.readline(), 10)
            return int(line.split()[1]) if line else "closed"
        finally:
            writer.close()

    # --- legitimate users ------------------------------------------------------------------------
    async def user(self, n: int, person) -> None:
        from ops.flood import _PASS_FORM

        addr = f"127.200.0.{10 + n}" if self.source == "real" else f"192.0.2.{10 + n}"
        api = self._client(addr, headers={"Authorization": f"Bearer {person.api_key}"}) if self.source == "real" \
            else httpx.AsyncClient(base_url=self.target, timeout=15,
                                   headers={"X-Forwarded-For": addr, "Authorization": f"Bearer {person.api_key}"})
        turn = n
        try:
            while time.monotonic() < self.deadline:
                await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.legit_interval)
                phase = self.phase
                turn += 1
                if turn % 2:
                    await self.legit_login(addr, person, phase, _PASS_FORM)
                else:
                    await self.legit_call(api, phase)
        finally:
            await api.aclose()

    async def legit_login(self, addr: str, person, phase: str, pass_form) -> None:
        stats = self.legit_stats[phase]["login"]
        async with self._client(addr) as browser:  # a brand-new browser: no cookies at all
            spent = 0.0
            start = time.perf_counter()
            good, label = False, "?"
            try:
                page = await browser.get("/accounts/login/")
                found = pass_form.search(page.text)
                if found:
                    t = time.perf_counter()
                    nonce = await asyncio.to_thread(_solve, found.group(1))
                    spent = time.perf_counter() - t
                    stats.solve_ms.append(spent * 1000)
                    await browser.post("/shield/pass", data={"pow_challenge": found.group(1), "pow_nonce": nonce,
                                                            "next": "/accounts/login/"})
                    page = await browser.get("/accounts/login/")
                token = _CSRF.search(page.text)
                r = await browser.post("/accounts/login/", data={
                    "csrfmiddlewaretoken": token.group(1) if token else "", "username": person.email,
                    "password": person.password})
                good = r.status_code == 302 and "/accounts/login" not in r.headers.get("location", "")
                label = r.status_code
            except httpx.HTTPError as exc:
                label = type(exc).__name__
            stats.add(good, label, (time.perf_counter() - start - spent) * 1000)

    async def legit_call(self, api: httpx.AsyncClient, phase: str) -> None:
        stats = self.legit_stats[phase]["api"]
        start = time.perf_counter()
        try:
            if self.legit_api == "models":
                r = await api.get("/v1/models")
                good = r.status_code == 200
            else:
                r = await api.post("/v1/chat/completions", timeout=60, json={
                    "model": self.model, "max_tokens": self.max_tokens, "stream": False,
                    "messages": [{"role": "user", "content": "Say something short."}]})
                good = r.status_code == 200 and bool(r.json()["choices"][0].get("finish_reason"))
            label = r.status_code
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            good, label = False, type(exc).__name__
        stats.add(good, label, (time.perf_counter() - start) * 1000)

    # --- the run ---------------------------------------------------------------------------------
    async def bots(self) -> None:
        kinds, weights = list(self.mix), list(self.mix.values())
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        tasks = set()
        while loop.time() < self.flood_end:
            n += 1
            due = start + n / self.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.in_flight >= self.max_in_flight:
                self.dropped += 1
                continue
            self.in_flight += 1
            task = asyncio.ensure_future(self.bot(self.rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=15)

    def _db(self, sql: str, args=()):
        if not self.database_url:
            return None
        import psycopg

        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, args).fetchall()

    async def run(self) -> dict:
        import logging

        logging.getLogger("httpx").setLevel(logging.WARNING)
        bots_before = self._db("SELECT count(*) FROM accounts_user WHERE email LIKE %s", ("%@flood.example",))
        loop = asyncio.get_running_loop()
        self.deadline = time.monotonic() + self.quiet + self.seconds
        users = [asyncio.ensure_future(self.user(n, p)) for n, p in enumerate(self.legit)]
        cpu0, redis0, own0 = _cpu_of(self.server_pids), _cpu_of(self.redis_pids), _own_cpu()
        await asyncio.sleep(self.quiet)
        cpu1, redis1, own1 = _cpu_of(self.server_pids), _cpu_of(self.redis_pids), _own_cpu()
        self.phase = "flood"
        flood_wall = datetime.now(UTC)
        flood_t0 = time.monotonic()
        self.flood_end = loop.time() + self.seconds
        await self.bots()
        flood_s = time.monotonic() - flood_t0
        cpu2, redis2, own2 = _cpu_of(self.server_pids), _cpu_of(self.redis_pids), _own_cpu()
        await asyncio.gather(*users)
        for http, _ in self.clients.values():
            await http.aclose()
        bots_after = self._db("SELECT count(*) FROM accounts_user WHERE email LIKE %s", ("%@flood.example",))
        changes = self._db("SELECT at, from_mode, to_mode, source FROM shield_modechange WHERE at >= %s ORDER BY at",
                           (flood_wall,)) or []
        quiet_rate = (cpu1 - cpu0) / self.quiet if self.quiet else 0.0
        bot_total = sum(k.attempts for k in self.bot_stats.values())
        net = (cpu2 - cpu1) - quiet_rate * flood_s
        legit_flood_rate = sum(k.attempts for k in self.legit_stats["flood"].values()) / flood_s
        return {
            "source": self.source, "addresses": len(self.addresses), "rate": self.rate, "flood_s": round(flood_s, 1),
            "bot_actions": bot_total, "bot_actions_per_s": round(bot_total / flood_s, 1),
            "bot_requests": self.bot_requests, "dropped_by_cap": self.dropped,
            "legit_requests_per_s": round(legit_flood_rate, 2),
            "legit": {phase: {k: v.summary() for k, v in kinds.items()} for phase, kinds in self.legit_stats.items()},
            "bots": {k: v.summary() for k, v in self.bot_stats.items() if v.attempts},
            "bot_accounts_created": (bots_after[0][0] - bots_before[0][0]) if bots_after else None,
            "mode_changes": [{"to": to, "from": frm, "source": src,
                              "after_s": round((at - flood_wall).total_seconds(), 1)} for at, frm, to, src in changes],
            "server_cpu_s": {"quiet": round(cpu1 - cpu0, 2), "flood": round(cpu2 - cpu1, 2)},
            "server_cpu_ms_per_bot_request": round(net * 1000 / max(1, self.bot_requests), 3),
            "redis_cpu_ms_per_bot_request": round(((redis2 - redis1) - (redis1 - redis0) / max(self.quiet, 1e-9) * flood_s)
                                                  * 1000 / max(1, self.bot_requests), 3) if self.redis_pids else None,
            "generator_cpu_s": {"quiet": round(own1 - own0, 2), "flood": round(own2 - own1, 2)},
            "load_average_after": os.getloadavg(),
        }


def main(argv: list[str]) -> int:
    import argparse

    from ops.flood import Legit

    parser = argparse.ArgumentParser(prog="flood.py attack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="http://127.0.0.1:8000")
    parser.add_argument("--rate", type=float, default=80, help="bot actions per second (open loop)")
    parser.add_argument("--seconds", type=float, default=40, help="flood length")
    parser.add_argument("--quiet", type=float, default=15, help="quiet baseline before the flood")
    parser.add_argument("--mix", default="signup=3,signup_pow=0.1,spray=3,badkey=3,hugebody=0.3,hugeprompt=0.3")
    parser.add_argument("--source", choices=["real", "xff"], default="real")
    parser.add_argument("--addresses", type=int, default=10_000)
    parser.add_argument("--max-in-flight", type=int, default=1500)
    parser.add_argument("--legit", action="append", default=[], metavar="EMAIL:PASSWORD:API_KEY")
    parser.add_argument("--legit-interval", type=float, default=1.0, help="mean seconds between a user's actions")
    parser.add_argument("--legit-api", choices=["chat", "models"], default="chat")
    parser.add_argument("--victim", help="the email the sprayers aim at (default: the first legit user's)")
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    parser.add_argument("--redis-pid", type=int, action="append", default=[])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--model", default="deepseek-chat")
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    legit = []
    for item in args.legit:
        email, rest = item.split(":", 1)
        password, key = rest.rsplit(":", 1)
        legit.append(Legit(email, password, key, address=""))
    mix = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(","))}
    unknown = set(mix) - set(BOT_KINDS)
    if unknown:
        parser.error(f"unknown bot kinds: {sorted(unknown)}")
    attack = Attack(args.target, rate=args.rate, seconds=args.seconds, quiet=args.quiet, mix=mix, legit=legit,
                    legit_interval=args.legit_interval, source=args.source, addresses=args.addresses,
                    max_in_flight=args.max_in_flight, server_pids=args.server_pid, redis_pids=args.redis_pid,
                    database_url=args.database_url, legit_api=args.legit_api, model=args.model,
                    max_tokens=args.max_tokens, victim=args.victim or (legit[0].email if legit else "ada@example.com"))
    print(json.dumps(asyncio.run(attack.run()), indent=2, default=str))
    return 0
