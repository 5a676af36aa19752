"""From a validated request to what the worker is asked to do: the rendered prompt (tools and the
thinking switch go through the checkpoint's chat template), the sampling constraint (a grammar
for JSON output, a forced or strict tool call), logprobs, and the sampling knobs a reasoner keeps.

Pure web code (the tokenizer is torch-free); the grammar is text the worker compiles with
llguidance. One plan serves the chat completions endpoint, its /beta twin and the Anthropic one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference import protocol
from inference.tokenizer import Tokenizer
from levee.api import tools as toolkit
from levee.api.schema import ChatRequest, RequestError
from levee.api.tokens import tokenizer_for
from levee.api.tools import Tool, ToolCallParser

if TYPE_CHECKING:
    from levee.api.models import LlmModel

THINK_CLOSE = "</think>"


@dataclass
class Plan:
    prompt_ids: list[int]
    thinking: bool  # the answer is preceded by reasoning (a reasoner, or thinking enabled)
    thinking_opened: bool  # the prompt itself opened <think>
    sampling: dict  # temperature, top_p, presence_penalty, frequency_penalty as sent to the worker
    constraint: protocol.Constraint | None = None
    logprobs: int | None = None
    tool_family: str | None = None
    tool_names: frozenset[str] = frozenset()

    def tool_parser(self, job_id: str) -> ToolCallParser | None:
        if self.tool_family is None:
            return None
        return ToolCallParser(self.tool_family, self.tool_names, id_prefix=f"call_{job_id[:12]}")


def _refuse(param: str, message: str, status: int = 422) -> RequestError:
    return RequestError(status, message, param=param, code="invalid_parameter")


def _token_ids(tokenizer: Tokenizer, names: list[str]) -> dict[str, int]:
    ids = {}
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is None:
            raise _refuse("tools", f"this model's tokenizer has no {name} token, so calls cannot be constrained")
        ids[name] = token_id
    return ids


def _calls_ids(ids: dict[str, int]) -> list[int]:
    """What the engine needs to end a block of several calls in time (protocol.Constraint.calls)."""
    return [ids[toolkit.CALL_BEGIN], ids[toolkit.CALL_END], ids[toolkit.CALLS_END]]


def build(model: LlmModel, chat: ChatRequest, *, beta: bool = False) -> Plan:
    """The plan of one chat request for `model`. Raises RequestError naming the parameter."""
    tokenizer = tokenizer_for(model)
    if model.reasoner and chat.logprobs:
        raise _refuse("logprobs", f"{model.name} does not support logprobs")
    if chat.prefix and not beta:
        raise _refuse("messages", "chat prefix completion (prefix: true) needs the beta base URL (/beta)")
    thinking = model.reasoner if chat.thinking is None else chat.thinking

    family = toolkit.family_of(tokenizer.chat_template)
    offered: list[Tool] = chat.tools
    if offered and chat.tool_choice != "none" and family is None:
        raise _refuse("tools", f"{model.name}'s chat template does not write tool calls")
    rendered_tools = [t.as_openai() for t in offered] or None

    messages = chat.messages
    if chat.prefix and thinking:
        raise _refuse("messages", "prefix completion continues an answer: send thinking disabled with it")
    prompt_ids = tokenizer.encode_chat(messages, tools=rendered_tools, thinking=thinking)
    tail = tokenizer.decode(prompt_ids[-4:], skip_special_tokens=False)
    opened = thinking and tail.rstrip().endswith("<think>")

    constraint = None
    parse_calls = bool(offered) and chat.tool_choice != "none" and family is not None
    if chat.response_format == "json_object":
        constraint = protocol.Constraint(grammar=toolkit.json_object_grammar(), json_value=True)
    elif parse_calls and family is not None and chat.tool_choice != "auto":
        forced = offered if chat.tool_choice == "required" else [t for t in offered if t.name == chat.tool_choice]
        ids = _token_ids(tokenizer, [toolkit.CALLS_BEGIN, toolkit.CALLS_END, toolkit.CALL_BEGIN, toolkit.CALL_END,
                                     toolkit.SEP])
        parallel = chat.parallel_tool_calls and chat.tool_choice == "required"
        grammar = toolkit.call_grammar(forced, family=family, token_ids=ids, parallel=parallel)
        constraint = protocol.Constraint(grammar=grammar, calls=_calls_ids(ids) if parallel else None)
    elif parse_calls and family is not None and beta and chat.strict:
        # tool_choice auto: free text until the model begins a call, then the call follows the schemas
        ids = _token_ids(tokenizer, [toolkit.CALLS_BEGIN, toolkit.CALLS_END, toolkit.CALL_BEGIN, toolkit.CALL_END,
                                     toolkit.SEP])
        grammar = toolkit.call_grammar(offered, family=family, token_ids=ids, parallel=chat.parallel_tool_calls,
                                       after_begin=True)
        constraint = protocol.Constraint(grammar=grammar, trigger=ids[toolkit.CALLS_BEGIN],
                                         calls=_calls_ids(ids) if chat.parallel_tool_calls else None)
    if constraint is not None and thinking and constraint.trigger is None:
        close = tokenizer.token_to_id(THINK_CLOSE)
        if close is None:
            raise _refuse("thinking", "this model cannot constrain an answer after its reasoning")
        constraint = protocol.Constraint(grammar=constraint.grammar, trigger=close, json_value=constraint.json_value,
                                         calls=constraint.calls)

    if model.reasoner:
        # DeepSeek's reasoner accepts these knobs and leaves them without effect.
        sampling = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
    else:
        sampling = {"temperature": chat.temperature, "top_p": chat.top_p, "presence_penalty": chat.presence_penalty,
                    "frequency_penalty": chat.frequency_penalty}
    return Plan(prompt_ids=prompt_ids, thinking=thinking, thinking_opened=opened, sampling=sampling,
                constraint=constraint, logprobs=chat.top_logprobs if chat.logprobs else None,
                tool_family=family if parse_calls else None, tool_names=frozenset(t.name for t in offered))
