"""The contract between the web tier and inference workers: the job message and its events.

Both sides import this module, which imports neither torch nor Django. A change that a reader of the
other side could misread bumps VERSION; readers refuse versions they do not know.

    web ── LPUSH queue_name(model) celery_redis_message("inference.generate", [JobMessage.to_dict()]) ──> worker
    worker ── XADD stream_key(job_id) {"e": Event JSON} ──> web (XREAD from id 0)
    the job's last event (done | error) carries the worker's signed `settlement` (sign_settlement):
    the web that reads it settles; the platform's sweep settles from the stream if no web did.

Version 2: JobMessage.pickup_deadline (a worker does not start a job after it), the signed
settlement in the last event instead of a settle task sent by the worker.
Version 5: JobMessage.reader: the web process that follows the job keeps reader_key(reader) alive;
a worker does not start, and cancels, a job whose reader's lease lapsed (that process died).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

# 2: the job carries a pickup deadline apart from its run deadline; its last event a signed settlement.
# 3: the job carries a sampling `constraint` (a grammar) and `logprobs`; delta events may carry `logprobs`;
#    a done event may carry `stop_sequence`, the stop string that ended the job (optional: a reader that
#    ignores it reads the same job).
# 4: a constraint may say `json_value` (a worker of version 3 could not read the message).
# 5: the job may name its `reader` (reader_key: the web process following it).
# 6: a constraint may say `calls` (the ids that end a block of several calls in time).
VERSION = 6
GENERATE_TASK = "inference.generate"
SETTLE_TASK = "levee.billing.settle"
PLATFORM_QUEUE = "platform"

STREAM_MAXLEN = 20_000  # events per job; far more than any delta count, bounds a runaway writer
STREAM_TTL_S = 3600  # a job's stream and markers are gone an hour after its last write
HEARTBEAT_INTERVAL_S = 1.0  # a running job gets a heartbeat event at least this often
WORKER_TTL_S = 10.0  # a worker not seen for this long is not live


def queue_name(model: str) -> str:
    return f"inference.{model}"


def stream_key(job_id: str) -> str:
    return f"levee:job:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"levee:job:{job_id}:cancel"


def reader_key(reader: str) -> str:
    """A reader's lease (JobMessage.reader): one per web process (per event loop), set when it
    enqueues a job and kept alive (a short TTL, refreshed) while it follows job streams. Gone: that
    process died, so nobody reads its jobs and nobody is left to cancel them."""
    return f"levee:reader:{reader}"


def sent_key(job_id: str) -> str:
    """The completion tokens the web has passed on to the job's client so far (written with the
    lease, kept an hour). Web and platform only (a worker's Redis user can neither read nor write
    it): the sweep bills a job whose web process died no more than this."""
    return f"levee:job:{job_id}:sent"


def started_key(job_id: str) -> str:
    """Set once (SET NX) by the worker that runs the job; a redelivered copy that finds it does not run."""
    return f"levee:job:{job_id}:started"


def workers_key(model: str) -> str:
    """Sorted set: worker id -> unix time of its last heartbeat."""
    return f"levee:workers:{model}"


def worker_stats_key(model: str) -> str:
    """Hash: worker id -> JSON of its engine's numbers at its last heartbeat (WorkerStats)."""
    return f"levee:workers:{model}:stats"


def wait_key(model: str) -> str:
    """Milliseconds the most recently started job of this model waited in the queue."""
    return f"levee:model:{model}:wait_ms"


class ProtocolError(ValueError):
    pass


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass
class Constraint:
    """What sampling must follow: a grammar in llguidance's Lark dialect (JSON schemas embedded with
    `%json {...}`, tokens by id as `<[id]>`). With `trigger`, the output is free until that token is
    sampled, and the grammar holds from the token after it (a call begun under tool_choice auto)."""
    grammar: str
    trigger: int | None = None
    json_value: bool = False  # the grammar's output is one JSON value: the engine closes it within max_tokens
    calls: list[int] | None = None  # [call begin, call end, calls end] ids of a several-calls grammar: ended in time


@dataclass
class JobMessage:
    job_id: str
    model: str
    prompt_ids: list[int]
    sampling: Sampling
    user: str  # account id: isolates the prefix cache between users
    hold_id: str | None
    deadline: float  # unix time: the run deadline; a job still running then is cancelled
    pickup_deadline: float  # unix time: a worker does not start a job it picks up after this
    enqueued_at: float = field(default_factory=time.time)
    constraint: Constraint | None = None
    logprobs: int | None = None  # None: none; N: each token's logprob and the N most likely (0..20)
    # The web process that follows the job keeps reader_key(reader) alive: a worker does not start,
    # and cancels, a job whose reader's lease is gone (that process died; nobody can cancel it).
    reader: str | None = None
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobMessage:
        if data.get("version") != VERSION:
            raise ProtocolError(f"job message version {data.get('version')!r}; this reader knows {VERSION}")
        data = dict(data)
        data["sampling"] = Sampling(**data["sampling"])
        if data.get("constraint") is not None:
            data["constraint"] = Constraint(**data["constraint"])
        return cls(**data)


