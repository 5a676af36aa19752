"""The batched device sampler: the distributions it draws from, its randomness, its independence of batch mates."""

from __future__ import annotations

import pytest
import torch

from inference.sampler import _mix32, _mix32_t, build_rows, filtered_probs, row_key, sample, uniform
from tests.inference.checkpoints import DEVICE

V = 50


def logits_rows(n: int, seed: int = 0, vocab: int = V) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, vocab, generator=g) * 2.0).to(DEVICE)


def old_row_probs(row: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The engine's previous row-by-row sampler's distribution: softmax, sort, drop past the nucleus."""
    probs = (row / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        probs = torch.zeros_like(probs).scatter(0, idx, sorted_p.masked_fill(drop, 0.0))
    return probs / probs.sum()


def normed(p: torch.Tensor) -> torch.Tensor:
    return p / p.sum(-1, keepdim=True)


def test_the_device_hash_is_the_host_hash():
    xs = torch.tensor([0, 1, 2, 12345, 2**31, 2**32 - 1], dtype=torch.int64)
    assert _mix32_t(xs).tolist() == [_mix32(int(x)) for x in xs]


def test_uniforms_are_in_the_open_unit_interval_and_flat():
    keys = torch.tensor([row_key(s, 0) for s in range(64)], dtype=torch.int64)
    u = uniform(keys, 4096)
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    hist = torch.histc(u, bins=10, min=0.0, max=1.0) / u.numel()
    assert hist.sub(0.1).abs().max() < 0.01
    assert torch.equal(u, uniform(keys, 4096))
    assert row_key(7, 0) != row_key(7, 1) != row_key(8, 1)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9), (1.0, 0.5), (0.5, 1e-6)])
def test_the_filtered_distribution_agrees_with_the_previous_sampler(temperature, top_p):
    logits = logits_rows(6, seed=1)
    rows = build_rows([dict(temperature=temperature, top_p=top_p)] * 6, [0] * 6, logits.device)
    got = normed(filtered_probs(logits, rows, V))
    for i in range(6):
        assert got[i].cpu() == pytest.approx(old_row_probs(logits[i], temperature, top_p).cpu(), abs=1e-6)


def test_top_k_keeps_the_k_most_likely_and_top_p_works_inside_them():
    logits = logits_rows(4, seed=2)
    rows = build_rows([dict(top_k=1), dict(top_k=5), dict(top_k=5, top_p=0.6), dict(top_k=0)], [0] * 4,
                      logits.device)
    probs = filtered_probs(logits, rows, V)
    order = logits.argsort(-1, descending=True)
    kept = [set(torch.nonzero(probs[i]).flatten().tolist()) for i in range(4)]
    assert kept[0] == {int(order[0, 0])}
    assert kept[1] == set(order[1, :5].tolist())
    p5 = logits[2].softmax(-1)[order[2, :5]]
    p5 = p5 / p5.sum()
    n = int(((p5.cumsum(-1) - p5) <= 0.6).sum())  # the nucleus of the renormalised top 5
    assert kept[2] == set(order[2, :n].tolist()) and 1 <= n < 5
    assert len(kept[3]) == V


def test_min_p_drops_tokens_below_its_share_of_the_best():
    logits = logits_rows(3, seed=3)
    rows = build_rows([dict(min_p=0.1)] * 3, [0] * 3, logits.device)
    probs = filtered_probs(logits, rows, V)
    full = logits.softmax(-1)
    assert torch.equal(probs > 0, full >= 0.1 * full.amax(-1, keepdim=True))


@pytest.mark.parametrize("params", [dict(temperature=1.0), dict(temperature=0.8, top_p=0.8),
                                    dict(temperature=1.2, top_k=6, min_p=0.05)])
def test_samples_follow_the_filtered_distribution(params):
    vocab, n = 12, 6000
    logits = logits_rows(1, seed=4, vocab=vocab).expand(n, vocab).contiguous()
    keys = [row_key(s, 3) for s in range(n)]
    rows = build_rows([params] * n, keys, logits.device)
    tokens = sample(logits, rows).tokens
    freq = torch.bincount(tokens.cpu(), minlength=vocab).float() / n
    expected = normed(filtered_probs(logits[:1], rows, vocab))[0].cpu()
    assert freq[expected == 0].sum() == 0  # never outside what the filters keep
    assert freq.sub(expected).abs().max() < 0.025  # ~4 standard errors at n = 6000


def test_a_row_samples_the_same_token_alone_or_with_any_batch_mates():
    logits = logits_rows(8, seed=5)
    params = [dict(temperature=0.9, top_p=0.9), dict(temperature=0.0), dict(temperature=1.1, top_k=4),
              dict(temperature=0.7, min_p=0.2), dict(temperature=1.0)] + [dict(temperature=1.0)] * 3
    keys = [row_key(100 + i, i) for i in range(8)]
    together = sample(logits, build_rows(params, keys, logits.device), want_logprobs=True)
    for i in range(8):
        alone = sample(logits[i : i + 1], build_rows([params[i]], [keys[i]], logits.device), want_logprobs=True)
        assert int(alone.tokens[0]) == int(together.tokens[i])
        assert alone.logprobs is not None and together.logprobs is not None
        assert float(alone.logprobs[0]) == pytest.approx(float(together.logprobs[i]), abs=1e-6)
    assert int(together.tokens[1]) == int(logits[1].argmax())


def test_penalties_subtract_count_and_presence():
    logits = torch.zeros(2, V, device=DEVICE)
    counts = torch.zeros(2, V, device=DEVICE)
    counts[0, 3] = 2.0
    counts[1, 3] = 5.0
    logits[:, 3] = 1.0  # the favourite, unless penalised
    logits[:, 4] = 0.5
    rows = build_rows([dict(temperature=0.0, frequency=0.1), dict(temperature=0.0, presence=2.0)], [0, 0],
                      logits.device)
    out = sample(logits, rows, counts=counts)
    assert out.tokens.tolist() == [3, 4]  # 1 − 0.2 = 0.8 still beats 0.5; 1 − 2 = −1 does not


def test_a_mask_forbids_tokens_and_a_row_with_nothing_allowed_keeps_its_choice():
    logits = logits_rows(3, seed=6)
    allowed = torch.zeros(3, V, dtype=torch.bool, device=DEVICE)
    allowed[0, [7, 9]] = True
    allowed[1, 11] = True
    rows = build_rows([dict(temperature=1.0), dict(temperature=0.0), dict(temperature=0.0)],
                      [row_key(1, 0)] * 3, logits.device)
    out = sample(logits, rows, allowed=allowed, want_logprobs=True)
    assert int(out.tokens[0]) in (7, 9) and int(out.tokens[1]) == 11
    assert int(out.tokens[2]) == int(logits[2].argmax())


def test_logprobs_and_the_top_n_are_of_the_raw_distribution():
    logits = logits_rows(2, seed=7)
    rows = build_rows([dict(temperature=0.0, frequency=3.0), dict(temperature=0.5)], [0, row_key(3, 0)],
                      logits.device)
    counts = torch.zeros(2, V, device=DEVICE)
    counts[0, int(logits[0].argmax())] = 1.0
    out = sample(logits, rows, counts=counts, want_logprobs=True, top_logprobs=3)
    logp = logits.float().log_softmax(-1)
    assert out.logprobs is not None and out.top_ids is not None and out.top_logprobs is not None
    assert out.logprobs.tolist() == pytest.approx(logp.gather(1, out.tokens[:, None])[:, 0].tolist(), abs=1e-6)
    assert out.top_ids.tolist() == logp.topk(3, dim=-1).indices.tolist()
    assert out.top_logprobs.flatten().tolist() == pytest.approx(logp.topk(3, dim=-1).values.flatten().tolist(),
                                                                abs=1e-6)
    assert int(out.tokens[0]) != int(logits[0].argmax())  # the penalty moved the greedy choice
