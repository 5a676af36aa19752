"""The engine's CUDA-only paths: decode steps replayed from captured graphs. Skips without CUDA."""

from __future__ import annotations

import pytest
import torch

from inference import load_model
from inference.engine import Engine, Request, SamplingParams
from inference.sampler import build_rows, row_key, sample
from tests.inference.test_engine import GREEDY, prompts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (graph capture, device sampler)")


@pytest.fixture(scope="module")
def model(checkpoint):
    path, _ = checkpoint("v3_grouped_yarn")
    return load_model(path, dtype=torch.float32, device="cuda")


def run_all(engine: Engine, ps: list[list[int]], **params) -> list:
    # Different lengths: the batch shrinks as requests finish, so smaller buckets replay after larger ones.
    hs = [engine.submit(Request(p, SamplingParams(max_tokens=8 + 5 * i, logprobs=True, **params)))
          for i, p in enumerate(ps)]
    return [h.result(120) for h in hs]


def test_graph_replays_give_what_the_eager_step_gives(model):
    ps = prompts(5, seed=31)
    eager = Engine(model, kv_budget_bytes=8 << 20, cuda_graphs=False).start()
    graphs = Engine(model, kv_budget_bytes=8 << 20).start()
    try:
        want, got = run_all(eager, ps, **GREEDY), run_all(graphs, ps, **GREEDY)
        assert graphs._graphs is not None and graphs._graphs.graphs, "no decode step was captured"
        assert not graphs._graphs.failed
    finally:
        eager.stop()
        graphs.stop()
    for w, g in zip(want, got, strict=True):
        assert g.token_ids == w.token_ids
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-3)


def test_the_sampler_on_cuda_is_row_independent_and_matches_the_cpu():
    logits = torch.randn(6, 1000) * 3
    params = [dict(temperature=0.9, top_p=0.9), dict(temperature=0.0), dict(temperature=1.1, top_k=40)] * 2
    keys = [row_key(7 + i, i) for i in range(6)]
    cpu = sample(logits, build_rows(params, keys, torch.device("cpu"))).tokens
    dev = sample(logits.cuda(), build_rows(params, keys, torch.device("cuda"))).tokens.cpu()
    assert torch.equal(cpu, dev)  # integer hashing: the same uniforms on both devices
    for i in range(6):
        alone = sample(logits[i : i + 1].cuda(), build_rows([params[i]], [keys[i]], torch.device("cuda"))).tokens
        assert int(alone[0]) == int(dev[i])