def celery_redis_message(task: str, args: list[Any], *, task_id: str, queue: str, origin: str) -> bytes:
    """What `send_task(task, args, queue=queue, task_id=task_id)` of Celery 5 pushes onto the Redis list
    named `queue` (no priority, no ETA, the default exchange): Celery's task message protocol 2 in
    kombu's Redis envelope (base64 body, JSON). The web side pushes it itself from the event loop
    (levee.api.jobs): Celery's own publish is blocking and costs a thread hop and ~1 ms of kombu per
    request. A test keeps it field for field equal to what Celery writes."""
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    headers: dict[str, Any] = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None, "group": None,
        "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": f"<{task} {task_id}>", "kwargsrepr": "{}", "origin": origin, "ignore_result": True,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    properties = {
        "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0, "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    return json.dumps({"body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8",
                       "content-type": "application/json", "headers": headers, "properties": properties}).encode()


# Event types, in the order a job may emit them: queued? started, (delta | heartbeat)*, (done | error).
STARTED, DELTA, HEARTBEAT, DONE, ERROR = "started", "delta", "heartbeat", "done", "error"
FINISH_REASONS = {"stop", "length", "cancelled", "insufficient_system_resource"}


def usage_dict(prompt_cache_hit_tokens: int, prompt_cache_miss_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_cache_hit_tokens + prompt_cache_miss_tokens,
        "prompt_cache_hit_tokens": prompt_cache_hit_tokens,
        "prompt_cache_miss_tokens": prompt_cache_miss_tokens,
        "completion_tokens": completion_tokens,
    }


def clamp_usage(usage: dict[str, int], *, prompt_tokens: int, max_tokens: int) -> dict[str, int]:
    """A worker's reported usage held to the job's bounds: no more prompt tokens than the web
    counted (cache hits first), no more completion tokens than max_tokens, nothing negative."""
    def count(name: str) -> int:
        value = usage.get(name, 0)
        return max(0, value) if isinstance(value, int) and not isinstance(value, bool) else 0

    hit = min(count("prompt_cache_hit_tokens"), prompt_tokens)
    miss = min(count("prompt_cache_miss_tokens"), prompt_tokens - hit)
    return usage_dict(hit, miss, min(count("completion_tokens"), max_tokens))


SETTLEMENT_FIELDS = ("hold_id", "job_id", "account", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens",
                     "completion_tokens", "started_at", "finished_at")


def _settlement_mac(secret: str, data: dict[str, Any]) -> str:
    text = json.dumps([data.get(name) for name in SETTLEMENT_FIELDS], separators=(",", ":"))
    return hmac.new(secret.encode(), b"levee-settle-v1:" + text.encode(), hashlib.sha256).hexdigest()


def sign_settlement(secret: str, *, hold_id: str, job_id: str, account: str, usage: dict[str, int],
                    started_at: str, finished_at: str) -> dict[str, Any]:
    """What a job's last event carries for billing: the usage, the instants (ISO-8601 with an
    offset), and an HMAC-SHA256 under the worker secret binding them to the hold, job and account."""
    if not secret:
        raise ValueError("signing a settlement needs the worker secret (LEVEE_WORKER_SECRET)")
    data: dict[str, Any] = {"hold_id": hold_id, "job_id": job_id, "account": account,
                            "prompt_cache_hit_tokens": usage["prompt_cache_hit_tokens"],
                            "prompt_cache_miss_tokens": usage["prompt_cache_miss_tokens"],
                            "completion_tokens": usage["completion_tokens"],
                            "started_at": started_at, "finished_at": finished_at}
    data["signature"] = _settlement_mac(secret, data)
    return data


def settlement_signed(secret: str, data: Any) -> bool:
    """Whether `data` is a settlement signed with `secret` (constant-time comparison)."""
    if not secret or not isinstance(data, dict) or not isinstance(data.get("signature"), str):
        return False
    return hmac.compare_digest(_settlement_mac(secret, data), data["signature"])


def encode_event(kind: str, **payload: Any) -> dict[FieldT, EncodableT]:
    """The field map of one stream entry (one field, "e": the event as JSON), as XADD takes it."""
    return {"e": json.dumps({"v": VERSION, "type": kind, **payload}, separators=(",", ":"))}


def decode_event(fields: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    """One stream entry's event, from its fields as Redis returns them (bytes, or str when the client
    decodes responses)."""
    raw = fields.get(b"e", fields.get("e"))
    if raw is None:
        raise ProtocolError("stream entry without an 'e' field")
    event = json.loads(raw)
    if not isinstance(event, dict):
        raise ProtocolError(f"stream entry whose event is not a JSON object: {raw!r}"[:200])
    if event.get("v") != VERSION:
        raise ProtocolError(f"event version {event.get('v')!r}; this reader knows {VERSION}")
    return event
