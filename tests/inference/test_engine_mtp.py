"""MTP speculation inside the batching engine: the same greedy tokens as without it, sampled tokens
with the same distribution (and reproducible from their seed, alone or in a batch), fewer steps, and
the acceptance counted in the engine's stats."""

from __future__ import annotations

import collections
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from inference import engine as engine_module
from inference import load_model
from inference.engine import Engine, Request, SamplingParams
from inference.sampler import build_rows, filtered_probs
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
    eng = Engine(model, kv_budget_bytes=engine_kw.pop("kv_budget_bytes", 32 << 20),
                 max_batch=engine_kw.pop("max_batch", 8), speculative=speculative, **engine_kw).start()
    try:
        handles = [eng.submit(r) for r in requests]
        return [h.result(timeout=120) for h in handles], eng.stats()
    finally:
        eng.stop()


def requests(**params):
    """Mixed prompts and lengths; every third request is sampled with a seed (it speculates too, and
    keeps its tokens alone or in the batch: test_a_seed_gives_the_same_speculative_sample_alone_...)."""
    out = []
    for i, q in enumerate(QUESTIONS):
        kind = dict(temperature=0.8, seed=i) if i % 3 == 2 else dict(temperature=0.0)
        out.append(Request(chat(q * (1 + i % 3)), SamplingParams(max_tokens=24 + 7 * i, **kind, **params), user="u"))
    return out


def greedy(completions, reqs):
    return [c for c, r in zip(completions, reqs, strict=True) if r.params.temperature == 0]


def test_greedy_output_is_the_same_with_and_without_speculation_in_a_batch(demo):
    reqs = requests(ignore_eos=True, logprobs=True)
    plain, plain_stats = serve(demo, reqs, speculative=False)
    fast, stats = serve(demo, requests(ignore_eos=True, logprobs=True), speculative=True)
    plain, fast = greedy(plain, reqs), greedy(fast, reqs)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert all(c.finish_reason == "length" for c in fast)
    for f, p in zip(fast, plain, strict=True):
        if DEVICE == "cpu":  # bit for bit: a row's arithmetic never depends on its mates (docs/inference.md)
            assert f.logprobs == p.logprobs
        else:  # cuBLAS picks kernels by row count
            assert f.logprobs == pytest.approx(p.logprobs, abs=1e-4)
        assert f.usage.completion_tokens == p.usage.completion_tokens
    # both branches ran: drafts kept (two tokens in a step) and drafts replaced
    assert 0 < stats["spec_accepted"] < stats["spec_drafted"]
    assert plain_stats["spec_drafted"] == 0
    assert stats["generated_tokens"] == plain_stats["generated_tokens"]  # every request ran to max_tokens
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
    reqs = requests()
    plain, _ = serve(demo, reqs, speculative=False, **dict(engine_kw))
    fast, stats = serve(demo, requests(), speculative=True, **dict(engine_kw))
    plain, fast = greedy(plain, reqs), greedy(fast, reqs)
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


def chi_square_given_first(model, prompt, params, pairs, min_group=20):
    """Pearson's chi-square of the second generated tokens against the model's own distribution given
    the first (its filtered p at prompt + first token, renormalised), summed over the first tokens
    drawn at least `min_group` times; within a group, cells expected fewer than 5 times are pooled
    (into a cell of their own, or into the least likely cell if even together they are that rare).
    Returns (statistic, degrees of freedom, the 0.999 quantile by Wilson–Hilferty)."""
    rows = build_rows([params], [0], torch.device(DEVICE))
    firsts = collections.Counter(a for a, _ in pairs)
    seen = collections.Counter(pairs)
    stat, df = 0.0, 0
    for a, n in firsts.items():
        if n < min_group:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([prompt + [a]], device=DEVICE))[0, -1:].float()
        p = filtered_probs(logits, rows, logits.shape[-1])[0]
        expected = (n * p / p.sum()).tolist()
        cells = sorted(((seen[(a, b)], e) for b, e in enumerate(expected) if e >= 5), key=lambda c: c[1])
        rest = (n - sum(o for o, _ in cells), n - sum(e for _, e in cells))
        if rest[1] >= 5 or not cells:
            cells.append(rest)
        else:  # too rare for a cell of its own: joins the least likely cell
            cells[0] = (cells[0][0] + rest[0], cells[0][1] + rest[1])
        stat += sum((o - e) ** 2 / e for o, e in cells)
        df += len(cells) - 1
    assert df > 0, "no first token was drawn often enough"
    z = 3.09  # the standard normal's 0.999 quantile
    return stat, df, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def first_two(model, prompt, params, n, speculative):
    reqs = [Request(prompt, SamplingParams(max_tokens=3, seed=s, ignore_eos=True, **params)) for s in range(n)]
    done, stats = serve(model, reqs, speculative=speculative, max_batch=64)
    return [tuple(c.token_ids[:2]) for c in done], stats


