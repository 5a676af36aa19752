"""The rest of DeepSeek's dialect through the official openai and anthropic SDKs, against a real stack
serving the trained demo checkpoint (one engine under deepseek-chat and deepseek-reasoner): tool calls
forced, streamed and in a multi-turn conversation, JSON output, logprobs, prefix completion, FIM, the
reasoner's reasoning, and Anthropic's Messages API."""
import json

import anthropic
import jsonschema
import openai
import pytest

from levee.api.models import LlmModel
from levee.billing import services as billing
from levee.billing.models import UsageRecord
from levee.keys.services import create_api_key
from tests.e2e.stack import ROOT, Stack
from tests.personas import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHAT, REASONER = "deepseek-chat", "deepseek-reasoner"
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"],
               "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
                                            "parameters": CITY_SCHEMA}}
ADD = {"type": "function", "function": {
    "name": "add_numbers", "description": "Add two whole numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def demo_stack(django_db_setup, django_db_blocker):
    running = Stack(redis_offset=3, extra_env={
        "LEVEE_CHECKPOINT": str(ROOT / "inference" / "demo" / "checkpoint"),
        "LEVEE_MODEL_NAME": f"{CHAT},{REASONER}", "LEVEE_MAX_BATCH": "8"}).start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _catalogue(seeded_catalogue):
    LlmModel.objects.filter(name=REASONER).update(enabled=True)


@pytest.fixture
def key():
    user = make_user("dialect@example.com")
    billing.topup(billing.wallet_for(user), 10**9, source="test", external_id="seed-dialect")
    return create_api_key(user, name="sdk")[1]


def _openai(stack, key, base="/v1"):
    return openai.OpenAI(api_key=key, base_url=stack.url + base, max_retries=0, timeout=120)


def test_a_named_tool_choice_forces_a_schema_valid_call(demo_stack, key):
    completion = _openai(demo_stack, key).chat.completions.create(
        model=CHAT, messages=WEATHER_Q, tools=[WEATHER, ADD], temperature=0, max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), CITY_SCHEMA)


def test_streamed_tool_calls_arrive_in_openais_chunk_shape_and_parse(demo_stack, key):
    stream = _openai(demo_stack, key).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Add 3 and 4 for me."}], tools=[WEATHER, ADD],
        tool_choice="required", temperature=0, max_tokens=80, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        for part in (delta.tool_calls or []) if delta else []:
            call = calls.setdefault(part.index, {"id": None, "name": None, "arguments": ""})
            if part.id:
                assert call["id"] is None, "the id comes once, with the first piece"
                call["id"], call["name"] = part.id, part.function.name
            call["arguments"] += part.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls" and calls
    schemas = {"get_weather": CITY_SCHEMA, "add_numbers": ADD["function"]["parameters"]}
    for call in calls.values():
        assert call["id"] and call["name"] in schemas
        jsonschema.validate(json.loads(call["arguments"]), schemas[call["name"]])


def test_a_multi_turn_tool_conversation_is_billed_with_its_tool_schemas(demo_stack, key):
    client = _openai(demo_stack, key)
    first = client.chat.completions.create(model=CHAT, messages=WEATHER_Q, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=60)
    call = first.choices[0].message.tool_calls[0]
    history = [*WEATHER_Q, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id,
                "content": json.dumps({"city": "Paris", "weather": "sunny", "temperature_c": 21})}]
    second = client.chat.completions.create(model=CHAT, messages=history, tools=[WEATHER], temperature=0,
                                            max_tokens=40)
    assert second.choices[0].finish_reason in {"stop", "length", "tool_calls"}
    plain = client.chat.completions.create(model=CHAT, messages=WEATHER_Q, temperature=0, max_tokens=1)
    assert first.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tool schemas are prompt tokens
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert UsageRecord.objects.count() >= 2


