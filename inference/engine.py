"""The generation engine: one per worker process, one scheduler thread, continuous batching.

Every step the scheduler drops finished and cancelled sequences, admits waiting requests (FIFO)
while the batch has room and the KV cache can hold them, then runs ONE packed forward over all
running sequences: a prompt chunk of each prefilling sequence (under a per-step token budget), the
last sampled token of each decoding one. Prefill attends in the expanded form, decode against the
latent itself with kv_b_proj absorbed, every decoding sequence in one call per layer over fixed
64-token splits (inference/attention.py), so a sequence's arithmetic never depends on its batch mates.

Cache blocks are allocated as sequences grow; admission keeps room for a share of each running
sequence's max_tokens (`reserve_fraction`) and, when the cache runs short, the newest sequence is
preempted and later recomputed.

With the model's multi-token-prediction layer (`speculative`), an unpenalised, unconstrained sequence
also feeds the MTP layer's draft of its next token, verified in the same step (a sampled one by
exact rejection sampling, inference/mtp.py); the MTP layer then runs over the step's rows of those
sequences and drafts again (`_MTPInputs`, `Engine._draft`). Text (incremental detokenization, stop
strings) is made on a second thread (`_TextThread`), never in the step.

Public API: `Engine`, `Request`, `SamplingParams`, `RequestHandle`, `Event`, `Usage`, `Completion`.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from inference.attention import PagedAttention, PrefillSpan
from inference.grammar import BatchMasker, SequenceConstraint
from inference.kvcache import UNIT_TOKENS, KVCache
from inference.model import AttentionBackend, Transformer
from inference.mtp import ACCEPT_STREAM, DRAFT_STREAM, verify
from inference.sampler import SamplingRows, draw, filtered_probs, row_key, rows_from_tensors, sample
from kernels.torch_mla import KV_SPLIT

log = logging.getLogger(__name__)

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR = "stop", "length", "cancelled", "error"


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # drop tokens below min_p × the most likely token's probability; 0 = off
    stop: Sequence[str] = ()  # strings; matched across token boundaries, not included in the output
    stop_token_ids: Sequence[int] = ()  # in addition to the model's eos unless ignore_eos
    ignore_eos: bool = False
    presence_penalty: float = 0.0  # OpenAI semantics, over the tokens generated so far
    frequency_penalty: float = 0.0
    seed: int | None = None  # same seed + same prompt → same tokens, batched or not
    logprobs: bool = False  # attach the log-probability (raw model distribution) of each token
    top_logprobs: int = 0  # also attach the n most likely (token id, logprob) pairs of each step

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be ≥ 1")
        if self.temperature < 0:
            raise ValueError("temperature must be ≥ 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be ≥ 0 (0 = off)")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.top_logprobs < 0:
            raise ValueError("top_logprobs must be ≥ 0")


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    user: str | None = None  # prefix-cache isolation key; None disables prefix reuse
    deadline: float | None = None  # time.time() after which the request is cancelled
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    constraint: SequenceConstraint | None = None  # a grammar sampling must follow (inference.grammar)


@dataclass
class Usage:
    prompt_tokens: int = 0
    prompt_cache_hit_tokens: int = 0
    prompt_cache_miss_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Event:
    """One step's output for one request. `usage` is the running total (prompt split known from
    admission on); the last event has finish_reason set."""

    token_ids: list[int]
    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled | error
    usage: Usage | None = None
    logprobs: list[float] | None = None
    error: str | None = None  # why, for cancelled (e.g. "deadline exceeded") and error
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per token: the n most likely (id, logprob)
    stop_sequence: str | None = None  # the stop string that ended it (finish_reason stop), None for eos/a stop id


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str
    usage: Usage
    logprobs: list[float] | None = None
    error: str | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    stop_sequence: str | None = None


class Sink(Protocol):
    def put(self, item: tuple[RequestHandle, Event]) -> None: ...


class RequestHandle:
    """Returned by Engine.submit. Iterate it for events (blocks); cancel() from any thread.

    A handle submitted with a sink has no events of its own: each goes to the sink as (handle, event),
    so that one consumer can follow many requests without a thread per request."""

    def __init__(self, request: Request, sink: Sink | None = None):
        self.request = request
        self.request_id = request.request_id
        self._events: queue.Queue[Event] = queue.Queue()
        self._sink = sink
        self._cancelled = threading.Event()
        self._finished = False

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def get(self, timeout: float | None = None) -> Event | None:
        """Next event, or None after `timeout` seconds (or once the final event was taken)."""
        if self._sink is not None:
            raise TypeError("this request's events go to its sink")
        if self._finished:
            return None
        try:
            ev = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if ev.finish_reason is not None:
            self._finished = True
        return ev

    def __iter__(self) -> Iterator[Event]:
        while (ev := self.get()) is not None:
            yield ev

    def result(self, timeout: float | None = None) -> Completion:
        ids: list[int] = []
        text: list[str] = []
        lps: list[float] = []
        tops: list[list[tuple[int, float]]] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = self.get(timeout=left)
            if ev is None:
                raise TimeoutError(f"request {self.request_id} did not finish in {timeout}s")
            ids += ev.token_ids
            text.append(ev.text)
            lps += ev.logprobs or []
            tops += ev.top_logprobs or []
            if ev.finish_reason is not None:
                assert ev.usage is not None
                p = self.request.params
                return Completion(ids, "".join(text), ev.finish_reason, ev.usage,
                                  lps if p.logprobs else None, ev.error, tops if p.top_logprobs else None,
                                  ev.stop_sequence)

    def _emit(self, ev: Event) -> None:
        if self._sink is not None:
            self._sink.put((self, ev))
        else:
            self._events.put(ev)


class _Seq:
    """Scheduler-side state of one admitted request."""

    def __init__(self, handle: RequestHandle, max_tokens: int, detok: Detokenizer | None):
        self.handle = handle
        req = handle.request
        self.req = req
        self.params = req.params
        self.prompt = list(req.prompt_ids)
        self.max_tokens = max_tokens
        self.output: list[int] = []
        self.blocks: list[int] = []  # block table: all blocks reserved for this sequence
        self.private: list[int] = []  # blocks owned by this sequence (not published units)
        self.unit_keys: list[bytes] = []  # published/acquired prefix units, in order
        self.all_prompt_keys: list[bytes] = []  # keys of every full unit of the prompt
        self.hit_tokens = 0
        self.num_computed = 0  # tokens whose latent is in the cache
        # The request's text is made on the engine's text thread (_TextThread), not here.
        self.stream = None if detok is None else _TextStream(detok, req.params.stop)
        self.finished = False
        p = self.params
        self.greedy = p.temperature <= 1e-5
        # The sampler's random stream is a function of (seed, tokens generated so far): see sampler.py.
        self.seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.penalised = bool(p.presence_penalty or p.frequency_penalty)
        self.counts_row: int | None = None  # this sequence's row of the engine's token-count table
        # Host facts the sampler decides its stages on: (greedy, top_p, top_k, min_p, penalised).
        self.host_row = (self.greedy, float(p.top_p), int(p.top_k), float(p.min_p), self.penalised)
        self.spec = False  # the engine speculates for this sequence (set at admission; see Engine._speculates)
        self.draft: int | None = None  # the MTP layer's proposal for the token after output[-1]
        self.q_row: int | None = None  # a sampled speculating sequence's row of the engine's draft distributions

    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def usage(self) -> Usage:
        n = len(self.prompt)
        return Usage(n, self.hit_tokens, n - self.hit_tokens, len(self.output))


class _TextStream:
    """One request's text state. Only the text thread touches `detok` and `pending`; `stopped` is set
    there when a stop string ends the request and read by the scheduler, which then frees it."""

    def __init__(self, detok: Detokenizer, stop: Sequence[str]) -> None:
        self.detok = detok
        self.stop = tuple(stop)
        self.pending = ""  # decoded text held back because it may begin a stop string
        self.done = False  # the final event was emitted; later ones (tokens past a stop string) are dropped
        self.stopped = False


class _TextThread:
    """Incremental detokenization and stop strings, off the scheduler thread.

    The scheduler hands every event of a request that has text (a detokenizer) here, in order,
    without text; this thread decodes its tokens, matches the stop strings across token boundaries,
    holds back text that may begin one, and emits the event with its text to the request's handle
    or sink. When a stop string matches, the event that completes it becomes the request's last
    (text up to the match, finish_reason "stop", the usage of that token) and the scheduler is told
    to free the sequence at its next step; tokens it generated meanwhile are dropped here, so what
    a client sees and is billed for is what it was before this thread existed."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[_TextStream, RequestHandle, Event] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="levee-text", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Emit everything queued so far, then end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def put(self, stream: _TextStream, handle: RequestHandle, ev: Event) -> None:
        self._queue.put((stream, handle, ev))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            stream, handle, ev = item
            try:
                out = self.text(stream, ev)
            except Exception as exc:  # a detokenizer failure ends this request, not the thread
                log.exception("detokenizing request %s failed", handle.request_id)
                stream.done = stream.stopped = True
                out = Event([], "", FINISH_ERROR, ev.usage, error=f"{type(exc).__name__}: {exc}")
            if out is not None:
                try:
                    handle._emit(out)
                except Exception:  # a failing sink loses its own events, never the other requests'
                    log.exception("emitting an event of request %s failed", handle.request_id)

    @staticmethod
    def text(stream: _TextStream, ev: Event) -> Event | None:
        """`ev` with its text, or None once the request's final event went out."""
        if stream.done:
            return None
        reason = ev.finish_reason
        text = ""
        if ev.token_ids and reason in (None, FINISH_LENGTH):  # a shown token (not eos or a stop id)
            stream.pending += stream.detok.push(ev.token_ids[-1])
            if stream.stop:
                pending = stream.pending
                hit, matched = min(((i, x) for x, i in ((x, pending.find(x)) for x in stream.stop) if i >= 0),
                                   default=(-1, None))
                if matched is not None:
                    stream.pending = ""
                    stream.done = stream.stopped = True
                    return replace(ev, text=pending[:hit], finish_reason=FINISH_STOP, stop_sequence=matched)
                hold = max((k for x in stream.stop for k in range(1, len(x)) if pending.endswith(x[:k])), default=0)
                text, stream.pending = pending[: len(pending) - hold], pending[len(pending) - hold :]
            else:
                text, stream.pending = stream.pending, ""
        if reason in (FINISH_STOP, FINISH_LENGTH):
            text += stream.pending + stream.detok.flush()
            stream.pending = ""
        if reason is not None:
            stream.done = True
        return replace(ev, text=text)


