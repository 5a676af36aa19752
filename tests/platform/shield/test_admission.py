"""The admission layer (levee.shield.admission): what it decides before Django sees a request.

Most tests drive the ASGI application in process, with an inner application that records whether it
was reached; the body-limit tests run a real server (gunicorn + uvicorn) and talk to it over a socket."""
from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db.backends import utils as db_utils

from levee.shield import admission, keyfilter, passes, pow, state
from ops import edge
from tests.personas import ada
from tests.platform.shield.servers import server


class Inner:
    """The application behind the layer: answers 200 and counts its calls (and the body it read)."""

    def __init__(self):
        self.calls = 0
        self.body = b""

    async def __call__(self, scope, receive, send):
        self.calls += 1
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"inner"})


class Answer:
    def __init__(self, messages):
        start = next(m for m in messages if m["type"] == "http.response.start")
        self.status = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")

    @property
    def text(self) -> str:
        return self.body.decode()


def call(app, method: str, path: str, *, headers: dict | None = None, body: bytes = b"",
         ip: str = "203.0.113.7", receive_forbidden: bool = False) -> Answer:
    async def run():
        sent = []

        async def receive():
            if receive_forbidden:
                raise AssertionError("the body was read")
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if body and "content-length" not in {k.lower() for k in (headers or {})}:
            raw.append((b"content-length", str(len(body)).encode()))
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": raw, "client": (ip, 40000), "scheme": "http", "http_version": "1.1"}
        await app(scope, receive, send)
        return Answer(sent)

    return asyncio.run(run())


@pytest.fixture(autouse=True)
def _no_loop(settings, monkeypatch):
    settings.SHIELD_ESCALATION_IN_WEB = False  # the per-process loop is tested through evaluate()
    # what the layer counts in the process starts from nothing in each test
    monkeypatch.setattr(admission, "_subnet_load", admission._SubnetLoad())
    monkeypatch.setattr(admission, "_challenges", admission.stats.Batched(admission.CHALLENGED_EVENT))
    monkeypatch.setattr(admission, "_unknown_keys", admission.stats.Batched(admission.REFUSED_EVENT))
    settings.SHIELD_BROWSER_PASS = True


@pytest.fixture
def rds(settings):
    """The test Redis as conftest left it (emptied, the mode mirrored as normal)."""
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture
def layer():
    inner = Inner()
    return admission.Admission(inner), inner


def set_mode_mirror(rds, mode: str) -> None:
    rds.set(state.MODE_KEY, mode)
    state.forget()


# --- the body limit --------------------------------------------------------------------------------

def test_a_declared_oversized_body_is_refused_unread(layer, settings):
    app, inner = layer
    answer = call(app, "POST", "/v1/chat/completions", receive_forbidden=True,
                  headers={"content-length": str(settings.LEVEE_MAX_BODY_BYTES + 1)})
    assert answer.status == 413 and inner.calls == 0
    assert json.loads(answer.body)["error"]["code"] == "request_too_large"
    assert answer.headers["connection"] == "close"
    page = call(app, "POST", "/chat/", receive_forbidden=True, headers={"content-length": str(10**9)})
    assert page.status == 413 and page.headers["content-type"].startswith("text/html")


def test_an_invalid_content_length_is_a_400_not_a_500(layer):
    app, inner = layer
    answer = call(app, "POST", "/v1/chat/completions", headers={"content-length": "12abc"}, receive_forbidden=True)
    assert answer.status == 400 and inner.calls == 0


