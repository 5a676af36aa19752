"""The engine under memory and token pressure: chunked prefill beside decodes, preemption by recompute."""

from __future__ import annotations

import queue

import pytest
import torch

from inference import load_model
from inference.engine import Engine, Request, SamplingParams
from tests.inference.checkpoints import DEVICE
from tests.inference.test_engine import GREEDY, KV_BYTES_PER_TOKEN, prompts


@pytest.fixture(scope="module")
def model(checkpoint):
    path, _ = checkpoint("v3_grouped_yarn")
    return load_model(path, dtype=torch.float32, device=DEVICE)


def alone(model, prompt, **params):
    eng = Engine(model, kv_budget_bytes=8 << 20).start()
    try:
        return eng.submit(Request(prompt, SamplingParams(**params))).result(60).token_ids
    finally:
        eng.stop()


class StepSink:
    """Records (request id, engine step) for every event, from the scheduler thread."""

    def __init__(self, engine):
        self.engine, self.q = engine, queue.SimpleQueue()

    def put(self, item):
        handle, event = item
        self.q.put((handle.request_id, self.engine.steps, event))

    def drain(self):
        out = []
        while not self.q.empty():
            out.append(self.q.get())
        return out


def test_a_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding(model):
    short, long_ = prompts(1, seed=21, lo=5, hi=6)[0], prompts(1, seed=22, lo=300, hi=301)[0]
    expected = {"s": alone(model, short, max_tokens=30, **GREEDY), "l": alone(model, long_, max_tokens=4, **GREEDY)}
    eng = Engine(model, kv_budget_bytes=8 << 20, max_step_tokens=40).start()
    try:
        sink = StepSink(eng)
        eng.submit(Request(short, SamplingParams(max_tokens=30, **GREEDY), request_id="s"), sink=sink)
        while sink.q.empty():
            pass
        eng.submit(Request(long_, SamplingParams(max_tokens=4, **GREEDY), request_id="l"), sink=sink)
        events = []
        while not (len(events) >= 2 and all(any(r == k and e.finish_reason for r, _, e in events) for k in "sl")):
            events.append(sink.q.get(timeout=60))
    finally:
        eng.stop()
    got = {k: [t for r, _, e in events if r == k for t in e.token_ids] for k in "sl"}
    assert got == expected
    long_first = min(step for r, step, _ in events if r == "l")
    short_steps = [step for r, step, _ in events if r == "s"]
    # 300 prompt tokens under a 40-token budget shared with a decode: at least 8 steps of prefill,
    # and the short request got a token in every one of them.
    during = [s for s in short_steps if long_first - 8 < s < long_first]
    assert during == list(range(long_first - 7, long_first))


@pytest.mark.parametrize("kind", ["greedy", "seeded"])
def test_preempted_requests_resume_and_produce_the_same_tokens(model, kind):
    params = dict(GREEDY) if kind == "greedy" else dict(temperature=1.0, top_p=0.9, ignore_eos=True)
    ps = prompts(4, seed=23, lo=30, hi=50)
    want = [alone(model, p, max_tokens=60, **params, **({} if kind == "greedy" else {"seed": i}))
            for i, p in enumerate(ps)]
    # 16 blocks of 16 tokens: the four prompts fit at once, their completions do not.
    eng = Engine(model, kv_budget_bytes=KV_BYTES_PER_TOKEN(model) * 16 * 16, block_size=16,
                 reserve_fraction=0.0).start()
    try:
        hs = [eng.submit(Request(p, SamplingParams(max_tokens=60, **params,
                                                   **({} if kind == "greedy" else {"seed": i}))))
              for i, p in enumerate(ps)]
        done = [h.result(120) for h in hs]
        assert eng.stats()["preemptions"] > 0
        assert eng.cache.available() == eng.cache.num_blocks
    finally:
        eng.stop()
    assert [d.token_ids for d in done] == want
    assert all(d.usage.completion_tokens == 60 and d.finish_reason == "length" for d in done)


def test_full_reservation_never_preempts(model):
    ps = prompts(4, seed=23, lo=30, hi=50)
    eng = Engine(model, kv_budget_bytes=KV_BYTES_PER_TOKEN(model) * 16 * 16, block_size=16).start()
    try:
        for h in [eng.submit(Request(p, SamplingParams(max_tokens=60, **GREEDY))) for p in ps]:
            h.result(120)
        assert eng.stats()["preemptions"] == 0
    finally:
        eng.stop()


def test_a_reserve_fraction_outside_the_unit_interval_is_refused(model):
    with pytest.raises(ValueError, match="reserve_fraction"):
        Engine(model, kv_budget_bytes=1 << 20, reserve_fraction=1.5)
