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


# Bodies that json.loads alone turns into a 500 (RecursionError, ValueError, an unencodable string).
_DEEP = b"[" * 50_000 + b"]" * 50_000
_JUST_UNDER_THE_RECURSION_LIMIT = b"[" * 900 + b"]" * 900
HOSTILE = {
    "deep_nesting": b'{"model": "deepseek-chat", "messages": ' + _DEEP + b"}",
    "nesting_just_parseable": b'{"model": "deepseek-chat", "title": ' + _JUST_UNDER_THE_RECURSION_LIMIT + b"}",
    "huge_integer": b'{"model": "deepseek-chat", "max_tokens": ' + b"7" * 6000 + b', "name": 1' + b"0" * 6000 + b"}",
    "lone_surrogate": b'{"model": "deepseek-chat", "name": "\\ud800", "title": "\\udfff", "code": "x\\ud800",'
                      b' "messages": [{"role": "user", "content": "\\ud800"}]}',
    "deep_message_content": b'{"model": "deepseek-chat", "content": ' + b'{"a": ' * 800 + b"1" + b"}" * 800
                            + b', "messages": [{"role": "user", "content": [{"type": "text", "text": '
                            + b"[" * 800 + b"]" * 800 + b"}]}]}",
    "nan": b'{"model": "deepseek-chat", "max_tokens": NaN, "messages": [{"role": "user", "content": "hi"}]}',
}


def _hostile_refused(response) -> None:
    assert response.status_code == 400, (response.status_code, response.content[:300])
    error = json.loads(response.content)["error"]
    assert error["code"] == "invalid_format" and error["message"], error


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_json_on_every_parser(browser, case):
    """The API, the web chat's endpoints and the DRF endpoints each answer 400 in the API's error
    format: never a 500, and nothing written."""
    from levee.chat.models import Conversation
    from levee.keys.models import ApiKey

    body = HOSTILE[case]
    _, raw = create_api_key(browser.user, name="hostile")
    conversation = create_conversation(browser.user, model="deepseek-chat")
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    for path in ("/v1/chat/completions", "/chat/completions"):
        _hostile_refused(api.post(path, body, content_type="application/json"))
    for path in ("/api/keys", "/api/vouchers/redeem", "/chat/api/conversations",
                 f"/chat/api/conversations/{conversation.pk}/messages"):
        _hostile_refused(browser.post(path, body, content_type="application/json"))
    _hostile_refused(browser.patch(f"/chat/api/conversations/{conversation.pk}", body,
                                   content_type="application/json"))
    assert ApiKey.objects.filter(user=browser.user).count() == 1
    assert Conversation.objects.filter(user=browser.user).count() == 1
    assert not conversation.messages.exists()


tools_field = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "get_weather"]) | json_values,
     "parameters": st.just({"type": "object"}) | json_values}, optional={"strict": json_values})}), max_size=2)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/beta/chat/completions", "/beta/completions", "/anthropic/v1/messages",
                                  "/anthropic/v1/messages/count_tokens"])
def test_beta_and_anthropic_bodies(path):
    """The beta and Anthropic endpoints, with the fields beyond plain chat (tools, tool turns,
    response_format, prefix, FIM suffix, thinking): validation or 503 (no worker), never a 500."""
    user = make_user("fuzzbeta@example.com")
    _, raw = create_api_key(user, name="fuzz")
    client = Client(headers={"x-api-key": raw} if path.startswith("/anthropic") else {"Authorization": f"Bearer {raw}"})
    messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool"]),
                                               "content": st.text(max_size=10) | json_values},
                                              optional={"tool_calls": json_values, "tool_call_id": json_values,
                                                        "prefix": st.booleans()}), min_size=1, max_size=3)

    @FUZZ
    @given(body=bodies | st.fixed_dictionaries({"model": st.just("deepseek-chat"), "messages": messages}, optional={
        "tools": tools_field | json_values, "tool_choice": json_values, "response_format": json_values,
        "max_tokens": st.integers(1, 50) | json_values, "prompt": st.text(max_size=10) | json_values,
        "suffix": json_values, "echo": json_values, "logprobs": json_values, "thinking": json_values,
        "system": json_values, "stream": st.booleans()}).map(lambda v: json.dumps(v).encode()))
    def run(body):
        _check(client.post(path, body, content_type="application/json"))

    run()
