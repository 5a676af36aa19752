#!/usr/bin/env python3
"""Flood simulator: bots sign up and guess passwords from many spoofed addresses while legitimate
users log in and call the API; prints what the legitimate users experienced.

It only ever talks to loopback (it refuses any other target) and stops by itself: after
--seconds (at most 300) or --max-requests bot requests (at most 200 000), whichever comes first.
Spoofed addresses travel in X-Forwarded-For, so start the server under test with
TRUSTED_PROXY_CIDRS=127.0.0.1/32 (the simulator is then the "proxy").

    python ops/flood.py --target http://127.0.0.1:8000 --seconds 30 \\
        --legit ada@example.com:'correct horse battery staple':sk-... [--legit ...]

Bots: `--bots` concurrent sign-up/login flooders that never solve the proof of work, plus
`--solver-bots` that solve it in Python (as a determined attacker would) to measure the trickle.
Legitimate users are returning ones: each logs in once before the bots start (so their browsers
hold the known-device cookie, as they would from before an attack), then calls GET /v1/me about
once a second and logs in again now and then, all while the bots run.
# TODO(issue: chat completions): when POST /v1/chat/completions lands, legitimate users call it too.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import random
import re
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

MAX_SECONDS = 300
MAX_REQUESTS = 200_000
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_CHALLENGE = re.compile(r'name="pow_challenge" value="([^"]*)"')


def require_loopback(target: str) -> None:
    host = urlparse(target).hostname
    if not host:
        raise SystemExit(f"flood: {target!r} has no host")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise SystemExit(f"flood: cannot resolve {host!r}: {exc}") from None
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"flood: refusing non-loopback target {target!r} ({', '.join(sorted(addresses))})")


@dataclass
class Legit:
    email: str
    password: str
    api_key: str
    address: str


@dataclass
class Report:
    seconds: float = 0.0
    legit_attempts: int = 0
    legit_ok: int = 0
    legit_latencies_ms: list = field(default_factory=list)
    legit_failures: Counter = field(default_factory=Counter)
    bot_requests: int = 0
    bot_signup_status: Counter = field(default_factory=Counter)
    bot_login_status: Counter = field(default_factory=Counter)
    bot_signups_admitted: int = 0
    bot_emails_admitted: list = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.legit_latencies_ms)

        def pct(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

        return {
            "seconds": round(self.seconds, 1),
            "legit_attempts": self.legit_attempts,
            "legit_success_rate": round(self.legit_ok / self.legit_attempts, 4) if self.legit_attempts else None,
            "legit_p50_ms": pct(0.50), "legit_p99_ms": pct(0.99),
            "legit_failures": dict(self.legit_failures),
            "bot_requests": self.bot_requests,
            "bot_signups_admitted": self.bot_signups_admitted,
            "bot_signup_status": dict(self.bot_signup_status),
            "bot_login_status": dict(self.bot_login_status),
        }


class Flood:
    def __init__(self, target: str, *, seconds: float, max_requests: int, bots: int, solver_bots: int,
                 legit: list[Legit], seed: int = 1):
        require_loopback(target)
        self.target = target.rstrip("/")
        self.seconds = min(seconds, MAX_SECONDS)
        self.deadline = time.monotonic() + self.seconds
        self.max_requests = min(max_requests, MAX_REQUESTS)
        self.bots, self.solver_bots, self.legit = bots, solver_bots, legit
        self.report = Report()
        self.rng = random.Random(seed)

    def running(self) -> bool:
        return time.monotonic() < self.deadline and self.report.bot_requests < self.max_requests

    def spoofed(self) -> str:
        # Carrier-grade NAT space: many /24s, none of them the legitimate users'.
        return str(ipaddress.ip_address(int(ipaddress.ip_address("100.64.0.0")) + self.rng.randrange(1, 4_000_000)))

    async def _form(self, http: httpx.AsyncClient, path: str, xff: str) -> tuple[str | None, str]:
        page = await http.get(path, headers={"X-Forwarded-For": xff})
        token = _CSRF.search(page.text)
        challenge = _CHALLENGE.search(page.text)
        return (token.group(1) if token else None), (challenge.group(1) if challenge else "")

    async def bot(self, n: int, solver: bool) -> None:
        async with httpx.AsyncClient(base_url=self.target, timeout=10) as http:
            token = None
            while self.running():
                xff = self.spoofed()
                try:
                    if token is None:  # one CSRF token per bot, reused for every post (as bots do)
                        token, _ = await self._form(http, "/accounts/login/", xff)
                    if solver or self.rng.random() < 0.5:
                        await self.bot_signup(http, xff, token, solver)
                    else:
                        await self.bot_login(http, xff, token)
                except httpx.HTTPError as exc:
                    self.report.bot_signup_status[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)  # a server that is down is not hammered in a hot loop
                await asyncio.sleep(0)

    async def bot_signup(self, http, xff: str, token: str | None, solver: bool) -> None:
        challenge, nonce = "", "0"
        if solver:  # a determined bot fetches the page for a challenge and pays for the work
            _, challenge = await self._form(http, "/accounts/signup/", xff)
            if challenge:
                nonce = await asyncio.to_thread(solve, challenge)
        email = f"bot{self.rng.randrange(10**9)}@flood.example"
        self.report.bot_requests += 1
        response = await http.post("/accounts/signup/", headers={"X-Forwarded-For": xff}, data={
            "csrfmiddlewaretoken": token or "", "email": email, "password": "flood-password-1234",
            "pow_challenge": challenge, "pow_nonce": nonce})
        self.report.bot_signup_status[response.status_code] += 1
        if response.status_code == 302 and "/signup/sent" in response.headers.get("location", ""):
            self.report.bot_signups_admitted += 1
            self.report.bot_emails_admitted.append(email)

    async def bot_login(self, http, xff: str, token: str | None) -> None:
        victim = self.rng.choice(self.legit).email if self.legit and self.rng.random() < 0.5 else \
            f"user{self.rng.randrange(10**6)}@example.com"
        self.report.bot_requests += 1
        response = await http.post("/accounts/login/", headers={"X-Forwarded-For": xff}, data={
            "csrfmiddlewaretoken": token or "", "username": victim, "password": f"guess{self.rng.randrange(10**6)}"})
        self.report.bot_login_status[response.status_code] += 1

    async def user(self, person: Legit, http: httpx.AsyncClient) -> None:
        try:
            while time.monotonic() < self.deadline:
                await asyncio.sleep(self.rng.uniform(0.6, 1.4))
                if self.rng.random() < 0.15:
                    await self.legit_login(http, person)
                else:
                    await self.measure("api", http.get("/v1/me", headers={"Authorization": f"Bearer {person.api_key}"}),
                                       lambda r: r.status_code == 200)
        finally:
            await http.aclose()

    async def warm_up(self, http, person: Legit) -> None:
        """The login of before the attack (not measured): retried as a person would, on Retry-After."""
        for _ in range(20):
            try:
                token, _ = await self._form(http, "/accounts/login/", person.address)
                response = await http.post("/accounts/login/", data={
                    "csrfmiddlewaretoken": token or "", "username": person.email, "password": person.password})
            except httpx.HTTPError:
                await asyncio.sleep(1)
                continue
            if response.status_code == 302:
                return
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        raise RuntimeError(f"flood: {person.email} could not log in even before the attack")

    async def legit_login(self, http, person: Legit) -> None:
        # A returning visitor: the session is gone, the browser's other cookies are kept.
        http.cookies.delete("sessionid")
        try:
            token, _ = await self._form(http, "/accounts/login/", person.address)
        except httpx.HTTPError:
            token = None
        await self.measure("login", http.post("/accounts/login/", data={
            "csrfmiddlewaretoken": token or "", "username": person.email, "password": person.password}),
            lambda r: r.status_code == 302 and "/accounts/login" not in r.headers.get("location", ""))

    async def measure(self, what: str, call, ok) -> None:
        start = time.perf_counter()
        try:
            response = await call
            good, label = ok(response), f"{what}:{response.status_code}"
        except httpx.HTTPError as exc:
            good, label = False, f"{what}:{type(exc).__name__}"
        self.report.legit_latencies_ms.append((time.perf_counter() - start) * 1000)
        self.report.legit_attempts += 1
        if good:
            self.report.legit_ok += 1
        else:
            self.report.legit_failures[label] += 1

    async def run(self) -> Report:
        # The users are returning ones: each logs in once before the attack starts (as they did
        # before any real attack), which gives their browsers the known-device cookie.
        browsers = [httpx.AsyncClient(base_url=self.target, timeout=15, headers={"X-Forwarded-For": p.address})
                    for p in self.legit]
        await asyncio.gather(*(self.warm_up(http, p) for http, p in zip(browsers, self.legit, strict=True)))
        start = time.monotonic()
        self.deadline = start + self.seconds
        tasks = [self.user(p, http) for p, http in zip(self.legit, browsers, strict=True)]
        tasks += [self.bot(n, solver=False) for n in range(self.bots)]
        tasks += [self.bot(n, solver=True) for n in range(self.solver_bots)]
        await asyncio.gather(*tasks)
        self.report.seconds = time.monotonic() - start
        return self.report


def solve(challenge: str) -> str:
    bits = int(challenge.split(".")[1])
    nonce = 0
    while True:
        digest = hashlib.sha256(f"{challenge}:{nonce}".encode()).digest()
        if len(digest) * 8 - int.from_bytes(digest, "big").bit_length() >= bits:
            return str(nonce)
        nonce += 1


def run(target: str, *, seconds: float = 20, max_requests: int = 20_000, bots: int = 16, solver_bots: int = 1,
        legit: list[Legit], seed: int = 1) -> Report:
    flood = Flood(target, seconds=seconds, max_requests=max_requests, bots=bots, solver_bots=solver_bots,
                  legit=legit, seed=seed)
    return asyncio.run(flood.run())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--bots", type=int, default=16)
    parser.add_argument("--solver-bots", type=int, default=1)
    parser.add_argument("--legit", action="append", default=[], metavar="EMAIL:PASSWORD:API_KEY",
                        help="a legitimate user (repeat); each gets its own address")
    args = parser.parse_args(argv)
    legit = []
    for n, item in enumerate(args.legit):
        email, rest = item.split(":", 1)
        password, key = rest.rsplit(":", 1)
        legit.append(Legit(email, password, key, address=f"192.0.2.{10 + n}"))
    report = run(args.target, seconds=args.seconds, max_requests=args.max_requests, bots=args.bots,
                 solver_bots=args.solver_bots, legit=legit)
    print(json.dumps(report.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