class _Staging:
    """A step's integer and float inputs, written into one reused host buffer (pinned where CUDA
    exists) and copied to the device in one non_blocking copy. Before the buffer is written again the
    previous copy out of it must be done: a step that samples ends with a device→host copy that
    waits for the stream anyway; for one that does not (a prefill chunk), the copy's event is waited
    on, which only waits for that copy."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pin = device.type == "cuda"
        self.host = torch.empty(0, dtype=torch.int64)
        self.dev = self.host
        self._copied: torch.cuda.Event | None = None

    def upload(self, ints: list[list[int]], floats: list[list[float]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n_int = sum(map(len, ints))
        n_float = sum(map(len, floats))
        total = n_int + (n_float + 1) // 2  # float32 pairs share an int64 slot
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None
        if total > self.host.numel():
            cap = 1 << max(10, (total - 1).bit_length())
            self.host = torch.empty(cap, dtype=torch.int64, pin_memory=self.pin)
            self.dev = self.host if self.device.type == "cpu" else torch.empty(cap, dtype=torch.int64, device=self.device)
        arr = self.host.numpy()
        bounds, off = [], 0
        for col in ints:
            arr[off : off + len(col)] = col
            bounds.append((off, off + len(col)))
            off += len(col)
        farr = arr[n_int:total].view(np.float32)
        fbounds, foff = [], 0
        for fcol in floats:
            farr[foff : foff + len(fcol)] = fcol
            fbounds.append((foff, foff + len(fcol)))
            foff += len(fcol)
        if self.dev is not self.host:
            self.dev[:total].copy_(self.host[:total], non_blocking=True)
            self._copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._copied.record()
        dev_floats = self.dev[n_int:total].view(torch.float32)
        return [self.dev[a:b] for a, b in bounds], [dev_floats[a:b] for a, b in fbounds]


GRAPH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class _DecodeGraphs:
    """CUDA graphs of the decode-only forward, one per bucketed batch size, captured on first use.

    A decode step of B sequences replays the graph of the smallest bucket ≥ B: the step's inputs are
    copied into the graph's static tensors, rows past B point at a scratch cache block the engine
    never hands out (so their writes land nowhere that matters) and are ignored afterwards. The block
    table is as wide as max_model_len needs and the Triton decode kernel's split axis is fixed to
    match, so one graph serves every context length. Sampling runs after the replay, eagerly.
    A bucket whose capture fails is run eagerly from then on (logged once)."""

    def __init__(self, engine: Engine, scratch_block: int):
        self.engine = engine
        self.scratch = scratch_block
        bs = engine.block_size
        self.width = -(-engine.max_model_len // KV_SPLIT) * (KV_SPLIT // bs)  # blocks per table row
        self.max_splits = self.width * bs // KV_SPLIT
        self.buckets = [b for b in GRAPH_BUCKETS if b <= engine.max_batch]
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}
        self.failed: set[int] = set()
        self.pool: Any = None  # the graphs' shared memory pool, after the first capture

    def bucket(self, n: int) -> int | None:
        b = next((b for b in self.buckets if b >= n), None)
        return None if b is None or b in self.failed else b

    def _static(self, b: int) -> dict[str, torch.Tensor]:
        dev, bs = self.engine.device, self.engine.block_size
        return {"ids": torch.zeros(b, dtype=torch.int64, device=dev),
                "positions": torch.zeros(b, dtype=torch.int64, device=dev),
                "slots": torch.full((b,), self.scratch * bs, dtype=torch.int64, device=dev),
                "rows": torch.arange(b, dtype=torch.int64, device=dev),
                "table": torch.full((b, self.width), self.scratch, dtype=torch.int64, device=dev),
                "lengths": torch.ones(b, dtype=torch.int64, device=dev)}

    def _backend(self, st: dict[str, torch.Tensor]) -> PagedAttention:
        return PagedAttention(self.engine.cache, st["slots"], [], decode_start=0, block_table=st["table"],
                              lengths=st["lengths"], query_chunk=self.engine.prefill_query_chunk,
                              max_splits=self.max_splits)

    def _capture(self, b: int) -> None:
        st = self._static(b)
        eng = self.engine
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: Triton compiles and autotunes outside the capture
            for _ in range(2):
                eng._forward(st["ids"], st["positions"], st["rows"], self._backend(st))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = eng._forward(st["ids"], st["positions"], st["rows"], self._backend(st))
        self.pool = graph.pool()
        self.graphs[b] = (graph, st, out)

    def run(self, b: int, n: int, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
            table: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor | None:
        """Logits [n, V] of a decode step of n ≤ b sequences (inputs on the device, table [n, ≤ width]),
        or None if this bucket cannot be captured."""
        if b not in self.graphs:
            try:
                self._capture(b)
            except Exception:  # a kernel that cannot be captured: this bucket runs eagerly
                log.exception("CUDA graph capture failed for decode batch %d; running it eagerly", b)
                self.failed.add(b)
                return None
        graph, st, out = self.graphs[b]
        st["ids"][:n].copy_(ids)
        st["positions"][:n].copy_(positions)
        st["slots"][:n].copy_(slots)
        st["table"][:n, : table.shape[1]].copy_(table)
        st["lengths"][:n].copy_(lengths)
        # Rows past n may hold a larger previous batch's slots: point them back at the scratch block,
        # or the replay would overwrite those sequences' cached latents.
        st["slots"][n:].fill_(self.scratch * self.engine.block_size)
        st["lengths"][n:].fill_(1)
        st["table"][n:].fill_(self.scratch)
        graph.replay()
        return out[:n]


class _MTPInputs:
    """A step's inputs to the MTP layer, built on the host beside the main model's (see Engine._draft).

    Its rows are the main step's rows of speculating sequences, prefill spans first, in order: `src`
    (main row of each), `next` (token t+1 where the host knows it, else 0 and filled on the device
    from `fill_from`, the sampled row's index, at `fill_at`), `dec` (decode-row index into the main
    block table), and per drafting sequence two candidate rows `c0`, `c1` and its previous draft
    `prev`: the draft is read at c1 when the token sampled at c0's row equals prev, else at c0.
    Drafting from c0 proposes the sequence's token n+1 (n = tokens it generated before the step),
    from c1 token n+2 (the bonus token was n+1); a prefill span's c0 = c1 proposes n+1."""

    def __init__(self) -> None:
        self.src: list[int] = []
        self.next: list[int] = []
        self.fill_at: list[int] = []
        self.fill_from: list[int] = []
        self.dec: list[int] = []
        self.c0: list[int] = []
        self.c1: list[int] = []
        self.prev: list[int] = []
        self.spans: list[tuple[int, int, int, int, int]] = []  # MTP rows a, b, start, ctx offset, ctx length
        self.drafting: list[_Seq] = []  # each drafting sequence, in c0/c1 order
        self.decode_start = 0

    def prefill_span(self, seq: _Seq, rows: range, next_ids: list[int], start: int, ctx_offset: int,
                     ctx_len: int, sampled: int | None) -> None:
        a = len(self.src)
        self.src += rows
        self.next += next_ids
        if sampled is not None:  # the prompt's last row: its next token is the one sampled there
            self.next.append(0)
            self.fill_at.append(len(self.src) - 1)
            self.fill_from.append(sampled)
            self.add_candidates(seq, len(self.src) - 1, len(self.src) - 1, -1)
        self.spans.append((a, len(self.src), start, ctx_offset, ctx_len))

    def decode_rows(self, seq: _Seq, row: int, dec_row: int, sampled: int, two: bool, prev: int) -> None:
        base = len(self.src)
        for k in range(1 + two):
            self.src.append(row + k)
            self.next.append(0)
            self.fill_at.append(base + k)
            self.fill_from.append(sampled + k)
            self.dec.append(dec_row + k)
        self.add_candidates(seq, base, base + two, prev)

    def add_candidates(self, seq: _Seq, c0: int, c1: int, prev: int) -> None:
        self.drafting.append(seq)
        self.c0.append(c0)
        self.c1.append(c1)
        self.prev.append(prev)

    def columns(self) -> list[list[int]]:
        if not self.src:
            return []
        return [self.src, self.next, self.fill_at, self.fill_from, self.dec, self.c0, self.c1, self.prev]

    def sampled_columns(self) -> tuple[list[list[int]], list[list[float]]]:
        """The drafter's sampling inputs of the drafting sequences that sample (none: empty): their
        index among the drafts, q row, draft keys for a draft from c0 and from c1, top_k; temperature,
        top_p, min_p."""
        sampled = [(j, s) for j, s in enumerate(self.drafting) if not s.greedy]
        if not sampled:
            return [], []
        q_rows = []
        for _, s in sampled:
            assert s.q_row is not None  # taken at admission (Engine._take_q_row)
            q_rows.append(s.q_row)
        ints = [[j for j, _ in sampled], q_rows,
                *([row_key(s.seed, len(s.output) + k, DRAFT_STREAM) for _, s in sampled] for k in (1, 2)),
                [s.params.top_k for _, s in sampled]]
        floats = [[s.params.temperature for _, s in sampled], [s.params.top_p for _, s in sampled],
                  [s.params.min_p for _, s in sampled]]
        return ints, floats


