"""Constrained sampling with llguidance: a grammar per sequence, a token mask per sequence per step.

The web side writes the grammar (inference.protocol.Constraint: llguidance's Lark dialect, JSON
schemas inside `%json {...}`); the worker compiles it into a `SequenceConstraint` when the job is
submitted (in the Celery task thread, not the engine's). The engine then, for every step:

    pending = masker.begin(constraints)      # before the forward: masks computed on llguidance's
                                             # threads (the GIL released) while the model runs
    masker.apply(pending, logits)            # after it: disallowed tokens' logits become -inf
    constraint.advance(token)                # after sampling: the matcher consumes the token

A mask depends only on the tokens sampled so far, so the one a step needs is known before its
forward starts: that is what keeps the grammar off the critical path.

With a `trigger` token the sequence is free until it samples that token (e.g. `</think>` before a
JSON answer, or the calls-begin token under tool_choice auto); the grammar holds from the next one.

A constraint whose output is one JSON value (`json_value`: response_format json_object) is also
closed within the sequence's max_tokens: `JsonTail` follows the text and knows the shortest
completion; when that completion needs as many tokens as are left, the mask forces its tokens one
by one, and a sampled token after which the completion would no longer fit is replaced by the
completion's first token (`guard`). The answer then ends in a whole JSON value even when max_tokens
cuts it (finish_reason stays "length": it was cut). A grammar of one or more tool calls (`calls`)
ends the calls block instead of starting another call when one as long as the longest so far, the
block's end and eos would no longer fit (a model that keeps calling then still answers with whole
calls, finish_reason "tool_calls").
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import llguidance

log = logging.getLogger(__name__)


class GrammarError(ValueError):
    """The grammar does not compile (the message says why)."""


_tokenizers: dict[tuple[str, int, int], llguidance.LLTokenizer] = {}
_lock = threading.Lock()


def ll_tokenizer(tokenizer_json: str, vocab_size: int, eos_token_id: int) -> llguidance.LLTokenizer:
    """llguidance's view of a checkpoint's tokenizer (built once per process: ~0.1 s)."""
    import llguidance

    key = (tokenizer_json, vocab_size, eos_token_id)
    with _lock:
        tok = _tokenizers.get(key)
        if tok is None:
            tok = _tokenizers[key] = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_id)
        return tok


class JsonTail:
    """Where a prefix of one compact JSON value stands (fed as it is written) and the shortest text
    that completes it. Bytes are read as latin-1: everything structural in JSON is ASCII, and any
    other byte can only be inside a string. The top value is an object (what json_object asks for)."""

    # value: a value is due; open: after `[` (a value or `]`); first: after `{` (a key or `}`);
    # key: after `,` in an object; colon: after a key; after: after a value; string, number, literal.
    def __init__(self) -> None:
        self.stack: list[str] = []  # "o" | "a", innermost last
        self.state = "value"
        self.is_key = False
        self.escape = 0  # 1: after a backslash; 2..5: hex digits of \u still due + 1
        self.number_done = True
        self.rest = ""  # what a literal (true, false, null) still needs
        self.lost = False  # the text left JSON (cannot happen under the grammar): no completion

    def copy(self) -> JsonTail:
        other = JsonTail.__new__(JsonTail)
        other.__dict__.update(self.__dict__, stack=list(self.stack))
        return other

    def feed(self, text: str) -> None:
        for ch in text:
            if self.lost:
                return
            self._char(ch)

    def _char(self, ch: str) -> None:
        state = self.state
        if state == "string":
            if self.escape == 1:
                self.escape = 5 if ch == "u" else 0
            elif self.escape > 1:
                self.escape = 0 if self.escape == 2 else self.escape - 1
            elif ch == "\\":
                self.escape = 1
            elif ch == '"':
                self.state = "colon" if self.is_key else "after"
            return
        if state == "number":
            if ch.isdigit():
                self.number_done = True
                return
            if ch in ".eE+-":
                self.number_done = False
                return
            self.state = "after"  # the number ended at this character: read it as what follows
            state = "after"
        if state == "literal":
            if self.rest and ch == self.rest[0]:
                self.rest = self.rest[1:]
                if not self.rest:
                    self.state = "after"
            else:
                self.lost = True
            return
        if ch in " \t\r\n":
            return
        if state in ("value", "open"):
            if state == "open" and ch == "]":
                self._close()
            elif ch == "{":
                self.stack.append("o")
                self.state = "first"
            elif ch == "[":
                self.stack.append("a")
                self.state = "open"
            elif ch == '"':
                self.state, self.is_key, self.escape = "string", False, 0
            elif ch == "-" or ch.isdigit():
                self.state, self.number_done = "number", ch != "-"
            elif ch in "tfn":
                self.state, self.rest = "literal", {"t": "rue", "f": "alse", "n": "ull"}[ch]
            else:
                self.lost = True
        elif state in ("first", "key"):
            if ch == '"':
                self.state, self.is_key, self.escape = "string", True, 0
            elif state == "first" and ch == "}":
                self._close()
            else:
                self.lost = True
        elif state == "colon":
            if ch == ":":
                self.state = "value"
            else:
                self.lost = True
        elif state == "after":
            top = self.stack[-1] if self.stack else None
            if ch == "," and top is not None:
                self.state = "key" if top == "o" else "value"
            elif (ch, top) in (("}", "o"), ("]", "a")):
                self._close()
            else:
                self.lost = True

    def _close(self) -> None:
        self.stack.pop()
        self.state = "after"

    def completion(self) -> str | None:
        """The shortest text after which the value is whole ("" when it is); None if lost."""
        if self.lost:
            return None
        state = self.state
        if state == "string":
            head = ("n" if self.escape == 1 else "0" * (self.escape - 1) if self.escape else "") + '"'
            head += ":0" if self.is_key else ""
        elif state == "number":
            head = "" if self.number_done else "0"
        elif state == "literal":
            head = self.rest
        elif state == "value":
            head = "0" if self.stack else "{}"
        elif state == "key":
            head = '"":0'
        elif state == "colon":
            head = ":0"
        else:  # open, first, after
            head = ""
        return head + "".join("}" if kind == "o" else "]" for kind in reversed(self.stack))


@dataclass
class SequenceConstraint:
    """One sequence's grammar state; with `tokenizer` and `json_value`, also how its JSON value is
    closed before max_tokens (JsonTail)."""

    matcher: llguidance.LLMatcher
    trigger: int | None = None
    tokenizer: llguidance.LLTokenizer | None = None
    json_value: bool = False
    calls: tuple[int, int, int] | None = None  # (call begin, call end, calls end) of a grammar of several calls
    active: bool = field(init=False)
    failed: bool = field(init=False, default=False)
    tail: JsonTail | None = field(init=False, default=None)
    forcing: list[int] = field(init=False, default_factory=list)  # the completion's tokens still to force
    forced_tokens: int = field(init=False, default=0)  # tokens the closing chose instead of the model
    _call: int | None = field(init=False, default=None)  # tokens of the call being written
    _longest_call: int = field(init=False, default=0)
    _between_calls: bool = field(init=False, default=False)  # a call just ended: another, or the end

    def __post_init__(self) -> None:
        self.active = self.trigger is None
        if self.json_value and self.tokenizer is not None:
            self.tail = JsonTail()

    @classmethod
    def compile(cls, tokenizer: llguidance.LLTokenizer, grammar: str, trigger: int | None = None,
                *, json_value: bool = False, calls: tuple[int, int, int] | None = None) -> SequenceConstraint:
        import llguidance

        matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return cls(matcher, trigger, tokenizer, json_value, calls)

    @property
    def masking(self) -> bool:
        return self.active and not self.failed

    @property
    def closing(self) -> bool:
        """Whether the budget left can decide a token (a JSON value to close, calls to end)."""
        return self.masking and (self.tail is not None or self.calls is not None)

    def _text(self, token: int) -> str:
        assert self.tokenizer is not None
        return self.tokenizer.decode_bytes([token]).decode("latin-1")

    def _completion(self, tail: JsonTail) -> list[int] | None:
        """The tokens of `tail`'s completion, or None when there is none the grammar takes."""
        text = tail.completion()
        if text is None or self.tokenizer is None:
            return None
        tokens: list[int] = self.tokenizer.tokenize_str(text) if text else []
        if tail is self.tail and self.matcher.validate_tokens(tokens) != len(tokens):
            log.warning("the JSON completion %r is not in the grammar; the value is not closed early", text)
            self.tail = None
            return None
        return tokens

    def forced(self, left: int) -> int | None:
        """The token the mask must force when `left` tokens remain to this sequence (counting the
        one about to be sampled), or None: sampling is free within the grammar."""
        if not self.closing:
            return None
        if self.calls is not None and self._between_calls and left < self._longest_call + 2:
            # another call as long as the longest so far, then the end and eos, would not fit: end here
            return self.calls[2]
        if self.forcing:
            return self.forcing[0]
        if self.tail is None:
            return None
        tokens = self._completion(self.tail)
        if tokens and len(tokens) >= left:
            self.forcing = tokens
            return tokens[0]
        return None

    def guard(self, token: int, left_after: int) -> int:
        """`token` if the value can still be closed in the `left_after` tokens that remain after it,
        else the first token of the completion (which then fits: it fitted before this step)."""
        if not self.closing or self.forcing or self.tail is None:
            return token
        now = self.tail.completion()
        text = self._text(token)
        if now is None or len(now) + 4 * len(text) <= left_after:  # no character adds more than 4 to it
            return token
        after = self.tail.copy()
        after.feed(text)
        tokens = self._completion(after)
        if tokens is not None and len(tokens) <= left_after:
            return token
        current = self._completion(self.tail)
        if not current:
            return token
        self.forcing = current
        return current[0]

    def advance(self, token: int) -> None:
        """The sequence sampled `token`."""
        if self.failed:
            return
        if not self.active:
            self.active = token == self.trigger
            return
        if not self.matcher.consume_token(token) or self.matcher.is_error():
            # Cannot happen with the mask applied; never let it stop the batch: free from here on.
            log.warning("grammar refused token %s (%s); the sequence is unconstrained from here",
                        token, self.matcher.get_error())
            self.failed = True
            return
        if self.forcing and token == self.forcing[0]:
            self.forcing.pop(0)
            self.forced_tokens += 1
        if self.tail is not None:
            self.tail.feed(self._text(token))
        if self.calls is not None:
            self._count_call(token)

    def _count_call(self, token: int) -> None:
        begin, end, _calls_end = self.calls or (None, None, None)
        self._between_calls = False
        if token == begin:
            self._call = 0
        if self._call is not None:
            self._call += 1
            if token == end:
                self._longest_call, self._call = max(self._longest_call, self._call), None
                self._between_calls = True


