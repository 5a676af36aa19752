"""Prefill attention (inference/attention.py, expanded_attention) against a dense causal softmax.

On CPU the context is taken in key blocks at multiples of the block size, each attended by the
flash kernel and merged by log-sum-exp: a query chunk that starts inside a block, blocks wholly
before the new tokens, a last partial block and one-token chunks all have to come out as the plain
softmax over every visible key does.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference.attention import expanded_attention
from inference.model import MLA, ModelArgs
from tests.inference.checkpoints import DEVICE


@pytest.fixture(scope="module")
def attn():
    args = ModelArgs(vocab_size=97, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                     num_hidden_layers=1, num_attention_heads=4, q_lora_rank=None, kv_lora_rank=32,
                     qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12)  # dv < dn + dr, as in DeepSeek
    torch.manual_seed(0)
    layer = MLA(args, 0)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.1)
    return layer.requires_grad_(False).to(DEVICE)


def dense(attn, q_nope, q_pe, c_kv, k_pe, start):
    T, nH, dn = q_nope.shape
    S = c_kv.shape[0]
    k_nope, v = F.linear(c_kv, attn.kv_b_proj.weight).view(S, nH, -1).split([dn, attn.dv], dim=-1)
    k = torch.cat([k_nope, k_pe[:, None].expand(S, nH, k_pe.shape[-1])], dim=-1)
    scores = torch.einsum("thd,shd->hts", torch.cat([q_nope, q_pe], dim=-1), k) * attn.softmax_scale
    visible = torch.arange(S, device=k.device)[None, :] <= torch.arange(start, start + T, device=k.device)[:, None]
    return torch.einsum("hts,shd->thd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v)


@pytest.mark.parametrize(("start", "tokens", "chunk"), [(0, 5, 16), (0, 40, 16), (7, 20, 16), (16, 16, 16),
                                                        (33, 50, 16), (100, 1, 16), (3, 1, 4), (0, 1, 16)])
def test_prefill_attention_equals_a_dense_causal_softmax(attn, start, tokens, chunk):
    g = torch.Generator().manual_seed(start * 100 + tokens)
    q_nope, q_pe = torch.randn(tokens, 4, 16, generator=g), torch.randn(tokens, 4, 8, generator=g)
    c_kv, k_pe = torch.randn(start + tokens, 32, generator=g), torch.randn(start + tokens, 8, generator=g)
    q_nope, q_pe, c_kv, k_pe = (t.to(DEVICE) for t in (q_nope, q_pe, c_kv, k_pe))
    got = expanded_attention(attn, q_nope, q_pe, c_kv, k_pe, start=start, query_chunk=chunk)
    assert got.shape == (tokens, 4, attn.dv)
    torch.testing.assert_close(got, dense(attn, q_nope, q_pe, c_kv, k_pe, start), rtol=1e-5, atol=1e-5)
