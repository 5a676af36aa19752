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


@dataclass
class SequenceConstraint:
    """One sequence's grammar state."""

    matcher: llguidance.LLMatcher
    trigger: int | None = None
    active: bool = field(init=False)
    failed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.active = self.trigger is None

    @classmethod
    def compile(cls, tokenizer: llguidance.LLTokenizer, grammar: str, trigger: int | None = None
                ) -> SequenceConstraint:
        import llguidance

        matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return cls(matcher, trigger)

    @property
    def masking(self) -> bool:
        return self.active and not self.failed

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

    def begin(self, constraints: list[SequenceConstraint | None]) -> Future[tuple[torch.Tensor, torch.Tensor]] | None:
        """Start computing the masks of a step's rows (None: an unconstrained row). None if no row
        is constrained this step."""
        rows = [(i, c) for i, c in enumerate(constraints) if c is not None and c.masking]
        if not rows:
            return None
        return self._pool.submit(self._compute, rows, len(constraints))

    def _compute(self, rows: list[tuple[int, SequenceConstraint]], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        bitmask = torch.full((len(rows), self.words), -1, dtype=torch.int32)
        self.executor.unsafe_compute_mask_ptr([(c.matcher, k) for k, (_, c) in enumerate(rows)],
                                              bitmask.data_ptr(), self.words * 4, len(rows))
        allowed = ((bitmask.unsqueeze(-1) >> self._bits) & 1).bool().reshape(len(rows), -1)[:, : self.vocab_size]
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