SAMPLED_CASES = [dict(temperature=1.0), dict(temperature=1.0, top_p=0.8, top_k=6)]
# Ten arbitrary token ids (no chat template): the model is unsure what follows and the head guesses
# 40–45% of its drafts, so both the kept drafts and the residual draws shape the second token (with
# the chat prompts over 90% are kept, and a rule that skipped the residual would hardly show).
PROBE = [559, 1526, 133, 173, 310, 642, 1231, 1392, 1436, 130]


@pytest.mark.parametrize("params", SAMPLED_CASES, ids=["temperature-1", "top-p-top-k"])
def test_sampled_speculation_draws_the_first_two_tokens_from_the_models_distribution(demo, params, monkeypatch):
    """400 seeds of a 3-token request: the first token is never speculated, the second is the first
    draft's verification (kept, or replaced by the residual draw). Its distribution given the first
    must be the model's, as it is without speculation; accepting every draft instead fails."""
    prompt = PROBE
    plain, _ = first_two(demo, prompt, params, 400, speculative=False)
    fast, stats = first_two(demo, prompt, params, 400, speculative=True)
    stat, df, limit = chi_square_given_first(demo, prompt, params, plain)
    assert stat < limit, (stat, df)  # the statistic holds for plain sampling: the reference is right
    stat, df, limit = chi_square_given_first(demo, prompt, params, fast)
    assert stat < limit, (stat, df)
    assert [a for a, _ in fast] == [a for a, _ in plain]  # the first token is drawn as without drafts
    # sampled requests speculate: every request verified one draft, some kept and some not
    assert stats["spec_drafted"] == 400 and 0 < stats["spec_accepted"] < 400
    monkeypatch.setattr(engine_module, "verify", lambda p, q, draft, keys: draft)
    blind, _ = first_two(demo, prompt, params, 400, speculative=True)
    assert chi_square_given_first(demo, prompt, params, blind)[0] > limit  # the test can tell


def test_a_seed_gives_the_same_speculative_sample_alone_and_in_a_batch(demo):
    """fp32 on CPU: a sampled, speculating request's tokens depend on its seed only — not on its batch
    mates (greedy and sampled, other lengths) nor on the run."""
    reqs = requests(ignore_eos=True, logprobs=True)
    batch, stats = serve(demo, reqs, speculative=True)
    again, _ = serve(demo, requests(ignore_eos=True, logprobs=True), speculative=True)
    assert [c.token_ids for c in again] == [c.token_ids for c in batch]
    sampled = [i for i, r in enumerate(reqs) if r.params.temperature > 0]
    assert sampled
    drafted = 0
    for i in sampled:
        (alone,), alone_stats = serve(demo, [Request(reqs[i].prompt_ids, reqs[i].params)], speculative=True)
        drafted += alone_stats["spec_drafted"]
        assert alone.token_ids == batch[i].token_ids, i
        if DEVICE == "cpu":
            assert alone.logprobs == batch[i].logprobs, i
    assert drafted > 0
    other = serve(demo, [Request(reqs[sampled[0]].prompt_ids, replace(reqs[sampled[0]].params, seed=999))],
                  speculative=True)[0][0]
    assert other.token_ids != batch[sampled[0]].token_ids  # the seed matters
