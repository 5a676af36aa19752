"""Logs: JSON lines through the configured handler, carrying the request id and account, never a secret."""
import asyncio
import io
import json
import logging

import pytest
from django.test import AsyncClient

from levee.core.logging import JsonFormatter, RedactFilter, redact
from levee.keys.services import create_api_key
from tests.personas import PASSWORD, ada, make_user


@pytest.fixture
def captured_logs():
    """Everything the real console handler (with its filters) writes, in the production JSON format."""
    root = logging.getLogger()
    handler = next(h for h in root.handlers if any(isinstance(f, RedactFilter) for f in h.filters))
    stream, formatter, level = handler.stream, handler.formatter, root.level
    buffer = io.StringIO()
    handler.setStream(buffer)
    handler.setFormatter(JsonFormatter())
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        handler.setStream(stream)
        handler.setFormatter(formatter)
        root.setLevel(level)


def lines(buffer) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.django_db
def test_no_key_or_password_reaches_the_logs_of_a_full_authenticated_session(client, captured_logs,
                                                                             django_capture_on_commit_callbacks):
    new_password = "a brand new passphrase 8472"
    wrong_password = "not my password 1234 xyz"
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/accounts/signup/", {"email": "new@example.com", "password": new_password}).status_code == 302
    user = ada()
    assert client.post("/accounts/login/", {"username": user.email, "password": wrong_password}).status_code == 200
    assert client.post("/accounts/login/", {"username": user.email, "password": PASSWORD}).status_code == 302
    created = client.post("/api/keys", data={"name": "laptop"}, content_type="application/json")
    assert created.status_code == 201
    raw = created.json()["key"]
    client.logout()

    me = client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert me.status_code == 200
    bad = client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw[:-4]}zzzz")
    assert bad.status_code == 401

    # Careless code elsewhere: the filter must still keep these out.
    careless = logging.getLogger("levee.careless")
    careless.info("request headers %s", {"HTTP_AUTHORIZATION": f"Bearer {raw}", "HTTP_ACCEPT": "*/*"})
    careless.warning("login form password=%s for %s", new_password, user.email)
    careless.info("body %s", json.dumps({"email": user.email, "password": wrong_password}))
    careless.info("checking key", extra={"api_key": raw, "note": f"key was {raw}"})
    try:
        raise ValueError(f"cannot parse {raw}")
    except ValueError:
        careless.exception("oops")

    output = captured_logs.getvalue()
    for secret in (raw, raw[11:], new_password, wrong_password, PASSWORD, raw[:-4] + "zzzz"):
        assert secret not in output, f"{secret!r} leaked into the logs"
    records = lines(captured_logs)
    access = [r for r in records if r["logger"] == "levee.access" and r.get("request_id") == me["x-request-id"]]
    assert len(access) == 1
    assert access[0] | {"duration_ms": 0} == access[0] | {
        "route": "api-whoami", "method": "GET", "status": 200, "account_id": str(user.pk), "duration_ms": 0}
    assert any(r.get("route") == "login" and r.get("status") == 302 for r in records)
    assert any("[redacted]" in r["message"] for r in records if r["logger"] == "levee.careless")
    assert any("sk-[redacted]" in r.get("exc", "") for r in records)


@pytest.mark.django_db(transaction=True)
def test_concurrent_async_requests_keep_their_own_request_and_account(captured_logs):
    alice, bob = make_user("alice@example.com"), make_user("bob@example.com")
    keys = {alice.pk: create_api_key(alice, name="a")[1], bob.pk: create_api_key(bob, name="b")[1]}

    async def call(raw):
        return await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {raw}"})

    async def all_at_once():
        try:
            return await asyncio.gather(*(call(keys[pk]) for pk in [alice.pk, bob.pk] * 4))
        finally:  # the views' database work ran in asgiref's thread: close its connection there
            from asgiref.sync import sync_to_async
            from django.db import connections

            await sync_to_async(connections.close_all)()

    responses = asyncio.run(all_at_once())
    assert [r.status_code for r in responses] == [200] * 8
    by_request = {r["request_id"]: r for r in lines(captured_logs) if r["logger"] == "levee.access"}
    for response, owner in zip(responses, [alice.pk, bob.pk] * 4, strict=True):
        assert by_request[response["x-request-id"]]["account_id"] == str(owner)


@pytest.mark.parametrize("text,kept,gone", [
    ("Authorization: Bearer sk-abcdefgh_0123456789abcdef", "Authorization: ", "0123456789abcdef"),
    ("{'HTTP_AUTHORIZATION': 'Bearer tok_live_123456'}", "HTTP_AUTHORIZATION", "tok_live_123456"),
    ("password=hunter2hunter2&email=a@b.c", "email=a@b.c", "hunter2hunter2"),
    ('{"password": "with \\"quotes\\" and spaces", "x": 1}', '"x": 1', "quotes"),
    ("new_password1='s3cr3t value' next", "next", "s3cr3t"),
    ("key sk-proj-AbCdEf123456 used", "used", "AbCdEf123456"),
    ("token: eyJhbGciOiJIUzI1NiJ9.payload.sig", "token: ", "eyJhbGciOiJIUzI1NiJ9"),
])
def test_redaction_masks_secrets_and_keeps_the_rest(text, kept, gone):
    masked = redact(text)
    assert gone not in masked and kept in masked and "[redacted]" in masked


def test_redaction_leaves_ordinary_text_alone():
    text = "GET api-whoami 200 for account 42 in 3.1 ms (skill-based routing; tokens per second 50)"
    assert redact(text) == text
    counts = "usage max_tokens=256 prompt_tokens: 12 completion_tokens=7"
    assert redact(counts) == counts


def test_extra_fields_named_like_secrets_are_masked_and_counts_are_not():
    record = logging.makeLogRecord({"msg": "x", "csrf_token": "abc", "max_tokens": 256,
                                    "headers": {"Cookie": "sessionid=1", "Accept": "*/*"}})
    RedactFilter().filter(record)
    assert record.csrf_token == "[redacted]" and record.max_tokens == 256
    assert record.headers == {"Cookie": "[redacted]", "Accept": "*/*"}


def test_the_text_format_is_the_default_outside_production_and_json_in_it(settings):
    from levee.core.logging import logging_config

    assert logging_config("json")["handlers"]["console"]["formatter"] == "json"
    assert logging_config("text")["handlers"]["console"]["filters"] == ["context", "redact"]
    with pytest.raises(ValueError):
        logging_config("xml")


def test_django_has_no_handler_of_its_own_that_would_bypass_redaction():
    from django.utils.log import ServerFormatter

    # Django's default config prints django.* records through its own console handler when DEBUG is
    # on, and runserver's lines through another: neither may survive ours. (pytest adds capture
    # handlers of its own here, so look for ours and for Django's, not for an exact list.)
    assert not any(type(h).__name__ == "StreamHandler" for h in logging.getLogger("django").handlers)
    server = logging.getLogger("django.server").handlers
    assert any(any(isinstance(f, RedactFilter) for f in h.filters) for h in server)
    assert not any(isinstance(h.formatter, ServerFormatter) for h in server)
