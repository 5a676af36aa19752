"""Glue between a job message and the engine: build the engine for a checkpoint, submit a job (its
grammar compiled here, in the caller's thread), and turn the engine's events into what the worker
streams (text with running usage, and the tokens' logprobs when asked)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference import protocol

if TYPE_CHECKING:  # the engine and torch load only where an engine is built
    import torch

    from inference.engine import Engine, RequestHandle, Sink


@dataclass
class JobEvent:
    text: str
    usage: dict[str, int]
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    stop_sequence: str | None = None  # the stop string that ended the job (finish_reason stop)


@dataclass
class _Checkpoint:
    """What submit and job_event need of the engine's checkpoint besides the engine."""
    tokenizer: Any  # inference.tokenizer.Tokenizer
    tokenizer_json: str
    vocab_size: int
    eos_token_id: int


_checkpoints: dict[int, _Checkpoint] = {}  # id(engine) -> its checkpoint


def _device_and_dtype() -> tuple[str, torch.dtype]:
    import torch

    device = os.environ.get("LEVEE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    name = os.environ.get("LEVEE_DTYPE") or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"LEVEE_DTYPE={name!r} is not a torch dtype")
    return device, dtype


def max_batch() -> int:
    """Sequences the engine runs at once (LEVEE_MAX_BATCH, default 32)."""
    return int(os.environ.get("LEVEE_MAX_BATCH", "32"))


def mtp_mode() -> str:
    """$LEVEE_MTP: `auto` (default: speculate with the checkpoint's MTP layer when it has one), `on`
    (it must have one) or `off`."""
    mode = os.environ.get("LEVEE_MTP", "auto").strip().lower() or "auto"
    aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
    mode = aliases.get(mode, mode)
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"LEVEE_MTP={mode!r}: expected auto, on or off")
    return mode


def build_engine(checkpoint: str) -> Engine:
    """The engine for `checkpoint`; with $LEVEE_TP_SIZE > 1 over that many ranks (inference/parallel.py).
    With the checkpoint's MTP layer ($LEVEE_MTP) the engine speculates for unpenalised, unconstrained requests."""
    from inference import load_model, parallel
    from inference.engine import Engine
    from inference.loader import has_mtp_layer
    from inference.tokenizer import IncrementalDetokenizer, Tokenizer

    device, dtype = _device_and_dtype()
    mode = mtp_mode()
    model: Any  # a Transformer, or rank 0's ParallelRunner (which the engine drives the same way)
    mtp = mode == "on" or (mode == "auto" and has_mtp_layer(checkpoint))
    if parallel.tp_size() > 1:  # rank 0 here; ranks 1.. spawned, each loading its shard
        model, _ = parallel.load_parallel(checkpoint, dtype=dtype, device=device, mtp=mtp)
    else:
        model = load_model(checkpoint, dtype=dtype, device=device, mtp=mtp)
    tokenizer = Tokenizer.from_dir(checkpoint)
    budget = int(os.environ.get("LEVEE_KV_BUDGET_MB", "256")) * 2**20
    engine = Engine(model, kv_budget_bytes=budget, max_batch=max_batch(),
                    detokenizer_factory=lambda: IncrementalDetokenizer(tokenizer))
    _checkpoints[id(engine)] = _Checkpoint(
        tokenizer, (Path(checkpoint) / "tokenizer.json").read_text(encoding="utf-8"), model.args.vocab_size,
        tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.args.eos_token_ids[0])
    return engine.start()


def shutdown(engine: Any) -> None:
    """Stop the engine and, when it runs over several ranks, release and reap the followers."""
    engine.stop()
    stop = getattr(engine.model, "stop", None)  # a ParallelRunner
    if stop is not None:
        stop()


def submit(engine: Engine, message: protocol.JobMessage, sink: Sink) -> RequestHandle:
    """Queue the job on the engine; its events go to sink.put((handle, event)) (see job_event)."""
    from inference.engine import Request, SamplingParams

    s = message.sampling
    params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p or 1e-6,
                            stop=tuple(s.stop), presence_penalty=s.presence_penalty,
                            frequency_penalty=s.frequency_penalty, seed=s.seed,
                            logprobs=message.logprobs is not None, top_logprobs=message.logprobs or 0)
    constraint = None
    if message.constraint is not None:
        from inference.grammar import SequenceConstraint, ll_tokenizer

        ck = _checkpoints.get(id(engine))
        if ck is None:
            raise ValueError("this engine was not built by serving.build_engine: it cannot compile grammars")
        tok = ll_tokenizer(ck.tokenizer_json, ck.vocab_size, ck.eos_token_id)
        constraint = SequenceConstraint.compile(tok, message.constraint.grammar, message.constraint.trigger,
                                                json_value=message.constraint.json_value,
                                                calls=_calls(message.constraint.calls))
    return engine.submit(Request(prompt_ids=list(message.prompt_ids), params=params, user=message.user,
                                 deadline=message.deadline, request_id=message.job_id, constraint=constraint),
                         sink=sink)


def _calls(ids: list[int] | None) -> tuple[int, int, int] | None:
    """A constraint's [call begin, call end, calls end] ids, checked (None: not a several-calls grammar)."""
    if not ids:
        return None
    if len(ids) != 3:
        raise ValueError(f"constraint.calls needs 3 token ids, not {len(ids)}")
    return ids[0], ids[1], ids[2]


def job_event(event: Any, engine: Any = None) -> JobEvent:
    """An engine event as the worker streams it: text with the running usage (the engine reports the
    prompt's cache split from admission on), and each sampled token's logprob in OpenAI's shape
    when the request asked (`engine`: the one that made it, for its tokenizer)."""
    u = event.usage
    out = JobEvent(text=event.text, finish_reason=event.finish_reason, error=event.error,
                   stop_sequence=event.stop_sequence,
                   usage=protocol.usage_dict(u.prompt_cache_hit_tokens, u.prompt_cache_miss_tokens,
                                             u.completion_tokens))
    if event.logprobs and event.token_ids and engine is not None and id(engine) in _checkpoints:
        tokenizer = _checkpoints[id(engine)].tokenizer
        tops = event.top_logprobs or [[] for _ in event.token_ids]
        for token_id, logprob, top in zip(event.token_ids, event.logprobs, tops, strict=False):
            entry = _logprob_entry(tokenizer, token_id, logprob)
            entry["top_logprobs"] = [_logprob_entry(tokenizer, t, lp) for t, lp in top]
            out.logprobs.append(entry)
    return out


def _logprob_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    raw = tokenizer.token_bytes(token_id)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(logprob, -9999.0), "bytes": list(raw)}