def _raw_request(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    return sock


@pytest.mark.django_db(transaction=True)
def test_a_real_server_refuses_a_declared_64_mib_body_before_the_client_sends_it():
    with server(LEVEE_MAX_BODY_BYTES=65536) as base:
        port = int(base.rsplit(":", 1)[1])
        sock = _raw_request(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 67108864\r\n\r\n")
        reply = sock.recv(4096)  # nothing of the body was sent
        sock.close()
        assert reply.startswith(b"HTTP/1.1 413")


@pytest.mark.django_db(transaction=True)
def test_a_real_server_believes_forwarded_headers_only_from_a_configured_proxy():
    """uvicorn's own proxy-header rewrite is off (ops/web_worker.py): a loopback peer that is not in
    TRUSTED_PROXY_CIDRS is itself, whatever X-Forwarded-For says; and no Server header."""
    from tests.platform.shield.servers import REPO

    keyfilter.rebuild()  # the layer answers an unknown key itself, and logs the address it decided on
    with server() as base:
        port = int(base.rsplit(":", 1)[1])
        sock = _raw_request(port, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 198.51.100.77\r\n"
                                  b"Authorization: Bearer sk-" + b"f" * 48 + b"\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        sock.close()
        head = reply.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 401") and b"\r\nserver:" not in head
        log = (REPO / "var" / f"shield-server-{port}.log").read_text(errors="replace")
    line = next(line for line in log.splitlines() if "api-models 401" in line)
    assert "client_ip=127.0.0.1" in line and "198.51.100.77" not in line


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(edge.nginx_binary() is None, reason="Debian's nginx is not installed (`make nginx`)")
def test_behind_the_real_proxy_a_refusal_with_an_unread_body_reaches_the_client(tmp_path):
    """The production edge (ops/nginx/) buffers a 3 MiB prompt and sends it to a server that refuses
    the request on its headers alone (an unknown key). Had the server closed the connection on the
    unread body, nginx's send would break and its client would see a 502; every answer must be the
    layer's own 401, in the API's error format."""
    from tests.platform.shield.servers import free_port

    keyfilter.rebuild()
    body = json.dumps({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x" * (3 << 20)}]})
    with server(TRUSTED_PROXY_CIDRS="127.0.0.1/32") as base:
        listen = free_port()
        with edge.running(tmp_path, upstream=base.removeprefix("http://"), listen=listen):

            def send(_: int) -> tuple[int, str]:
                answer = httpx.post(f"http://127.0.0.1:{listen}/v1/chat/completions", content=body, timeout=30,
                                    headers={"Authorization": "Bearer sk-" + secrets.token_hex(24),
                                             "Content-Type": "application/json"})
                return answer.status_code, answer.text

            with ThreadPoolExecutor(8) as pool:  # several at once, as a flood sends them
                answers = list(pool.map(send, range(48)))
    assert [status for status, _ in answers] == [401] * 48
    assert all(json.loads(text)["error"]["message"].startswith("Authentication Fails") for _, text in answers)


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_gets_its_413_while_the_client_is_still_sending():
    """Stream a chunked body towards a 64 KiB limit and watch the socket: the 413 must arrive once the
    limit is passed, long before the 8 MiB the client meant to send are out."""
    chunk = b"x" * 16384
    with server(LEVEE_MAX_BODY_BYTES=65536) as base:
        port = int(base.rsplit(":", 1)[1])
        for path in (b"/chat/api/conversations", b"/accounts/login/"):
            sock = _raw_request(port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n")
            sock.setblocking(False)
            sent, reply = 0, b""
            deadline = time.monotonic() + 20
            while sent < 8 * 1024 * 1024 and time.monotonic() < deadline:
                try:
                    reply += sock.recv(4096)
                except BlockingIOError:
                    pass
                except ConnectionError:
                    break
                if reply:
                    break
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                except BlockingIOError:
                    time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.005)  # a slow uploader: the server has time to answer between chunks
            sock.setblocking(True)
            sock.settimeout(5)
            if not reply:
                try:
                    reply = sock.recv(4096)
                except (TimeoutError, ConnectionError):
                    pass
            sock.close()
            assert reply.startswith(b"HTTP/1.1 413"), (path, reply[:200])
            assert sent < 1024 * 1024, f"{path}: the answer came only after {sent} bytes"


# --- the API door ----------------------------------------------------------------------------------

@pytest.fixture
def counted_queries(monkeypatch):
    """Every SQL statement from any thread, counted (a class-level patch of Django's cursor wrapper)."""
    seen = []
    original = db_utils.CursorWrapper.execute

    def execute(self, sql, params=None):
        seen.append(sql)
        return original(self, sql, params)

    monkeypatch.setattr(db_utils.CursorWrapper, "execute", execute)
    return seen


@pytest.mark.django_db
def test_an_unknown_api_key_is_refused_with_no_database_query(layer, counted_queries):
    from levee.keys.services import create_api_key

    app, inner = layer
    _key, raw = create_api_key(ada())
    keyfilter.rebuild()
    counted_queries.clear()
    guess = "sk-" + secrets.token_hex(24)
    answer = call(app, "POST", "/v1/chat/completions", headers={"authorization": f"Bearer {guess}"},
                  body=b'{"model": "deepseek-chat"}')
    assert answer.status == 401 and inner.calls == 0
    assert json.loads(answer.body)["error"]["code"] == "invalid_api_key"
    assert counted_queries == []
    known = call(app, "POST", "/v1/chat/completions", headers={"authorization": f"Bearer {raw}"},
                 body=b'{"model": "deepseek-chat"}')
    assert known.status == 200 and inner.calls == 1  # the filter said "maybe": Django authenticates it
    # a string that carries a valid tag but is no key (a leaked format, a deleted key) meets the set
    from levee.keys.tags import mint

    tagged, _ = mint(48)
    counted_queries.clear()
    answer = call(app, "POST", "/v1/chat/completions", headers={"authorization": f"Bearer {tagged}"},
                  body=b'{"model": "deepseek-chat"}')
    assert answer.status == 401 and inner.calls == 1 and counted_queries == []


@pytest.mark.django_db
def test_a_key_without_a_valid_tag_is_refused_without_redis(layer, monkeypatch):
    from levee.keys.services import create_api_key

    app, inner = layer
    _key, raw = create_api_key(ada())
    keyfilter.rebuild()
    assert call(app, "GET", "/v1/models", headers={"authorization": f"Bearer {raw}"}).status == 200

    async def no_redis(*args, **kwargs):
        raise AssertionError("a round trip")

    monkeypatch.setattr(admission, "acheck_door", no_redis)
    forged = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    answer = call(app, "GET", "/v1/models", headers={"authorization": f"Bearer {forged}"})
    assert answer.status == 401 and json.loads(answer.body)["error"]["code"] == "invalid_api_key"
    assert inner.calls == 1 and admission._unknown_keys.pending == 1  # counted, filed in a batch


@pytest.mark.django_db
def test_while_an_untagged_key_is_active_every_key_goes_the_sets_way(layer, settings):
    """A key minted before keys carried tags still gets in, and so every string is asked of the set
    (with the per-address limits before it) until no such key is active."""
    from levee.keys.models import ApiKey
    from levee.keys.services import create_api_key, digest_of

    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "apikey.address": {"requests": (2, 60)}}
    app, inner = layer
    key, _ = create_api_key(ada())
    legacy = "sk-" + "d" * 48  # a secret of the old shape: no tag
    ApiKey.objects.filter(pk=key.pk).update(tag_fp="", digest=digest_of(legacy))
    keyfilter.rebuild()
    assert call(app, "GET", "/v1/models", headers={"authorization": f"Bearer {legacy}"}).status == 200
    statuses = [call(app, "GET", "/v1/models", headers={"authorization": "Bearer sk-" + "e" * 48},
                     ip="198.51.100.5").status for _ in range(3)]
    assert statuses == [401, 401, 429] and inner.calls == 1


@pytest.mark.django_db
def test_a_key_is_in_the_filter_from_its_creation_and_out_on_deletion(layer, django_capture_on_commit_callbacks):
    from levee.keys.services import create_api_key

    app, inner = layer
    keyfilter.rebuild()
    with django_capture_on_commit_callbacks(execute=True):
        key, raw = create_api_key(ada())
    headers = {"authorization": f"Bearer {raw}"}
    assert call(app, "GET", "/v1/models", headers=headers).status == 200
    with django_capture_on_commit_callbacks(execute=True):
        key.delete()
    assert call(app, "GET", "/v1/models", headers=headers).status == 401


def test_without_the_filter_keys_pass_to_django(layer, rds, monkeypatch):
    app, inner = layer
    rebuilt = []
    monkeypatch.setattr(keyfilter, "rebuild_soon", lambda: rebuilt.append(1))
    rds.delete(keyfilter.READY_KEY)
    answer = call(app, "GET", "/v1/models", headers={"authorization": "Bearer sk-" + "a" * 48})
    assert answer.status == 200 and inner.calls == 1 and rebuilt == [1]


def test_no_key_and_a_malformed_key_are_refused_before_django(layer):
    app, inner = layer
    assert call(app, "GET", "/v1/models").status == 401
    bad = call(app, "POST", "/chat/completions", headers={"authorization": "Bearer sk-short"}, body=b"{}")
    assert bad.status == 401 and "invalid" in json.loads(bad.body)["error"]["message"]
    assert inner.calls == 0


@pytest.mark.django_db
def test_per_address_limits_come_before_the_key_lookup(layer, settings):
    from levee.keys.tags import mint

    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "apikey.address": {"requests": (3, 60)}}
    app, inner = layer
    keyfilter.rebuild()
    guess, _ = mint(48)  # well tagged (a string without a tag is refused before any limit)
    statuses = [call(app, "GET", "/v1/models", headers={"authorization": f"Bearer {guess}"}).status
                for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert call(app, "GET", "/v1/models", headers={"authorization": f"Bearer {guess}"},
                ip="203.0.113.99").status == 401  # another address has its own allowance


# --- the browser doors -----------------------------------------------------------------------------

def test_the_admin_login_gets_its_429_at_the_asgi_layer(layer, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "door.admin.address": {"requests": (3, 60)},
                              "hash.new.global": {"requests": (100, 1.0)}}
    app, inner = layer
    form = b"username=a%40b.example&password=x"
    statuses = [call(app, "POST", "/admin/login/", body=form,
                     headers={"content-type": "application/x-www-form-urlencoded"}).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert inner.calls == 3
    refused = call(app, "POST", "/admin/login/", body=form)
    assert refused.status == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"].startswith("text/html") and b"Slow down" in refused.body


def test_in_calm_times_a_new_browser_logs_in_within_the_new_device_budget(layer, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "hash.new.global": {"requests": (2, 1.0)}}
    app, inner = layer
    statuses = [call(app, "POST", "/accounts/login/", body=b"u=1", ip=f"198.51.{n}.1").status for n in range(3)]
    # the third new browser in the same second finds the budget spent: the pressure signal
    assert statuses[:2] == [200, 200] and statuses[2] == 429
    third = call(app, "POST", "/accounts/login/", body=b"u=1", ip="198.51.9.1")
    assert admission.challenge_in(third.text), "a spent budget sends new browsers to the interstitial"


@pytest.mark.django_db
def test_in_calm_times_bare_browsers_door_pages_are_djangos_within_the_page_budget(layer, settings):
    from levee.shield import stats

    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "page.new.global": {"requests": (2, 60.0)}}
    app, inner = layer
    pages = [call(app, "GET", "/accounts/signup/", ip=f"198.51.{n}.1") for n in range(3)]
    assert [p.status for p in pages] == [200, 200, 200]
    assert inner.calls == 2, "past the budget the page is not Django's to render"
    assert admission.challenge_in(pages[2].text) and not admission.challenge_in(pages[1].text)
    # a spent page budget is pressure (a challenge), not evidence of an attack (a refusal)
    assert stats.windows(["refused", "challenged"], window=10, baseline=60) == {"refused": (0, 0.0),
                                                                               "challenged": (1, 0.0)}
    # a browser that holds a pass, or a known device, is not counted against it
    cookie = _solve_pass(app, "/accounts/login/", "198.51.7.1")
    assert call(app, "GET", "/accounts/login/", ip="198.51.7.1", headers={"cookie": cookie}).status == 200
    assert inner.calls == 3


def _solve_pass(app, target: str, ip: str) -> str:
    page = call(app, "GET", target, ip=ip)
    assert page.status == 200, page.text
    challenge = admission.challenge_in(page.text)
    nonce = pow.solve(challenge)
    from urllib.parse import urlencode

    solved = call(app, "POST", admission.PASS_PATH, ip=ip,
                  body=urlencode({"pow_challenge": challenge, "pow_nonce": nonce, "next": target}).encode(),
                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert solved.status == 303 and solved.headers["location"] == target
    cookie = solved.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    return cookie.split(";", 1)[0]


def test_under_pressure_a_new_browser_earns_a_pass_bound_to_its_address(layer, rds, settings):
    settings.SHIELD_PASS_BITS = {"normal": 4, "elevated": 6, "under_attack": 8}
    app, inner = layer
    set_mode_mirror(rds, "elevated")
    bare = call(app, "POST", "/accounts/login/", body=b"u=1", ip="198.51.100.20")
    assert bare.status == 429 and admission.challenge_in(bare.text) and inner.calls == 0
    cookie = _solve_pass(app, "/accounts/login/", "198.51.100.20")
    assert call(app, "GET", "/accounts/login/", ip="198.51.100.20", headers={"cookie": cookie}).status == 200
    assert inner.calls == 1
    assert call(app, "POST", "/accounts/login/", ip="198.51.100.20", headers={"cookie": cookie},
                body=b"u=1").status == 200
    assert inner.calls == 2
    # the same cookie from another address is worth nothing
    elsewhere = call(app, "POST", "/accounts/login/", ip="198.51.100.21", headers={"cookie": cookie}, body=b"u=1")
    assert elsewhere.status == 429 and admission.challenge_in(elsewhere.text) and inner.calls == 2


def test_pass_holders_coming_back_together_fit_the_hashing_budget_burst(layer, rds, settings):
    """The pass holders' budget (2/s) may be spent three seconds' worth at once: six users who earned
    their passes in the same seconds all get to hash; the seventh waits."""
    settings.SHIELD_PASS_BITS = {"normal": 4, "elevated": 4, "under_attack": 4}
    app, inner = layer
    set_mode_mirror(rds, "under_attack")
    cookies = [(f"198.51.100.{60 + n}", _solve_pass(app, "/accounts/login/", f"198.51.100.{60 + n}")) for n in range(7)]
    statuses = [call(app, "POST", "/accounts/login/", ip=ip, headers={"cookie": cookie}, body=b"u=1").status
                for ip, cookie in cookies]
    assert statuses == [200] * 6 + [429] and inner.calls == 6


def test_under_attack_a_pass_holders_sign_up_leaves_the_hashing_budget_to_log_ins(layer, rds, settings):
    """Under attack a sign-up hashes only within the trickle (Django's gate): posting one with a
    pass must not spend what the returning users' log-ins hash with."""
    settings.SHIELD_PASS_BITS = {"normal": 4, "elevated": 4, "under_attack": 4}
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "hash.pass.global": {"requests": (1, 60.0)}}
    app, inner = layer
    set_mode_mirror(rds, "under_attack")
    bot = _solve_pass(app, "/accounts/signup/", "198.51.100.80")
    for _ in range(3):
        assert call(app, "POST", "/accounts/signup/", ip="198.51.100.80", headers={"cookie": bot},
                    body=b"email=x").status == 200  # on to Django's gate (the trickle, or busy)
    user = _solve_pass(app, "/accounts/login/", "198.51.100.81")
    assert call(app, "POST", "/accounts/login/", ip="198.51.100.81", headers={"cookie": user},
                body=b"u=1").status == 200
    assert inner.calls == 4


def test_a_pass_expires_and_an_ipv6_pass_covers_its_64():
    value = passes.issue("2001:db8:1:2::5", ttl=60)
    assert passes.valid(value, "2001:db8:1:2:ffff::9")
    assert not passes.valid(value, "2001:db8:1:3::5")
    assert not passes.valid(value, "2001:db8:1:2::5", now=time.time() + 61)
    tampered = value[:-1] + ("0" if value[-1] != "0" else "1")
    assert not passes.valid(tampered, "2001:db8:1:2::5")
    assert passes.valid(passes.issue("192.0.2.1"), "::ffff:192.0.2.1")


def test_a_replayed_or_forged_solution_earns_no_pass(layer, rds, settings):
    from urllib.parse import urlencode

    settings.SHIELD_PASS_BITS = {"normal": 4, "elevated": 4, "under_attack": 4}
    app, _ = layer
    set_mode_mirror(rds, "elevated")
    challenge = admission.challenge_in(call(app, "GET", "/accounts/signup/").text)
    body = urlencode({"pow_challenge": challenge, "pow_nonce": pow.solve(challenge), "next": "//evil.example/"}).encode()
    first = call(app, "POST", admission.PASS_PATH, body=body)
    assert first.status == 303 and first.headers["location"] == "/"  # never off-site
    replay = call(app, "POST", admission.PASS_PATH, body=body)
    assert replay.status == 403 and "set-cookie" not in replay.headers


def test_difficulty_rises_with_the_mode_and_the_subnets_load(settings):
    settings.SHIELD_PASS_BITS = {"normal": 14, "elevated": 16, "under_attack": 18}
    assert admission._difficulty("elevated", 300, 300) == 16
    assert admission._difficulty("under_attack", 300, 300) == 18
    assert admission._difficulty("elevated", 100, 300) == 18  # two thirds used
    assert admission._difficulty("elevated", 10, 300) == 20


def known_device_cookie_of_a_login() -> str:
    """The cookie a successful log-in sets (LoginGuard.succeeded), exactly as the browser gets it."""
    from django.http import HttpResponse
    from django.test import RequestFactory

    from levee.shield.login import KNOWN_DEVICE_COOKIE, LoginGuard

    response = HttpResponse()
    LoginGuard(RequestFactory().post("/accounts/login/"), "ada@example.com").succeeded(response)
    return response.cookies[KNOWN_DEVICE_COOKIE].OutputString().split(";")[0].split("=", 1)[1]


def test_a_known_device_skips_the_interstitial_and_has_its_own_budget(layer, rds, settings):
    from levee.shield.login import KNOWN_DEVICE_COOKIE

    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "hash.pass.global": {"requests": (1, 60.0)}}
    app, inner = layer
    set_mode_mirror(rds, "under_attack")
    value = known_device_cookie_of_a_login()
    for n in range(3):
        answer = call(app, "POST", "/accounts/login/", body=b"u=1", ip=f"198.51.100.{40 + n}",
                      headers={"cookie": f"{KNOWN_DEVICE_COOKIE}={value}"})
        assert answer.status == 200
    assert inner.calls == 3
    forged = call(app, "POST", "/accounts/login/", body=b"u=1", headers={"cookie": f"{KNOWN_DEVICE_COOKIE}=abc:x:y"})
    assert forged.status == 429 and admission.challenge_in(forged.text)


def test_under_attack_a_bare_sign_up_post_is_refused_and_counted_as_a_challenge(layer, rds):
    from levee.shield import stats

    app, inner = layer
    set_mode_mirror(rds, "under_attack")
    answer = call(app, "POST", "/accounts/signup/", body=b"email=x")
    assert answer.status == 429 and admission.challenge_in(answer.text) and inner.calls == 0
    asyncio.run(admission._challenges.aflush())  # filed in a batch, at most a second later
    assert stats.windows(["refused", "challenged"], window=10, baseline=60) == {"refused": (0, 0.0),
                                                                               "challenged": (1, 0.0)}


def test_a_refusal_closes_on_an_unread_body_except_towards_the_configured_proxy(layer, rds, settings):
    """A direct client's unread body is not worth reading: the connection closes. A proxy has
    buffered the body and sends it in full; a close while it sends becomes its 502 to the client,
    so the connection stays open (uvicorn discards the rest). Neither answer reads the body."""
    import ipaddress

    app, inner = layer
    settings.TRUSTED_PROXY_CIDRS = [ipaddress.ip_network("10.0.0.0/24")]
    set_mode_mirror(rds, "under_attack")
    direct = call(app, "POST", "/accounts/signup/", body=b"email=x", ip="198.51.100.20", receive_forbidden=True)
    proxied = call(app, "POST", "/accounts/signup/", body=b"email=x", ip="10.0.0.5", receive_forbidden=True,
                   headers={"x-forwarded-for": "198.51.100.21"})
    assert direct.status == proxied.status == 429 and inner.calls == 0
    assert direct.headers.get("connection") == "close" and "connection" not in proxied.headers
    oversized = call(app, "POST", "/accounts/signup/", ip="10.0.0.5", receive_forbidden=True,
                     headers={"content-length": str(settings.LEVEE_MAX_BODY_BYTES + 1)})
    assert oversized.status == 413 and oversized.headers["connection"] == "close"  # never read, from anyone


def test_under_pressure_a_bare_browsers_post_is_answered_without_a_round_trip(layer, rds, monkeypatch, settings):
    """Its answer is the interstitial whatever the counters say; its subnet's load (this process's
    count) still raises the difficulty."""
    from levee.shield import limiter

    app, inner = layer
    set_mode_mirror(rds, "elevated")
    settings.SHIELD_PASS_BITS = {"normal": 4, "elevated": 6, "under_attack": 8}
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "door.subnet": {"requests": (4, 60)}}

    async def no_redis(*args, **kwargs):
        raise AssertionError("a round trip for an answer that cannot change")

    monkeypatch.setattr(limiter.LuaScript, "acall", no_redis)
    monkeypatch.setattr(admission._challenges, "filed_at", time.monotonic())  # not due: nothing is filed
    bits = []
    for _ in range(4):
        answer = call(app, "POST", "/accounts/login/", body=b"u=1", ip="198.51.100.9")
        assert answer.status == 429 and inner.calls == 0
        bits.append(int(admission.challenge_in(answer.text).split(".")[1]))
    assert bits == [6, 8, 8, 10]  # half of the subnet's door allowance used (this one counted): +2; 90 %: +2 more
    assert admission._challenges.pending == 4


def test_batched_events_are_filed_once_a_second_and_kept_while_redis_is_away(rds, settings):
    from levee.shield import stats, store

    now = [100.0]
    batch = stats.Batched("challenged", clock=lambda: now[0])

    async def add(n):
        for _ in range(n):
            await batch.add()

    asyncio.run(add(3))
    assert batch.pending == 3 and stats.windows(["challenged"], window=10, baseline=60)["challenged"][0] == 0
    now[0] += 1.0
    asyncio.run(add(1))  # a second after the last filing: this count files the batch
    assert batch.pending == 0 and stats.windows(["challenged"], window=10, baseline=60)["challenged"][0] == 4
    reachable, settings.SHIELD_REDIS_URL = settings.SHIELD_REDIS_URL, "redis://127.0.0.1:1/0"
    store.reset()
    try:
        now[0] += 1.0
        asyncio.run(add(2))  # Redis away: nothing raised, nothing lost
        assert batch.pending == 2
    finally:
        settings.SHIELD_REDIS_URL = reachable
        store.reset()
    asyncio.run(batch.aflush())
    assert batch.pending == 0 and stats.windows(["challenged"], window=10, baseline=60)["challenged"][0] == 6


def test_the_escalation_beat_files_what_waited_after_the_last_event(rds):
    """The last counts before a flood stops have no next event to file them: the beat does, once
    they have waited their interval, and leaves a batch alone before that."""
    from levee.shield import stats

    now = [100.0]
    batch = stats.Batched("challenged", clock=lambda: now[0])
    asyncio.run(batch.add())
    asyncio.run(stats.aflush_due())
    assert batch.pending == 1  # not due yet
    now[0] += 1.0
    asyncio.run(stats.aflush_due())
    assert batch.pending == 0 and stats.windows(["challenged"], window=10, baseline=60)["challenged"][0] == 1
    asyncio.run(batch.add())
    asyncio.run(stats.aflush_due(all_pending=True))  # shutting down: filed though not due
    assert batch.pending == 0 and stats.windows(["challenged"], window=10, baseline=60)["challenged"][0] == 2


@pytest.mark.django_db
def test_limits_and_unknown_keys_count_as_refusals_a_spent_budget_as_a_challenge(layer, settings):
    from levee.shield import stats

    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "hash.new.global": {"requests": (1, 60.0)},
                              "door.login.address": {"requests": (1, 60)}}
    app, _ = layer
    keyfilter.rebuild()
    assert call(app, "POST", "/accounts/login/", body=b"u=1", ip="198.51.100.1").status == 200
    assert call(app, "POST", "/accounts/login/", body=b"u=1", ip="198.51.100.2").status == 429  # budget: challenge
    assert call(app, "POST", "/accounts/login/", body=b"u=1", ip="198.51.100.1").status == 429  # address: refusal
    assert call(app, "GET", "/v1/models", headers={"authorization": "Bearer sk-" + "c" * 48}).status == 401
    asyncio.run(admission._unknown_keys.aflush())  # refused without Redis: filed in a batch
    counts = stats.windows(["refused", "challenged"], window=10, baseline=60)
    assert counts == {"refused": (2, 0.0), "challenged": (1, 0.0)}


@pytest.mark.django_db(transaction=True)
def test_without_redis_the_doors_pass_to_django(layer, settings):
    from levee.shield import store

    settings.SHIELD_REDIS_URL = "redis://127.0.0.1:1/0"
    store.reset()
    app, inner = layer
    try:
        assert call(app, "POST", "/accounts/login/", body=b"u=1").status == 200
    finally:
        store.reset()
    assert inner.calls == 1


def test_other_paths_pass_straight_through(layer):
    app, inner = layer
    assert call(app, "GET", "/healthz").status == 200
    assert call(app, "POST", "/chat/api/conversations", body=b"{}").status == 200
    assert inner.calls == 2 and inner.body == b"{}"


def test_the_layer_speaks_lifespan_for_django(layer):
    app, inner = layer

    async def run():
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent = []

        async def receive():
            return incoming.pop(0)

        async def send(message):
            sent.append(message["type"])

        await app({"type": "lifespan"}, receive, send)
        return sent

    assert asyncio.run(run()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert inner.calls == 0


def test_the_layers_own_answers_carry_a_request_id(layer):
    app, _ = layer
    answer = call(app, "GET", "/v1/models")
    assert answer.status == 401 and answer.headers["x-request-id"].startswith("req_")


def test_the_pass_accepts_what_the_layer_asked_in_any_mode_and_nothing_easier(layer, rds, settings):
    from urllib.parse import urlencode

    # An operator may ask less under attack than in calm times (a slow-browser audience): the pass
    # must take the interstitial's own challenge, not hold it to the normal mode's bits.
    settings.SHIELD_PASS_BITS = {"normal": 9, "elevated": 5, "under_attack": 5}
    app, _ = layer
    set_mode_mirror(rds, "under_attack")
    assert _solve_pass(app, "/accounts/login/", "198.51.100.30").startswith(passes.PASS_COOKIE)
    easy = pow.issue(3)  # signed by us, but easier than any mode asks
    body = urlencode({"pow_challenge": easy, "pow_nonce": pow.solve(easy), "next": "/"}).encode()
    refused = call(app, "POST", admission.PASS_PATH, body=body, ip="198.51.100.30")
    assert refused.status == 403 and "set-cookie" not in refused.headers


def test_a_flood_of_refusals_is_logged_within_a_budget_and_says_what_it_left_out(layer, settings, caplog):
    import logging

    settings.SHIELD_ADMISSION_LOG_PER_SECOND = 2
    app, _ = layer
    now = [1000.25]
    admission._log_budget.__init__(clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="levee.access"):
        answers = [call(app, "POST", "/v1/chat/completions", body=b"{}") for _ in range(5)]  # no key: 401
    assert [a.status for a in answers] == [401] * 5
    assert all(a.headers["x-request-id"].startswith("req_") for a in answers)  # every answer keeps its id
    lines = [r for r in caplog.records if r.name == "levee.access"]
    assert len(lines) == 2 and all(r.status == 401 for r in lines)
    caplog.clear()
    now[0] += 1
    with caplog.at_level(logging.INFO, logger="levee.access"):
        assert admission._log_budget.take()  # the next second: its own budget again
    summary = [r for r in caplog.records if getattr(r, "unlogged", None)]
    assert len(summary) == 1 and summary[0].unlogged == 3
    admission._log_budget.__init__()


# --- the layer's pages in the reader's language ---------------------------------------------------

ZH_BROWSER = {"accept-language": "zh-CN,zh;q=0.9,en;q=0.5"}


def test_the_layers_pages_follow_the_language_cookie_and_accept_language(layer, rds, settings):
    app, inner = layer
    too_big = {"content-length": str(settings.LEVEE_MAX_BODY_BYTES + 1)}
    zh = call(app, "POST", "/chat/", headers={**too_big, **ZH_BROWSER}, receive_forbidden=True)
    assert zh.status == 413 and "<html lang=zh-hans>" in zh.text
    assert f"请求体超过了 {settings.LEVEE_MAX_BODY_BYTES} 字节" in zh.text and "内容过大" in zh.text
    en = call(app, "POST", "/chat/", headers=too_big, receive_forbidden=True)
    assert "<html lang=en>" in en.text and f"Request body is larger than {settings.LEVEE_MAX_BODY_BYTES} bytes" in en.text
    # The switch's cookie beats the browser's header, either way; a language we lack is English.
    chosen = call(app, "POST", "/chat/", receive_forbidden=True,
                  headers={**too_big, **ZH_BROWSER, "cookie": "csrftoken=x; levee_language=en"})
    assert "<html lang=en>" in chosen.text
    chosen = call(app, "POST", "/chat/", receive_forbidden=True, headers={**too_big, "cookie": "levee_language=zh-hans"})
    assert "<html lang=zh-hans>" in chosen.text
    assert "<html lang=en>" in call(app, "POST", "/chat/", receive_forbidden=True,
                                    headers={**too_big, "accept-language": "fr-FR,de;q=0.5"}).text
    # The API answers in English whatever the browser says.
    api = call(app, "POST", "/v1/chat/completions", headers={**too_big, **ZH_BROWSER}, receive_forbidden=True)
    assert json.loads(api.body)["error"]["message"] == f"Request body is larger than {settings.LEVEE_MAX_BODY_BYTES} bytes"
    assert inner.calls == 0

    # The interstitial and the busy page, with the banner of the mode.
    set_mode_mirror(rds, "under_attack")
    page = call(app, "POST", "/accounts/signup/", body=b"email=x", headers=ZH_BROWSER)
    assert page.status == 429 and admission.challenge_in(page.text)
    assert "正在校验你的浏览器" in page.text and "data-pow-working='正在校验你的浏览器…'" in page.text
    assert "发送这个表单之前需要先快速校验你的浏览器" in page.text and "服务负载很高" in page.text
    assert "Checking" not in page.text and "browser" not in page.text
    settings.SHIELD_SIGNUP_TRICKLE_PER_MINUTE = 0
    busy = call(app, "GET", "/accounts/signup/", headers=ZH_BROWSER)
    assert busy.status == 503 and "注册繁忙" in busy.text and "<html lang=zh-hans>" in busy.text
    assert "Registration is busy" in call(app, "GET", "/accounts/signup/").text


def test_the_layers_pages_are_built_once_per_language(layer, settings, monkeypatch):
    """A flood door: a refusal's page comes from the cache, the language from two headers."""
    from django.utils import translation

    app, _ = layer
    too_big = {"content-length": str(settings.LEVEE_MAX_BODY_BYTES + 1), **ZH_BROWSER}
    call(app, "POST", "/chat/", headers=too_big, receive_forbidden=True)  # built and cached
    built = []
    real = translation.override
    monkeypatch.setattr(translation, "override", lambda *a, **k: built.append(a) or real(*a, **k))
    for _ in range(50):
        assert call(app, "POST", "/chat/", headers=too_big, receive_forbidden=True).status == 413
    assert built == []
