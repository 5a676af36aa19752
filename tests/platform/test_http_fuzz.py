"""An attacker's bodies and query strings against every JSON endpoint, through the real URL
routing, middleware and views (PostgreSQL and Redis of the machine): the answer is never a 500,
and every refusal is in the API's error format."""
import json

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from levee.chat.services import create_conversation
from levee.keys.services import create_api_key
from tests.personas import make_user

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
scalars = st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | \
    st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
bodies = json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=80)
queries = st.dictionaries(st.sampled_from(["days", "from", "to", "model", "key", "page", "group", "x"]),
                          st.text(max_size=20), max_size=4)


def _check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:300])
    if response.status_code >= 400 and response["Content-Type"].startswith("application/json"):
        error = json.loads(response.content)["error"]
        assert isinstance(error["message"], str) and error["message"]


@pytest.fixture
def browser(transactional_db):
    user = make_user("fuzz@example.com")
    client = Client()
    client.force_login(user)
    client.user = user
    return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/keys", "/api/vouchers/redeem", "/chat/api/conversations"])
def test_session_json_posts(browser, path):
    @FUZZ
    @given(body=bodies)
    def run(body):
        _check(browser.post(path, body, content_type="application/json"))

    run()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method,suffix", [("patch", ""), ("post", "/messages")])
def test_a_conversation_renamed_or_written_to(browser, method, suffix):
    conversation = create_conversation(browser.user, model="deepseek-chat")

    @FUZZ
    @given(body=bodies)
    def run(body):
        _check(getattr(browser, method)(f"/chat/api/conversations/{conversation.pk}{suffix}", body,
                                        content_type="application/json"))

    run()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/usage", "/api/pricing", "/usage/", "/keys/", "/chat/"])
def test_session_gets_with_any_query(browser, path):
    @FUZZ
    @given(query=queries)
    def run(query):
        _check(browser.get(path, query))

    run()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_paid_api_bodies(path):
    """Bodies that parse reach the capacity check (no inference worker here: 503); the rest are
    refused by validation; none is a 500."""
    user = make_user("fuzzkey@example.com")
    _, raw = create_api_key(user, name="fuzz")
    client = Client(headers={"Authorization": f"Bearer {raw}"})

    @FUZZ
    @given(body=bodies | st.fixed_dictionaries({"model": st.just("deepseek-chat")}, optional={
        "messages": json_values, "max_tokens": json_values, "stream": json_values, "stop": json_values,
        "temperature": json_values}).map(lambda v: json.dumps(v).encode()))
    def run(body):
        _check(client.post(path, body, content_type="application/json"))

    run()
