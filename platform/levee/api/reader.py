"""The one reader of a job's event stream on the web side.

The API's streamed and whole replies, the web chat and the stale-reply sweep all follow a job the
same way: raw protocol events (inference.protocol) in, typed events out, with a reasoner's
`<think>…</think>` split from the answer, the running usage tracked, everything received kept, and
the job cancelled when its reader goes away before the end. Each caller is then a formatter of
these typed events:

    Keepalive            the job is still queued (say so to the client, so proxies keep the line)
    Text                 output now certain: answer `content`, `reasoning`, `tool_calls` deltas (when the
                         request offered tools), the tokens' `logprobs` (when asked), the `raw` text
    Done                 the job finished (its finish reason, "tool_calls" when the answer was calls);
                         text and call pieces held back until then come with it
    Failed               the job ended in an error, or went silent (`synthetic`: the web side decided)

`follow()` reads a live stream (levee.api.jobs.events); `replay()` reads what a stream holds now
(XRANGE), for jobs whose reader was lost.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from inference import protocol
from levee.api.think import ThinkSplitter
from levee.api.tools import Call, CallDelta, ToolCallParser

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Keepalive:
    pass


KEEPALIVE = Keepalive()


@dataclass
class Text:
    content: str
    reasoning: str
    raw: str
    usage: dict[str, int]
    tool_calls: list[CallDelta] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Done:
    finish_reason: str
    usage: dict[str, int]
    content: str = ""  # the tail the splitter held back
    reasoning: str = ""
    tool_calls: list[CallDelta] = field(default_factory=list)
    raw: dict[str, Any] | None = None  # the job's last event as the worker wrote it (its signed settlement)
    stop_sequence: str | None = None  # the stop string that ended the answer (finish_reason stop)


@dataclass
class Failed:
    code: str | None
    message: str
    synthetic: bool
    usage: dict[str, int]
    raw: dict[str, Any] | None = None


Event = Keepalive | Text | Done | Failed


@dataclass
class JobReader:
    """One job's events, typed. `reasoner`: split `<think>…</think>`; `thinking_opened`: the prompt
    already opened `<think>` (a reasoning template), so output starts inside the reasoning;
    `replace_nul`: NUL becomes U+FFFD (PostgreSQL text refuses NUL); `tool_parser`: read the
    answer's tool calls out of it (levee.api.tools)."""

    job_id: str
    prompt_tokens: int
    reasoner: bool = False
    thinking_opened: bool = False
    replace_nul: bool = False
    tool_parser: ToolCallParser | None = None
    usage: dict[str, int] = field(init=False)
    logprobs: list[dict[str, Any]] = field(init=False, default_factory=list)
    content: list[str] = field(init=False, default_factory=list)
    reasoning: list[str] = field(init=False, default_factory=list)
    end: Done | Failed | None = field(init=False, default=None)
    lease: Any = field(init=False)  # levee.api.jobs.Lease: what the formatter has passed on, for the workers

    def __post_init__(self) -> None:
        from levee.api.jobs import Lease

        self.lease = Lease(self.job_id)
        self.usage = protocol.usage_dict(0, self.prompt_tokens, 0)
        self._splitter = ThinkSplitter(opened=self.thinking_opened) if self.reasoner else None
        self._flushed = False

    # --- what was received ---

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def tool_calls(self) -> list[Call]:
        return self.tool_parser.calls if self.tool_parser is not None else []

    def _keep(self, reasoning: str, content: str, *, final: bool = False) -> tuple[str, str, list[CallDelta]]:
        deltas: list[CallDelta] = []
        if self.tool_parser is not None:
            content, deltas = self.tool_parser.push(content)
            if final:
                rest, more = self.tool_parser.flush()
                content, deltas = content + rest, deltas + more
        self.reasoning.append(reasoning)
        self.content.append(content)
        return reasoning, content, deltas

    def _split(self, text: str) -> tuple[str, str, list[CallDelta]]:
        if self._splitter is None:
            return self._keep("", text)
        return self._keep(*self._splitter.push(text))

    def flush(self) -> tuple[str, str, list[CallDelta]]:
        """What the splitter and the tool parser still hold back (once), kept with the rest;
        nothing after the first call."""
        if self._flushed:
            return "", "", []
        self._flushed = True
        if self._splitter is None:
            return self._keep("", "", final=True)
        return self._keep(*self._splitter.flush(), final=True)

    # --- raw → typed ---

    def feed(self, event: dict[str, Any]) -> Event | None:
        """Turn one raw protocol event into a typed one (None for events nobody formats)."""
        kind = event.get("type")
        if kind == "keepalive":  # levee.api.jobs.KEEPALIVE
            return KEEPALIVE
        if kind == protocol.DELTA:
            self.usage = event.get("usage", self.usage)
            raw = event.get("text", "")
            if self.replace_nul:
                raw = raw.replace("\x00", "\ufffd")
            reasoning, content, calls = self._split(raw)
            logprobs = event.get("logprobs") or []
            self.logprobs += logprobs
            return Text(content=content, reasoning=reasoning, raw=raw, usage=self.usage, tool_calls=calls,
                        logprobs=logprobs)
        if kind == protocol.DONE:
            self.usage = event.get("usage", self.usage)
            reasoning, content, calls = self.flush()
            reason = event.get("finish_reason", "stop")
            if reason == "stop" and self.tool_calls:
                reason = "tool_calls"
            matched = event.get("stop_sequence")
            self.end = Done(finish_reason=reason, usage=self.usage, content=content, reasoning=reasoning,
                            tool_calls=calls, raw=event,
                            stop_sequence=matched if reason == "stop" and isinstance(matched, str) else None)
            return self.end
        if kind == protocol.ERROR:
            self.usage = event.get("usage", self.usage)
            self.flush()
            self.end = Failed(code=event.get("code"), message=event.get("message") or "", usage=self.usage,
                              synthetic=bool(event.get("synthetic")), raw=event)
            return self.end
        return None

    # --- sources ---

    async def follow(self) -> AsyncGenerator[Event, None]:
        """The live stream until Done or Failed. A reader closed before that (the client went away)
        flags the job cancelled: the worker stops and settles what it made. Close it explicitly
        (contextlib.aclosing), so that happens when the client leaves, not when the garbage is collected.
        Meanwhile the job's reader lease is kept alive (`lease.delivered`: set by the formatter):
        if this process dies, the worker cancels the job (protocol.reader_key)."""
        from levee.api import jobs

        try:
            async for raw in jobs.events(self.job_id, queue_timeout=settings.LEVEE_JOB_QUEUE_TIMEOUT,
                                         heartbeat_timeout=settings.LEVEE_JOB_HEARTBEAT_TIMEOUT, lease=self.lease):
                typed = self.feed(raw)
                if typed is not None:
                    yield typed
                if self.ended:
                    return
        finally:
            if not self.ended:
                self.flush()
                try:
                    await jobs.cancel(self.job_id)
                except RedisError:
                    log.warning("could not flag job %s cancelled", self.job_id)

    def replay(self, entries: Iterable[tuple[Any, dict]]) -> Iterator[Event]:
        """The typed events of stored stream entries (XRANGE), up to the end; entries of another
        protocol version are skipped. Whatever the splitter holds is flushed at the end."""
        for _id, fields in entries:
            try:
                raw = protocol.decode_event(fields)
            except protocol.ProtocolError:
                continue
            typed = self.feed(raw)
            if typed is not None:
                yield typed
            if self.ended:
                return
        self.flush()

    def replay_stored(self) -> JobReader:
        """Read the job's stream as Redis holds it now (empty if it is gone). Raises RedisError."""
        from levee.core.store import redis_client

        entries: list[Any] = redis_client().xrange(protocol.stream_key(self.job_id)) if self.job_id else []  # type: ignore[assignment]
        for _ in self.replay(entries):
            pass
        return self

