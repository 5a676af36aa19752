"""Tensor + expert parallelism over torch.distributed (gloo), two processes on CPU.

Each case runs the same thing in one process and in two ranks and compares: logits (fp32,
≤ 1e-5), and greedy tokens through the engine, rank 0 driving and rank 1 following. A follower
that dies makes the next job fail with a clear error within a timeout.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from inference import load_model
from inference.engine import Engine, Request, SamplingParams

DEMO = Path(__file__).resolve().parents[2] / "inference" / "demo" / "checkpoint"
GREEDY = dict(temperature=0.0, ignore_eos=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(vocab: int, n: int = 3, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (k,), generator=g).tolist() for k in (1, 9, 37)][:n]


def _rank_main(rank: int, world: int, port: int, checkpoint: str, out: str, mode: str) -> None:
    from inference import parallel

    torch.set_num_threads(1)
    tp = parallel.init(rank, world, port=port, timeout=60)
    model = load_model(checkpoint, dtype=torch.float32, device="cpu", tp=tp, mtp=mode == "engine_mtp")
    vocab = model.args.vocab_size
    if mode == "logits":
        results = [model(torch.tensor([p])) for p in prompts(vocab)]
        if rank == 0:
            torch.save(results, out)
    elif rank == 0:
        runner = parallel.ParallelRunner(model, tp)
        engine = Engine(runner, kv_budget_bytes=4 << 20, block_size=16).start()
        handles = [engine.submit(Request(p, SamplingParams(max_tokens=20, **GREEDY))) for p in prompts(vocab)]
        done = [h.result(timeout=120).token_ids for h in handles]
        torch.save(done if mode == "engine" else (done, engine.speculative, engine.stats()), out)
        engine.stop()
        runner.stop()
    else:
        parallel.follow(model, tp)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_two_ranks(checkpoint: Path, tmp_path: Path, mode: str):
    out = tmp_path / f"{mode}.pt"
    mp.spawn(_rank_main, args=(2, free_port(), str(checkpoint), str(out), mode), nprocs=2, join=True)
    return torch.load(out)


@pytest.mark.parametrize("which", ["demo", "v3_uneven"])
@pytest.mark.parametrize(("kernel", "bound"), [("packed", 3e-5), ("sgemm", 1e-5)])
def test_two_ranks_give_the_logits_of_one_process(which, kernel, bound, checkpoint, tmp_path, monkeypatch):
    """Within 1e-5 on the padded sgemm linears (CPU linears with prepacking off, in both processes
    and both ranks); within 3e-5 on the default oneDNN packed ones, whose one-kernel sum over all of K
    differs from two ranks' halves by ~1e-6 relative (logits here reach ~15)."""
    if kernel == "sgemm":
        from kernels import rows

        monkeypatch.setenv(rows.PREPACK_ENV, "0")  # read when a weight is first seen: this model, the ranks
    path = DEMO if which == "demo" else checkpoint("v3_uneven")[0]
    single = load_model(path, dtype=torch.float32, device="cpu")
    if which == "v3_uneven":
        assert single.args.n_routed_experts == 5 and single.args.vocab_size % 2 == 1  # both split unevenly
    expected = [single(torch.tensor([p])) for p in prompts(single.args.vocab_size)]
    got = run_two_ranks(path, tmp_path, "logits")
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape
        assert (g - e).abs().max().item() <= bound


def one_process_greedy(path) -> list:
    """20 greedy tokens per test prompt from one process's engine (the ranks' reference)."""
    single = load_model(path, dtype=torch.float32, device="cpu")
    engine = Engine(single, kv_budget_bytes=4 << 20, block_size=16).start()
    try:
        return [engine.submit(Request(p, SamplingParams(max_tokens=20, **GREEDY))).result(timeout=120).token_ids
                for p in prompts(single.args.vocab_size)]
    finally:
        engine.stop()


@pytest.mark.parametrize("which", ["demo", "v3_uneven"])
def test_greedy_generation_through_the_engine_is_identical_on_two_ranks(which, checkpoint, tmp_path):
    path = DEMO if which == "demo" else checkpoint("v3_uneven")[0]
    expected = one_process_greedy(path)
    assert all(len(t) == 20 for t in expected) and len({t for ts in expected for t in ts}) > 5
    assert run_two_ranks(path, tmp_path, "engine") == expected


def test_speculation_on_two_ranks_gives_the_tokens_of_one_process_without_it(tmp_path):
    """The demo checkpoint with its MTP layer split over 2 gloo ranks: the engine drafts (the MTP
    layer's steps broadcast like the main model's) and still decodes exactly what one process
    decodes without drafts."""
    expected = one_process_greedy(DEMO)
    got, speculative, stats = run_two_ranks(DEMO, tmp_path, "engine_mtp")
    assert speculative and got == expected
    assert 0 < stats["spec_accepted"] <= stats["spec_drafted"]


def test_a_dead_rank_fails_the_job_with_a_clear_error_instead_of_hanging(monkeypatch):
    from inference import serving

    monkeypatch.setenv("LEVEE_TP_SIZE", "2")
    monkeypatch.setenv("LEVEE_TP_PORT", str(free_port()))
    monkeypatch.setenv("LEVEE_TP_TIMEOUT_S", "20")
    monkeypatch.setenv("LEVEE_DEVICE", "cpu")
    monkeypatch.setenv("LEVEE_DTYPE", "float32")
    monkeypatch.setenv("LEVEE_KV_BUDGET_MB", "4")
    engine = serving.build_engine(str(DEMO))  # what the worker calls
    try:
        first = engine.submit(Request([5, 6, 7], SamplingParams(max_tokens=4, **GREEDY))).result(timeout=60)
        assert first.finish_reason == "length" and len(first.token_ids) == 4
        (follower,) = engine.model.followers
        follower.kill()
        follower.join(10)
        started = time.monotonic()
        done = engine.submit(Request([5, 6, 8], SamplingParams(max_tokens=4, **GREEDY))).result(timeout=60)
        assert time.monotonic() - started < 30
        assert done.finish_reason == "error"
        assert "tensor-parallel group of 2 failed" in done.error and "restart the worker" in done.error
        again = engine.submit(Request([9], SamplingParams(max_tokens=2, **GREEDY))).result(timeout=10)
        assert again.finish_reason == "error" and "tensor-parallel" in again.error  # at once, no new hang
    finally:
        serving.shutdown(engine)
    assert not torch.distributed.is_initialized()