def test_json_output_is_held_to_json(demo_stack, key):
    """response_format json_object: the answer parses as a JSON object, whole or streamed, even when
    max_tokens cuts it (the engine closes the value in the tokens left; finish_reason says "length")."""
    client = _openai(demo_stack, key)
    for max_tokens in (60, 7):
        completion = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "What is Levee? Answer in JSON."}],
            response_format={"type": "json_object"}, temperature=0, max_tokens=max_tokens)
        content, finish = completion.choices[0].message.content, completion.choices[0].finish_reason
        assert isinstance(json.loads(content), dict), content
        assert finish in {"stop", "length"} and completion.usage.completion_tokens <= max_tokens
    chunks = list(client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Tell me a short story."}], stream=True,
        response_format={"type": "json_object"}, temperature=1, seed=3, max_tokens=12))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(streamed), dict), streamed


def test_logprobs_come_in_openais_shape_streamed_and_not(demo_stack, key):
    client = _openai(demo_stack, key)
    completion = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Hello"}],
                                                logprobs=True, top_logprobs=2, max_tokens=5, temperature=0)
    content = completion.choices[0].logprobs.content
    assert 1 <= len(content) <= 5 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-5 for t in content)  # greedy picks the top one
    streamed = [c for c in client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hello"}], logprobs=True, top_logprobs=1, max_tokens=5,
        temperature=0, stream=True) if c.choices and c.choices[0].logprobs]
    tokens = [t.token for c in streamed for t in c.choices[0].logprobs.content]
    assert tokens == [t.token for t in content][: len(tokens)] and tokens
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=REASONER, messages=[{"role": "user", "content": "Hi"}], logprobs=True)


def test_prefix_completion_continues_the_assistants_text_on_beta(demo_stack, key):
    messages = [{"role": "user", "content": "What is Levee?"},
                {"role": "assistant", "content": "Levee is a", "prefix": True}]
    completion = _openai(demo_stack, key, "/beta").chat.completions.create(
        model=CHAT, messages=messages, temperature=0, max_tokens=20)
    assert completion.choices[0].message.content and completion.usage.completion_tokens >= 1
    with pytest.raises(openai.UnprocessableEntityError):  # not outside /beta
        _openai(demo_stack, key).chat.completions.create(model=CHAT, messages=messages, max_tokens=5)