class BatchMasker:
    """Computes every constrained sequence's mask of a step in parallel and applies them to the
    step's logits. One per engine."""

    def __init__(self, vocab_size: int, threads: int | None = None):
        import llguidance

        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.executor = llguidance.LLExecutor(num_threads=threads)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="levee-grammar")
        self._bits = torch.arange(32, dtype=torch.int32)

    def begin(self, constraints: list[SequenceConstraint | None], left: list[int] | None = None
              ) -> Future[tuple[torch.Tensor, torch.Tensor]] | None:
        """Start computing the masks of a step's rows (None: an unconstrained row); `left`: the
        tokens each row may still generate, this one included (a JSON value is closed within
        them). None if no row is constrained this step."""
        rows = [(i, c) for i, c in enumerate(constraints) if c is not None and c.masking]
        if not rows:
            return None
        forced = {i: c.forced(left[i]) for i, c in rows if left is not None and c.closing}
        return self._pool.submit(self._compute, rows, {i: t for i, t in forced.items() if t is not None})

    def _compute(self, rows: list[tuple[int, SequenceConstraint]], forced: dict[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        bitmask = torch.full((len(rows), self.words), -1, dtype=torch.int32)
        grammar = [(c.matcher, k) for k, (i, c) in enumerate(rows) if i not in forced]
        if grammar:
            self.executor.unsafe_compute_mask_ptr(grammar, bitmask.data_ptr(), self.words * 4, len(rows))
        allowed = ((bitmask.unsqueeze(-1) >> self._bits) & 1).bool().reshape(len(rows), -1)[:, : self.vocab_size]
        for k, (i, _) in enumerate(rows):
            if i in forced:  # closing a JSON value: only its next token
                allowed[k] = False
                allowed[k, forced[i]] = True
        return torch.tensor([i for i, _ in rows]), allowed

    def allowed(self, pending: Future[tuple[torch.Tensor, torch.Tensor]], batch: int, device: torch.device
                ) -> torch.Tensor:
        """Wait for the masks begun for this step: [batch, V] bool, True where a token may be sampled
        (every token of an unconstrained row), as the engine's sampler takes it."""
        index, allowed = pending.result()
        out = torch.ones(batch, self.vocab_size, dtype=torch.bool)
        out[index] = allowed
        return out.to(device, non_blocking=True)

    def apply(self, pending: Future[tuple[torch.Tensor, torch.Tensor]] | None, logits: torch.Tensor) -> None:
        """Wait for the masks begun for this step and set disallowed logits to -inf, in place."""
        if pending is None:
            return
        index, allowed = pending.result()
        index = index.to(logits.device)
        rows = logits.index_select(0, index)
        rows.masked_fill_(~allowed.to(logits.device)[:, : rows.shape[1]], float("-inf"))
        logits.index_copy_(0, index, rows)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
