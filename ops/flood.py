#!/usr/bin/env python3
"""Flood simulator: bots sign up and guess passwords from many spoofed addresses while legitimate
users log in, chat and call the API; prints what the legitimate users experienced.

It only ever talks to loopback (it refuses any other target) and stops by itself: after
--seconds (at most 300) or --max-requests bot requests (at most 200 000), whichever comes first.
Spoofed addresses travel in X-Forwarded-For, so start the server under test with
TRUSTED_PROXY_CIDRS=127.0.0.1/32 (the simulator is then the "proxy").

    python ops/flood.py --target http://127.0.0.1:8000 --seconds 30 --model deepseek-chat \\
        --legit ada@example.com:'correct horse battery staple':sk-... [--legit ...]

`python ops/flood.py attack --help`: the open-loop attack from real source addresses (127.x.y.z),
bot kinds, a quiet baseline and the server's CPU per bot request (ops/flood_attack.py).

Bots: `--bots` concurrent sign-up/login flooders that never solve the proof of work, plus
`--solver-bots` that solve it in Python (as a determined attacker would) to measure the trickle.
Legitimate users are returning ones: each logs in once before the bots start (so their browsers
hold the known-device cookie, as they would from before an attack), then, about once a second
while the bots run, does one of:

- `chat`: a message in the web chat as the logged-in browser does it (the chat page for its CSRF
  token, a conversation created once per session, then the message POST, read as Server-Sent
  Events); a success is a 200 stream that ends with `event: done` and status `complete`;
- `api`: POST /v1/chat/completions with the user's API key (from a client of its own, no browser
  cookies), streamed or not at random, `--max-tokens` small; a success is a 200 that completes:
  a chunk with a finish_reason, then `data: [DONE]` (streamed), or a finish_reason (not streamed);
- `login` (15 %): a fresh log-in (session cookie dropped, other cookies kept).

Chat and API calls alternate, so each user does both. The summary gives each kind's count, success
rate and latency (chat and API: until the reply completed), and all of them together. The server
must have inference workers for the model, and the users' wallets money for the API.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import logging
import random
import re
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

MAX_SECONDS = 300
MAX_REQUESTS = 200_000
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_CHALLENGE = re.compile(r'name="pow_challenge" value="([^"]*)"')
# The admission layer's interstitial (levee.shield.admission): a form posting a solved challenge to /shield/pass.
_PASS_FORM = re.compile(r"action='/shield/pass'.*?name=pow_challenge value='([^']+)'", re.S)


async def earn_pass(http: httpx.AsyncClient, page: str, target: str, headers: dict | None = None) -> bool:
    """Do what the interstitial's script does: solve its challenge and post it; the pass cookie lands
    in `http`'s jar. True if a pass was set."""
    found = _PASS_FORM.search(page)
    if not found:
        return False
    nonce = await asyncio.to_thread(solve, found.group(1))
    answer = await http.post("/shield/pass", headers=headers or {},
                             data={"pow_challenge": found.group(1), "pow_nonce": nonce, "next": target})
    return answer.status_code == 303 and "levee_pass" in answer.headers.get("set-cookie", "")


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


KINDS = ("login", "chat", "api")


def _percentile(values: list, p: float):
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1) if ordered else None


@dataclass
class KindStats:
    attempts: int = 0
    ok: int = 0
    latencies_ms: list = field(default_factory=list)

    def summary(self) -> dict:
        return {"attempts": self.attempts, "success_rate": round(self.ok / self.attempts, 4) if self.attempts else None,
                "p50_ms": _percentile(self.latencies_ms, 0.50), "p99_ms": _percentile(self.latencies_ms, 0.99)}


@dataclass
class Report:
    seconds: float = 0.0
    legit_attempts: int = 0
    legit_ok: int = 0
    legit_latencies_ms: list = field(default_factory=list)
    legit_failures: Counter = field(default_factory=Counter)
    kinds: dict = field(default_factory=lambda: {kind: KindStats() for kind in KINDS})
    bot_requests: int = 0
    bot_signup_status: Counter = field(default_factory=Counter)
    bot_login_status: Counter = field(default_factory=Counter)
    bot_signups_admitted: int = 0
    bot_emails_admitted: list = field(default_factory=list)

    def record(self, kind: str, good: bool, label: str, ms: float) -> None:
        stats = self.kinds[kind]
        stats.attempts += 1
        stats.latencies_ms.append(ms)
        self.legit_attempts += 1
        self.legit_latencies_ms.append(ms)
        if good:
            stats.ok += 1
            self.legit_ok += 1
        else:
            self.legit_failures[label] += 1

    def summary(self) -> dict:
        return {
            "seconds": round(self.seconds, 1),
            "legit_attempts": self.legit_attempts,
            "legit_success_rate": round(self.legit_ok / self.legit_attempts, 4) if self.legit_attempts else None,
            "legit_p50_ms": _percentile(self.legit_latencies_ms, 0.50),
            "legit_p99_ms": _percentile(self.legit_latencies_ms, 0.99),
            "legit_by_kind": {kind: stats.summary() for kind, stats in self.kinds.items()},
            "legit_failures": dict(self.legit_failures),
            "bot_requests": self.bot_requests,
            "bot_signups_admitted": self.bot_signups_admitted,
            "bot_signup_status": dict(self.bot_signup_status),
            "bot_login_status": dict(self.bot_login_status),
        }


