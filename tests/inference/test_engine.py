"""The engine: continuous batching that changes nothing a request sees, sampling, stops, cancellation."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from inference import load_model
from inference.engine import Engine, Request, SamplingParams

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model(checkpoint):
    path, _ = checkpoint("v3_grouped_yarn")
    return load_model(path, dtype=torch.float32, device="cpu")


class Letters:
    """Detokenizer stand-in: token i decodes to two letters, so strings span token boundaries."""

    def push(self, token_id: int) -> str:
        return piece(token_id)

    def flush(self) -> str:
        return ""


def piece(token_id: int) -> str:
    return "abcdefgh"[token_id % 8] + "xyz"[token_id % 3]


@pytest.fixture
def engine(model):
    eng = Engine(model, kv_budget_bytes=8 << 20, block_size=16, max_batch=32, detokenizer_factory=Letters).start()
    yield eng
    eng.stop()


def prompts(n: int, seed: int = 0, lo: int = 1, hi: int = 90) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(2, 97, (k,), generator=g).tolist() for k in lengths]


def run(engine, prompt, **params):
    return engine.submit(Request(prompt, SamplingParams(**params))).result(timeout=60)


def test_greedy_decoding_matches_transformers_generate(checkpoint, engine):
    _, ref = checkpoint("v3_grouped_yarn")
    for prompt in prompts(3, seed=5):
        with torch.no_grad():
            expected = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
        assert len(expected) == 32
        assert run(engine, prompt, max_tokens=32, **GREEDY).token_ids == expected


class Collector(threading.Thread):
    """Drains a handle's events in the background, like a worker streaming them out."""

    def __init__(self, handle):
        super().__init__(daemon=True)
        self.handle, self.events, self.first = handle, [], threading.Event()
        self.start()

    def run(self):
        for ev in self.handle:
            self.events.append(ev)
            self.first.set()

    def tokens(self):
        self.join(timeout=60)
        return [t for ev in self.events for t in ev.token_ids]


def test_batching_is_invisible(engine):
    ps = prompts(16, seed=1)
    lengths = [8 + 3 * i for i in range(16)]  # requests leave at different steps
    kinds = [dict(GREEDY) if i % 4 else dict(temperature=0.9, top_p=0.9, seed=i, ignore_eos=True) for i in range(16)]
    alone = [run(engine, p, max_tokens=n, logprobs=True, **k) for p, n, k in zip(ps, lengths, kinds, strict=True)]
    steps_alone = engine.steps

    collectors = []
    for i, (p, n, k) in enumerate(zip(ps, lengths, kinds, strict=True)):
        h = engine.submit(Request(p, SamplingParams(max_tokens=n, logprobs=True, **k)))
        collectors.append(Collector(h))
        if i % 4 == 3:  # the next requests join a batch that is already decoding
            assert collectors[i].first.wait(timeout=30)
    for i, c in enumerate(collectors):
        assert c.tokens() == alone[i].token_ids, i
        lps = [lp for ev in c.events for lp in (ev.logprobs or [])]
        assert lps == pytest.approx(alone[i].logprobs, abs=1e-5)
        assert c.events[-1].finish_reason == "length"
        assert c.events[-1].usage.completion_tokens == lengths[i]
    assert engine.steps - steps_alone < sum(lengths) / 3, "requests did not actually share steps"
