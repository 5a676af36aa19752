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
its children, of --redis-pid, and of the edge's --proxy-pid) per bot request, net of the quiet
phase's rate; the generator's own CPU; and each legitimate kind's slowest actions with when they
started (seconds into the flood) and, for log-ins, every step's status and time, so a tail can be
read.

Processes: the users run (and are timed) in this process; the bots run in a forked one, so a bot
connection never delays the loop that times a user. The bots' process and every proof-of-work
solver (a browser's CPU, or a bot's) run at `--generator-nice` (19 by default): on one box they
then take only the CPU the server leaves, as machines elsewhere would; the report's bot rate says
whether they still sent at the asked rate (0 puts them on equal terms with the server).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Sequence
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


class Raw:
    """A minimal HTTP/1.1 client for bots: one fresh TCP connection per request from the bot's own
    address (as a botnet's machines connect), `Connection: close`, the answer read to its end.
    Much cheaper for the generator than an HTTP library, so the generator's CPU goes into sending."""

    def __init__(self, host: str, port: int, source: str):
        self.host, self.port, self.source = host, port, source

    async def request(self, addr: str, method: str, path: str, *, headers: dict | None = None,
                      body: bytes = b"", timeout: float = 15) -> tuple[int, dict, bytes]:
        local = (addr, 0) if self.source == "real" else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, local_addr=local), timeout)
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Connection: close"]
            if self.source != "real":
                lines.append(f"X-Forwarded-For: {addr}")
            for name, value in (headers or {}).items():
                lines.append(f"{name}: {value}")
            if body or method == "POST":
                lines.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
            if not status_line.startswith("HTTP/"):
                raise ConnectionError("no HTTP answer")
            answer_headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                answer_headers[name] = (answer_headers[name] + "; " + value.strip()) if name in answer_headers \
                    else value.strip()
            # The answer's own length when it gives one (a proxy that refused a body it was promised
            # keeps the connection open for it a while: waiting for its close would time the proxy's
            # lingering, not the answer), else until the server closes.
            length = answer_headers.get("content-length")
            content = await asyncio.wait_for(reader.readexactly(int(length)) if length else reader.read(), timeout)
        except asyncio.IncompleteReadError as e:
            raise ConnectionError("the answer was cut short") from e
        finally:
            writer.close()
        return int(status_line.split()[1]), answer_headers, content


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
    when: list = field(default_factory=list)  # (seconds into the flood, ms, label) of each action

    def add(self, good: bool, label, ms: float, at: float | None = None, trace: str = "") -> None:
        self.attempts += 1
        self.ok += good
        self.ms.append(ms)
        self.statuses[str(label)] += 1
        if at is not None:
            self.when.append((round(at, 1), round(ms), str(label), *([trace] if trace else [])))

    def summary(self) -> dict:
        out = {"attempts": self.attempts, "success_rate": round(self.ok / self.attempts, 4) if self.attempts else None,
               "p50_ms": _pct(self.ms, 0.5), "p99_ms": _pct(self.ms, 0.99), "statuses": dict(self.statuses)}
        if self.solve_ms:
            out["solve_p50_ms"], out["solve_p99_ms"] = _pct(self.solve_ms, 0.5), _pct(self.solve_ms, 0.99)
        if self.when:  # where the tail is: the slowest actions, by when they started
            out["slowest"] = sorted(self.when, key=lambda w: -w[1])[:4]
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


def _own_cpu(leave_out: int | None = None) -> float:
    """This process's CPU, its solving processes included (and its other children, but
    `leave_out`'s: the bots' process reports its own)."""
    import psutil

    total = 0.0
    for p in [psutil.Process(), *psutil.Process().children()]:
        if p.pid != leave_out:
            total += _cpu_of([p.pid]) if p.pid != os.getpid() else sum(p.cpu_times()[:2])
    return total


def _solve_here(challenge: str) -> str:
    from ops.flood import solve

    return solve(challenge)


_POOL = None
_NICE = 19  # the niceness of the bots' process and of every solving process (--generator-nice)


def _lower_priority() -> None:
    if _NICE:
        os.nice(_NICE)


