"""Function calling pieces (levee.api.tools): tool definitions, the forced-call grammar, and the
parser that reads calls out of streamed text however it is cut."""
import json

import llguidance
import pytest

from inference.demo.tokenizer_build import CHAT_TEMPLATE
from levee.api import tools as T

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
V31_TEXT = ("Let me look. <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}"
            "<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Rome\"}<｜tool▁call▁end｜>"
            "<｜tool▁calls▁end｜>")
V3_TEXT = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Oslo\"}\n```"
           "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


def _parse(family, text, size, names=frozenset({"get_weather"})):
    parser = T.ToolCallParser(family, names)
    out, deltas = "", []
    for i in range(0, len(text), size):
        piece, more = parser.push(text[i:i + size])
        out, deltas = out + piece, deltas + more
    piece, more = parser.flush()
    return out + piece, deltas + more, parser.calls


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 1000])
def test_v31_calls_are_parsed_however_the_text_is_cut(size):
    text, deltas, calls = _parse(T.V31, V31_TEXT, size)
    assert text == "Let me look. "
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                  ("get_weather", {"city": "Rome"})]
    # OpenAI's streaming shape: each call's first delta has its id and name, then argument fragments
    firsts = [d for d in deltas if d.id is not None]
    assert [d.index for d in firsts] == [0, 1] and all(d.name == "get_weather" for d in firsts)
    for index, call in enumerate(calls):
        assert "".join(d.arguments for d in deltas if d.index == index) == call.arguments


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_v3_calls_lose_their_code_fence(size):
    text, _, calls = _parse(T.V3, V3_TEXT, size)
    assert text == "" and [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Oslo"}')]


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_a_call_of_an_unknown_function_stays_text(size):
    text, deltas, calls = _parse(T.V31, V31_TEXT, size, names=frozenset({"other"}))
    assert text == V31_TEXT and not deltas and not calls


def test_a_lone_begin_token_followed_by_prose_stays_text():
    text, _, calls = _parse(T.V31, "a<｜tool▁calls▁begin｜>not a call at all", 3)
    assert text == "a<｜tool▁calls▁begin｜>not a call at all" and not calls


def test_the_template_family_is_read_from_the_template():
    assert T.family_of(CHAT_TEMPLATE) == T.V31
    assert T.family_of("{{ '<｜tool▁call▁begin｜>function<｜tool▁sep｜>' + name + '\\n```json\\n' }}") == T.V3
    assert T.family_of("{{ messages }}") is None


@pytest.mark.parametrize("raw,param", [
    ("x", "tools"), ([{"type": "retrieval"}], "tools[0]"), ([{"type": "function", "function": {"name": "a b"}}],
                                                            "tools[0].function.name"),
    ([WEATHER, WEATHER], "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "strict": "yes"}}], "tools[0].function.strict"),
])
def test_bad_tool_definitions_are_refused_naming_the_field(raw, param):
    with pytest.raises(T.ToolError) as info:
        T.parse_tools(raw)
    assert info.value.param == param


def test_tool_choice_must_name_an_offered_function():
    tools = T.parse_tools([WEATHER])
    assert T.parse_tool_choice(None, tools) == "auto" and T.parse_tool_choice(None, []) == "none"
    assert T.parse_tool_choice({"type": "function", "function": {"name": "get_weather"}}, tools) == "get_weather"
    for bad in ("sometimes", {"type": "function", "function": {"name": "nope"}}, 3):
        with pytest.raises(T.ToolError):
            T.parse_tool_choice(bad, tools)
    with pytest.raises(T.ToolError):
        T.parse_tool_choice("required", [])


def test_the_forced_call_grammar_compiles_and_accepts_only_schema_valid_calls():
    from pathlib import Path

    from inference.tokenizer import Tokenizer

    ckpt = Path(__file__).resolve().parents[3] / "inference" / "demo" / "checkpoint"
    tok = llguidance.LLTokenizer((ckpt / "tokenizer.json").read_text(), n_vocab=2112, eos_token=1)
    ids = {name: Tokenizer.from_dir(ckpt).token_to_id(name)
           for name in [T.CALLS_BEGIN, T.CALLS_END, T.CALL_BEGIN, T.CALL_END, T.SEP]}
    assert all(i is not None for i in ids.values())
    grammar = T.call_grammar(T.parse_tools([WEATHER]), family=T.V31, token_ids=ids)

    def matcher():
        m = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
        assert not m.is_error(), m.get_error()
        return m

    def encode(args: str) -> list[int]:
        return [ids[T.CALLS_BEGIN], ids[T.CALL_BEGIN], *tok.tokenize_str("get_weather"), ids[T.SEP],
                *tok.tokenize_str(args), ids[T.CALL_END], ids[T.CALLS_END]]

    good = matcher()
    assert good.consume_tokens(encode('{"city":"Paris"}')) and good.is_accepting()
    wrong = encode('{"town":"Paris"}')
    assert matcher().validate_tokens(wrong) < len(wrong)