def _split(cols: list[torch.Tensor], sizes: list[int]) -> list[list[torch.Tensor]]:
    """cols cut into consecutive groups of the given sizes."""
    out, at = [], 0
    for n in sizes:
        out.append(cols[at : at + n])
        at += n
    return out


def _row_offsets(seqs: list[_Seq]) -> list[int]:
    """Per sampled row, how many earlier rows of the step belong to the same sequence."""
    seen: dict[int, int] = {}
    out = []
    for s in seqs:
        out.append(seen.get(id(s), 0))
        seen[id(s)] = out[-1] + 1
    return out


class Engine:
    def __init__(
        self,
        model: Transformer,
        *,
        kv_budget_bytes: int,
        block_size: int = 16,
        max_batch: int = 64,
        detokenizer_factory: Callable[[], Detokenizer] | None = None,
        max_model_len: int | None = None,
        max_step_tokens: int = 8192,
        prefill_query_chunk: int = 1024,
        reserve_fraction: float = 1.0,
        cuda_graphs: bool = True,
        speculative: bool | None = None,
    ):
        """kv_budget_bytes: memory for the latent cache; block_size: tokens per block (divides 64);
        max_batch: most sequences running at once; detokenizer_factory: makes one incremental
        detokenizer per request (push/flush), needed for text and stop strings; max_model_len:
        prompt + completion limit (default: the model's max_position_embeddings); max_step_tokens:
        tokens one step feeds (decodes first, then prompt chunks; a longer prompt is prefilled over
        several steps); prefill_query_chunk: query rows per attention call during prefill (bounds its
        memory); reserve_fraction: the share of each request's max_tokens that admission holds cache
        room for (1.0: a running sequence never runs short; less admits more sequences and preempts
        the newest when the cache fills); cuda_graphs: replay decode-only steps from CUDA graphs
        captured per bucketed batch size (CUDA only); speculative: draft one token per step with the
        model's multi-token-prediction layer and verify it in the next step (default: when the model
        was loaded with it, `load_model(..., mtp=True)`; unpenalised, unconstrained requests)."""
        self.model = model
        args = model.args
        self.device = model.device
        self.vocab = args.vocab_size
        self.block_size = block_size
        self.max_batch = max_batch
        self.max_model_len = max_model_len or args.max_position_embeddings
        if self.max_model_len > args.max_position_embeddings and hasattr(model, "init_rope"):
            model.init_rope(self.device, self.max_model_len)  # the rotary table covers every position
        self.detokenizer_factory = detokenizer_factory
        self.max_step_tokens = max_step_tokens
        self.prefill_query_chunk = prefill_query_chunk
        if not 0.0 <= reserve_fraction <= 1.0:
            raise ValueError("reserve_fraction must be in [0, 1]")
        self.reserve_fraction = reserve_fraction
        self.eos_ids = set(args.eos_token_ids)
        has_mtp = getattr(model, "mtp", None) is not None
        if speculative and not has_mtp:
            raise ValueError("speculative decoding needs the model's MTP layer: load_model(..., mtp=True)")
        self.speculative = has_mtp if speculative is None else speculative
        # The MTP block has its own attention: its latents are one cache layer more (num_hidden_layers).
        cache_layers = args.num_hidden_layers + (1 if self.speculative else 0)
        per_token = KVCache.bytes_per_token(cache_layers, args.latent_dim, model.dtype)
        num_blocks = kv_budget_bytes // (per_token * block_size)
        if num_blocks < 1:
            raise ValueError(f"kv_budget_bytes {kv_budget_bytes} holds no block of {block_size} tokens "
                             f"({per_token} bytes per token)")
        self.cache = KVCache(num_layers=cache_layers, num_blocks=num_blocks, block_size=block_size,
                             latent_dim=args.latent_dim, dtype=model.dtype, device=self.device)
        self._lock = threading.Condition()
        self._incoming: deque[RequestHandle] = deque()
        self._waiting: deque[RequestHandle] = deque()
        self._running: list[_Seq] = []  # in admission order (the last is preempted first)
        self._preempted: deque[_Seq] = deque()
        self.preemptions = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        self.generated_tokens = 0  # sampled tokens since start, every request
        self.spec_drafted = 0  # MTP drafts verified since start
        self.spec_accepted = 0  # of which kept (each gave one token more than its step would have)
        self._masker: BatchMasker | None = None  # made on the first constrained request
        self._text = _TextThread()  # detokenization and stop strings, for requests with a detokenizer
        self._staging = _Staging(self.device)
        self._graphs: _DecodeGraphs | None = None
        self._reserved_blocks = 0
        if cuda_graphs and self.device.type == "cuda":
            self._graphs = _DecodeGraphs(self, scratch_block=self.cache.allocate(1)[0])  # never handed out
            self._reserved_blocks = 1
        # Tokens generated so far per penalised sequence, [max_batch + 1, V] (the last row stays zero),
        # made at the first request with a penalty.
        self._counts: torch.Tensor | None = None
        self._free_counts_rows = list(range(max_batch - 1, -1, -1))
        # The drafter's filtered distribution q of each sampled speculating sequence's pending draft,
        # [max_batch, V] float32, made at the first such request. Kept from the step that drafts to the
        # step that verifies rather than recomputed: recomputing needs the MTP layer's hidden state
        # kept instead and a second pass through the vocabulary-wide head for every verifying row.
        self._q: torch.Tensor | None = None
        self._free_q_rows = list(range(max_batch - 1, -1, -1))

    # -- public ----------------------------------------------------------------------------------

    def start(self) -> Engine:
        if self._thread is None:
            self._stopping = False
            self._text.start()
            self._thread = threading.Thread(target=self._loop, name="levee-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the scheduler; requests still queued or running end with finish_reason 'cancelled'."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._text.stop()  # after the scheduler's last events: they are all emitted when stop returns

    def submit(self, request: Request, sink: Sink | None = None) -> RequestHandle:
        """Queue a request. Its events go to the returned handle, or with `sink` to sink.put((handle, event))
        from the scheduler thread (keep put cheap: a queue.SimpleQueue)."""
        p = request.params
        p.validate()
        n = len(request.prompt_ids)
        if n == 0:
            raise ValueError("prompt_ids is empty")
        if n >= self.max_model_len:
            raise ValueError(f"prompt of {n} tokens leaves no room in max_model_len {self.max_model_len}")
        if p.stop and self.detokenizer_factory is None:
            raise ValueError("stop strings need an engine built with a detokenizer_factory")
        if self._blocks_needed(n, self._max_tokens(request)) > self.cache.num_blocks - self._reserved_blocks:
            raise ValueError(f"prompt of {n} tokens + max_tokens {p.max_tokens} cannot fit the KV cache "
                             f"({self.cache.num_blocks} blocks of {self.block_size} tokens)")
        handle = RequestHandle(request, sink)
        with self._lock:
            if self._stopping:
                raise RuntimeError("the engine is stopped")
            self._incoming.append(handle)
            self._lock.notify_all()
        return handle

    def stats(self) -> dict[str, int]:
        """A snapshot for monitoring (any thread): sequences running and waiting, the batch limit, KV
        blocks (free, evictable prefix-cache blocks, total), steps and tokens sampled since start, and
        MTP drafts verified and accepted since start (acceptance = spec_accepted / spec_drafted)."""
        return {"running": len(self._running),
                "waiting": len(self._waiting) + len(self._incoming) + len(self._preempted),
                "max_batch": self.max_batch, "free_blocks": len(self.cache.free),
                "evictable_blocks": self.cache.evictable_blocks, "num_blocks": self.cache.num_blocks,
                "cached_prefix_units": self.cache.cached_units(), "steps": self.steps,
                "generated_tokens": self.generated_tokens, "preemptions": self.preemptions,
                "spec_drafted": self.spec_drafted, "spec_accepted": self.spec_accepted}

    # -- scheduler -------------------------------------------------------------------------------

    def _max_tokens(self, req: Request) -> int:
        return min(req.params.max_tokens, self.max_model_len - len(req.prompt_ids))

    def _blocks_needed(self, prompt_len: int, max_tokens: int) -> int:
        # The last sampled token is never fed back, so prompt + max_tokens - 1 latents at most.
        return math.ceil((prompt_len + max_tokens - 1) / self.block_size)

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while (not self._stopping and not self._incoming and not self._waiting and not self._running
                           and not self._preempted):
                        self._lock.wait()
                    if self._stopping:
                        break
                    self._waiting.extend(self._incoming)
                    self._incoming.clear()
                try:
                    self._reap()
                    self._admit()
                    if self._running:
                        self._step()
                    elif self._waiting or self._preempted:
                        with self._lock:  # nothing runs, nothing fits: cannot happen, but never spin
                            self._lock.wait(timeout=0.01)
                except Exception as exc:  # keep serving; fail only what was in flight
                    log.exception("engine step failed")
                    for seq in list(self._running):
                        self._finish(seq, FINISH_ERROR, error=f"{type(exc).__name__}: {exc}")
            for seq in list(self._running) + list(self._preempted):
                self._finish(seq, FINISH_CANCELLED, error="engine stopped")
            with self._lock:
                self._waiting.extend(self._incoming)
                self._incoming.clear()
            for handle in self._waiting:
                handle._emit(Event([], "", FINISH_CANCELLED, Usage(len(handle.request.prompt_ids)),
                                   error="engine stopped"))
            self._waiting.clear()

    def _reap(self) -> None:
        now = time.time()
        for seq in list(self._running) + list(self._preempted):
            if seq.stream is not None and seq.stream.stopped:  # a stop string matched on the text thread
                self._finish(seq, FINISH_STOP)  # (its event is dropped there: the request already ended)
            elif seq.handle.cancelled:
                self._finish(seq, FINISH_CANCELLED)
            elif seq.req.deadline is not None and now > seq.req.deadline:
                self._finish(seq, FINISH_CANCELLED, error="deadline exceeded")
        for handle in list(self._waiting):
            expired = handle.request.deadline is not None and now > handle.request.deadline
            if handle.cancelled or expired:
                self._waiting.remove(handle)
                n = len(handle.request.prompt_ids)
                handle._emit(Event([], "", FINISH_CANCELLED, Usage(n, 0, n, 0),
                                   error="deadline exceeded" if expired else None))

    def _admit(self) -> None:
        """Admit waiting requests, preempted sequences first, in order, while the batch has room and
        the cache can hold their context; nothing overtakes the head of the queue."""
        cache = self.cache
        while (self._preempted or self._waiting) and len(self._running) < self.max_batch:
            resumed = bool(self._preempted)
            if resumed:
                seq = self._preempted[0]
                prompt, keys = seq.prompt, seq.all_prompt_keys
            else:
                handle = self._waiting[0]
                req = handle.request
                prompt = req.prompt_ids
                keys = cache.unit_keys(req.user, prompt, len(prompt) // UNIT_TOKENS) if req.user is not None else []
            # At least the last context token must be computed, to get logits for the next sample.
            context = len(prompt) + (len(seq.output) if resumed else 0)
            hits = cache.lookup(keys[: (context - 1) // UNIT_TOKENS]) if keys else []
            hit_blocks = [b for key in hits for b in cache.acquire(key)]
            # Blocks for the context now, for generated tokens as they are needed; admission also keeps
            # room for the reserved share of every running sequence's max_tokens.
            fresh = self._blocks_for(context) - len(hit_blocks)
            max_tokens = seq.max_tokens if resumed else self._max_tokens(req)
            later = self._blocks_for(len(prompt) + self._reserved_tokens(max_tokens)) - self._blocks_for(context)
            promised = sum(self._outstanding(s) for s in self._running)
            if fresh + max(later, 0) + promised > cache.available():
                for key in reversed(hits):
                    cache.release(key)
                return
            if resumed:
                self._preempted.popleft()
            else:
                self._waiting.popleft()
                detok = self.detokenizer_factory() if self.detokenizer_factory else None
                seq = _Seq(handle, self._max_tokens(req), detok)
                seq.all_prompt_keys = keys
                seq.hit_tokens = len(hits) * UNIT_TOKENS
            seq.private = cache.allocate(fresh)
            seq.blocks = list(hit_blocks) + seq.private
            seq.unit_keys = list(hits)
            seq.num_computed = len(hits) * UNIT_TOKENS
            seq.spec = self._speculates(seq)
            self._take_counts_row(seq)
            self._take_q_row(seq)
            self._running.append(seq)

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _reserved_tokens(self, max_tokens: int) -> int:
        # The last sampled token is never fed back: max_tokens - 1 generated latents at most.
        return max(0, math.ceil(self.reserve_fraction * max_tokens) - 1)

    def _outstanding(self, seq: _Seq) -> int:
        """Blocks admission still keeps for a running sequence's reserved growth."""
        want = self._blocks_for(len(seq.prompt) + self._reserved_tokens(seq.max_tokens))
        return max(0, want - len(seq.blocks))

    def _grow(self, seq: _Seq, tokens: int) -> bool:
        """Give seq blocks for its first `tokens` tokens, preempting the most recently admitted other
        sequences while the cache is short. False if seq itself had to give way."""
        need = self._blocks_for(tokens) - len(seq.blocks)
        while need > self.cache.available():
            victim = self._running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        if need > 0:
            fresh = self.cache.allocate(need)
            seq.blocks += fresh
            seq.private += fresh
        return True

    def _preempt(self, seq: _Seq) -> None:
        """Free a running sequence's blocks; it waits (ahead of new requests) and recomputes its whole
        context when readmitted. Its sampled tokens and its random stream position are kept."""
        for key in reversed(seq.unit_keys):
            self.cache.release(key)
        self.cache.release_blocks(seq.private)
        seq.unit_keys, seq.private, seq.blocks = [], [], []
        seq.num_computed = 0
        seq.draft = None  # the recompute's prefill drafts again
        self._release_counts_row(seq)
        self._release_q_row(seq)
        self._running.remove(seq)
        self._preempted.appendleft(seq)
        self.preemptions += 1

    def _take_counts_row(self, seq: _Seq) -> None:
        if not seq.penalised:
            return
        if self._counts is None:
            self._counts = torch.zeros(self.max_batch + 1, self.vocab, dtype=torch.float32, device=self.device)
        row = self._free_counts_rows.pop()
        self._counts[row].zero_()
        if seq.output:  # a resumed sequence: count what it generated before
            ids = torch.tensor(seq.output, device=self.device)
            self._counts[row].index_put_((ids,), torch.ones(len(seq.output), device=self.device), accumulate=True)
        seq.counts_row = row

    def _release_counts_row(self, seq: _Seq) -> None:
        if seq.counts_row is not None:
            self._free_counts_rows.append(seq.counts_row)
            seq.counts_row = None

    def _take_q_row(self, seq: _Seq) -> None:
        if not seq.spec or seq.greedy:
            return
        if self._q is None:
            self._q = torch.zeros(self.max_batch, self.vocab, dtype=torch.float32, device=self.device)
        seq.q_row = self._free_q_rows.pop()

    def _release_q_row(self, seq: _Seq) -> None:
        if seq.q_row is not None:
            self._free_q_rows.append(seq.q_row)
            seq.q_row = None

    def _slot(self, seq: _Seq, pos: int) -> int:
        return seq.blocks[pos // self.block_size] * self.block_size + pos % self.block_size

    def _schedule(self) -> list[tuple[_Seq, int]]:
        """This step's work: (sequence, tokens to feed). Every decoding sequence feeds its last token;
        prefills (oldest first) take chunks of what is left of the token budget."""
        budget = self.max_step_tokens
        plan: list[tuple[_Seq, int]] = []
        for seq in list(self._running):
            if seq not in self._running:  # preempted by an older sequence's growth this step
                continue
            left = len(seq.prompt) + len(seq.output) - seq.num_computed
            n = 1 if left == 1 else min(left, max(budget, 0))
            if n == 0:
                continue
            verify = int(n == 1 and bool(seq.output) and self._verifies(seq))  # the draft's position too
            if not self._grow(seq, seq.num_computed + n + verify):
                continue
            budget -= n + verify
            plan.append((seq, n))
        return [(s, n) for s, n in plan if s in self._running]

    def _speculates(self, seq: _Seq) -> bool:
        """Whether the engine drafts for this sequence: unpenalised, unconstrained requests of a
        speculative engine, greedy or sampled. A penalised or grammar-constrained request decodes
        without drafts: the token after a draft is drawn from a distribution that depends on the draft
        (its penalty counts, its grammar state), which the step would have to build before the draft
        is verified (the counts plus the draft on the device; the grammar matcher advanced on the host
        by a token it may then reject)."""
        return self.speculative and not seq.penalised and seq.req.constraint is None

    @staticmethod
    def _verifies(seq: _Seq) -> bool:
        """This decode step feeds seq's draft after its last token (and so may yield two tokens)."""
        return seq.draft is not None and len(seq.output) + 2 <= seq.max_tokens

    def _step(self) -> None:
        plan = self._schedule()
        if not plan:
            return
        bs = self.block_size
        prefill = [(s, n) for s, n in plan if not (n == 1 and s.output)]
        decode = [s for s, n in plan if n == 1 and s.output]
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        ctx_slots: list[int] = []
        spans: list[tuple[int, int, int, int, int]] = []  # rows a, b, start, ctx offset, ctx length
        sample_rows: list[int] = []
        row_seqs: list[_Seq] = []  # the sequence of every sampled row (a verifying one has two)
        entries: list[tuple[_Seq, int]] = []  # (sequence, its sampled rows), in sample-row order
        mtp = _MTPInputs()
        for s, n in prefill:
            start, end = s.num_computed, s.num_computed + n
            tokens = s.tokens()
            a = len(ids)
            ids += tokens[start:end]
            positions += range(start, end)
            slots += [self._slot(s, p) for p in range(start, end)]
            spans.append((a, len(ids), start, len(ctx_slots), end))
            ctx_slots += [self._slot(s, p) for p in range(end)]
            final = end == len(tokens)
            if final:
                sample_rows.append(len(ids) - 1)
                row_seqs.append(s)
                entries.append((s, 1))
            if s.spec:
                mtp.prefill_span(s, range(a, len(ids)), tokens[start + 1 : end + 1], start, spans[-1][3], end,
                                 len(sample_rows) - 1 if final else None)
        mtp.decode_start = len(mtp.src)
        decode_start = len(ids)
        per_split = KV_SPLIT // bs
        verifying = [self._verifies(s) for s in decode]
        width = max((-(-(s.num_computed + 1 + v) // KV_SPLIT) * per_split for s, v in zip(decode, verifying, strict=True)),
                    default=0)
        table: list[int] = []
        lengths: list[int] = []
        checks: list[list[int]] = [[], [], [], []]  # sampled drafts verified: sampled row, q row, draft, accept key
        for s, two in zip(decode, verifying, strict=True):
            first = len(ids)
            if two and not s.greedy:
                for col, v in zip(checks, (len(sample_rows), s.q_row, s.draft,
                                           row_key(s.seed, len(s.output), ACCEPT_STREAM)), strict=True):
                    assert v is not None
                    col.append(v)
            row_blocks = s.blocks[:width] + [0] * (width - min(width, len(s.blocks)))  # padding is masked
            for k, tok in enumerate([s.output[-1], s.draft] if two else [s.output[-1]]):
                assert tok is not None
                ids.append(tok)
                positions.append(s.num_computed + k)
                slots.append(self._slot(s, s.num_computed + k))
                table += row_blocks
                lengths.append(s.num_computed + k + 1)
                sample_rows.append(len(ids) - 1)
                row_seqs.append(s)
            entries.append((s, 1 + two))
            if s.spec:
                prev = s.draft if two and s.draft is not None else -1
                mtp.decode_rows(s, first, first - decode_start, len(sample_rows) - 1 - two, two, prev)
        s_ints, s_floats = self._sampling_inputs(row_seqs) if row_seqs else ([], [])
        checks = checks if checks[0] else []
        d_ints, d_floats = mtp.sampled_columns()
        groups = [[ids, positions, slots, sample_rows, ctx_slots, table, lengths], mtp.columns(), s_ints, checks, d_ints]
        ints_t, floats_t = self._staging.upload([col for g in groups for col in g], s_floats + d_floats)
        (ids_t, pos_t, slots_t, rows_t, ctx_t, table_t, len_t), mtp_t, s_ints_t, checks_t, d_ints_t = _split(
            ints_t, [len(g) for g in groups])
        s_floats_t, d_floats_t = floats_t[: len(s_floats)], floats_t[len(s_floats) :]
        n_decode_rows = len(ids) - decode_start
        table_2d = table_t.view(n_decode_rows, width) if decode else None
        masks = self._begin_masks(row_seqs) if row_seqs else None  # computed on llguidance's threads while the forward runs
        logits = None
        hidden = None
        bucket = (self._graphs.bucket(n_decode_rows) if self._graphs is not None and not prefill and not mtp.src
                  else None)
        if bucket is not None and self._graphs is not None and table_2d is not None:
            logits = self._graphs.run(bucket, n_decode_rows, ids_t, pos_t, slots_t, table_2d, len_t)
        if logits is None:
            backend = PagedAttention(
                self.cache, slots_t,
                [PrefillSpan((a, b), start, ctx_t[c0 : c0 + n]) for a, b, start, c0, n in spans],
                decode_start=decode_start, block_table=table_2d, lengths=len_t if decode else None,
                query_chunk=self.prefill_query_chunk)
            hidden, logits = self._forward_hidden(ids_t, pos_t, rows_t, backend)
        for s, n in plan:
            s.num_computed += n
        self.steps += 1
        draft_fn = None
        if mtp.src:
            assert hidden is not None

            def draft_fn(sampled: torch.Tensor) -> torch.Tensor:
                return self._draft(mtp, mtp_t, hidden, sampled, pos_t, slots_t, ctx_t, table_2d, len_t,
                                   d_ints_t + d_floats_t)

            if not entries:  # a prompt chunk that samples nothing still fills the MTP layer's cache
                draft_fn(torch.empty(0, dtype=torch.int64, device=self.device))
        if entries:

            allowed = None if masks is None else self._masker.allowed(masks, len(row_seqs), logits.device)  # type: ignore[union-attr]
            tokens, logprobs, tops, drafts = self._sample(row_seqs, logits, s_ints_t, s_floats_t, allowed, draft_fn,
                                                          checks_t)
            new_drafts = {id(d): t for d, t in zip(mtp.drafting, drafts, strict=True)}
            i = 0
            for s, k in entries:
                first_ok = True
                if k == 2:
                    first_ok = tokens[i] == s.draft
                    self.spec_drafted += 1
                    self.spec_accepted += first_ok
                if s.spec:
                    s.draft = new_drafts.get(id(s))
                self.generated_tokens += 1
                self._advance(s, tokens[i], logprobs[i], tops[i])
                if k == 2 and first_ok and not s.finished:  # the draft was the model's token: the next is free
                    s.num_computed += 1
                    self.generated_tokens += 1
                    self._advance(s, tokens[i + 1], logprobs[i + 1], tops[i + 1])
                i += k
        for s, _ in prefill:
            if not s.finished:
                self._publish(s, s.all_prompt_keys)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, sample_rows: torch.Tensor,
                 backend: AttentionBackend) -> torch.Tensor:
        """The one place a step runs the model: packed ids and positions [N] → logits [n, V] of the
        rows that sample (a parallel runner wraps this call)."""
        return self._forward_hidden(ids, positions, sample_rows, backend)[1]

    def _forward_hidden(self, ids: torch.Tensor, positions: torch.Tensor, sample_rows: torch.Tensor,
                        backend: AttentionBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """_forward, also returning the final-normed hidden states [N, H] (the MTP layer's input)."""
        hidden = self.model.hidden_states(ids[None], positions, backend)[0]
        logits: torch.Tensor = self.model.lm_head(hidden[sample_rows])
        return hidden, logits

    def _draft(self, mtp: _MTPInputs, cols: list[torch.Tensor], hidden: torch.Tensor, sampled: torch.Tensor,
               pos_t: torch.Tensor, slots_t: torch.Tensor, ctx_t: torch.Tensor, table_2d: torch.Tensor | None,
               len_t: torch.Tensor, sampled_cols: list[torch.Tensor]) -> torch.Tensor:
        """The MTP layer over the step's rows of speculating sequences, on the device, before the
        step's one device→host copy: row t gets the main model's hidden state at t and token t+1 (the
        prompt's, or the token just sampled there), writes its latent into the MTP cache layer and
        predicts token t+2. A verifying sequence's draft comes from its draft's row when the draft
        was kept, else from its last token's row. A greedy sequence's draft is the head's argmax; a
        sampled one's is drawn from q, the head's distribution through the request's own filters
        (`sampled_cols`, see `_MTPInputs.sampled_columns`), with its draft key, and q is kept in its row
        of `_q` for the next step's verification. Returns the drafts, one per drafting sequence."""
        src, nxt, fill_at, fill_from, dec, c0, c1, prev = cols
        nxt = nxt.clone()
        nxt[fill_at] = sampled[fill_from]
        decode = bool(mtp.dec)
        backend = PagedAttention(
            self.cache, slots_t[src],
            [PrefillSpan((a, b), start, ctx_t[o : o + n]) for a, b, start, o, n in mtp.spans],
            decode_start=mtp.decode_start, block_table=table_2d[dec] if decode and table_2d is not None else None,
            lengths=len_t[dec] if decode else None, query_chunk=self.prefill_query_chunk)
        h = self.model.mtp_hidden(nxt[None], hidden[src][None], pos_t[src], backend)[0]
        if not mtp.drafting:
            return torch.empty(0, dtype=torch.int64, device=h.device)
        kept = nxt[c0] == prev
        logits = self.model.lm_head(h[torch.where(kept, c1, c0)])
        drafts: torch.Tensor = logits.argmax(-1)
        if sampled_cols:
            at, q_rows, key0, key1, top_k, temperature, top_p, min_p = sampled_cols
            zero = torch.zeros_like(temperature)
            rows = rows_from_tensors(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, presence=zero,
                                     frequency=zero, keys=torch.where(kept[at], key1, key0),
                                     greedy=torch.zeros_like(at, dtype=torch.bool),
                                     host=[s.host_row for s in mtp.drafting if not s.greedy])
            q = filtered_probs(logits[at].float(), rows, self.vocab)
            drafts = drafts.index_put((at,), draw(q, rows.keys))
            assert self._q is not None
            self._q[q_rows] = q
        return drafts

    def _begin_masks(self, order: list[_Seq]) -> Future[tuple[torch.Tensor, torch.Tensor]] | None:
        constraints = [s.req.constraint for s in order]
        if all(c is None for c in constraints):
            return None
        if self._masker is None:
            self._masker = BatchMasker(self.vocab)
        return self._masker.begin(constraints, [s.max_tokens - len(s.output) for s in order])

    def _sampling_inputs(self, seqs: list[_Seq]) -> tuple[list[list[int]], list[list[float]]]:
        """The sampler's per-row inputs (int and float columns) for the step's staging buffer; empty
        when every row is greedy and unpenalised (the sampler then needs nothing but the logits). A
        verifying sequence's second row samples its token after the draft: its key is one step on."""
        if all(s.greedy and not s.penalised for s in seqs):
            return [], []
        zero_row = self.max_batch  # the count table's row that stays zero, for unpenalised rows
        ints = [[row_key(s.seed, len(s.output) + k) for s, k in zip(seqs, _row_offsets(seqs), strict=True)],
                [s.params.top_k for s in seqs],
                [int(s.greedy) for s in seqs],
                [zero_row if s.counts_row is None else s.counts_row for s in seqs]]
        floats = [[1.0 if s.greedy else s.params.temperature for s in seqs], [s.params.top_p for s in seqs],
                  [s.params.min_p for s in seqs], [s.params.presence_penalty for s in seqs],
                  [s.params.frequency_penalty for s in seqs]]
        return ints, floats

    def _sample(self, seqs: list[_Seq], logits: torch.Tensor, ints: list[torch.Tensor], floats: list[torch.Tensor],
                allowed: torch.Tensor | None = None, then: Callable[[torch.Tensor], torch.Tensor] | None = None,
                checks: Sequence[torch.Tensor] = ()
                ) -> tuple[list[int], list[float | None], list[list[tuple[int, float]] | None], list[int]]:
        """One batched pass on the device (see sampler.py); rows never interact, so a request's choice
        does not depend on who else is in the batch. `then(sampled ids)` runs more device work on the
        sampled ids (the MTP drafts) whose int results join the step's one device→host copy, at its end.
        `checks` (sampled row, q row, draft, accept key per sampled draft verified this step): at
        those rows the rejection rule (`inference.mtp.verify`) against the q kept when the draft was
        drawn replaces the sample. Returns tokens, logprobs, top logprobs per row and `then`'s results."""
        want_lp = any(s.params.logprobs for s in seqs)
        n_top = max(s.params.top_logprobs for s in seqs)
        counts = None
        if ints:
            keys, top_k, greedy, count_rows = ints
            temperature, top_p, min_p, presence, frequency = floats
            rows: SamplingRows | None = rows_from_tensors(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                     presence=presence, frequency=frequency, keys=keys, greedy=greedy.bool(),
                                     host=[s.host_row for s in seqs])
            if rows is not None and rows.any_penalty:
                assert self._counts is not None
                counts = self._counts[count_rows]
        else:
            rows = None
        check = None
        if checks:
            at, q_rows, drafts, keys = checks
            q = self._q

            def check(tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
                assert q is not None
                return tokens.index_put((at,), verify(probs[at], q[q_rows], drafts, keys))

        out = sample(logits, rows, counts=counts, allowed=allowed, want_logprobs=want_lp, top_logprobs=n_top,
                     verify=check)
        if counts is not None:
            assert self._counts is not None
            self._counts.index_put_((count_rows, out.tokens), torch.ones_like(out.tokens, dtype=torch.float32),
                                    accumulate=True)
            self._counts[self.max_batch].zero_()
        B = len(seqs)
        extra = then(out.tokens) if then is not None else None
        parts = [out.tokens.to(torch.float64)]
        if extra is not None:
            parts.append(extra.to(torch.float64))
        if out.logprobs is not None:
            parts.append(out.logprobs.to(torch.float64))
        if out.top_ids is not None and out.top_logprobs is not None:
            parts += [out.top_ids.to(torch.float64).flatten(), out.top_logprobs.to(torch.float64).flatten()]
        host = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()  # the step's one device→host copy
        tokens = [int(t) for t in host[:B]]
        off = B
        n_extra = 0 if extra is None else extra.numel()
        extras = [int(t) for t in host[off : off + n_extra]]
        off += n_extra
        lps: list[float | None] = [None] * B
        tops: list[list[tuple[int, float]] | None] = [None] * B
        if out.logprobs is not None:
            lps = [lp if s.params.logprobs else None for s, lp in zip(seqs, host[off : off + B], strict=True)]
            off += B
        if n_top:
            n = len(host[off:]) // (2 * B)
            top_ids, top_lps = host[off : off + B * n], host[off + B * n :]
            for i, s in enumerate(seqs):
                k = s.params.top_logprobs
                if k:
                    tops[i] = [(int(top_ids[i * n + j]), top_lps[i * n + j]) for j in range(k)]
        return tokens, lps, tops, extras

    def _advance(self, s: _Seq, tok: int, lp: float | None, top: list[tuple[int, float]] | None) -> None:
        """Record a sampled token and emit its event; token-level ends (eos, a stop id, max_tokens) are
        decided here, text and stop strings on the text thread (_TextThread)."""
        p = s.params
        if s.req.constraint is not None:
            chosen = s.req.constraint.guard(tok, s.max_tokens - len(s.output) - 1)
            if chosen != tok:  # the JSON value must close in the tokens left: its completion goes first
                tok, lp, top = chosen, None if lp is None else 0.0, None if top is None else [(chosen, 0.0)]
            s.req.constraint.advance(tok)
        s.output.append(tok)
        if (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids:
            self._finish(s, FINISH_STOP, logprob=lp, top=top)
            return
        if len(s.output) >= s.max_tokens:
            self._finish(s, FINISH_LENGTH, token_ids=[tok], logprob=lp, top=top)
            return
        self._emit(s, Event([tok], "", usage=s.usage(), logprobs=None if lp is None else [lp],
                            top_logprobs=None if top is None else [top]))

    def _emit(self, s: _Seq, ev: Event) -> None:
        if s.stream is None:
            s.handle._emit(ev)
        else:
            self._text.put(s.stream, s.handle, ev)

    def _publish(self, s: _Seq, keys: list[bytes]) -> None:
        """Publish this sequence's computed full units so later requests of the same user reuse them."""
        if s.req.user is None:
            return
        bpu = self.cache.blocks_per_unit
        for j in range(len(s.unit_keys), min(len(keys), s.num_computed // UNIT_TOKENS)):
            blocks = s.blocks[j * bpu : (j + 1) * bpu]
            if not self.cache.register(keys[j], blocks):
                break  # someone else published this prefix first; keep ours private from here on
            s.unit_keys.append(keys[j])
            s.private = [b for b in s.private if b not in blocks]

    def _finish(self, s: _Seq, reason: str, *, token_ids: list[int] | None = None,
                logprob: float | None = None, error: str | None = None,
                top: list[tuple[int, float]] | None = None) -> None:
        if s.finished:
            return
        s.finished = True
        if reason in (FINISH_STOP, FINISH_LENGTH) and s.req.user is not None:
            # Publish generated text too: the next turn of a chat starts with this whole exchange.
            tokens = s.tokens()
            n_units = s.num_computed // UNIT_TOKENS
            parent = s.unit_keys[-1] if s.unit_keys else b""
            done = len(s.unit_keys)
            more = KVCache.unit_keys(s.req.user, tokens[done * UNIT_TOKENS :], n_units - done, parent)
            self._publish(s, s.unit_keys + more)
        for key in reversed(s.unit_keys):  # deepest units become least recently used: evicted first
            self.cache.release(key)
        self.cache.release_blocks(s.private)
        s.unit_keys, s.private, s.blocks = [], [], []
        self._release_counts_row(s)
        self._release_q_row(s)
        if s in self._running:
            self._running.remove(s)
        if s in self._preempted:
            self._preempted.remove(s)
        self._emit(s, Event(token_ids or [], "", reason, s.usage(), logprobs=None if logprob is None else [logprob],
                            error=error, top_logprobs=None if top is None else [top]))