def test_fim_fills_the_middle_as_a_legacy_completion(demo_stack, key):
    client = _openai(demo_stack, key, "/beta")
    completion = client.completions.create(model=CHAT, prompt="def add(a, b):\n", suffix="\n", max_tokens=16,
                                           temperature=0, echo=True, logprobs=1)
    choice = completion.choices[0]
    assert completion.object == "text_completion" and choice.text.startswith("def add(a, b):\n")
    assert choice.finish_reason in {"stop", "length"} and choice.logprobs.tokens
    suffix_cost = client.completions.create(model=CHAT, prompt="x", suffix="y " * 30, max_tokens=1)
    assert suffix_cost.usage.prompt_tokens > 30  # the suffix is prompt
    chunks = list(client.completions.create(model=CHAT, prompt="def add(a, b):\n", suffix="\n", max_tokens=8,
                                            temperature=0, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_the_reasoner_reasons_apart_from_its_answer(demo_stack, key):
    client = _openai(demo_stack, key)
    completion = client.chat.completions.create(model=REASONER, messages=[{"role": "user", "content": "What is Levee?"}],
                                                max_tokens=120, seed=1)
    message = completion.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning and message.content and "</think>" not in reasoning + message.content  # it closed its reasoning
    assert 0 < completion.usage.completion_tokens_details.reasoning_tokens < completion.usage.completion_tokens
    streamed = list(client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hello"}], max_tokens=60, stream=True,
        extra_body={"thinking": {"type": "enabled"}}))
    assert any((c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in streamed if c.choices)


def _anthropic(stack, key):
    return anthropic.Anthropic(api_key=key, base_url=stack.url + "/anthropic", max_retries=0, timeout=120)


def test_anthropic_messages_whole_and_streamed(demo_stack, key):
    client = _anthropic(demo_stack, key)
    message = client.messages.create(model=CHAT, max_tokens=30, system="You are a helpful assistant.",
                                     messages=[{"role": "user", "content": "Hello"}], extra_body={"temperature": 0})
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in {"end_turn", "max_tokens"} and message.usage.output_tokens >= 1
    with client.messages.stream(model=CHAT, max_tokens=20, messages=[{"role": "user", "content": "Hello"}],
                                extra_body={"temperature": 0}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and "content_block_delta" in kinds and kinds[-1] == "message_stop"
    assert final.content[0].text == message.content[0].text[: len(final.content[0].text)]
    counted = client.messages.count_tokens(model=CHAT, messages=[{"role": "user", "content": "Hello"}])
    assert counted.input_tokens > 1


def test_anthropic_stop_reason_says_what_ended_the_message(demo_stack, key):
    client = _anthropic(demo_stack, key)
    hello = {"model": CHAT, "messages": [{"role": "user", "content": "Hello"}], "extra_body": {"temperature": 0}}
    free = client.messages.create(max_tokens=30, **hello)
    text = free.content[0].text
    assert free.usage.output_tokens > 4, text  # long enough to cut
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert text.find(stop) > 0, text

    def check(message, reason, sequence=None):
        assert (message.stop_reason, message.stop_sequence) == (reason, sequence)

    cut = client.messages.create(max_tokens=30, stop_sequences=["never-said", stop], **hello)
    check(cut, "stop_sequence", stop)
    assert cut.content[0].text == text[: text.find(stop)]
    check(client.messages.create(max_tokens=3, **hello), "max_tokens")
    with client.messages.stream(max_tokens=30, stop_sequences=[stop], **hello) as stream:
        streamed = stream.get_final_message()
    check(streamed, "stop_sequence", stop)
    assert streamed.content[0].text == text[: text.find(stop)]
    with client.messages.stream(max_tokens=3, **hello) as stream:
        check(stream.get_final_message(), "max_tokens")
    tool = {"name": "get_weather", "description": "Get the current weather in a city.", "input_schema": CITY_SCHEMA}
    with client.messages.stream(model=CHAT, max_tokens=60, tools=[tool], messages=WEATHER_Q,
                                tool_choice={"type": "tool", "name": "get_weather"},
                                extra_body={"temperature": 0}) as stream:
        called = stream.get_final_message()
    check(called, "tool_use")
    jsonschema.validate(next(b for b in called.content if b.type == "tool_use").input, CITY_SCHEMA)
    check(free, "max_tokens" if free.usage.output_tokens == 30 else "end_turn")


def test_anthropic_tool_use_and_thinking(demo_stack, key):
    client = _anthropic(demo_stack, key)
    tool = {"name": "get_weather", "description": "Get the current weather in a city.", "input_schema": CITY_SCHEMA}
    message = client.messages.create(model=CHAT, max_tokens=60, tools=[tool], messages=WEATHER_Q,
                                     tool_choice={"type": "tool", "name": "get_weather"}, extra_body={"temperature": 0})
    assert message.stop_reason == "tool_use"
    use = next(b for b in message.content if b.type == "tool_use")
    jsonschema.validate(use.input, CITY_SCHEMA)
    reply = client.messages.create(model=CHAT, max_tokens=30, tools=[tool], extra_body={"temperature": 0}, messages=[
        *WEATHER_Q, {"role": "assistant", "content": message.model_dump()["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]}])
    assert reply.content is not None
    thought = client.messages.create(model=REASONER, max_tokens=120, messages=[{"role": "user", "content": "Hello"}])
    assert thought.content[0].type == "thinking" and thought.content[0].thinking


def test_anthropic_errors_come_in_anthropics_shape(demo_stack):
    with pytest.raises(anthropic.AuthenticationError) as info:
        _anthropic(demo_stack, "sk-wrong").messages.create(model=CHAT, max_tokens=5,
                                                            messages=[{"role": "user", "content": "Hi"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "authentication_error"
