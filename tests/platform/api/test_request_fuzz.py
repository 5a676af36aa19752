"""Whatever a client sends, the request parser answers with a ChatRequest or a RequestError that names
what is wrong (400/422): never another exception, which the API would turn into a 500."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from levee.api.schema import KNOWN_FIELDS as FIELDS
from levee.api.schema import RequestError, parse_chat_request, parse_json

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}

scalars = st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | \
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) |
                           st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "x"]) | json_values,
                                  "content": json_values | st.text(max_size=60)})


def _parses_or_names_the_problem(body) -> None:
    try:
        parse_chat_request(body)
    except RequestError as exc:
        assert exc.status in (400, 422), exc.status
        assert exc.message and isinstance(exc.message, str)
        if exc.code != "invalid_format":
            assert exc.param is not None, exc.message  # the offending parameter is named


@FUZZ
@given(field=st.sampled_from(sorted(FIELDS)), value=json_values)
def test_any_value_in_any_field(field, value):
    _parses_or_names_the_problem({**BASE, field: value})


@FUZZ
@given(messages=st.lists(message, max_size=6) | json_values)
def test_any_messages(messages):
    _parses_or_names_the_problem({**BASE, "messages": messages})


@FUZZ
@given(body=st.dictionaries(st.sampled_from(sorted(FIELDS)) | st.text(max_size=10), json_values, max_size=8))
def test_any_object(body):
    _parses_or_names_the_problem(body)


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes(raw):
    try:
        body = parse_json(raw)
    except RequestError as exc:
        assert exc.status == 400 and exc.code == "invalid_format"
        return
    _parses_or_names_the_problem(body)


def _refused_as_format(raw: bytes) -> str:
    try:
        parse_json(raw)
    except RequestError as exc:
        assert exc.status == 400 and exc.code == "invalid_format", (exc.status, exc.code)
        return exc.message
    raise AssertionError("parsed a hostile body")


@FUZZ
@given(depth=st.integers(min_value=33, max_value=20_000), opener=st.sampled_from(["[", '{"a":']))
def test_any_nesting_depth_past_the_bound(depth, opener):
    closer = "]" if opener == "[" else "}"
    raw = ('{"messages": ' + opener * depth + "1" + closer * depth + "}").encode()
    assert "deeper than" in _refused_as_format(raw)


@FUZZ
@given(digits=st.integers(min_value=41, max_value=8000), sign=st.sampled_from(["", "-"]))
def test_any_huge_integer(digits, sign):
    assert "digits" in _refused_as_format(f'{{"seed": {sign}{"9" * digits}}}'.encode())


@FUZZ
@given(prefix=st.text(max_size=10), code=st.integers(min_value=0xD800, max_value=0xDFFF))
def test_any_lone_surrogate(prefix, code):
    raw = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": prefix + chr(code)}]}]})
    assert "surrogate" in _refused_as_format(raw.encode())


def test_a_surrogate_pair_is_text():
    body = parse_json(b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}')
    assert body["messages"][0]["content"] == "\U0001F600"


def test_the_depth_a_chat_request_needs_is_accepted():
    body = {**BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert parse_chat_request(parse_json(json.dumps(body).encode())).messages[0]["content"] == "hi"


# --- tools, tool messages, response_format, thinking (the dialect beyond plain chat) ---------------

tool = st.fixed_dictionaries({"type": st.just("function") | json_values, "function": st.fixed_dictionaries({
    "name": st.from_regex(r"[a-z_]{1,8}", fullmatch=True) | json_values,
    "parameters": st.just({"type": "object", "properties": {"x": {"type": "string"}}}) | json_values,
    "strict": st.booleans() | json_values}) | json_values})
tool_call = st.fixed_dictionaries({"id": st.text(max_size=8) | json_values, "type": st.just("function") | json_values,
                                   "function": st.fixed_dictionaries({"name": st.text(max_size=8) | json_values,
                                                                      "arguments": st.text(max_size=20) | json_values})})
turn = st.fixed_dictionaries({"role": st.sampled_from(["assistant", "tool", "user"]),
                              "content": st.none() | st.text(max_size=20) | json_values},
                             optional={"tool_calls": st.lists(tool_call, max_size=3) | json_values,
                                       "tool_call_id": st.text(max_size=8) | json_values,
                                       "prefix": st.booleans() | json_values, "name": json_values})


@FUZZ
@given(tools=st.lists(tool, max_size=4) | json_values,
       choice=st.sampled_from(["none", "auto", "required"]) | json_values |
       st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries({"name": st.text(max_size=8)})}),
       fmt=st.none() | st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "x"])}) | json_values,
       thinking=st.none() | st.fixed_dictionaries({"type": st.sampled_from(["enabled", "disabled"])}) | json_values)
def test_any_tools_and_tool_choice(tools, choice, fmt, thinking):
    body = {**BASE, "tools": tools, "tool_choice": choice}
    for name, value in (("response_format", fmt), ("thinking", thinking)):
        if value is not None:
            body[name] = value
    _parses_or_names_the_problem(body)


@FUZZ
@given(turns=st.lists(turn, min_size=1, max_size=5))
def test_any_tool_conversation(turns):
    _parses_or_names_the_problem({**BASE, "messages": [{"role": "user", "content": "hi"}, *turns]})


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["model", "max_tokens", "system", "messages", "stop_sequences", "stream",
                                             "temperature", "tools", "tool_choice", "thinking", "metadata"])
                            | st.text(max_size=8), json_values, max_size=8))
def test_any_anthropic_body_becomes_a_chat_request_or_a_named_refusal(body):
    from levee.api.anthropic import _Refused, to_chat_body

    try:
        chat = to_chat_body(body)
    except _Refused as exc:
        assert exc.message
        return
    _parses_or_names_the_problem(chat)


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["model", "prompt", "suffix", "max_tokens", "echo", "stop", "stream",
                                             "logprobs", "temperature", "n"]) | st.text(max_size=8),
                            json_values, max_size=8))
def test_any_fim_body(body):
    from levee.api.completions import parse

    try:
        parse({"model": "deepseek-chat", "prompt": "x", **body})
    except RequestError as exc:
        assert exc.status in (400, 422) and exc.message