@dataclass
class Browser:
    """A legitimate user's browser tab on the chat page: its CSRF token (a log-in rotates it) and
    the conversation it is in."""

    csrf: str | None = None
    conversation: int | None = None


class Flood:
    def __init__(self, target: str, *, seconds: float, max_requests: int, bots: int, solver_bots: int,
                 legit: list[Legit], seed: int = 1, model: str = "deepseek-chat", max_tokens: int = 8,
                 llm_timeout: float = 60):
        require_loopback(target)
        self.target = target.rstrip("/")
        self.model, self.max_tokens, self.llm_timeout = model, max_tokens, llm_timeout
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

    async def _form(self, http: httpx.AsyncClient, path: str, xff: str, *,
                    solve_pass: bool = True) -> tuple[str | None, str]:
        page = await http.get(path, headers={"X-Forwarded-For": xff})
        if solve_pass and _PASS_FORM.search(page.text):  # the admission layer's "checking your browser"
            await earn_pass(http, page.text, path, {"X-Forwarded-For": xff})
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
                        token, _ = await self._form(http, "/accounts/login/", xff, solve_pass=solver)
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

    async def user(self, person: Legit, http: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
        tab = Browser()
        turn = self.rng.randrange(2)  # chat first or the API first
        try:
            while time.monotonic() < self.deadline:
                await asyncio.sleep(self.rng.uniform(0.6, 1.4))
                if self.rng.random() < 0.15:
                    await self.legit_login(http, person)
                    tab.csrf = None  # a log-in rotates the CSRF token
                elif turn % 2 == 0:
                    await self.legit_chat(http, tab, turn)
                    turn += 1
                else:
                    await self.legit_api(api, turn)
                    turn += 1
        finally:
            await http.aclose()
            await api.aclose()

    async def legit_chat(self, http: httpx.AsyncClient, tab: Browser, turn: int) -> None:
        """One message in the web chat, as chat.js sends it: JSON with the CSRF token in a header, the
        reply read as Server-Sent Events until `done` (or `error`)."""
        start = time.perf_counter()
        good, label = False, "chat:no-done"
        try:
            if tab.csrf is None:
                page = await http.get("/chat/")
                token = _CSRF.search(page.text) if page.status_code == 200 else None
                if token is None:
                    raise _Failed(f"chat:page:{page.status_code}")
                tab.csrf = token.group(1)
            headers = {"X-CSRFToken": tab.csrf, "Accept": "application/json"}
            if tab.conversation is None:
                created = await http.post("/chat/api/conversations", json={"model": self.model}, headers=headers)
                if created.status_code != 201:
                    raise _Failed(f"chat:create:{created.status_code}")
                tab.conversation = created.json()["id"]
            async with http.stream(
                    "POST", f"/chat/api/conversations/{tab.conversation}/messages",
                    json={"content": f"Tell me something, please ({turn}).", "model": self.model},
                    headers={**headers, "Accept": "text/event-stream"}, timeout=self.llm_timeout) as reply:
                if reply.status_code != 200:
                    await reply.aread()
                    raise _Failed(f"chat:{reply.status_code}")
                event = None
                async for line in reply.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event in ("done", "error"):
                        status = json.loads(line[5:]).get("status") if event == "done" else None
                        good = status == "complete"
                        label = "chat:done" if good else f"chat:{event}:{status or ''}"
                        break
        except _Failed as exc:
            label = str(exc)
        except httpx.HTTPError as exc:
            label = f"chat:{type(exc).__name__}"
        self.report.record("chat", good, label, (time.perf_counter() - start) * 1000)

    async def legit_api(self, api: httpx.AsyncClient, turn: int) -> None:
        """POST /v1/chat/completions with the user's key, streamed or not; a success is a completed reply."""
        stream = self.rng.random() < 0.5
        body = {"model": self.model, "max_tokens": self.max_tokens, "stream": stream,
                "messages": [{"role": "user", "content": f"Say something short ({turn})."}]}
        start = time.perf_counter()
        good, label = False, "api:incomplete"
        try:
            if stream:
                async with api.stream("POST", "/v1/chat/completions", json=body, timeout=self.llm_timeout) as reply:
                    if reply.status_code != 200:
                        await reply.aread()
                        raise _Failed(f"api:{reply.status_code}")
                    finished = False
                    async for line in reply.aiter_lines():
                        if line == "data: [DONE]":
                            good, label = finished, "api:done" if finished else "api:no-finish-reason"
                            break
                        if line.startswith("data: "):
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                raise _Failed(f"api:stream-error:{chunk['error'].get('code')}")
                            finished = finished or any(c.get("finish_reason") for c in chunk.get("choices", []))
            else:
                reply = await api.post("/v1/chat/completions", json=body, timeout=self.llm_timeout)
                if reply.status_code != 200:
                    raise _Failed(f"api:{reply.status_code}")
                good = bool(reply.json()["choices"][0].get("finish_reason"))
                label = "api:ok" if good else "api:no-finish-reason"
        except _Failed as exc:
            label = str(exc)
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            label = f"api:{type(exc).__name__}"
        self.report.record("api", good, label, (time.perf_counter() - start) * 1000)

    async def warm_up(self, http, person: Legit) -> None:
        """The login of before the attack (not measured): retried as a person would, on Retry-After."""
        for _ in range(20):
            try:
                token, _ = await self._form(http, "/accounts/login/", person.address)
                response = await http.post("/accounts/login/", headers={"X-Forwarded-For": person.address}, data={
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
        start = time.perf_counter()
        try:
            response = await http.post("/accounts/login/", headers={"X-Forwarded-For": person.address}, data={
                "csrfmiddlewaretoken": token or "", "username": person.email, "password": person.password})
            good = response.status_code == 302 and "/accounts/login" not in response.headers.get("location", "")
            label = f"login:{response.status_code}"
        except httpx.HTTPError as exc:
            good, label = False, f"login:{type(exc).__name__}"
        self.report.record("login", good, label, (time.perf_counter() - start) * 1000)

    async def run(self) -> Report:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request: thousands of them
        # The users are returning ones: each logs in once before the attack starts (as they did
        # before any real attack), which gives their browsers the known-device cookie.
        browsers = [httpx.AsyncClient(base_url=self.target, timeout=15, headers={"X-Forwarded-For": p.address})
                    for p in self.legit]
        # An API client is a program of the user's, from the same address, without the browser's cookies.
        apis = [httpx.AsyncClient(base_url=self.target, timeout=15, headers={
            "X-Forwarded-For": p.address, "Authorization": f"Bearer {p.api_key}"}) for p in self.legit]
        await asyncio.gather(*(self.warm_up(http, p) for http, p in zip(browsers, self.legit, strict=True)))
        start = time.monotonic()
        self.deadline = start + self.seconds
        tasks = [self.user(p, http, api) for p, http, api in zip(self.legit, browsers, apis, strict=True)]
        tasks += [self.bot(n, solver=False) for n in range(self.bots)]
        tasks += [self.bot(n, solver=True) for n in range(self.solver_bots)]
        await asyncio.gather(*tasks)
        self.report.seconds = time.monotonic() - start
        return self.report


class _Failed(Exception):
    """A legitimate action that went wrong before its reply; the message is the failure's label."""


def solve(challenge: str) -> str:
    """The nonce whose SHA-256 of "challenge:nonce" starts with the challenge's bits of zeros, as
    pow.js finds it. The prefix is hashed once and copied per try (about twice as fast as hashing
    the whole string each time): the browsers' CPU is on this box too when a bench runs here."""
    bits = int(challenge.split(".")[1])
    below = 1 << (256 - bits)
    prefix = hashlib.sha256(f"{challenge}:".encode())
    nonce = 0
    while True:
        h = prefix.copy()
        h.update(str(nonce).encode())
        if int.from_bytes(h.digest(), "big") < below:
            return str(nonce)
        nonce += 1


def run(target: str, *, seconds: float = 20, max_requests: int = 20_000, bots: int = 16, solver_bots: int = 1,
        legit: list[Legit], seed: int = 1, model: str = "deepseek-chat", max_tokens: int = 8) -> Report:
    flood = Flood(target, seconds=seconds, max_requests=max_requests, bots=bots, solver_bots=solver_bots,
                  legit=legit, seed=seed, model=model, max_tokens=max_tokens)
    return asyncio.run(flood.run())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["attack"]:  # the open-loop attack with real source addresses (ops/flood_attack.py)
        root = str(Path(__file__).resolve().parents[1])
        if root not in sys.path:  # run as a script: the project's root is not on the path
            sys.path.insert(0, root)
        from ops import flood_attack

        return flood_attack.main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--bots", type=int, default=16)
    parser.add_argument("--solver-bots", type=int, default=1)
    parser.add_argument("--model", default="deepseek-chat", help="what the users chat with and call")
    parser.add_argument("--max-tokens", type=int, default=8, help="max_tokens of the users' API calls")
    parser.add_argument("--legit", action="append", default=[], metavar="EMAIL:PASSWORD:API_KEY",
                        help="a legitimate user (repeat); each gets its own address")
    args = parser.parse_args(argv)
    legit = []
    for n, item in enumerate(args.legit):
        email, rest = item.split(":", 1)
        password, key = rest.rsplit(":", 1)
        legit.append(Legit(email, password, key, address=f"192.0.2.{10 + n}"))
    report = run(args.target, seconds=args.seconds, max_requests=args.max_requests, bots=args.bots,
                 solver_bots=args.solver_bots, legit=legit, model=args.model, max_tokens=args.max_tokens)
    print(json.dumps(report.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
