import pytest

from levee.api.schema import RequestError, parse_chat_request, parse_json

BASE = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}


def _error(**changes):
    body = {**BASE, **changes}
    body = {k: v for k, v in body.items() if v is not _DROP}
    with pytest.raises(RequestError) as info:
        parse_chat_request(body)
    return info.value


_DROP = object()


def test_a_minimal_request_gets_the_defaults():
    chat = parse_chat_request(BASE)
    assert chat.messages == [{"role": "user", "content": "hi"}]
    assert (chat.temperature, chat.top_p, chat.stream, chat.max_tokens, chat.stop) == (1.0, 1.0, False, None, [])


def test_text_content_parts_are_joined_and_a_single_stop_becomes_a_list():
    chat = parse_chat_request({**BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                 {"type": "text", "text": "b"}]}],
                               "stop": "END", "stream": True, "stream_options": {"include_usage": True}})
    assert chat.messages[0]["content"] == "ab" and chat.stop == ["END"] and chat.include_usage


@pytest.mark.parametrize("changes,status,param", [
    ({"model": _DROP}, 400, "model"),
    ({"model": 7}, 400, "model"),
    ({"messages": []}, 400, "messages"),
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": [], "content": "x"}]}, 400, "messages[0].role"),  # was a TypeError: a 500
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 422, "messages[0].content[0]"),
    ({"temperature": 2.5}, 422, "temperature"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"temperature": True}, 400, "temperature"),
    ({"temperature": float("nan")}, 422, "temperature"),
    ({"top_p": -0.1}, 422, "top_p"),
    ({"presence_penalty": 3}, 422, "presence_penalty"),
    ({"frequency_penalty": -2.01}, 422, "frequency_penalty"),
    ({"max_tokens": 0}, 422, "max_tokens"),
    ({"max_tokens": 1.5}, 400, "max_tokens"),
    ({"stop": ["x"] * 17}, 422, "stop"),
    ({"stop": [1]}, 400, "stop"),
    ({"stop": [""]}, 422, "stop"),
    ({"stream": "yes"}, 400, "stream"),
    ({"stream_options": {"include_usage": True}}, 422, "stream_options"),
    ({"response_format": {"type": "xml"}}, 400, "response_format"),
    ({"top_logprobs": 3}, 422, "top_logprobs"),  # without logprobs: true (logprobs alone are served now)
    ({"logprobs": True, "top_logprobs": 21}, 422, "top_logprobs"),
    ({"logprobs": "yes"}, 400, "logprobs"),
    ({"tool_choice": "required"}, 422, "tool_choice"),
    ({"thinking": {"type": "maybe"}}, 400, "thinking"),
    ({"reasoning_effort": "extreme"}, 400, "reasoning_effort"),
    ({"messages": [{"role": "tool", "content": "42"}]}, 400, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": "x"}]}, 400, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "content": "a", "prefix": True}, {"role": "user", "content": "b"}]},
     422, "messages[0].prefix"),
    ({"n": 2}, 422, "n"),
    ({"tools": [{"type": "function"}]}, 422, "tools"),
    ({"seed": 2**64}, 422, "seed"),
    ({"user": "u" * 300}, 400, "user"),
    ({"frobnicate": 1}, 400, "frobnicate"),
])
def test_bad_fields_are_refused_naming_the_parameter(changes, status, param):
    error = _error(**changes)
    assert (error.status, error.param) == (status, param)


@pytest.mark.parametrize("raw", [b"{", b"[]", b"\xff\xfe", b"null", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_invalid_format(raw):
    with pytest.raises(RequestError) as info:
        parse_json(raw)
    assert info.value.status == 400 and info.value.code == "invalid_format"


def test_a_tool_conversation_is_kept_for_the_template():
    chat = parse_chat_request({**BASE, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": 2,
        "thinking": {"type": "disabled"}})
    assert chat.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert chat.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert (chat.tool_choice, chat.response_format, chat.top_logprobs, chat.thinking) == ("auto", "json_object", 2,
                                                                                          False)
    assert [t.name for t in chat.tools] == ["get_weather"]


def test_a_last_assistant_message_can_be_a_prefix():
    chat = parse_chat_request({**BASE, "messages": [{"role": "user", "content": "code"},
                                                    {"role": "assistant", "content": "```python\n", "prefix": True}]})
    assert chat.prefix and chat.messages[-1]["prefix"] is True
