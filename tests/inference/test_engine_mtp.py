"""MTP speculation inside the batching engine: the same greedy tokens as without it, fewer steps, and
the acceptance counted in the engine's stats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference import load_model
from inference.engine import Engine, Request, SamplingParams
from inference.tokenizer import Tokenizer
from tests.inference.checkpoints import DEVICE

DEMO = Path(__file__).resolve().parents[2] / "inference" / "demo" / "checkpoint"
QUESTIONS = ["What is Levee?", "Tell me a short story.", "Hello", "What color is the sky?", "Tell me a joke.",
             "Who are you?", "What is 3 plus 4?"]


@pytest.fixture(scope="module")
def demo():
    if not (DEMO / "mtp.safetensors").is_file():
        pytest.fail("inference/demo/checkpoint/mtp.safetensors is missing: python -m inference.demo.train_mtp")
    torch.set_num_threads(1)
    return load_model(DEMO, dtype=torch.float32, device=DEVICE, mtp=True)


def chat(text: str) -> list[int]:
    return Tokenizer.from_dir(DEMO).encode_chat([{"role": "user", "content": text}], add_generation_prompt=True)


def serve(model, requests, *, speculative, **engine_kw):
    """Submit every request at once (one batch), return their completions and the engine's stats."""
    eng = Engine(model, kv_budget_bytes=engine_kw.pop("kv_budget_bytes", 32 << 20), max_batch=8,
                 speculative=speculative, **engine_kw).start()
    try:
        handles = [eng.submit(r) for r in requests]
        return [h.result(timeout=120) for h in handles], eng.stats()
    finally:
        eng.stop()


def requests(**params):
    """Mixed prompts and lengths; every third request is sampled with a seed (it never speculates, and
    must not change either)."""
    out = []
    for i, q in enumerate(QUESTIONS):
        kind = dict(temperature=0.8, seed=i) if i % 3 == 2 else dict(temperature=0.0)
        out.append(Request(chat(q * (1 + i % 3)), SamplingParams(max_tokens=24 + 7 * i, **kind, **params), user="u"))
    return out


def test_greedy_output_is_the_same_with_and_without_speculation_in_a_batch(demo):
    plain, plain_stats = serve(demo, requests(ignore_eos=True, logprobs=True), speculative=False)
    fast, stats = serve(demo, requests(ignore_eos=True, logprobs=True), speculative=True)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert [c.finish_reason for c in fast] == ["length"] * len(QUESTIONS)
    for f, p in zip(fast, plain, strict=True):
        if DEVICE == "cpu":  # bit for bit: a row's arithmetic never depends on its mates (docs/inference.md)
            assert f.logprobs == p.logprobs
        else:  # cuBLAS picks kernels by row count
            assert f.logprobs == pytest.approx(p.logprobs, abs=1e-4)
        assert f.usage.completion_tokens == p.usage.completion_tokens
    # both branches ran: drafts kept (two tokens in a step) and drafts replaced
    assert 0 < stats["spec_accepted"] < stats["spec_drafted"]
    assert plain_stats["spec_drafted"] == 0
    assert stats["generated_tokens"] == plain_stats["generated_tokens"] == sum(c.usage.completion_tokens for c in fast)
    assert stats["steps"] < plain_stats["steps"]  # the longest request finished in fewer steps


def test_speculation_agrees_with_the_single_sequence_reference(demo):
    from inference.speculative import generate

    prompt = chat("Tell me a short story.")
    ref = generate(demo, prompt, 40, speculate=True)
    got, stats = serve(demo, [Request(prompt, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))],
                       speculative=True)
    assert got[0].token_ids == ref.tokens
    assert (stats["spec_drafted"], stats["spec_accepted"]) == (ref.drafted, ref.accepted)


@pytest.mark.parametrize("engine_kw", [dict(max_step_tokens=16),  # prompts prefilled in chunks beside decodes
                                       dict(kv_budget_bytes=4 * 48 * 4 * 16 * 14, reserve_fraction=0.2)],  # preempts
                         ids=["chunked-prefill", "preemption"])
def test_chunked_prefill_prefix_reuse_and_preemption_keep_speculation_exact(demo, engine_kw):
    plain, _ = serve(demo, requests(), speculative=False, **dict(engine_kw))
    fast, stats = serve(demo, requests(), speculative=True, **dict(engine_kw))
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert [c.finish_reason for c in fast] == [c.finish_reason for c in plain]
    assert stats["spec_accepted"] > 0
    if "reserve_fraction" in engine_kw:
        assert stats["preemptions"] > 0


def test_stop_strings_and_max_tokens_end_a_speculating_request_where_they_would_without(demo):
    from inference.tokenizer import IncrementalDetokenizer

    tok = Tokenizer.from_dir(DEMO)
    prompt = chat("Tell me a short story.")
    reqs = [Request(prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)) for n in (1, 2, 3, 17)]
    text = tok.decode(serve(demo, [reqs[-1]], speculative=False)[0][0].token_ids)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    reqs.append(Request(prompt, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=(stop,))))
    kw = dict(detokenizer_factory=lambda: IncrementalDetokenizer(tok))
    plain, _ = serve(demo, reqs, speculative=False, **kw)
    fast, _ = serve(demo, [Request(r.prompt_ids, r.params) for r in reqs], speculative=True, **kw)
    assert [(c.token_ids, c.text, c.finish_reason) for c in fast] == [(c.token_ids, c.text, c.finish_reason)
                                                                       for c in plain]
    assert [len(c.token_ids) for c in fast[:4]] == [1, 2, 3, 17]
    assert fast[-1].finish_reason == "stop" and stop not in fast[-1].text


def test_speculation_needs_the_mtp_layer(checkpoint):
    path, _ = checkpoint("v3_grouped_yarn")
    model = load_model(path, dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="MTP layer"):
        Engine(model, kv_budget_bytes=1 << 20, speculative=True)
    assert not Engine(model, kv_budget_bytes=1 << 20).speculative


def test_the_worker_speculates_with_the_checkpoints_mtp_layer_unless_told_not_to(checkpoint, monkeypatch):
    from inference import serving
    from inference.loader import CheckpointError, has_mtp_layer

    path, _ = checkpoint("v3_grouped_yarn")
    assert has_mtp_layer(DEMO) and not has_mtp_layer(path)
    for value, speculates in (("", True), ("auto", True), ("off", False), ("on", True)):
        monkeypatch.setenv("LEVEE_MTP", value)
        engine = serving.build_engine(str(DEMO))
        try:
            assert engine.speculative is speculates, value
        finally:
            serving.shutdown(engine)
    monkeypatch.setenv("LEVEE_MTP", "on")
    with pytest.raises(CheckpointError, match=r"model\.layers\.3\.eh_proj"):
        serving.build_engine(str(path))
    monkeypatch.setenv("LEVEE_MTP", "maybe")
    with pytest.raises(ValueError, match="LEVEE_MTP"):
        serving.build_engine(str(DEMO))