async def _solve(challenge: str) -> str:
    """Solve a proof of work in a pool of processes: solving in a thread would hold the GIL and
    stall this process's event loop, inflating every latency it measures. The pool runs at the
    generator's niceness: the solving is a browser's (or a bot's) CPU, which is not the server's."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ProcessPoolExecutor

        _POOL = ProcessPoolExecutor(max_workers=2, initializer=_lower_priority)
    return await asyncio.get_running_loop().run_in_executor(_POOL, _solve_here, challenge)


class Attack:
    def __init__(self, target: str, *, rate: float, seconds: float, quiet: float, mix: dict[str, float],
                 legit: list, legit_interval: float, source: str, addresses: int, max_in_flight: int,
                 server_pids: list[int], redis_pids: list[int], database_url: str | None, legit_api: str,
                 model: str, max_tokens: int, victim: str, proxy_pids: Sequence[int] = (), seed: int = 1):
        from ops.flood import MAX_SECONDS, require_loopback

        require_loopback(target)
        self.target = target.rstrip("/")
        self.rate, self.seconds, self.quiet = rate, min(seconds, MAX_SECONDS), min(quiet, MAX_SECONDS)
        self.mix = {k: v for k, v in mix.items() if v > 0}
        self.legit, self.legit_interval, self.legit_api = legit, legit_interval, legit_api
        self.source, self.max_in_flight = source, max_in_flight
        self.server_pids, self.redis_pids, self.database_url = server_pids, redis_pids, database_url
        self.proxy_pids = proxy_pids
        self.model, self.max_tokens, self.victim = model, max_tokens, victim
        self.rng = random.Random(seed)
        base = int(ipaddress.ip_address("127.16.0.0"))
        self.addresses = [str(ipaddress.ip_address(base + self.rng.randrange(1, 1 << 20))) for _ in range(addresses)]
        host, port = self.target.split("//", 1)[1].split(":")
        self.raw = Raw(host, int(port), source)
        self.memo: dict = {}
        self.phase = "quiet"
        self.legit_stats = {phase: {"login": Kind(), "api": Kind()} for phase in ("quiet", "flood")}
        self.bot_stats = {k: Kind() for k in BOT_KINDS}
        self.in_flight = 0
        self.dropped = 0
        self.bot_requests = 0
        self.huge_prompt: bytes | None = None
        self.flood_perf: float | None = None  # when the flood started (perf_counter)

    def _since_flood(self, start: float) -> float | None:
        return start - self.flood_perf if self.flood_perf is not None else None

    # --- connections -----------------------------------------------------------------------------
    def _client(self, addr: str, **kw) -> httpx.AsyncClient:
        """A legitimate user's client (an HTTP library, cookies kept, as a browser would)."""
        if self.source == "real":
            transport = httpx.AsyncHTTPTransport(local_address=addr, retries=0, verify=_tls())
            return httpx.AsyncClient(base_url=self.target, transport=transport, timeout=30, verify=_tls(), **kw)
        return httpx.AsyncClient(base_url=self.target, timeout=30, verify=_tls(), headers={"X-Forwarded-For": addr}, **kw)

    @staticmethod
    def _cookies(headers: dict, jar: dict) -> None:
        for part in headers.get("set-cookie", "").split("; "):
            name, eq, value = part.partition("=")
            if eq and name in ("csrftoken", "levee_pass", "sessionid"):
                jar[name] = value

    @staticmethod
    def _cookie_header(jar: dict) -> dict:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}

    async def _form(self, addr: str, path: str, *, solve: bool) -> dict:
        """What a bot needs to post a form from `addr`: cookies and the CSRF token (and, when it is
        a solving bot, a pass first and the form's own challenge). Remembered per address."""
        from ops.flood import _PASS_FORM

        memo = self.memo.setdefault((addr, path), {"jar": {}})
        if "token" in memo:
            return memo
        status, headers, body = await self.raw.request(addr, "GET", path, headers=self._cookie_header(memo["jar"]))
        self.bot_requests += 1
        page = body.decode("utf-8", "replace")
        found = _PASS_FORM.search(page)
        if solve and found:
            nonce = await _solve(found.group(1))
            form = f"pow_challenge={found.group(1)}&pow_nonce={nonce}&next={path}".encode()
            _, pass_headers, _ = await self.raw.request(addr, "POST", "/shield/pass", body=form, headers={
                "Content-Type": "application/x-www-form-urlencoded"})
            self._cookies(pass_headers, memo["jar"])
            status, headers, body = await self.raw.request(addr, "GET", path, headers=self._cookie_header(memo["jar"]))
            self.bot_requests += 2
            page = body.decode("utf-8", "replace")
        self._cookies(headers, memo["jar"])
        token = _CSRF.search(page)
        memo["token"] = token.group(1) if token else ""
        challenge = _CHALLENGE.search(page)
        memo["pow"] = challenge.group(1) if challenge and "/shield/pass" not in page else ""
        if len(self.memo) > 20_000:
            self.memo.clear()
        return memo

    async def _post_form(self, addr: str, path: str, memo: dict, fields: dict) -> int:
        from urllib.parse import urlencode

        self.bot_requests += 1
        status, headers, _ = await self.raw.request(addr, "POST", path, body=urlencode(
            {"csrfmiddlewaretoken": memo.get("token", ""), **fields}).encode(), headers={
            "Content-Type": "application/x-www-form-urlencoded", "Referer": f"{self.target}{path}",
            **self._cookie_header(memo["jar"])})
        return status

    # --- bots --------------------------------------------------------------------------------------
    async def bot(self, kind: str) -> None:
        addr = self.rng.choice(self.addresses)
        start = time.perf_counter()
        label, good = "?", False
        try:
            label = await getattr(self, f"bot_{kind}")(addr)
            good = label in (302, 303)
        except (TimeoutError, OSError, ValueError, IndexError) as exc:
            label = type(exc).__name__
        finally:
            self.in_flight -= 1
        self.bot_stats[kind].add(good, label, (time.perf_counter() - start) * 1000)

    async def bot_signup(self, addr: str, *, solve: bool = False):
        memo = await self._form(addr, "/accounts/signup/", solve=solve)
        nonce, challenge = "0", memo.get("pow", "")
        if solve and challenge:
            nonce = await _solve(challenge)
            memo.pop("token", None)  # challenges are single-use: the next attempt fetches a fresh form
        return await self._post_form(addr, "/accounts/signup/", memo, {
            "email": f"bot{secrets.token_hex(5)}@flood.example", "password": "flood-password-1234",
            "pow_challenge": challenge, "pow_nonce": nonce})

    async def bot_signup_pow(self, addr: str):
        return await self.bot_signup(addr, solve=True)

    async def bot_spray(self, addr: str):
        memo = await self._form(addr, "/accounts/login/", solve=False)
        return await self._post_form(addr, "/accounts/login/", memo, {
            "username": self.victim, "password": f"guess-{secrets.token_hex(4)}"})

    async def bot_badkey(self, addr: str):
        self.bot_requests += 1
        key = "sk-" + "".join(self.rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789") for _ in range(48))
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "hi"}]}).encode()
        status, _, _ = await self.raw.request(addr, "POST", "/v1/chat/completions", body=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        return status

    async def bot_hugeprompt(self, addr: str):
        self.bot_requests += 1
        key = "sk-" + secrets.token_hex(24)
        if self.huge_prompt is None:
            self.huge_prompt = json.dumps({"model": self.model, "messages": [
                {"role": "user", "content": "a " * 1_950_000}]}).encode()
        status, _, _ = await self.raw.request(addr, "POST", "/v1/chat/completions", body=self.huge_prompt, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        return status

    async def bot_hugebody(self, addr: str):
        """A raw socket: a declared 64 MiB body (headers only), or a chunked one streamed until answered."""
        self.bot_requests += 1
        local = (addr, 0) if self.source == "real" else None
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.raw.host, self.raw.port,
                                                                        local_addr=local), 10)
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
                    try:
                        await writer.drain()
                    except ConnectionError:
                        break
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

        # One /24 per user (people log in from different networks; four on one /24 would share its
        # door allowance like an office behind one NAT)
        addr = f"127.{200 + n % 50}.{n // 50}.10" if self.source == "real" else f"198.18.{n}.10"
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
        """A log-in from a brand-new browser, as the browser does it: the interstitial (solved, the
        pass posted) whenever the site shows it — on the page or as the answer to the form — then the
        form again; answered 429/503 with a Retry-After of at most 5 s, it waits and sends the form
        again (as a person clicks again), the wait counted in its latency. The time spent solving is
        the browser's CPU, reported apart (solve_ms)."""
        stats = self.legit_stats[phase]["login"]
        trace: list[str] = []  # each step and its time, for the report's slowest actions
        async with self._client(addr) as browser:  # no cookies at all
            spent = 0.0
            start = time.perf_counter()
            good, label = False, "?"

            async def hop(method: str, path: str, **kw) -> httpx.Response:
                t = time.perf_counter()
                r = await browser.request(method, path, **kw)
                trace.append(f"{method} {path} {r.status_code} {(time.perf_counter() - t) * 1000:.0f}")
                return r

            try:
                page = await hop("GET", "/accounts/login/")
                for _ in range(5):
                    found = pass_form.search(page.text)
                    if found:
                        t = time.perf_counter()
                        nonce = await _solve(found.group(1))
                        spent += time.perf_counter() - t
                        trace.append(f"solve {(time.perf_counter() - t) * 1000:.0f}")
                        await hop("POST", "/shield/pass", data={"pow_challenge": found.group(1), "pow_nonce": nonce,
                                                               "next": "/accounts/login/"})
                        page = await hop("GET", "/accounts/login/")
                        continue
                    token = _CSRF.search(page.text)
                    r = await hop("POST", "/accounts/login/", data={
                        "csrfmiddlewaretoken": token.group(1) if token else "", "username": person.email,
                        "password": person.password})
                    label = r.status_code
                    if r.status_code == 429 and pass_form.search(r.text):
                        page = r  # the form's answer was the interstitial: solve it, then send the form again
                        continue
                    wait = float(r.headers.get("retry-after") or 0)
                    if r.status_code in (429, 503) and 0 < wait <= 5:
                        trace.append(f"wait {wait:.0f}s")
                        await asyncio.sleep(wait)  # a person clicks again after the short wait the page asks for
                        page = await hop("GET", "/accounts/login/")
                        continue
                    good = r.status_code == 302 and "/accounts/login" not in r.headers.get("location", "")
                    break
            except httpx.HTTPError as exc:
                label = type(exc).__name__
            if spent:
                stats.solve_ms.append(spent * 1000)
            stats.add(good, label, (time.perf_counter() - start - spent) * 1000, self._since_flood(start),
                      trace=" | ".join(trace))

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
            timing = r.headers.get("server-timing", "")  # where the server's time went (levee.core.timing)
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            good, label, timing = False, type(exc).__name__, ""
        stats.add(good, label, (time.perf_counter() - start) * 1000, self._since_flood(start), trace=timing)

    # --- the run ---------------------------------------------------------------------------------
    def start_bots(self):
        """The bots' process, forked before this one starts its event loop: it waits for the flood's
        start, sends for `seconds`, then puts its report (stats, requests, its CPU) on the queue.
        Bots and users in one event loop would make the users' latencies the generator's: every bot
        connection would delay the loop that times them. The bots' process (and its solvers) runs at
        the generator's niceness: on one box it then takes only the CPU the server leaves, as a
        botnet's machines would take none of the server's."""
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        go, results = ctx.Event(), ctx.Queue()

        def run() -> None:
            _lower_priority()
            go.wait()
            asyncio.run(self.bots())
            global _POOL
            cpu = _own_cpu()
            if _POOL is not None:
                _POOL.shutdown()
            results.put({"stats": self.bot_stats, "requests": self.bot_requests, "dropped": self.dropped,
                         "cpu_s": cpu, "nice": os.nice(0)})

        child = ctx.Process(target=run, daemon=True)
        child.start()
        return child, go, results

    async def bots(self) -> None:
        kinds, weights = list(self.mix), list(self.mix.values())
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.flood_end = start + self.seconds
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

    async def warm_up(self) -> None:
        """Before measuring: every user's key answers (the inference worker may still be loading)."""
        deadline = time.monotonic() + 300
        for person in self.legit:
            async with httpx.AsyncClient(base_url=self.target, timeout=60, headers={
                    "Authorization": f"Bearer {person.api_key}"}) as api:
                while time.monotonic() < deadline:
                    scratch = Kind()
                    self.legit_stats["warm"] = {"api": scratch}
                    await self.legit_call(api, "warm")
                    if scratch.ok:
                        break
                    await asyncio.sleep(2)
        self.legit_stats.pop("warm", None)

    async def run(self, bots_process) -> dict:
        """The quiet baseline, then the flood (the bots' process from `start_bots`, told to go)."""
        import logging

        logging.getLogger("httpx").setLevel(logging.WARNING)
        await self.warm_up()
        bots_before = self._db("SELECT count(*) FROM accounts_user WHERE email LIKE %s", ("%@flood.example",))
        loop = asyncio.get_running_loop()
        # idle: no traffic, the server's background (its beat, the escalation loop, Celery)
        idle0, proxy_idle0 = _cpu_of(self.server_pids), _cpu_of(self.proxy_pids)
        await asyncio.sleep(5)
        idle_rate = (_cpu_of(self.server_pids) - idle0) / 5
        proxy_idle_rate = (_cpu_of(self.proxy_pids) - proxy_idle0) / 5
        self.deadline = time.monotonic() + self.quiet + self.seconds
        users = [asyncio.ensure_future(self.user(n, p)) for n, p in enumerate(self.legit)]
        child, go, results = bots_process
        cpu0, own0 = _cpu_of(self.server_pids), _own_cpu(child.pid)
        await asyncio.sleep(self.quiet)
        cpu1, redis1, own1 = _cpu_of(self.server_pids), _cpu_of(self.redis_pids), _own_cpu(child.pid)
        proxy1 = _cpu_of(self.proxy_pids)
        self.phase = "flood"
        flood_wall = datetime.now(UTC)
        flood_t0 = time.monotonic()
        self.flood_perf = time.perf_counter()
        go.set()
        bots = await loop.run_in_executor(None, results.get, True, self.seconds + 120)
        child.join(10)
        self.bot_stats, self.bot_requests, self.dropped = bots["stats"], bots["requests"], bots["dropped"]
        flood_s = time.monotonic() - flood_t0
        cpu2, redis2, own2 = _cpu_of(self.server_pids), _cpu_of(self.redis_pids), _own_cpu(child.pid)
        proxy2 = _cpu_of(self.proxy_pids)
        await asyncio.gather(*users)
        bots_after = self._db("SELECT count(*) FROM accounts_user WHERE email LIKE %s", ("%@flood.example",))
        changes = self._db("SELECT at, from_mode, to_mode, source FROM shield_modechange WHERE at >= %s ORDER BY at",
                           (flood_wall,)) or []
        bot_total = sum(k.attempts for k in self.bot_stats.values())
        quiet_actions = sum(k.attempts for k in self.legit_stats["quiet"].values())
        flood_actions = sum(k.attempts for k in self.legit_stats["flood"].values())
        # what one legitimate action cost the server in the quiet phase (above the idle background)
        per_legit = max(0.0, (cpu1 - cpu0) - idle_rate * self.quiet) / max(1, quiet_actions)
        gross = cpu2 - cpu1
        net = gross - idle_rate * flood_s - per_legit * flood_actions
        return {
            "source": self.source, "addresses": len(self.addresses), "rate": self.rate, "flood_s": round(flood_s, 1),
            "bot_actions": bot_total, "bot_actions_per_s": round(bot_total / flood_s, 1),
            "bot_requests": self.bot_requests, "dropped_by_cap": self.dropped,
            "legit_actions_per_s": round(flood_actions / flood_s, 2),
            "legit": {phase: {k: v.summary() for k, v in kinds.items()} for phase, kinds in self.legit_stats.items()},
            "bots": {k: v.summary() for k, v in self.bot_stats.items() if v.attempts},
            "bot_accounts_created": (bots_after[0][0] - bots_before[0][0]) if bots_after else None,
            "mode_changes": [{"to": to, "from": frm, "source": src,
                              "after_s": round((at - flood_wall).total_seconds(), 1)} for at, frm, to, src in changes],
            "server_cpu_s": {"idle_per_s": round(idle_rate, 3), "quiet": round(cpu1 - cpu0, 2), "flood": round(gross, 2),
                             "per_legit_action_ms": round(per_legit * 1000, 1)},
            "server_cpu_ms_per_bot_request": {"gross": round(gross * 1000 / max(1, self.bot_requests), 3),
                                              "net_of_background_and_legit": round(net * 1000 / max(1, self.bot_requests), 3)},
            "redis_cpu_ms_per_bot_request": round((redis2 - redis1) * 1000 / max(1, self.bot_requests), 3)
            if self.redis_pids else None,
            # the edge's share (nginx, --proxy-pid), over the flood and net of its idle background
            "proxy_cpu_ms_per_bot_request": round(max(0.0, proxy2 - proxy1 - proxy_idle_rate * flood_s) * 1000
                                                  / max(1, self.bot_requests), 3) if self.proxy_pids else None,
            "generator_cpu_s": {"quiet": round(own1 - own0, 2), "flood_users": round(own2 - own1, 2),
                                "flood_bots": round(bots["cpu_s"], 2), "nice": _NICE},
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
    parser.add_argument("--proxy-pid", type=int, action="append", default=[],
                        help="the edge's processes (nginx): their CPU is reported apart from the server's")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--model", default="deepseek-chat")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--generator-nice", type=int, default=19,
                        help="niceness of the bots' process and of every proof-of-work solver (0: none)")
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
                    proxy_pids=args.proxy_pid,
                    database_url=args.database_url, legit_api=args.legit_api, model=args.model,
                    max_tokens=args.max_tokens, victim=args.victim or (legit[0].email if legit else "ada@example.com"))
    global _NICE
    _NICE = args.generator_nice
    bots = attack.start_bots()  # before this process's event loop: a fork must not inherit a running one
    print(json.dumps(asyncio.run(attack.run(bots)), indent=2, default=str))
    return 0
