"""The middleware stack (levee.core.middleware): browser middleware skipped on @sessionless routes
so async API requests spend no thread on them; Django's compute-only middleware run inline; the
Server-Timing header; the per-process memos of hot rows."""
import asyncio

import pytest
from asgiref import sync
from django.test import AsyncClient, Client, RequestFactory

from levee.api.models import LlmModel, enabled_model
from levee.core.middleware import is_sessionless
from levee.keys.services import create_api_key
from tests.personas import make_user


@pytest.mark.parametrize("path,expected", [
    ("/v1/chat/completions", True), ("/chat/completions", True), ("/v1/models", True), ("/models", True),
    ("/v1/me", True), ("/user/balance", True), ("/healthz", True), ("/readyz", True), ("/metrics", True),
    # session-authenticated JSON and pages keep the whole stack
    ("/api/keys", False), ("/api/usage", False), ("/chat/", False), ("/accounts/login/", False), ("/", False),
    ("/admin/", False), ("/no/such/page", False),
])
def test_only_key_authenticated_routes_and_probes_are_sessionless(path, expected):
    assert is_sessionless(RequestFactory().get(path)) is expected


@pytest.mark.django_db
def test_browser_pages_keep_sessions_and_csrf():
    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/accounts/login/")
    assert page.status_code == 200 and "csrftoken" in page.cookies
    refused = browser.post("/accounts/login/", {"username": "a@example.com", "password": "x"})
    assert refused.status_code == 403  # no CSRF token: the wrapped CsrfViewMiddleware still guards


# Committed rows: the async views read on the database pool, outside the test's transaction.
@pytest.mark.django_db(transaction=True)
def test_api_answers_carry_security_headers_but_no_session_machinery(client):
    user = make_user("keys@example.com")
    _, raw = create_api_key(user, name="t")
    response = client.get("/v1/models", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware, inline
    assert "Cookie" not in response.get("Vary", "")  # the session was never consulted
    assert not response.cookies


def _thread_hops(path, headers=None) -> int:
    """How many sync_to_async calls one async request through the ASGI stack makes."""
    calls = []
    original = sync.SyncToAsync.__call__

    def counting(self, *args, **kwargs):
        calls.append(getattr(self.func, "__qualname__", repr(self.func)))
        return original(self, *args, **kwargs)

    sync.SyncToAsync.__call__ = counting
    try:
        response = asyncio.run(AsyncClient().get(path, headers=headers or {}))
    finally:
        sync.SyncToAsync.__call__ = original
    return response.status_code, calls


def _middleware_hops(calls):
    return [c for c in calls if "Middleware" in c or "process_" in c]


def test_an_async_api_request_makes_no_thread_hop_in_the_middleware():
    # No key: the view answers 401 without the database. What hops remain are Django's handler's
    # own (request signals, logging a 4xx) and the shield's periodic state refresh.
    status, calls = _thread_hops("/v1/models")
    assert status == 401 and calls
    assert _middleware_hops(calls) == [], calls
    _, page_calls = _thread_hops("/accounts/login/")
    assert len(_middleware_hops(page_calls)) >= 4, page_calls  # a page still runs sessions, CSRF, auth...


@pytest.mark.django_db(transaction=True)
def test_api_answers_say_where_their_time_went(client):
    user = make_user("timing@example.com")
    _, raw = create_api_key(user, name="t")

    async def call():
        return await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {raw}"})

    response = sync.async_to_sync(call)()
    assert response.status_code == 200
    phases = dict(part.strip().split(";dur=") for part in response["Server-Timing"].split(","))
    assert {"edge", "auth"} <= set(phases) and all(float(ms) >= 0 for ms in phases.values())


@pytest.mark.django_db
def test_an_enabled_model_is_memoized_until_it_changes(django_assert_num_queries, seeded_catalogue):
    name = LlmModel.objects.filter(enabled=True).values_list("name", flat=True).first()
    assert enabled_model(name).name == name
    with django_assert_num_queries(0):  # memoized
        assert enabled_model(name).name == name
    model = LlmModel.objects.get(name=name)
    model.enabled = False
    model.save()  # a change in this process clears the memo at once
    assert enabled_model(name) is None


def test_under_asgi_no_thread_is_made_before_a_request_reaches_its_view():
    """Django's request_started receivers would create the request's own thread just to run there;
    the ASGI entry point (levee.asgi) leaves them out. Counted on the real ASGI application with an
    async API view: nothing runs in the request's own thread before the response starts."""
    from django.core import signals

    from levee import asgi

    # Importing levee.asgi disconnects them; Django's test client and query-capturing helpers in
    # other tests connect them again, so restore what the import leaves.
    asgi._no_thread_before_each_request()
    assert not signals.request_started._live_receivers(None)[0], "a synchronous receiver is back"
    events, calls, asked = [], [], []
    original = sync.SyncToAsync.__call__

    def counting(self, *args, **kwargs):
        if self._thread_sensitive:  # the request's own thread (the shared pool's calls are not counted)
            calls.append(getattr(self.func, "__qualname__", repr(self.func)))
        return original(self, *args, **kwargs)

    async def receive():  # the request once; then the client stays until the answer is complete
        asked.append(1)
        if len(asked) == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        while not any(e[0] == "http.response.body" for e in events):
            await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def send(message):
        events.append((message["type"], message.get("status"), list(calls)))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/v1/models", "raw_path": b"/v1/models", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    sync.SyncToAsync.__call__ = counting
    try:
        asyncio.run(asgi.application(scope, receive, send))
    finally:
        sync.SyncToAsync.__call__ = original
    start = next(e for e in events if e[0] == "http.response.start")
    assert start[1] == 401  # no key: the async view answered
    assert start[2] == [], start[2]
