"""Glue between a job message and the engine: build the engine for a checkpoint, submit a job, and
turn the engine's events into what the worker streams (text deltas with running usage)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from inference import protocol


@dataclass
class JobEvent:
    text: str
    usage: dict
    finish_reason: str | None = None
    error: str | None = None


def _device_and_dtype():
    import torch

    device = os.environ.get("LEVEE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    name = os.environ.get("LEVEE_DTYPE") or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"LEVEE_DTYPE={name!r} is not a torch dtype")
    return device, dtype


def build_engine(checkpoint: str):
    from inference import load_model
    from inference.engine import Engine
    from inference.tokenizer import IncrementalDetokenizer, Tokenizer

    device, dtype = _device_and_dtype()
    model = load_model(checkpoint, dtype=dtype, device=device)
    tokenizer = Tokenizer.from_dir(checkpoint)
    budget = int(os.environ.get("LEVEE_KV_BUDGET_MB", "256")) * 2**20
    engine = Engine(model, kv_budget_bytes=budget, max_batch=int(os.environ.get("LEVEE_MAX_BATCH", "32")),
                    detokenizer_factory=lambda: IncrementalDetokenizer(tokenizer))
    return engine.start()


def submit(engine, message: protocol.JobMessage) -> Iterator[JobEvent]:
    from inference.engine import Request, SamplingParams

    s = message.sampling
    params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p or 1e-6,
                            stop=tuple(s.stop), presence_penalty=s.presence_penalty,
                            frequency_penalty=s.frequency_penalty, seed=s.seed)
    handle = engine.submit(Request(prompt_ids=list(message.prompt_ids), params=params, user=message.user,
                                   deadline=message.deadline, request_id=message.job_id))
    return _Events(handle, len(message.prompt_ids))


class _Events:
    """Iterates a handle's events as JobEvents; `cancel()` reaches the engine."""

    def __init__(self, handle, prompt_tokens: int):
        self.handle = handle
        self.prompt_tokens = prompt_tokens

    def cancel(self) -> None:
        self.handle.cancel()

    def __iter__(self) -> Iterator[JobEvent]:
        completion = 0
        for event in self.handle:
            completion += len(event.token_ids)
            if event.usage is not None:
                u = event.usage
                usage = protocol.usage_dict(u.prompt_cache_hit_tokens, u.prompt_cache_miss_tokens, u.completion_tokens)
            else:
                # Until the engine reports the final split, the prompt counts as uncached: if the worker
                # dies now, the web side settles at the (higher) cache-miss price for the prompt.
                usage = protocol.usage_dict(0, self.prompt_tokens, completion)
            reason = event.finish_reason
            if reason == "error":
                raise RuntimeError(event.error or "engine error")
            yield JobEvent(text=event.text, usage=usage, finish_reason=reason, error=event.error)
